"""Draw a run's curves so you can look instead of read.

  python training_files/plot_runs.py tb_test/hybrid/mujoco/walker2d/<save_file> [...] --out runs.png
  python training_files/plot_runs.py --bc_csv "bc_checkpoints/mujoco/walker2d/expert-v0_metrics.csv"

A hybrid run folder holds eval.csv (evaluations) and progress.csv (SB3's logger); each given
folder becomes one line per panel. A BC metrics CSV gives train/val loss over epochs.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import EngFormatter  # noqa: E402

PANELS = [("eval.csv", "timesteps", "normalized_score", "eval: normalised score"),
          ("progress.csv", "time/total_timesteps", "rollout/ep_rew_mean", "rollout: episode return"),
          ("progress.csv", "time/total_timesteps", "train/value_loss", "train: value loss"),
          ("progress.csv", "time/total_timesteps", "ood/weight_mean", "offline: mean OOD weight")]


def read_columns(path: Path, x: str, y: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    if not path.exists():
        return xs, ys
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            if row.get("note"):
                continue  # the offline-improvement gate's candidate: not a point of the curve
            try:
                point = float(row[x]), float(row[y])
            except (KeyError, TypeError, ValueError):
                continue  # a column absent from this run or an empty cell
            xs.append(point[0])
            ys.append(point[1])
    return xs, ys


def plot_runs(run_dirs: list[Path], out: Path) -> Path:
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    for ax, (file, x, y, title) in zip(axes.flat, PANELS):
        for run in run_dirs:
            xs, ys = read_columns(run / file, x, y)
            if xs:
                ax.plot(xs, ys, marker="o" if file == "eval.csv" else None, ms=3, label=run.name)
        ax.set_title(title)
        ax.set_xlabel("online env steps")
        # 50k, 100k, ...: full step counts (100000125000...) run into each other.
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    return out


def plot_bc(csv_path: Path, out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4))
    for column in ("train_loss", "val_loss"):
        xs, ys = read_columns(csv_path, "epoch", column)
        ax.plot(xs, ys, marker="o", ms=3, label=column)
    ax.set_xlabel("epoch")
    ax.set_ylabel("Gaussian NLL")
    ax.set_title(csv_path.name)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="*", type=Path, help="hybrid run folders (tb_test/hybrid/...)")
    p.add_argument("--bc_csv", type=Path, help="a BC <name>_metrics.csv")
    p.add_argument("--out", type=Path, default=None, help="PNG to write (default: runs.png / bc_loss.png)")
    args = p.parse_args(argv)
    if not args.runs and not args.bc_csv:
        p.error("give run folders and/or --bc_csv")
    missing = [r for r in args.runs if not r.is_dir()] + (
        [args.bc_csv] if args.bc_csv and not args.bc_csv.exists() else [])
    if missing:
        print(f"ERROR: not found: {', '.join(map(str, missing))}", file=sys.stderr)
        return 1
    if args.runs:
        print(f"Wrote {plot_runs(args.runs, args.out or Path('runs.png'))}")
    if args.bc_csv:
        out = args.out.with_name(args.out.stem + "_bc.png") if args.out and args.runs else args.out
        print(f"Wrote {plot_bc(args.bc_csv, out or Path('bc_loss.png'))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
