"""How far apart do two runs end that differ only in their random stream? (docs/RESULTS.md, test P)

Two walker2d runs of one seed share the BC policy, the data and every setting, yet a variant that
draws from NumPy's global RNG once more per minibatch (the start anchor picks its rows so)
shuffles every later minibatch differently, and from the first actor update on the runs
diverge. `hybrid-null_anchor` is that draw without the pull (anchor weight 1e-9): paired with
`hybrid` on the same seeds, its differences are what the random stream alone does to a
comparison. Held against them: the gated anchor's differences from `hybrid` on the same seeds,
split by the gate (docs/RESULTS.md's gate-size hypothesis, tests N and O). `hybrid-log_std_shift` asks
the same with the random stream kept: the exploration noise smaller by 1e-6 (test Q).

Per measure, the paired differences' SD gives the seeds a paired comparison needs to see an
effect of a given size at 80% power, two-sided 5%: n = ((1.96 + 0.84) SD / effect)^2; the
share of the across-seed variance that is the stream's is var(difference) / 2 over var(base).

  python benchmarks/stream_noise.py   # -> benchmarks/results/stream_noise_replication.md
  python benchmarks/stream_noise.py --variant hybrid-log_std_shift \
      --out benchmarks/results/stream_noise_log_std_shift.md   # test Q
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from rliable import metrics

from analyze_finetune import REPS, aggregate_ci, load, per_run, periodic, score

RESULTS = Path(__file__).resolve().parent / "results"
GATE_CUT = 0.4  # test O's cut, fixed before its runs
POWER_Z = 1.96 + 0.84  # two-sided 5%, 80% power
MEASURES = {
    "last-3 mean (the goals' measure)": lambda r: per_run(r)["last3"],
    "mean of the evaluations at 100k-200k": lambda r: float(np.mean(
        [score(e) for e in periodic(r["curve"]) if e["timesteps"] >= 100_000])),
    "handed-over model, 20-episode test": lambda r: per_run(r)["result_test"],
    "final model, 20-episode test": lambda r: per_run(r)["final_test"],
}


def triples(path: Path, variant: str, base: str, compare: str) -> list[tuple[str, dict, dict, dict]]:
    """(dataset, variant's run, base's run, compare's run) for every walker2d seed with all three."""
    out = []
    for (env, dataset), variants in sorted(load(path).items()):
        if env != "walker2d" or variant not in variants:
            continue
        by_seed = {v: {r["seed"]: r for r in variants.get(v, [])} for v in (base, compare)}
        out += [(dataset, r, by_seed[base][r["seed"]], by_seed[compare][r["seed"]])
                for r in variants[variant]
                if r["seed"] in by_seed[base] and r["seed"] in by_seed[compare]]
    return out


def first_difference(a: dict, b: dict) -> int | None:
    """The first evaluation step at which two runs' returns differ (None: never)."""
    return next((x["timesteps"] for x, y in zip(periodic(a["curve"]), periodic(b["curve"]))
                 if x["mean_reward"] != y["mean_reward"]), None)


def difference_row(label: str, d: np.ndarray, reps: int) -> str:
    mean, low, high = aggregate_ci(d, metrics.aggregate_mean, reps)
    return (f"| {label} | {len(d)} | {mean:+.1f} [{low:+.1f}, {high:+.1f}] | {d.std(ddof=1):.1f} "
            f"| {int((d < 0).sum())} | {np.median(np.abs(d)):.1f} |")


def report(rows: list[tuple[str, dict, dict, dict]], variant: str, base: str, compare: str,
           reps: int = REPS) -> list[str]:
    lines = [f"# Run-to-run noise: `{variant}` against `{base}`, runs that differ in one "
             "negligible thing", "",
             f"Same seeds, same BC; `{compare}` beside them. Last-3 = mean of the last three "
             "periodic evaluations (normalised). `first diff`: the first evaluation step at "
             f"which `{variant}` and `{base}` differ (earlier ones are bit for bit the same).", "",
             f"| data | seed | gate | first diff | {variant} | {base} | {compare} "
             f"| {variant} - {base} | {compare} - {base} | {compare} - {variant} |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    table = []
    for dataset, v, b, c in rows:
        gate = (c.get("anchor_gate") or {}).get("gate", float("nan"))
        summaries = [per_run(x) for x in (v, b, c)]
        lv, lb, lc = (r["last3"] for r in summaries)
        dips = [r["worst_early_pct"] < 90 for r in summaries]  # the early-dip rule
        table.append((gate, lv - lb, lc - lb, lc - lv, *dips))
        lines.append(f"| {dataset} | {v['seed']} | {gate:.2f} | {first_difference(v, b)} | {lv:.1f} "
                     f"| {lb:.1f} | {lc:.1f} | {lv - lb:+.1f} | {lc - lb:+.1f} | {lc - lv:+.1f} |")
    table = np.array(table)
    lines += ["", "Paired last-3 differences: mean with 95% bootstrap CI, SD, seeds below 0, median "
              "size.", "", "| difference | seeds | mean [95% CI] | SD | below 0 | median abs |",
              "|---|---|---|---|---|---|"]
    dips = ["", "Seeds whose worst evaluation at 10k-50k steps is below 90% of their step 0 "
            "(the early-dip rule):", "", f"| seeds | n | {variant} | {base} | {compare} |",
            "|---|---|---|---|---|"]
    for name, mask in (("all seeds", np.ones(len(table), bool)),
                       (f"gate < {GATE_CUT}", table[:, 0] < GATE_CUT),
                       (f"gate >= {GATE_CUT}", table[:, 0] >= GATE_CUT)):
        if mask.sum() < 2:
            continue
        for column, label in ((1, f"{variant} - {base}"), (2, f"{compare} - {base}"),
                              (3, f"{compare} - {variant}")):
            lines.append(difference_row(f"{name}: {label}", table[mask, column], reps))
        dips.append(f"| {name} | {int(mask.sum())} | " + " | ".join(
            str(int(table[mask, column].sum())) for column in (4, 5, 6)) + " |")
    lines += dips
    lines += ["", f"By measure, all seeds: the SD of `{variant}` - `{base}`, the SD of `{base}` "
              "across these seeds, the share of that variance this negligible change alone makes "
              "(var(diff) / 2 / var(base)), and the seeds a paired comparison needs to see a 3- "
              "or 5-point effect (80% power, two-sided 5%).", "",
              "| measure | SD of the difference | mean difference | SD across seeds | share "
              "| seeds for 3 points | seeds for 5 points |", "|---|---|---|---|---|---|---|"]
    for name, measure in MEASURES.items():
        d = np.array([measure(v) - measure(b) for _, v, b, _ in rows])
        spread = np.array([measure(b) for _, _, b, _ in rows]).std(ddof=1)
        sd = d.std(ddof=1)
        need = lambda effect: int(np.ceil((POWER_Z * sd / effect) ** 2))  # noqa: E731
        lines.append(f"| {name} | {sd:.1f} | {d.mean():+.1f} | {spread:.1f} "
                     f"| {min(1.0, sd ** 2 / 2 / spread ** 2):.0%} | {need(3)} | {need(5)} |")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", type=Path, default=RESULTS / "finetune_replication.jsonl")
    p.add_argument("--variant", default="hybrid-null_anchor")
    p.add_argument("--base", default="hybrid")
    p.add_argument("--compare", default="hybrid-gated_anchor")
    p.add_argument("--out", type=Path, default=RESULTS / "stream_noise_replication.md")
    p.add_argument("--reps", type=int, default=REPS)
    args = p.parse_args()
    rows = triples(args.results, args.variant, args.base, args.compare)
    if len(rows) < 2:
        raise SystemExit(f"error: fewer than 2 seeds with {args.variant}, {args.base} and "
                         f"{args.compare} in {args.results}")
    args.out.write_text("\n".join(report(rows, args.variant, args.base, args.compare, args.reps)) + "\n")
    print(f"{len(rows)} seeds -> {args.out}")


if __name__ == "__main__":
    main()
