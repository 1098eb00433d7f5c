"""What fine-tuning changes in a walker: how often it falls, or how fast it walks? (docs/RESULTS.md, test AN)

A deterministic walker2d evaluation's return is its episodes' length times their reward per
env step. The length says how soon the walker falls (1,000 steps: it never did); the reward per
step is mostly forward speed (Walker2d-v4 pays the x-velocity, 1 per step for staying up, minus a
small control cost). Issue 12's medium +10 bar asks for 69.2-72.1 points, so it matters which of
the two a method moves: without any fall, a gait's score is its reward per step x 1,000, scored.

Per results file, dataset and variant, over seeds (each seed one run, its evaluations pooled per
phase, so an evaluation's episodes weigh by their length): mean episode length and reward per
step (sum of returns / sum of lengths) at step 0 (BC), per phase of the run and over the last
three evaluations, mean over seeds with a Student-t 95% CI; then each run's change from step 0
to its last three evaluations, paired, and the score its end gait would reach without falls
(an upper figure: within a run the faster gaits are the ones that fall, so the table after it
gives the reward per step of the evaluations in which no episode fell, and of the others);
each variant's end against PPO-from-BC's (`bc_ppo`) on the same seeds; for runs longer than
200k the change from the first 50k to the run's last tenth; and every variant's change on the
medium data (means over seeds; the variants ran on different seeds: descriptive).

  python benchmarks/gait.py   # -> benchmarks/results/gait.md
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scipy.stats import t as student_t
from scipy.stats import wilcoxon

from analyze_finetune import load, periodic

RESULTS = Path(__file__).resolve().parent / "results"
FILES = ("finetune.jsonl", "finetune_replication.jsonl", "finetune_300k.jsonl", "finetune_1m.jsonl")
BASELINE = "bc_ppo"
# today's walker2d default, the baseline, the former default
VARIANTS = ("hybrid-gated_anchor_offline_critic_only", BASELINE, "hybrid")
MIN_SEEDS = 5
PHASES = ((1, 50_000), (50_001, 100_000), (100_001, 200_000), (200_001, 500_000),
          (500_001, 1_000_000))
DATASETS = ("medium-v0", "medium-v1", "expert-v0", "simple-v0")


def gait(points: list[dict]) -> tuple[float, float]:
    """(mean episode length, reward per env step) of evaluations taken together."""
    lengths = np.array([p["mean_ep_length"] * p["episodes"] for p in points])
    returns = np.array([p["mean_reward"] * p["episodes"] for p in points])
    episodes = sum(p["episodes"] for p in points)
    return float(lengths.sum() / episodes), float(returns.sum() / lengths.sum())


def start_and_end(curve: list[dict]) -> tuple[tuple[float, float], tuple[float, float]]:
    """gait() at step 0 (BC) and over the last three evaluations."""
    return gait(curve[:1]), gait(curve[-3:])


def mean_ci(values: list[float], digits: int) -> str:
    """Mean over seeds with its Student-t 95% CI half-width."""
    x = np.array(values)
    if len(x) < 2:
        return f"{x.mean():.{digits}f}"
    half = student_t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))
    return f"{x.mean():.{digits}f} ± {half:.{digits}f}"


def scored(rate: float, limit: int, ref: tuple[float, float]) -> float:
    """The normalised score of `limit` steps at `rate` reward per step: the gait without falls."""
    return 100 * (rate * limit - ref[0]) / (ref[1] - ref[0])


def table(runs: list[dict], limit: int) -> tuple[list[str], list[str]]:
    """Cells per phase (length / reward per step) and the paired change from step 0 to the
    last three evaluations, for one variant's runs."""
    curves = [periodic(r["curve"]) for r in runs]
    ref = runs[0]["dataset_info"]["ref_scores"]

    def within(point: dict, run: dict, low: int, high: int) -> bool:
        # the final evaluation (a rollout past the run's steps) belongs to the run's last phase
        return low <= min(point["timesteps"], run["timesteps"]) <= high

    cells = []
    for low, high in ((0, 0), *PHASES):
        per_seed = [gait([p for p in c if within(p, r, low, high)]) for r, c in zip(runs, curves)
                    if any(within(p, r, low, high) for p in c)]
        cells.append("-" if len(per_seed) < len(curves) else
                     f"{mean_ci([g[0] for g in per_seed], 0)} / {mean_ci([g[1] for g in per_seed], 2)}")
    start, end = zip(*[start_and_end(c) for c in curves])
    cells.append(f"{mean_ci([g[0] for g in end], 0)} / {mean_ci([g[1] for g in end], 2)}")
    change = [f"{mean_ci([e[0] - s[0] for s, e in zip(start, end)], 0)}",
              f"{mean_ci([e[1] - s[1] for s, e in zip(start, end)], 3)}",
              f"{mean_ci([scored(s[1], limit, ref) for s in start], 1)}",
              f"{mean_ci([scored(e[1], limit, ref) for e in end], 1)}"]
    return cells, change


def against_baseline(runs: list[dict], base: list[dict]) -> str | None:
    """Paired end differences (last three evaluations) to the baseline on the seeds both ran:
    length, reward per step (mean ± CI, Wilcoxon p) and the last-3 score."""
    mine = {r["seed"]: periodic(r["curve"])[-3:] for r in runs}
    theirs = {r["seed"]: periodic(r["curve"])[-3:] for r in base}
    seeds = sorted(set(mine) & set(theirs))
    if len(seeds) < 2:
        return None
    cells = [str(len(seeds))]
    ends = {s: (gait(mine[s]), gait(theirs[s])) for s in seeds}
    for i, digits in ((0, 0), (1, 3)):
        diff = [ends[s][0][i] - ends[s][1][i] for s in seeds]
        p = wilcoxon(diff).pvalue if any(diff) else 1.0
        cells.append(f"{mean_ci(diff, digits)} (p {p:.2g})")
    score = [np.mean([e["normalized_score"] for e in mine[s]])
             - np.mean([e["normalized_score"] for e in theirs[s]]) for s in seeds]
    cells.append(mean_ci(score, 1))
    return " | ".join(cells)


def fall_split(runs: list[dict], limit: int) -> str:
    """Median reward per step of the evaluations after step 0 in which every episode ran to
    the time limit, and of those in which one fell (count of each)."""
    evaluations = [p for r in runs for p in periodic(r["curve"])[1:]]
    cells = []
    for fell in (False, True):
        rates = [p["mean_reward"] / p["mean_ep_length"] for p in evaluations
                 if (p["mean_ep_length"] < limit) == fell]
        cells.append(f"{np.median(rates):.2f} ({len(rates)})" if rates else "-")
    return " | ".join(cells)


def budget_change(runs: list[dict]) -> str | None:
    """Runs longer than 200k: reward per step and length over the first 50k (after step 0)
    against the run's last tenth (its final evaluation included), paired per seed."""
    if runs[0]["timesteps"] <= 200_000:
        return None
    cells, pairs = [], []
    for r in runs:
        curve, steps = periodic(r["curve"]), r["timesteps"]
        first = gait([p for p in curve if 0 < p["timesteps"] <= 50_000])
        last = gait([p for p in curve if p["timesteps"] >= 0.9 * steps])
        pairs.append((first, last))
    for i, digits in ((0, 0), (1, 3)):
        cells.append(mean_ci([b[i] - a[i] for a, b in pairs], digits))
    return " | ".join(cells)


def every_variant(path: Path, datasets=("medium-v0", "medium-v1"), min_seeds: int = 3) -> list[str]:
    """Each variant's mean change from step 0 to its last three evaluations (descriptive)."""
    lines = ["", f"Every variant in {path.name} with at least {min_seeds} seeds, step 0 to the last three "
             "evaluations: mean change in episode length and in reward per step (means over each "
             "variant's own seeds, which differ between variants: descriptive)", "",
             "| dataset | variant | seeds | length | reward per step |", "|---|---|---|---|---|"]
    by_data = load(path)
    for dataset in datasets:
        for variant, runs in sorted(by_data.get(("walker2d", dataset), {}).items()):
            curves = [periodic(r["curve"]) for r in runs if not r.get("derived_from")]
            if len(curves) < min_seeds:
                continue
            change = np.mean([np.subtract(end, start) for start, end in map(start_and_end, curves)],
                             axis=0)
            lines.append(f"| {dataset} | {variant} | {len(curves)} | {change[0]:+.0f} | {change[1]:+.3f} |")
    return lines


def report(files: list[Path], variants: set[str], min_seeds: int, limit: int = 1000) -> list[str]:
    phase_names = ["step 0 (BC)"] + [f"{low // 1000}-{high // 1000}k" for low, high in PHASES] + ["last 3"]
    lines = ["# Falls or gait: episode length and reward per env step (walker2d)", "",
             "Per variant, over seeds: mean episode length / reward per env step (sum of returns over "
             "sum of lengths), mean ± Student-t 95% CI half-width; `-`: a phase the runs do not reach.",
             "", "| file | dataset | variant | seeds | " + " | ".join(phase_names) + " |",
             "|---|---|---|---|" + "---|" * len(phase_names)]
    changes = ["", "Change from step 0 to the last three evaluations, paired per seed (mean ± CI), "
               f"and the score of {limit} steps at the reward per step of step 0 and of the end "
               "(the gait without falls, normalised; an upper figure, see the next table):", "",
               "| file | dataset | variant | seeds | length | reward per step | no-fall score, BC | "
               "no-fall score, end |", "|---|---|---|---|---|---|---|---|"]
    split = ["", "Median reward per step of the evaluations after step 0 in which every episode ran "
             f"to the {limit}-step limit, and of those in which one fell (evaluations)", "",
             "| file | dataset | variant | seeds | no episode fell | one fell or more |",
             "|---|---|---|---|---|---|"]
    longer = ["", "Runs longer than 200k: change from the first 50k (after step 0) to the run's last "
              "tenth (final evaluation included), paired per seed (mean ± CI)", "",
              "| file | dataset | variant | seeds | length | reward per step |", "|---|---|---|---|---|---|"]
    paired = ["", f"At the end (last three evaluations) against `{BASELINE}` on the same seeds: "
              "difference in episode length and in reward per step (mean ± CI, Wilcoxon p), "
              "and in the last-3 score", "",
              "| file | dataset | variant | seeds | length | reward per step | last-3 score |",
              "|---|---|---|---|---|---|---|"]
    for path in files:
        if not path.exists():
            continue
        by_data = load(path)
        for dataset in DATASETS:
            for variant, runs in sorted(by_data.get(("walker2d", dataset), {}).items()):
                runs = [r for r in runs if not r.get("derived_from")]
                if variant not in variants or len(runs) < min_seeds:
                    continue
                cells, change = table(runs, limit)
                head = f"| {path.name} | {dataset} | {variant} | {len(runs)} | "
                lines.append(head + " | ".join(cells) + " |")
                changes.append(head + " | ".join(change) + " |")
                split.append(head + fall_split(runs, limit) + " |")
                budget = budget_change(runs)
                if budget is not None:
                    longer.append(head + budget + " |")
                base = [r for r in by_data[("walker2d", dataset)].get(BASELINE, [])
                        if not r.get("derived_from")]
                versus = None if variant == BASELINE else against_baseline(runs, base)
                if versus is not None:
                    paired.append(f"| {path.name} | {dataset} | {variant} | {versus} |")
    return lines + changes + split + paired + longer + every_variant(files[0])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--files", type=Path, nargs="+", default=[RESULTS / f for f in FILES])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS))
    p.add_argument("--min_seeds", type=int, default=MIN_SEEDS)
    p.add_argument("--out", type=Path, default=RESULTS / "gait.md")
    args = p.parse_args()
    lines = report(args.files, set(args.variants), args.min_seeds)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
