"""benchmarks/gait.py, falls against gait: how evaluations split into episode length and reward per
step, and that the committed table comes from the committed run records."""

from __future__ import annotations

import unittest

from testing_utils import REPO_ROOT, load_benchmark

RESULTS = REPO_ROOT / "benchmarks" / "results"
gait = load_benchmark("gait")


def _evaluation(step: int, mean_reward: float, mean_ep_length: float, episodes: int = 10) -> dict:
    return {"timesteps": step, "mean_reward": mean_reward, "mean_ep_length": mean_ep_length,
            "episodes": episodes, "normalized_score": mean_reward / 50}


class GaitTest(unittest.TestCase):
    def test_reward_per_step_weighs_episodes_by_their_length(self):
        short = _evaluation(0, 600.0, 200.0)  # 3 per step, falls early
        full = _evaluation(10_000, 2000.0, 1000.0)  # 2 per step, never falls
        length, rate = gait.gait([short, full])
        self.assertAlmostEqual(length, 600.0)
        self.assertAlmostEqual(rate, 2600.0 / 1200.0)  # not the mean of 3 and 2
        self.assertAlmostEqual(gait.gait([short, _evaluation(0, 600.0, 200.0, episodes=30)])[1], 3.0)

    def test_the_no_fall_score_is_the_time_limit_at_that_rate(self):
        self.assertAlmostEqual(gait.scored(3.0, 1000, (0.0, 3000.0)), 100.0)
        self.assertAlmostEqual(gait.scored(2.0, 1000, (1000.0, 2000.0)), 100.0)

    def test_a_run_against_the_baseline_pairs_seeds(self):
        def run(seed, rate, length):
            return {"seed": seed, "curve": [_evaluation(0, 1.0, 1.0)]
                    + [_evaluation(s, rate * length, length) for s in (10_000, 20_000, 30_000)]}
        mine = [run(0, 3.0, 900.0), run(1, 3.0, 800.0), run(2, 9.0, 10.0)]
        base = [run(0, 3.5, 700.0), run(1, 3.5, 700.0)]  # seed 2 has no pair
        seeds, length, rate, _ = gait.against_baseline(mine, base).split(" | ")
        self.assertEqual(seeds, "2")
        self.assertTrue(length.startswith("150 ± "), length)
        self.assertTrue(rate.startswith("-0.500 ± 0.000"), rate)


class PhaseTest(unittest.TestCase):
    def test_the_final_evaluation_belongs_to_the_runs_last_phase(self):
        curve = [_evaluation(0, 100.0, 100.0), _evaluation(50_000, 300.0, 100.0),
                 _evaluation(200_000, 200.0, 100.0), _evaluation(200_704, 400.0, 100.0)]
        run = {"seed": 0, "timesteps": 200_000, "curve": curve,
               "dataset_info": {"ref_scores": [0.0, 1000.0]}}
        cells, _ = gait.table([run], 1000)
        phases = dict(zip([(0, 0), *gait.PHASES], cells))
        self.assertTrue(phases[(100_001, 200_000)].endswith("/ 3.00"), phases)  # 200k and 200,704
        self.assertEqual(phases[(200_001, 500_000)], "-")  # not a phase this run reaches


class CommittedTableTest(unittest.TestCase):
    def test_gait_md_regenerates_from_the_committed_records(self):
        files = [RESULTS / name for name in gait.FILES]
        self.assertTrue(all(f.exists() for f in files), [f.name for f in files if not f.exists()])
        lines = gait.report(files, set(gait.VARIANTS), gait.MIN_SEEDS)
        self.assertEqual("\n".join(lines) + "\n", (RESULTS / "gait.md").read_text())


if __name__ == "__main__":
    unittest.main()
