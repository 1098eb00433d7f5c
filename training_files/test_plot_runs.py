"""Tests for plot_runs: the step axis is readable (50k, 100k, ... rather than 100000125000...).

Run with ``python test_plot_runs.py`` or ``python -m pytest -q test_plot_runs.py``.
"""

from __future__ import annotations

import csv
import sys
import unittest
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import matplotlib.pyplot as plt  # noqa: E402

from plot_runs import plot_runs  # noqa: E402
from testing_utils import IsolatedTestCase  # noqa: E402


def _write_csv(path: Path, header: list[str], rows: list[list[float]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)


def _visible_tick_labels(ax) -> list[str]:
    low, high = ax.get_xlim()
    return [label.get_text() for tick, label in zip(ax.get_xticks(), ax.get_xticklabels())
            if low <= tick <= high]


class StepAxisTest(IsolatedTestCase):
    def test_step_ticks_are_short_engineering_labels(self):
        run = self.tmp / "run"
        _write_csv(run / "eval.csv", ["timesteps", "mean_reward", "normalized_score"],
                   [[t, 3000.0, 50 + t / 10_000] for t in range(0, 200_001, 10_000)])
        _write_csv(run / "progress.csv", ["time/total_timesteps", "rollout/ep_rew_mean"],
                   [[t, 1000.0 + t / 1000] for t in range(2048, 1_250_001, 40_960)])
        out = plot_runs([run], self.tmp / "runs.png")
        self.assertGreater(out.stat().st_size, 0)
        fig = plt.gcf()  # plot_runs leaves its figure open
        fig.canvas.draw()
        eval_labels = _visible_tick_labels(fig.axes[0])
        rollout_labels = _visible_tick_labels(fig.axes[1])
        plt.close(fig)
        self.assertIn("100k", eval_labels)
        self.assertIn("1M", rollout_labels)
        for label in eval_labels + rollout_labels:
            self.assertLessEqual(len(label), 4, f"step label {label!r} is too long to sit "
                                                "beside its neighbours")


if __name__ == "__main__":
    unittest.main()
