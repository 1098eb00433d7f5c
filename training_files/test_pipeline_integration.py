"""End-to-end: the real entry script, as a user runs it, on a tiny dataset in a temp folder.

Each run generates nothing by hand: a tiny policy rolls out real Walker2d-v4 episodes into a
real Minari dataset, then the pipeline trains BC, selects, fine-tunes HybridPPO for a few
hundred steps and logs. `RUN_SLOW=1` adds QUICKSTART's minimal command at its real budget.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import unittest
from pathlib import Path

from testing_utils import (ENTRY_SCRIPT, REPO_ROOT, IsolatedTestCase, interruptible,
                           write_hparam_file, write_tiny_minari)

BASE = ["--dataset", "mujoco", "--env", "walker2d", "--hparam_bc", "Walker2d-v4-bc-large",
        "--hparam_hybrid", "Walker2d-v4-hybrid", "--seed", "42", "--no_progress"]
CKPT_DIR = Path("bc_checkpoints/mujoco/walker2d")


class PipelineEndToEnd(IsolatedTestCase):
    def setUp(self):
        super().setUp()
        write_tiny_minari("mujoco/walker2d/expert-v0", episodes=4, seed=0)
        self.hparams = write_hparam_file(self.work / "hparam.yml")
        self.small = ["--hparam_file", str(self.hparams), "--num_bc_epochs", "3",
                      "--save_every_epochs", "2"]

    def run_ok(self, *args):
        proc = self.run_cli(*BASE, *self.small, *args)
        self.assertEqual(proc.returncode, 0, proc.stdout[-3000:] + proc.stderr[-3000:])
        self.assertNotIn("Traceback", proc.stderr)
        return proc

    def log(self):
        return json.loads((self.work / "logs" / "pipeline_runs.json").read_text())

    def test_minimal_then_skip_bc_then_force_retrain(self):
        first = self.run_ok("--names", "expert-v0", "--save_file", "first.zip")
        self.assertIn("BC checkpoint dir not found: bc_checkpoints/mujoco/walker2d", first.stdout)
        csv_path = CKPT_DIR / "expert-v0_metrics.csv"
        rows = csv_path.read_text().splitlines()
        self.assertEqual(rows[0], "epoch,train_loss,val_loss")
        self.assertEqual([r.split(",")[0] for r in rows[1:]], ["2", "3"])
        zips = sorted(p.name for p in CKPT_DIR.glob("*.zip"))
        self.assertEqual(len(zips), 2)
        self.assertTrue(all(z.startswith("expert-v0_epoch") and " with avg loss " in z for z in zips))
        self.assertTrue((self.work / "first.zip").exists())
        self.assertTrue(list((self.work / "tb_test/hybrid/mujoco/walker2d/first").glob("events.*")))

        entry = self.log()[0]
        self.assertEqual(entry["status"], "ok")
        for key in ("time", "argv", "args", "config", "dataset", "bc", "hybrid_save_file",
                    "final_eval", "device", "versions", "git_commit", "wall_time_s", "status"):
            self.assertIn(key, entry)
        self.assertEqual(entry["bc"]["epochs"], 3)
        self.assertEqual(entry["dataset"]["sources"][0]["source"], "minari")
        self.assertIsNotNone(entry["final_eval"]["normalized_score"])
        best = entry["bc"]["best_checkpoint"]
        self.assertIn(f"with avg loss {entry['bc']['val_loss']:.4f}.zip", best)

        second = self.run_ok("--names", "expert-v0", "--save_file", "second.zip", "--skip_bc")
        self.assertIn("--skip_bc: reusing", second.stdout)
        self.assertEqual(csv_path.read_text().splitlines(), rows, "skip_bc must not retrain")
        self.assertEqual(self.log()[1]["bc"]["best_checkpoint"], best)
        self.assertFalse(self.log()[1]["bc_trained"])

        third = self.run_ok("--names", "expert-v0", "--save_file", "third.zip")
        self.assertIn("stdin is not a terminal, reusing", third.stdout)

        fourth = self.run_ok("--names", "expert-v0", "--save_file", "fourth.zip",
                             "--force_bc_retrain", "--num_bc_epochs", "2")
        self.assertIn("--force_bc_retrain", fourth.stdout)
        self.assertEqual([r.split(",")[0] for r in csv_path.read_text().splitlines()[1:]], ["2"])
        self.assertTrue(list((CKPT_DIR / "superseded").glob("expert-v0_*/expert-v0_metrics.csv")))
        self.assertEqual([e["status"] for e in self.log()], ["ok"] * 4)
        self.assertTrue(self.log()[3]["bc_trained"])

    def test_full_command_two_names_custom_flags(self):
        write_tiny_minari("mujoco/walker2d/expert-v1", episodes=3, seed=1)
        self.run_ok("--names", "expert-v0", "expert-v1", "--bc_batch_size", "64",
                    "--bc_coeff", "0.01", "--warm_start_steps", "20", "--mix_ratio", "0.3",
                    "--rho_bar", "1.5", "--c_bar", "0.9", "--log_std_subtract", "0.2",
                    "--device", "cpu", "--save_file", "full.zip")
        self.assertTrue((CKPT_DIR / "expert-v0+expert-v1_metrics.csv").exists())
        entry = self.log()[0]
        self.assertEqual(entry["dataset"]["episodes"], 7)
        self.assertEqual(entry["args"]["mix_ratio"], 0.3)
        self.assertEqual(entry["warmup"]["warmup/grad_steps"], 20)

    def test_wandb_offline(self):
        self.run_ok("--names", "expert-v0", "--save_file", "wb.zip", "--wandb")
        runs = list(Path(os.environ["WANDB_DIR"]).glob("wandb/offline-run-*"))
        self.assertTrue(runs, "an offline W&B run folder is written")
        self.assertEqual(self.log()[0]["wandb_run"]["mode"], "offline")

    def test_ctrl_c_saves_and_logs_interrupted(self):
        proc = subprocess.Popen(
            [sys.executable, str(ENTRY_SCRIPT), *BASE, *self.small, "--names", "expert-v0",
             "--save_file", "stopped.zip", "--total_timesteps", "1000000"],
            cwd=self.work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            stdin=subprocess.DEVNULL, preexec_fn=interruptible)
        seen = []
        deadline = time.time() + 300
        for line in proc.stdout:
            seen.append(line)
            if "eval @ 128 steps" in line or time.time() > deadline:
                break
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
        self.assertEqual(proc.returncode, 130, "".join(seen) + out)
        self.assertNotIn("Traceback", out)
        self.assertTrue((self.work / "stopped.zip").exists())
        entry = self.log()[0]
        self.assertEqual(entry["status"], "interrupted")
        self.assertLess(entry["hybrid_timesteps"], 1_000_000)

    def test_missing_data_is_one_clear_error(self):
        proc = self.run_cli(*BASE, *self.small, "--names", "medium-v3")
        self.assertEqual(proc.returncode, 1)
        self.assertNotIn("Traceback", proc.stderr)
        self.assertIn("Dataset mujoco/walker2d/medium-v3 not found", proc.stderr)
        self.assertEqual(len(proc.stderr.strip().splitlines()), 1, proc.stderr)
        self.assertEqual(self.log()[0]["status"], "failed")


@unittest.skipUnless(os.environ.get("RUN_SLOW") == "1",
                     "slow: QUICKSTART minimal command at full budget (~20 min); set RUN_SLOW=1")
class QuickStartFullBudget(IsolatedTestCase):
    def test_minimal_command_verbatim(self):
        proc = subprocess.run(
            [sys.executable, "training_files/train_hybrid_pipeline.py", "--dataset", "mujoco",
             "--env", "walker2d", "--names", "expert-v0", "--hparam_bc", "Walker2d-v4-bc-large",
             "--hparam_hybrid", "Walker2d-v4-hybrid", "--seed", "42",
             "--log_file", str(self.work / "logs/pipeline_runs.json"),
             "--bc_checkpoint_dir", str(self.work / "bc_checkpoints"),
             "--save_file", str(self.work / "quickstart.zip")],
            cwd=REPO_ROOT, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
        entry = json.loads((self.work / "logs/pipeline_runs.json").read_text())[-1]
        self.assertEqual(entry["status"], "ok")
        self.assertGreaterEqual(entry["hybrid_timesteps"], 200_000)


def load_tests(loader, standard_tests, pattern):
    """`python test_pipeline_integration.py` also runs test_reliability.py (pytest collects
    that file on its own and ignores load_tests)."""
    standard_tests.addTests(loader.loadTestsFromName("test_reliability"))
    return standard_tests


if __name__ == "__main__":
    unittest.main()
