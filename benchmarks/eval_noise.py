"""How often the early-dip rule flags a policy that did not change: the rule's noise floor.

The fine-tuning goal asks that no periodic evaluation in the first 50k steps falls below 90%
of the seed's BC score (its step-0 evaluation, 10 deterministic episodes on fixed seeds). On
medium-quality data a BC walker falls in some episodes, and which episodes fall is chaotic:
a tiny change of the mean action re-draws them. This script measures that spread without any
fine-tuning. For each benchmark seed it scores the seed's own BC policy on `--blocks` other
10-episode seed blocks (seeds never used by the benchmark) and reports, per seed, the share
`f` of blocks below 90% of that seed's step-0 score. The null model: if fine-tuning left the
policy's quality unchanged but re-drew its falls, each of the 4 evaluations after the critic-
only phase (20k-50k steps) would miss the rule with probability f, so the seed misses with
probability 1 - (1 - f)^4. Summed over seeds: the misses to expect from evaluation noise alone.
Then, per fine-tuned variant, the seeds that missed the rule, each with how many block sds of
its unchanged BC policy its worst early evaluation lies below that policy's block mean (z).

It reads the BC checkpoints the fine-tuning benchmark recorded (finetune.jsonl's
`bc.best_checkpoint`, under --runs_dir) and first re-scores each on its step-0 seeds, which must
reproduce the recorded step-0 score (same policy, same episodes; confirmation.find). One JSON line per seed is
appended to the results file as it finishes; a rerun skips seeds already there.

  python benchmarks/eval_noise.py --seeds 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14
  python benchmarks/eval_noise.py --dataset medium-v1 --seeds $(seq 0 19)   # -> eval_noise_medium-v1.md

`--window all` asks the same of expert data's rule, which covers every evaluation of the run
(no evaluation below 90% of BC): the 20 evaluations after the critic-only phase instead of 4.
Besides the null model it counts directly how many seeds an unchanged policy would fail on:
each run of `moved` consecutive blocks stands for one run's evaluations.

  python benchmarks/eval_noise.py --dataset expert-v0 --window all --blocks 40 \
      --variant hybrid-gated_anchor_offline_critic_only --seeds $(seq 0 29)   # -> eval_noise_expert-v0.md
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "training_files"))

from analyze_finetune import periodic  # noqa: E402  (beside this script)
from confirmation import find  # noqa: E402  (beside this script)
from evaluation import evaluate  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
RUNS = ROOT / "benchmarks" / "runs" / "finetune"  # finetune.py's default --runs_dir
NOISE_SEED_OFFSET = 30_000  # blocks of seed s start at 30,000 + 1,000 s: no benchmark uses them
BLOCK = 10  # episodes per periodic evaluation (the hparam entry's eval_episodes)
EARLY_STEPS = 50_000
# The evaluations a rule looks at (timesteps > 0, up to the window's end); the first of them, at
# 10k steps, falls in the critic-only phase and scores the unchanged BC policy: not "moved".
WINDOWS = {"early": EARLY_STEPS, "all": float("inf")}
RULES = {"early": "early-dip rule", "all": "90% rule over the whole run"}
ENV_ID = "Walker2d-v4"


def recorded_runs(finetune: Path, dataset: str, variant: str) -> dict[int, dict]:
    """seed -> the benchmark's record of `variant` on walker2d `dataset` (last one wins)."""
    runs = {}
    for line in finetune.read_text().splitlines():
        r = json.loads(line)
        if r.get("env", "walker2d") == "walker2d" and r["dataset"] == dataset \
                and r["variant"] == variant:
            runs[r["seed"]] = r
    return runs


def moved_evals(record: dict, window: str) -> int:
    """How many of the run's evaluations in `window` scored a policy fine-tuning had changed
    (early: 4, at 20k-50k steps; all: 20, up to the final one)."""
    return sum(0 < e["timesteps"] <= WINDOWS[window] for e in periodic(record["curve"])) - 1


def rule_of(row: dict) -> tuple[str, int]:
    """A measured row's window and moved evaluations; rows from before --window existed are
    the early rule's, whose 4 evaluations they used."""
    return row.get("window", "early"), row.get("moved_evals", 4)


def measure(seed: int, record: dict, runs_dir: Path, blocks: int, window: str) -> dict:
    from stable_baselines3 import PPO

    ref = record["dataset_info"]["ref_scores"]
    step0 = record["curve"][0]
    found = find(record, record["bc"]["best_checkpoint"], step0, [runs_dir])
    if found is None:
        raise SystemExit(f"seed {seed}: no BC checkpoint under {runs_dir} reproduces the recorded "
                         f"step-0 return {step0['mean_reward']:.1f}: wrong --runs_dir?")
    path, again = found
    policy = PPO.load(path, device="cpu")
    # One evaluation per block, exactly as a periodic one (evaluation.evaluate).
    start = NOISE_SEED_OFFSET + 1_000 * seed
    evals = [evaluate(policy, ENV_ID, {}, BLOCK, start + BLOCK * k, ref) for k in range(blocks)]
    scores = [e["normalized_score"] for e in evals]
    bc = step0["normalized_score"]
    below = float(np.mean([s < 0.9 * bc for s in scores]))
    moved = moved_evals(record, window)
    return {"dataset": record["dataset"], "seed": seed, "window": window, "moved_evals": moved,
            "step0_score": bc,
            "step0_reproduced": again["normalized_score"], "block_episodes": BLOCK,
            "block_seeds": [start, start + blocks * BLOCK - 1], "block_scores": scores,
            "mean_ep_length": float(np.mean([e["mean_ep_length"] for e in evals])),
            "share_below_90pct": below,
            "p_miss_null": 1 - (1 - below) ** moved}


def direct_misses(rows: list[dict]) -> list[int]:
    """Seeds an unchanged policy fails on when each run of `moved_evals` consecutive blocks
    stands for one run's evaluations: one count per such run of blocks."""
    moved = rule_of(rows[0])[1]
    runs = len(rows[0]["block_scores"]) // moved
    return [sum(min(r["block_scores"][k * moved:(k + 1) * moved]) < 0.9 * r["step0_score"]
                for r in rows) for k in range(runs)]


def summary(rows: list[dict]) -> str:
    """Markdown table per seed, and what the null model expects over all seeds."""
    lines = ["| seed | step-0 score | other 10-episode blocks: mean (sd) [min, max] | "
             "share < 90% | P(miss) under the null |", "|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: r["seed"]):
        s = np.array(r["block_scores"])
        lines.append(f"| {r['seed']} | {r['step0_score']:.1f} | {s.mean():.1f} ({s.std(ddof=1):.1f}) "
                     f"[{s.min():.1f}, {s.max():.1f}] | {r['share_below_90pct']:.2f} | "
                     f"{r['p_miss_null']:.2f} |")
    window, moved = rule_of(rows[0])
    p = np.array([r["p_miss_null"] for r in rows])
    sds = np.array([np.std(r["block_scores"], ddof=1) for r in rows])
    lines.append("")
    lines.append(f"{len(rows)} seeds, {len(rows[0]['block_scores'])} blocks each: a 10-episode "
                 f"evaluation's sd is {np.median(sds):.1f} points (median over seeds, range "
                 f"{sds.min():.1f}-{sds.max():.1f}). Under the null, expected seeds missing the "
                 f"{RULES[window]} ({moved} "
                 f"evaluations): {p.sum():.1f} of {len(rows)}; P(no seed misses) = "
                 f"{np.prod(1 - p):.2f}.")
    counts = direct_misses(rows)
    if counts:
        lines.append(f"Counted directly, each {moved} consecutive blocks "
                     f"standing for one run: {', '.join(map(str, counts))} seeds of {len(rows)} miss.")
    return "\n".join(lines)


def beyond_noise(rows: list[dict], finetune: Path, dataset: str, window: str) -> str:
    """Per fine-tuned variant: the seeds that miss the rule of `window`, each with how far its
    worst evaluation in the window lies below its unchanged BC policy's other blocks, in block sds
    (z; beyond -3 the BC policy's own spread does not explain the drop). Only runs that
    started from the same BC policy (the same step-0 score) are counted."""
    noise = {r["seed"]: r for r in rows}
    by_variant: dict[str, dict[int, float]] = {}
    for line in finetune.read_text().splitlines():
        r = json.loads(line)
        if r.get("env", "walker2d") != "walker2d" or r["dataset"] != dataset:
            continue
        curve = periodic(r["curve"])
        n = noise.get(r["seed"])
        if n is None or abs(curve[0]["normalized_score"] - n["step0_score"]) > 1e-6:
            continue
        worst = min(e["normalized_score"] for e in curve if 0 < e["timesteps"] <= WINDOWS[window])
        by_variant.setdefault(r["variant"], {})[r["seed"]] = worst
    lines = ["| variant | seeds | miss the rule: seed (z) | misses with z < -3 |", "|---|---|---|---|"]
    for variant, worst_of in sorted(by_variant.items()):
        z = {}
        for seed, worst in sorted(worst_of.items()):
            if worst < 0.9 * noise[seed]["step0_score"]:
                blocks = np.array(noise[seed]["block_scores"])
                z[seed] = (worst - blocks.mean()) / blocks.std(ddof=1)
        listed = ", ".join(f"{s} ({v:.1f})" for s, v in z.items()) or "none"
        lines.append(f"| {variant} | {len(worst_of)} | {listed} | {sum(v < -3 for v in z.values())} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="medium-v0")
    p.add_argument("--variant", default="hybrid", help="whose recorded BC checkpoints to use")
    p.add_argument("--seeds", type=int, nargs="+", required=True)
    p.add_argument("--blocks", type=int, default=16, help="10-episode blocks per seed")
    p.add_argument("--window", choices=list(WINDOWS), default="early",
                   help="early: the medium goal's first 50k steps; all: expert's whole run")
    p.add_argument("--runs_dir", type=Path, default=RUNS, help="finetune.py's --runs_dir")
    p.add_argument("--finetune_results", type=Path, default=RESULTS / "finetune.jsonl")
    p.add_argument("--results", type=Path, default=RESULTS / "eval_noise.jsonl")
    args = p.parse_args()
    torch.set_num_threads(1)

    runs = recorded_runs(args.finetune_results, args.dataset, args.variant)
    done = {}
    if args.results.exists():
        for line in args.results.read_text().splitlines():
            r = json.loads(line)
            if r["dataset"] == args.dataset and rule_of(r)[0] == args.window:
                done[r["seed"]] = r
    for seed in args.seeds:
        if seed in done:
            continue
        if seed not in runs:
            raise SystemExit(f"no {args.variant} run of {args.dataset} seed {seed} in "
                             f"{args.finetune_results}")
        row = measure(seed, runs[seed], args.runs_dir, args.blocks, args.window)
        with open(args.results, "a") as fh:  # one line per seed: a crash keeps finished seeds
            fh.write(json.dumps(row) + "\n")
        done[seed] = row
        print(f"seed {seed}: step-0 {row['step0_score']:.1f}, share of blocks < 90% "
              f"{row['share_below_90pct']:.2f}", flush=True)
    rows = [done[s] for s in args.seeds]
    table = summary(rows) + "\n\n" + beyond_noise(rows, args.finetune_results, args.dataset, args.window)
    # medium-v0's table keeps the name it was first published under; other data get their own
    md = (args.results.with_suffix(".md") if args.dataset == "medium-v0"
          else args.results.with_name(f"{args.results.stem}_{args.dataset}.md"))
    md.write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
