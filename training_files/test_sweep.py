"""sweep.py: seeds x grid points as Ray Tune trials of the real pipeline, at a tiny budget.

One local Ray (2 CPUs) serves the in-process sweeps of this module; the interrupted sweep runs
as its own command (its own local Ray), as a user would start it, and is stopped with Ctrl-C
(SIGINT). The run against a head started with `ray start --head` is opt-in (RUN_SLOW=1).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import unittest
from pathlib import Path

from testing_utils import (TRAINING_FILES, IsolatedTestCase, interruptible, write_hparam_file,
                           write_tiny_minari)

SWEEP = TRAINING_FILES / "sweep.py"
PIPELINE_FLAGS = ["--dataset", "mujoco", "--env", "walker2d", "--names", "expert-v0",
                  "--hparam_bc", "Walker2d-v4-bc-large", "--hparam_hybrid", "Walker2d-v4-hybrid",
                  "--hparam_file", "hparam.yml", "--num_bc_epochs", "2", "--save_every_epochs", "1"]
LOG = Path("logs/pipeline_runs.json")
_ENV_BEFORE_RAY = set(os.environ)


def shell_env(**extra: str) -> dict:
    """The environment a user's shell would have: without the RAY_* variables the in-process
    Ray of this module set for itself (its auth mode would make `ray start` look for a token)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_") or k in _ENV_BEFORE_RAY}
    return {**env, **extra}


def setUpModule():
    import ray

    import sweep

    sweep.init_ray(None, num_cpus=2)
    assert ray.is_initialized()


def tearDownModule():
    import ray

    ray.shutdown()


class SweepTestCase(IsolatedTestCase):
    def setUp(self):
        super().setUp()
        write_tiny_minari("mujoco/walker2d/expert-v0", episodes=3, seed=0)
        # 256 online steps, an evaluation every 128: three evaluations per trial
        write_hparam_file(self.work / "hparam.yml")

    def entries(self, sweep_id: str) -> list[dict]:
        runs = json.loads(LOG.read_text()) if LOG.exists() else []
        return [e for e in runs if e.get("sweep_id") == sweep_id]

    def sweep_in_process(self, *args: str) -> int:
        import sweep

        return sweep.main([*args])

    def check_own_seed_bc(self, entry: dict, sweep_id: str) -> None:
        """The trial loaded a BC checkpoint from its seed's folder, trained with its seed."""
        seed = entry["sweep"]["seed"]
        seed_dir = (self.work / "sweeps" / sweep_id / "bc" / f"seed{seed}").resolve()
        self.assertEqual(entry["args"]["seed"], seed)
        self.assertEqual(entry["bc_settings"]["seed"], seed)
        self.assertTrue(Path(entry["bc"]["best_checkpoint"]).resolve().is_relative_to(seed_dir),
                        entry["bc"]["best_checkpoint"])
        stored = json.loads((seed_dir / "mujoco" / "walker2d" / "expert-v0_bc_settings.json").read_text())
        self.assertEqual(stored["seed"], seed)

    def check_outputs_where_the_pipeline_puts_them(self, sweep_id: str) -> None:
        sweep_dir = self.work / "sweeps" / sweep_id
        trial_dirs = [d for d in sweep_dir.iterdir() if d.name.startswith("run_trial")]
        self.assertTrue(trial_dirs)
        for d in trial_dirs:  # Tune's trial folders hold Tune's files only
            for name in ("logs", "tb_test", "bc_checkpoints"):
                self.assertFalse((d / name).exists(), d / name)
            self.assertEqual(list(d.glob("*.zip")), [])
        self.assertTrue(any((self.work / "tb_test" / "hybrid" / "mujoco" / "walker2d").iterdir()))


class LocalSweep(SweepTestCase):
    def test_bad_setting_fails_alone_and_is_logged_failed(self):
        code = self.sweep_in_process(*PIPELINE_FLAGS[:4], *PIPELINE_FLAGS[6:], "--seeds", "3",
                                     "--grid", "names=expert-v0,nosuch-v0", "--sweep_id", "bad")
        self.assertEqual(code, 1)
        entries = {e["sweep"]["grid_point"]["names"]: e for e in self.entries("bad")}
        self.assertEqual(set(entries), {"expert-v0", "nosuch-v0"})
        self.assertEqual(entries["nosuch-v0"]["status"], "failed")
        self.assertIn("nosuch-v0", entries["nosuch-v0"]["error"])
        ok = entries["expert-v0"]
        self.assertEqual(ok["status"], "ok", ok.get("error"))
        self.assertEqual([ev["timesteps"] for ev in ok["evaluations"]], [0, 128, 256])
        self.check_own_seed_bc(ok, "bad")
        self.check_outputs_where_the_pipeline_puts_them("bad")
        summary = json.loads((self.work / "sweeps" / "bad" / "summary.json").read_text())
        by_point = {p["grid_point"]["names"]: p for p in summary["points"]}
        self.assertEqual([r["status"] for r in by_point["nosuch-v0"]["runs"]], ["failed"])
        self.assertIsNone(by_point["nosuch-v0"]["final_test"])
        final = ok["final_test_eval"]["normalized_score"]
        self.assertAlmostEqual(by_point["expert-v0"]["final_test"][0], final)

    def test_bad_flags_are_refused_before_any_trial(self):
        import contextlib
        import io

        for args, message in [(["--grid", "mix_ratio=0,7"], "--mix_ratio: 7 is not between 0 and 1"),
                              (["--grid", "seed=1,2"], "use --seeds"),
                              (["--grid", "no_such_flag=1"], "not a pipeline flag"),
                              (["--seed", "3"], "use --seeds"),
                              (["--hparam_hybrid", "NoSuchEntry"], "NoSuchEntry")]:
            argv = [*PIPELINE_FLAGS, *args, "--sweep_id", "x"]
            if "--hparam_hybrid" in args:
                argv = [*PIPELINE_FLAGS[:8], *PIPELINE_FLAGS[10:], *args, "--sweep_id", "x"]
            err = io.StringIO()
            with contextlib.redirect_stderr(err):
                try:
                    code = self.sweep_in_process(*argv)
                except SystemExit as exc:  # argparse's error exit, as on the command line
                    code = exc.code
            self.assertIn(code, (1, 2), args)
            self.assertIn(message, err.getvalue(), args)
            self.assertNotIn("ERROR: ERROR:", err.getvalue(), args)
            self.assertFalse((self.work / "sweeps" / "x").exists(), args)

    def test_trials_are_checked_with_the_flags_that_override_their_entry(self):
        """batch_size 256 needs two envs of 128 steps: the entry alone breaks the rule, with
        --n_envs 2 (as each trial runs) it holds."""
        import sweep
        from errors import PipelineError

        write_hparam_file(self.work / "hparam.yml", hybrid={"batch_size": 256})
        config = {"grid_keys": [], "sweep_id": "x", "sweep_dir": str(self.work / "sweeps" / "x"),
                  "seed": 0, "base_argv": [*PIPELINE_FLAGS, "--total_timesteps", "512"]}
        with self.assertRaisesRegex(PipelineError, "batch_size 256 exceeds n_steps"):
            sweep.check_trials([config])
        config["base_argv"] += ["--n_envs", "2"]
        self.assertEqual(sweep.check_trials([config]), 512)


class InterruptedSweep(SweepTestCase):
    def test_two_seed_sweep_interrupted_then_resumed(self):
        """Seeds 0 and 1, one at a time; Ctrl-C once seed 0 has logged; --resume runs the rest."""
        proc = subprocess.Popen([sys.executable, str(SWEEP), *PIPELINE_FLAGS, "--seeds", "0", "1",
                                 "--grid", "mix_ratio=0.5", "--max_concurrent", "1",
                                 "--num_cpus", "2", "--sweep_id", "s"],
                                cwd=self.work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, env=shell_env(), preexec_fn=interruptible)
        try:
            deadline = time.time() + 400
            while not [e for e in self.entries("s") if e["status"] == "ok"]:
                self.assertIsNone(proc.poll(), "the sweep ended before it was interrupted")
                self.assertLess(time.time(), deadline)
                time.sleep(0.5)
            proc.send_signal(signal.SIGINT)
            output, _ = proc.communicate(timeout=180)
        finally:
            if proc.poll() is None:
                proc.kill()
        self.assertEqual(proc.returncode, 130, output[-3000:])
        self.assertIn("--resume s", output)
        first = [e for e in self.entries("s") if e["status"] == "ok"]
        self.assertEqual(len(first), 1)

        self.assertEqual(self.sweep_in_process("--resume", "s"), 0)
        entries = self.entries("s")
        last = {e["sweep"]["trial_id"]: e for e in entries}  # a trial's last entry wins
        self.assertEqual(len(last), 2, [(e["sweep"], e["status"]) for e in entries])
        self.assertEqual(sorted(e["sweep"]["seed"] for e in last.values()), [0, 1])
        for entry in last.values():
            self.assertEqual(entry["status"], "ok", entry.get("error"))
            self.assertEqual(entry["args"]["mix_ratio"], 0.5)
            self.assertEqual(entry["args"]["vec_env"], "dummy")  # trials share the cores
            self.check_own_seed_bc(entry, "s")
        # seed 0 ran once; seed 1 at most once before Ctrl-C (logged 'interrupted'), then again
        self.assertLessEqual({e["status"] for e in entries}, {"ok", "interrupted"})
        self.assertEqual(sum(e["sweep"]["seed"] == 0 for e in entries), 1)
        self.check_outputs_where_the_pipeline_puts_them("s")
        sweep_dir = self.work / "sweeps" / "s"
        summary = json.loads((sweep_dir / "summary.json").read_text())
        (point,) = summary["points"]
        self.assertEqual(point["grid_point"], {"mix_ratio": "0.5"})
        self.assertEqual(sorted(r["seed"] for r in point["runs"]), [0, 1])
        iqm, low, high = point["final_test"]
        self.assertLessEqual(low, iqm)
        self.assertLessEqual(iqm, high)
        self.assertIn("| mix_ratio=0.5 | 0, 1 |", (sweep_dir / "summary.md").read_text())
        self.assertEqual((sweep_dir / "curves.png").read_bytes()[:4], b"\x89PNG")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@unittest.skipUnless(os.environ.get("RUN_SLOW") == "1",
                     "starts its own Ray head (`ray start --head`, ~1-2 min); set RUN_SLOW=1")
class SweepOnARayHead(SweepTestCase):
    def test_same_command_with_ray_address(self):
        port = _free_port()
        ray_bin = Path(sys.executable).with_name("ray")
        head = subprocess.Popen(
            [str(ray_bin), "start", "--head", "--block", f"--port={port}", "--num-cpus=2",
             "--include-dashboard=false", f"--temp-dir={self.tmp / 'ray'}"],
            cwd=self.tmp, stdout=open(self.tmp / "head.txt", "w"), stderr=subprocess.STDOUT,
            env=shell_env(PYTHONPATH=str(TRAINING_FILES)))
        try:
            deadline = time.time() + 120
            while "block forever" not in (self.tmp / "head.txt").read_text():
                self.assertIsNone(head.poll(), (self.tmp / "head.txt").read_text()[-3000:])
                self.assertLess(time.time(), deadline, "ray start --head did not come up")
                time.sleep(0.5)
            env = shell_env(RAY_ADDRESS=f"127.0.0.1:{port}")
            proc = subprocess.run([sys.executable, str(SWEEP), *PIPELINE_FLAGS, "--seeds", "0", "1",
                                   "--sweep_id", "c"], cwd=self.work, capture_output=True,
                                  text=True, timeout=600, env=env)
            self.assertEqual(proc.returncode, 0, proc.stdout[-3000:] + proc.stderr[-3000:])
            self.assertIn("Connecting to existing Ray cluster at address: ", proc.stderr)
            self.assertIn(f":{port}", proc.stderr)
        finally:
            head.send_signal(signal.SIGTERM)  # --block: the head takes its processes with it
            try:
                head.wait(timeout=60)
            except subprocess.TimeoutExpired:
                head.kill()
        entries = self.entries("c")
        self.assertEqual(sorted(e["sweep"]["seed"] for e in entries), [0, 1])
        for entry in entries:
            self.assertEqual(entry["status"], "ok", entry.get("error"))
            self.check_own_seed_bc(entry, "c")
        self.check_outputs_where_the_pipeline_puts_them("c")


if __name__ == "__main__":
    unittest.main()
