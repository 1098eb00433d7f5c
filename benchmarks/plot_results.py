"""Table and plots from benchmarks/results/learning_curves.jsonl (the README quotes both).

  python benchmarks/plot_results.py
writes benchmarks/results/learning_curves_<dataset>.png, bc_loss_<dataset>.png and
benchmarks/results/summary.md.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "training_files"))
RESULTS = REPO / "benchmarks" / "results"
LABELS = {"bc": "(a) BC alone", "ppo_scratch": "(b) PPO from scratch",
          "bc_ppo": "(c) PPO from BC (mix 0)", "hybrid": "(d) HybridPPO (defaults)"}


def load(path: Path = RESULTS / "learning_curves.jsonl") -> list[dict]:
    runs = []
    for line in path.read_text().splitlines():
        try:
            runs.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return runs


def curves(runs: list[dict]) -> dict:
    """(dataset, variant) -> (timesteps, scores[seed, t]) on the timesteps all seeds share."""
    grouped = defaultdict(list)
    for r in runs:
        grouped[(r["dataset"], r["variant"])].append(r)
    out = {}
    for key, group in grouped.items():
        common = sorted(set.intersection(*[{e["timesteps"] for e in r["curve"]} for r in group]))
        scores = np.array([[next(e["normalized_score"] for e in r["curve"] if e["timesteps"] == t)
                            for t in common] for r in group])
        out[key] = (np.array(common), scores, [r["seed"] for r in group], group)
    return out


def summary_rows(data: dict, dataset: str) -> list[str]:
    bc = data.get((dataset, "bc"))
    bc_by_seed = {s: row[0] for s, row in zip(bc[2], bc[1])} if bc else {}
    rows = ["| variant | seeds | final eval (200k) | mean of last 3 evals (180k-200k) | best eval | worst eval in first 50k steps, % of BC | wall time per run |",
            "|---|---|---|---|---|---|---|"]
    for variant in LABELS:
        if (dataset, variant) not in data:
            continue
        steps, scores, seeds, group = data[(dataset, variant)]
        final = scores[:, -1]
        last3 = scores[:, -3:].mean(axis=1)
        best = scores.max(axis=1)
        if variant in ("bc_ppo", "hybrid") and bc_by_seed:
            early = steps <= 50_000
            worst = [100 * scores[i, early].min() / bc_by_seed[s] for i, s in enumerate(seeds) if s in bc_by_seed]
            worst_txt = f"{np.mean(worst):.0f}% (min {np.min(worst):.0f}%)" if worst else "-"
        else:
            worst_txt = "-"
        wall = np.mean([r.get("wall_time_s", 0) for r in group]) / 60
        rows.append(f"| {LABELS[variant]} | {len(seeds)} | {final.mean():.1f} +- {final.std():.1f} | "
                    f"{last3.mean():.1f} +- {last3.std():.1f} | {best.mean():.1f} | {worst_txt} | "
                    f"{wall:.1f} min |")
    return rows


def plot(data: dict, dataset: str) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for variant, label in LABELS.items():
        if (dataset, variant) not in data:
            continue
        steps, scores, _, _ = data[(dataset, variant)]
        mean, std = scores.mean(0), scores.std(0)
        if variant == "bc":
            ax.axhline(mean[0], color="k", ls="--", label=f"{label} ({len(scores)} seeds)")
            ax.axhspan(mean[0] - std[0], mean[0] + std[0], color="k", alpha=0.08)
            continue
        ax.plot(steps, mean, marker="o", ms=3, label=f"{label} ({len(scores)} seeds)")
        ax.fill_between(steps, mean - std, mean + std, alpha=0.2)
    ax.set_xlabel("online env steps")
    ax.set_ylabel("D4RL-normalised score")
    ax.set_title(f"walker2d {dataset} (bundled data), mean +- std over seeds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = RESULTS / f"learning_curves_{dataset}.png"
    fig.savefig(out, dpi=110)
    return out


def plot_bc_losses(dataset: str) -> Path | None:
    from plot_runs import plot_bc

    csv_path = REPO / "benchmarks" / "runs" / "bc" / "seed0" / "mujoco" / "walker2d" / f"{dataset}_metrics.csv"
    return plot_bc(csv_path, RESULTS / f"bc_loss_{dataset}.png") if csv_path.exists() else None


def main() -> None:
    runs = load()
    data = curves(runs)
    lines = []
    for dataset in sorted({d for d, _ in data}):
        lines += [f"### walker2d {dataset}", "", *summary_rows(data, dataset), ""]
        lines.append(f"![learning curves](learning_curves_{dataset}.png)")
        plot(data, dataset)
        if plot_bc_losses(dataset):
            lines.append(f"![BC losses](bc_loss_{dataset}.png)")
        lines.append("")
    (RESULTS / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
