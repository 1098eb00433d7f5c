"""benchmarks/eval_noise.py, the rules' noise floor: which evaluations a rule looks at, the direct
count of misses, and that the committed tables come from the committed measurements."""

from __future__ import annotations

import json
import unittest

from testing_utils import REPO_ROOT, load_benchmark

RESULTS = REPO_ROOT / "benchmarks" / "results"
eval_noise = load_benchmark("eval_noise")


def _record(final_step: int = 200_704) -> dict:
    """A run record's curve as the benchmark writes it: step 0, every 10k steps, the final one."""
    steps = [0, *range(10_000, 200_001, 10_000), final_step]
    return {"curve": [{"timesteps": t, "normalized_score": 50.0} for t in steps]}


class MovedEvaluationsTest(unittest.TestCase):
    def test_early_window_counts_20k_to_50k(self):
        self.assertEqual(eval_noise.moved_evals(_record(), "early"), 4)

    def test_whole_run_counts_every_evaluation_after_the_critic_only_phase(self):
        self.assertEqual(eval_noise.moved_evals(_record(), "all"), 20)

    def test_noted_evaluations_are_not_counted(self):
        record = _record()
        record["curve"].append({"timesteps": 200_704, "normalized_score": 1.0, "note": "rollback"})
        self.assertEqual(eval_noise.moved_evals(record, "all"), 20)


class DirectMissesTest(unittest.TestCase):
    def test_each_run_of_blocks_is_one_runs_evaluations(self):
        rows = [  # step-0 100: a block below 90 is a miss
            {"step0_score": 100.0, "moved_evals": 2, "block_scores": [95.0, 85.0, 95.0, 99.0]},
            {"step0_score": 100.0, "moved_evals": 2, "block_scores": [95.0, 96.0, 80.0, 99.0]},
            {"step0_score": 50.0, "moved_evals": 2, "block_scores": [44.0, 46.0, 46.0, 45.5]},
        ]
        self.assertEqual(eval_noise.direct_misses(rows), [2, 1])

    def test_rows_from_before_the_window_option_are_the_early_rules(self):
        row = {"step0_score": 10.0, "block_scores": [9.5] * 7 + [8.0]}  # 4 evaluations per run
        self.assertEqual(eval_noise.direct_misses([row]), [0, 1])


class CommittedTablesTest(unittest.TestCase):
    """The published noise-floor tables regenerate from the committed measurements."""

    def _summary_of(self, dataset: str, markdown: str) -> None:
        rows = [json.loads(line) for line in (RESULTS / "eval_noise.jsonl").read_text().splitlines()]
        rows = [r for r in rows if r["dataset"] == dataset]
        self.assertTrue(rows, f"no {dataset} rows in eval_noise.jsonl")
        published = (RESULTS / markdown).read_text()
        self.assertIn(eval_noise.summary(sorted(rows, key=lambda r: r["seed"])), published)

    def test_medium_v0(self):
        self._summary_of("medium-v0", "eval_noise.md")

    def test_medium_v1(self):
        self._summary_of("medium-v1", "eval_noise_medium-v1.md")

    def test_expert_v0_whole_run(self):
        self._summary_of("expert-v0", "eval_noise_expert-v0.md")


if __name__ == "__main__":
    unittest.main()
