"""Do the late falls follow the schedules or the amount of training? (docs/RESULTS.md, "Longer runs")

Compares the medium-v0 runs at 300k steps (`finetune_300k.jsonl`, learning-rate and noise
schedules stretched over 300k) with the same (variant, seed) pairs at 200k (`finetune.jsonl`).
A run's fall is the largest drop of an evaluation below the running best after 50k steps.

Counting falls over whole runs favours the longer ones: a 300k run has 30 evaluations to fall
in, a 200k run 20. So the comparison that answers the question is made over the same steps,
0-200k: there the stretched runs still have a third or more of their learning rate and more
noise left, so if the falls came with the schedules' end phase, they would fall less there.

And, over the 200k runs of `hybrid` and `bc_ppo`, how often an evaluation has a fall at all, by
phase of the run: a steady rate shows as a flat row. Then, per variant of the 200k runs, how
many seeds fall late and how many dip early; then the early dips split by BC's strength; last,
each variant's last-3 edge over PPO-from-BC split the same way.

  python benchmarks/late_falls.py   # -> benchmarks/results/late_falls.md
  python benchmarks/late_falls.py --by_bc_only --short benchmarks/results/finetune_replication.jsonl \
      --out benchmarks/results/late_falls_replication.md --min_seeds 4   # the replication's split
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from analyze_finetune import (EARLY_STEPS, REPS, load, per_run, periodic, prob_improvement,
                              time_limit)

RESULTS = Path(__file__).resolve().parent / "results"
AFTER = EARLY_STEPS  # falls counted after the early phase (the early-dip rule covers 0-50k)
SHORT = 200_000  # both kinds of run evaluate at every 10k up to here: equal counts


def walker2d_runs(path: Path, dataset: str = "medium-v0") -> dict[str, list[dict]]:
    """variant -> runs of one walker2d dataset, read as analyze_finetune reads them."""
    return load(path).get(("walker2d", dataset), {})


def curves(variants: dict[str, list[dict]]) -> dict[tuple[str, int], list[dict]]:
    """(variant, seed) -> periodic evaluations."""
    return {(v, r["seed"]): periodic(r["curve"]) for v, runs in variants.items() for r in runs}


def largest_fall(curve: list[dict], until: int | None = None) -> tuple[float, int | None]:
    """Largest drop below the running best after AFTER steps (up to `until`), and its step."""
    best, fall = -np.inf, (0.0, None)
    for point in curve:
        step, score = point["timesteps"], point["normalized_score"]
        if until is not None and step > until:
            break
        best = max(best, score)
        if step > AFTER and best - score > fall[0]:
            fall = (best - score, step)
    return fall


def mean_between(curve: list[dict], low: int, high: int) -> float:
    return float(np.mean([p["normalized_score"] for p in curve if low <= p["timesteps"] <= high]))


def report(long: dict, short: dict, threshold: float) -> list[str]:
    pairs = sorted(k for k in long if k in short)
    whole = [largest_fall(long[k]) for k in pairs]
    upto = [largest_fall(long[k], SHORT) for k in pairs]
    base = [largest_fall(short[k], SHORT) for k in pairs]
    n = len(pairs)
    late = sum(1 for f, s in whole if f > threshold and s > SHORT)
    lines = [
        f"# Late falls: 300k against 200k runs, medium-v0, {n} (variant, seed) pairs",
        "",
        f"Fall: largest drop below the running best after {AFTER:,} steps; counted if > {threshold:g} points.",
        "",
        "| runs, steps counted | falls | mean largest drop |",
        "|---|---|---|",
        f"| 300k runs, 0-300k | {sum(f > threshold for f, _ in whole)} of {n} ({late} after 200k) "
        f"| {np.mean([f for f, _ in whole]):.1f} |",
        f"| 200k runs, 0-200k | {sum(f > threshold for f, _ in base)} of {n} | {np.mean([f for f, _ in base]):.1f} |",
        f"| 300k runs, 0-200k only | {sum(f > threshold for f, _ in upto)} of {n} "
        f"| {np.mean([f for f, _ in upto]):.1f} |",
        "",
    ]
    for low in (100_000, 150_000):
        a = np.array([mean_between(long[k], low, SHORT) for k in pairs])
        b = np.array([mean_between(short[k], low, SHORT) for k in pairs])
        d = a - b
        lines.append(f"- Mean evaluation over {low // 1000}k-200k: 300k runs {a.mean():.1f}, 200k runs "
                     f"{b.mean():.1f}; paired difference {d.mean():+.1f} (sd {d.std(ddof=1):.1f}).")
    lines += ["", "Per pair: largest drop @ step (300k run, whole) | (300k run, 0-200k) | (200k run)", ""]
    for k, w, u, b in zip(pairs, whole, upto, base):
        lines.append(f"- {k[0]} seed {k[1]}: {w[0]:.0f} @ {w[1]} | {u[0]:.0f} @ {u[1]} | {b[0]:.0f} @ {b[1]}")
    return lines


def falls_by_phase(short: dict, limit: int, variants=("hybrid", "bc_ppo"), dataset: str = "medium-v0",
                   width: int = 50_000) -> list[str]:
    """Share of evaluations in which at least one of the episodes ended before the time limit
    (the walker fell: its mean episode length is below `limit`), and the mean episode length,
    by phase of the 200k runs."""
    n_phases = SHORT // width
    lines = ["", f"Evaluations after step 0 of the 200k runs ({dataset}) with at least one episode ending "
             "before the time limit, by phase: share (mean episode length)", "",
             "| variant | seeds | " + " | ".join(f"{i * width // 1000}-{(i + 1) * width // 1000}k"
                                              for i in range(n_phases)) + " |",
             "|---|---|" + "---|" * n_phases]
    for variant in variants:
        by_seed = {k: c for k, c in short.items() if k[0] == variant}
        phases: dict[int, list] = {}
        for curve in by_seed.values():
            for point in curve[1:]:
                # (t - 1) // width: 50k belongs to 0-50k, as in the early-dip rule and strong_bc
                phase = min((point["timesteps"] - 1) // width, n_phases - 1)
                phases.setdefault(phase, []).append(point["mean_ep_length"])
        cells = [f"{np.mean(np.array(v) < limit):.0%} ({np.mean(v):.0f})" for _, v in sorted(phases.items())]
        lines.append(f"| {variant} | {len(by_seed)} | " + " | ".join(cells) + " |")
    return lines


def falls_by_variant(variants: dict[str, list[dict]], threshold: float, early_share: float = 0.9) -> list[str]:
    """Per variant of the 200k runs: how many seeds fall late (a drop of more than `threshold`
    below the running best after AFTER steps) and how many dip early (an evaluation in the first
    AFTER steps below `early_share` of the seed's step-0 evaluation: issue 12's early-dip rule)."""
    lines = ["", f"Per variant, 200k runs: seeds with a late fall (> {threshold:.0f} points below the running "
             f"best after {AFTER // 1000}k steps) and with an early dip (an evaluation in the first "
             f"{AFTER // 1000}k steps below {early_share:.0%} of the step-0 evaluation)", "",
             "| variant | seeds | late falls | mean largest late drop | early dips |", "|---|---|---|---|---|"]
    for variant, runs in sorted(variants.items()):
        drops = np.array([largest_fall(periodic(r["curve"]), SHORT)[0] for r in runs])
        dips = sum(per_run(r)["worst_early_pct"] < 100 * early_share for r in runs)
        lines.append(f"| {variant} | {len(runs)} | {int((drops > threshold).sum())} | {drops.mean():.1f} | {dips} |")
    return lines


def pooled(runs: dict[str, dict[str, list[dict]]], variant: str) -> dict[tuple[str, int], dict]:
    """(dataset, seed) -> `variant`'s run, over several datasets' runs (dataset -> variant -> runs)."""
    return {(d, r["seed"]): r for d, vs in runs.items() for r in vs.get(variant, [])}


def strong_bc(runs: dict[str, dict[str, list[dict]]], cut: float = 50.0, early_share: float = 0.9,
              width: int = 50_000, min_seeds: int = 5) -> list[str]:
    """Early dips gather where BC is strongest (docs/RESULTS.md, test H): medium-v0 and -v1 pooled, the
    seeds whose step-0 evaluation is >= `cut` against the others, for `hybrid` and `bc_ppo`;
    then every other variant with `min_seeds` strong seeds against `hybrid` on the same
    (dataset, seed) pairs, by 50k-step phase: share of evaluations below `early_share` of BC."""
    n_phases = SHORT // width

    def summary(records: list[dict]) -> str:
        worst = np.array([per_run(r)["worst_early_pct"] for r in records])
        phases = [[] for _ in range(n_phases)]
        for r in records:
            curve = periodic(r["curve"])
            for point in curve[1:]:
                k = min((point["timesteps"] - 1) // width, n_phases - 1)
                phases[k].append(point["normalized_score"] < early_share * curve[0]["normalized_score"])
        shares = " / ".join(f"{np.mean(p):.0%}" for p in phases)
        return f"{int((worst < 100 * early_share).sum())} | {np.median(worst):.0f}% | {shares}"

    lines = ["", f"Early dips by BC strength ({' and '.join(runs)}; strong: step-0 evaluation >= {cut:.0f}): "
             f"seeds that dip (an evaluation in the first {AFTER // 1000}k steps below {early_share:.0%} of "
             f"BC), median worst early evaluation (% of BC), and the share of evaluations below "
             f"{early_share:.0%} of BC in each {width // 1000}k-step phase", "",
             "| variant | seeds | dip | median worst early | share below, by phase |", "|---|---|---|---|---|"]
    base = pooled(runs, "hybrid")
    strong = {k for k, r in base.items() if per_run(r)["bc_score"] >= cut}
    for variant in ("hybrid", "bc_ppo"):
        mine = pooled(runs, variant)
        for label, keep in (("strong", lambda k: k in strong), ("other", lambda k: k not in strong)):
            recs = [r for k, r in sorted(mine.items()) if k in base and keep(k)]
            if recs:
                lines.append(f"| {variant}, {label} BC | {len(recs)} | {summary(recs)} |")
    variants = sorted({v for vs in runs.values() for v in vs} - {"hybrid", "bc_ppo"})
    for variant in variants:
        mine = pooled(runs, variant)
        shared = sorted(k for k in mine if k in strong)
        if len(shared) >= min_seeds:
            lines.append(f"| {variant}, strong BC | {len(shared)} | {summary([mine[k] for k in shared])} |")
            lines.append(f"| hybrid, the same seeds | {len(shared)} | {summary([base[k] for k in shared])} |")
    return lines


def edge_by_bc(runs: dict[str, dict[str, list[dict]]], cut: float = 50.0, min_seeds: int = 5,
               reps: int = REPS) -> list[str]:
    """Where each variant's edge over `bc_ppo` lies (docs/RESULTS.md, "Where HybridPPO's edge ... lies"):
    medium-v0 and -v1 pooled, the last-3 mean on the seeds whose step-0 evaluation is >= `cut`
    and on the others, against `bc_ppo` on the same (dataset, seed) pairs, with P(variant >
    bc_ppo) [95% CI]; variants with `min_seeds` seeds in both groups."""
    def rows(variant: str) -> dict[tuple[str, int], dict]:
        return {k: per_run(r) for k, r in pooled(runs, variant).items()}

    base = rows("bc_ppo")
    lines = ["", f"Last-3 mean against `bc_ppo` by BC strength ({' and '.join(runs)} pooled; strong: "
             f"step-0 evaluation >= {cut:.0f}), on the seeds both ran: mean of the variant / of "
             "`bc_ppo`, P(variant > `bc_ppo`) [95% CI]", "",
             "| variant | strong BC: seeds | last-3 | P | other: seeds | last-3 | P |",
             "|---|---|---|---|---|---|---|"]
    variants = ["hybrid"] + sorted({v for vs in runs.values() for v in vs} - {"hybrid", "bc_ppo"})
    for variant in variants:
        mine = rows(variant)
        cells = []
        for strong in (True, False):
            keys = sorted(k for k in mine if k in base and (base[k]["bc_score"] >= cut) == strong)
            if len(keys) < min_seeds:
                break
            x = np.array([mine[k]["last3"] for k in keys])
            y = np.array([base[k]["last3"] for k in keys])
            prob = prob_improvement(x, y, reps)
            cells.append(f"{len(keys)} | {x.mean():.1f} / {y.mean():.1f} | "
                         f"{prob[0]:.2f} [{prob[1]:.2f}, {prob[2]:.2f}]")
        if len(cells) == 2:
            lines.append(f"| {variant} | {cells[0]} | {cells[1]} |")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--long", type=Path, default=RESULTS / "finetune_300k.jsonl")
    p.add_argument("--short", type=Path, default=RESULTS / "finetune.jsonl")
    p.add_argument("--threshold", type=float, default=20.0)
    p.add_argument("--out", type=Path, default=RESULTS / "late_falls.md")
    p.add_argument("--by_bc_only", action="store_true",
                   help="only the tables by BC strength, from --short (finetune_replication.jsonl "
                        "has no 300k runs to compare)")
    p.add_argument("--min_seeds", type=int, default=5,
                   help="fewest seeds per BC-strength group for a variant's row")
    args = p.parse_args()
    short_all = load(args.short)  # read once: the file is large
    medium = {d: short_all[("walker2d", d)] for d in ("medium-v0", "medium-v1")
              if ("walker2d", d) in short_all}
    if args.by_bc_only:
        lines = strong_bc(medium, min_seeds=args.min_seeds) + edge_by_bc(medium, min_seeds=args.min_seeds)
        args.out.write_text("\n".join(lines).lstrip("\n") + "\n")
        print("\n".join(lines))
        return
    short_runs = medium.get("medium-v0", {})
    short = curves(short_runs)
    lines = report(curves(walker2d_runs(args.long)), short, args.threshold)
    phases = falls_by_phase(short, time_limit(short_runs)) + falls_by_variant(short_runs, args.threshold)
    phases += strong_bc(medium, min_seeds=args.min_seeds) + edge_by_bc(medium, min_seeds=args.min_seeds)
    args.out.write_text("\n".join(lines + phases) + "\n")
    print("\n".join(lines[:13] + phases))


if __name__ == "__main__":
    main()
