"""Real commands in the situations of issue 13: a terminal prompt on a real pseudo-terminal,
three pipelines at once on the same names, output locations that break during a run, Ctrl-C
while a dataset is generated. Each runs the real entry script on tiny data in a temp folder.
"""

from __future__ import annotations

import json
import os
import pty
import select
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import unittest
from pathlib import Path

from testing_utils import (ENTRY_SCRIPT, TRAINING_FILES, IsolatedTestCase, interruptible,
                           save_tiny_policy, write_hparam_file, write_tiny_minari)

BASE = ["--dataset", "mujoco", "--env", "walker2d", "--hparam_bc", "Walker2d-v4-bc-large",
        "--hparam_hybrid", "Walker2d-v4-hybrid", "--no_progress"]
PROMPT = b"[r]euse or re[t]rain?"
CKPT_DIR = Path("bc_checkpoints/mujoco/walker2d")


class _Case(IsolatedTestCase):
    def setUp(self):
        super().setUp()
        self.hparams = write_hparam_file(self.work / "hparam.yml")
        self.small = ["--hparam_file", str(self.hparams), "--num_bc_epochs", "2",
                      "--save_every_epochs", "1"]
        os.environ["PYTHONUNBUFFERED"] = "1"  # see each line as it is printed
        (self.tmp / "tmpdir").mkdir()
        os.environ["TMPDIR"] = str(self.tmp / "tmpdir")  # fallbacks land in the test's folder
        self.addCleanup(os.environ.pop, "PYTHONUNBUFFERED", None)
        self.addCleanup(os.environ.pop, "TMPDIR", None)

    def log(self, path: str = "logs/pipeline_runs.json") -> list[dict]:
        return json.loads((self.work / path).read_text())

    def assertOk(self, proc):
        self.assertEqual(proc.returncode, 0, proc.stdout[-3000:] + proc.stderr[-3000:])
        self.assertNotIn("Traceback", proc.stderr)

    def assertOneLine(self, stderr: str, code: int, rc: int) -> str:
        """The outcome is one line, the last on stderr (progress bars and library warnings
        of the work done before may precede it)."""
        self.assertEqual(rc, code, stderr)
        self.assertNotIn("Traceback", stderr)
        lines = stderr.strip().splitlines()
        outcome = [ln for ln in lines if ln.startswith(("ERROR", "Interrupted", "Pipeline failed"))]
        self.assertEqual(outcome, lines[-1:], stderr)
        return lines[-1]


class PromptOnARealTerminal(_Case):
    """stdin is a pseudo-terminal: the script asks; Ctrl-D, answers, differing settings."""

    def run_on_pty(self, *args: str, keys: bytes, timeout: float = 300):
        master, slave = pty.openpty()
        proc = subprocess.Popen([sys.executable, str(ENTRY_SCRIPT), *BASE, *self.small, *args],
                                cwd=self.work, stdin=slave, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=os.environ.copy())
        os.close(slave)
        out, deadline = b"", time.time() + timeout
        try:
            while PROMPT not in out:
                ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.time()))
                chunk = os.read(proc.stdout.fileno(), 65536) if ready else b""
                if not chunk:
                    self.fail(f"no prompt; output so far: {out.decode()[-2000:]}")
                out += chunk
            os.write(master, keys)
            rest, err = proc.communicate(timeout=timeout)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            os.close(master)
        return proc.returncode, (out + rest).decode(), err.decode()

    def test_prompt_ctrl_d_answers_and_other_settings(self):
        write_tiny_minari("mujoco/walker2d/expert-v0", episodes=3, seed=0)
        first = self.run_cli(*BASE, *self.small, "--names", "expert-v0", "--seed", "42",
                             "--save_file", "first.zip")
        self.assertOk(first)
        self.assertTrue((CKPT_DIR / "expert-v0_bc_settings.json").exists())

        # Ctrl-D at the prompt: one line, exit 1, logged as failed, nothing retrained.
        rc, out, err = self.run_on_pty("--names", "expert-v0", "--seed", "42",
                                       "--save_file", "second.zip", keys=b"\x04")
        line = self.assertOneLine(err, 1, rc)
        self.assertIn("No answer at the reuse/retrain prompt", line)
        self.assertNotIn("other settings", out)
        self.assertEqual(self.log()[-1]["status"], "failed")

        # Other settings on a terminal: the difference is shown before the question.
        rc, out, err = self.run_on_pty("--names", "expert-v0", "--seed", "7",
                                       "--save_file", "third.zip", keys=b"\x04")
        self.assertOneLine(err, 1, rc)
        self.assertIn("trained with other settings", out)
        self.assertIn("seed: 42 -> 7", out)
        self.assertLess(out.index("seed: 42 -> 7"), out.index(PROMPT.decode()))

        # Answering r reuses them, and the log says so with the difference.
        rows_before = (CKPT_DIR / "expert-v0_metrics.csv").read_text()
        rc, out, err = self.run_on_pty("--names", "expert-v0", "--seed", "7",
                                       "--save_file", "fourth.zip", keys=b"r\n")
        self.assertEqual(rc, 0, out[-2000:] + err[-2000:])
        entry = self.log()[-1]
        self.assertEqual(entry["status"], "ok")
        self.assertFalse(entry["bc_trained"])
        self.assertEqual(entry["bc_decision"]["reason"], "reuse (answered at the prompt)")
        self.assertIn("seed: 42 -> 7", entry["bc_decision"]["differences"])
        self.assertEqual((CKPT_DIR / "expert-v0_metrics.csv").read_text(), rows_before)

        # Without a terminal the same request retrains, archives, and says why.
        proc = self.run_cli(*BASE, *self.small, "--names", "expert-v0", "--seed", "7",
                            "--save_file", "fifth.zip")
        self.assertOk(proc)
        self.assertIn("trained with other settings (seed: 42 -> 7)", proc.stdout)
        entry = self.log()[-1]
        self.assertTrue(entry["bc_trained"])
        self.assertEqual(entry["bc_settings"]["seed"], 7)
        self.assertTrue(list((CKPT_DIR / "superseded").glob("expert-v0_*/expert-v0_bc_settings.json")))
        stored = json.loads((CKPT_DIR / "expert-v0_bc_settings.json").read_text())
        self.assertEqual(stored["seed"], 7)
        # ... after which the same request reuses.
        proc = self.run_cli(*BASE, *self.small, "--names", "expert-v0", "--seed", "7",
                            "--save_file", "sixth.zip")
        self.assertOk(proc)
        self.assertIn("stdin is not a terminal, reusing", proc.stdout)
        self.assertFalse(self.log()[-1]["bc_trained"])


# A real CLI process whose bundled expert-v0 recipe is shrunk to 2 episodes (config, not
# logic: the committed expert policy rolls them out as it would 100).
_TINY_GENERATION = textwrap.dedent("""
    import dataclasses, sys
    sys.path.insert(0, {training_files!r})
    import collect_dataset
    key = ("mujoco", "walker2d", "expert-v0")
    collect_dataset.BUNDLED[key] = dataclasses.replace(collect_dataset.BUNDLED[key], episodes=2)
    import train_hybrid_pipeline
    sys.exit(train_hybrid_pipeline.main(sys.argv[1:]))
""").format(training_files=str(TRAINING_FILES))


class ConcurrentRuns(_Case):
    def test_three_pipelines_on_the_same_names(self):
        procs = [subprocess.Popen([sys.executable, "-c", _TINY_GENERATION, *BASE, *self.small,
                                   "--names", "expert-v0", "--seed", "42",
                                   "--total_timesteps", "128", "--save_file", f"run{i}.zip"],
                                  cwd=self.work, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
                                  env=os.environ.copy())
                 for i in range(3)]
        results = [(p, *p.communicate(timeout=900)) for p in procs]
        for proc, out, err in results:
            self.assertEqual(proc.returncode, 0, out[-3000:] + err[-3000:])
            self.assertNotIn("Traceback", err)
        outs = "".join(out for _, out, _ in results)
        self.assertEqual(outs.count("GENERATING offline dataset mujoco/walker2d/expert-v0"), 1)
        runs = self.log()
        self.assertEqual(len(runs), 3)
        self.assertEqual([r["status"] for r in runs], ["ok"] * 3)
        sources = sorted(r["dataset"]["sources"][0]["source"] for r in runs)
        self.assertEqual(sources, ["generated", "minari", "minari"])
        # BC trained once; the CSV has exactly that run's rows, every checkpoint it names exists.
        self.assertEqual(sum(r["bc_trained"] for r in runs), 1)
        rows = (CKPT_DIR / "expert-v0_metrics.csv").read_text().splitlines()
        self.assertEqual([r.split(",")[0] for r in rows[1:]], ["1", "2"])
        self.assertEqual(len({r["bc"]["best_checkpoint"] for r in runs}), 1)
        self.assertEqual(len(list(CKPT_DIR.glob("expert-v0_epoch*.zip"))), 2)
        self.assertFalse((CKPT_DIR / "superseded").exists())
        for i in range(3):
            self.assertTrue((self.work / f"run{i}.zip").exists())


class LateFailures(_Case):
    def test_save_and_log_locations_broken_during_the_run_lose_nothing(self):
        """Both checked at the start; then the folders are replaced by files mid-run."""
        write_tiny_minari("mujoco/walker2d/expert-v0", episodes=3, seed=0)
        (self.work / "out").mkdir()
        (self.work / "runlogs").mkdir()
        proc = subprocess.Popen(
            [sys.executable, str(ENTRY_SCRIPT), *BASE, *self.small, "--names", "expert-v0",
             "--seed", "42", "--save_file", "out/model.zip", "--log_file", "runlogs/runs.json",
             "--total_timesteps", "2048"],
            cwd=self.work, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            stdin=subprocess.DEVNULL, env=os.environ.copy())
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if line.startswith("Hybrid PPO:"):
                for folder in ("out", "runlogs"):
                    shutil.rmtree(self.work / folder)
                    (self.work / folder).write_text("now a file")
                break
        out, err = proc.communicate(timeout=600)
        line = self.assertOneLine(err, 1, proc.returncode)
        self.assertIn("could not save the hybrid model to out/model.zip", line)
        self.assertIn("could not be written", line)
        fallback_model = Path(line.split("it was saved to ")[1].split(" instead")[0])
        fallback_log = Path(line.split("entry was written to ")[1])
        self.assertEqual(fallback_model.parent, self.tmp / "tmpdir")
        from stable_baselines3 import PPO

        PPO.load(fallback_model, device="cpu")  # the trained model, whole
        (entry,) = json.loads(fallback_log.read_text())
        self.assertEqual(entry["status"], "failed")
        self.assertEqual(entry["hybrid_save_file"], str(fallback_model))
        self.assertEqual(entry["hybrid_timesteps"], 2048)
        self.assertIn("could not save", entry["error"])


class InterruptDuringGeneration(_Case):
    def test_ctrl_c_while_generating_says_nothing_was_trained(self):
        proc = subprocess.Popen(
            [sys.executable, str(ENTRY_SCRIPT), *BASE, *self.small, "--names", "expert-v0",
             "--seed", "42", "--save_file", "never.zip"],
            cwd=self.work, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            stdin=subprocess.DEVNULL, env=os.environ.copy(), preexec_fn=interruptible)
        for line in proc.stdout:
            if line.startswith("GENERATING offline dataset"):
                break
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
        line = self.assertOneLine(err, 130, proc.returncode)
        self.assertNotIn("what was trained is saved", line)
        self.assertIn("nothing was trained", line)
        (entry,) = self.log()
        self.assertEqual((entry["status"], entry["stage"]), ("interrupted", "data"))
        root = Path(os.environ["MINARI_DATASETS_PATH"])
        self.assertFalse((root / "mujoco/walker2d/expert-v0").exists())
        self.assertEqual(list(root.glob(".staging-*")), [])
        self.assertFalse((self.work / "never.zip").exists())


class CtrlCInTheOtherCommands(_Case):
    """collect_dataset.py and train_reference_policy.py end on Ctrl-C as the pipeline does: one
    line, exit 130, nothing half-written, the reference training resumable."""

    def interrupt_when(self, argv: list[str], ready) -> tuple[int, str]:
        """Run a command, send SIGINT once `ready(stderr so far)` is true; (exit code, stderr)."""
        err_file = self.tmp / "stderr.txt"
        with open(err_file, "w") as err:
            proc = subprocess.Popen([sys.executable, *argv], cwd=self.work,
                                    stdout=subprocess.DEVNULL, stderr=err,
                                    stdin=subprocess.DEVNULL, env=os.environ.copy(),
                                    preexec_fn=interruptible)
            try:
                deadline = time.time() + 300
                while not ready(err_file.read_text()):
                    self.assertIsNone(proc.poll(), err_file.read_text()[-2000:])
                    self.assertLess(time.time(), deadline)
                    time.sleep(0.2)
                proc.send_signal(signal.SIGINT)
                proc.wait(timeout=120)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        return proc.returncode, err_file.read_text()

    def test_collect_dataset(self):
        policy = save_tiny_policy(self.work / "tiny.zip")
        root = Path(os.environ["MINARI_DATASETS_PATH"])
        # Interrupted while it rolls out (its progress bar has started): 20,000 episodes of an
        # untrained walker take minutes.
        rc, err = self.interrupt_when(
            [str(TRAINING_FILES / "collect_dataset.py"), "--env_id", "Walker2d-v4", "--policy",
             str(policy), "--episodes", "20000", "--name", "mujoco/walker2d/stopped-v0"],
            ready=lambda err: "collect Walker2d-v4" in err)
        line = self.assertOneLine(err, 130, rc)
        self.assertIn("no dataset was written", line)
        self.assertFalse((root / "mujoco/walker2d/stopped-v0").exists())
        self.assertEqual(list(root.glob(".staging-*")) if root.exists() else [], [])

    def test_train_reference_policy(self):
        out = self.work / "ref"
        rc, err = self.interrupt_when(
            [str(TRAINING_FILES / "train_reference_policy.py"), "--no_progress", "--n_steps", "64",
             "--checkpoint_every", "64", "--timesteps", "10000000", "--out", str(out)],
            ready=lambda err: (out / "ppo_vecnormalize_64_steps.pkl").exists())
        line = self.assertOneLine(err, 130, rc)
        self.assertIn(f"saved so far are in {out}; --resume continues", line)
        self.assertTrue((out / "ppo_64_steps.zip").exists())


class CtrlCInsideAnImport(unittest.TestCase):
    """Ctrl-C while MuJoCo's C extension initialises reaches the pipeline as gymnasium's
    DependencyNotInstalled, chained to ImportError("initialization failed") and, behind it, the
    KeyboardInterrupt (seen once in CI: exit 1 and a traceback instead of exit 130)."""

    @staticmethod
    def _raised(make_error):
        try:
            make_error()
        except Exception as exc:
            return exc
        raise AssertionError("nothing raised")

    def test_an_error_chained_to_ctrl_c_is_an_interrupt(self):
        import gymnasium

        from errors import raised_by_ctrl_c

        def import_interrupted():
            try:
                try:
                    raise KeyboardInterrupt
                except KeyboardInterrupt as exc:
                    raise ImportError("initialization failed") from exc
            except ImportError as exc:
                raise gymnasium.error.DependencyNotInstalled("MuJoCo is not installed") from exc

        def handled_while_interrupted():  # implicit chaining: raised inside the handler
            try:
                raise KeyboardInterrupt
            except KeyboardInterrupt:
                raise RuntimeError("cleanup failed")

        self.assertTrue(raised_by_ctrl_c(self._raised(import_interrupted)))
        self.assertTrue(raised_by_ctrl_c(self._raised(handled_while_interrupted)))
        self.assertTrue(raised_by_ctrl_c(KeyboardInterrupt()))

    def test_a_bug_stays_a_bug(self):
        from errors import raised_by_ctrl_c

        def bug():
            try:
                {}["missing"]
            except KeyError as exc:
                raise ValueError("bad") from exc

        self.assertFalse(raised_by_ctrl_c(self._raised(bug)))
        self.assertFalse(raised_by_ctrl_c(ValueError("plain")))

    def test_each_command_ends_on_one_line_with_its_code(self):
        """errors.exit_code, which every command's main ends through: a PipelineError wrapping
        an interrupted import (offline_data._env_shapes wraps gym.make's errors) is Ctrl-C."""
        import contextlib
        import io

        from errors import PipelineError, exit_code

        def wrapped_interrupt():
            try:
                raise KeyboardInterrupt
            except KeyboardInterrupt as exc:
                raise PipelineError("Cannot create env Walker2d-v4 {}: MuJoCo is not installed") from exc

        for exc, code, line in ((self._raised(wrapped_interrupt), 130, "Interrupted: x"),
                                (KeyboardInterrupt(), 130, "Interrupted: x"),
                                (PipelineError("bad flag"), 1, "ERROR: bad flag")):
            err = io.StringIO()
            with self.subTest(exc=exc), contextlib.redirect_stderr(err):
                self.assertEqual(exit_code(exc, "Interrupted: x"), code)
            self.assertEqual(err.getvalue(), line + "\n")
        with self.assertRaises(ZeroDivisionError):  # a bug keeps its traceback
            exit_code(ZeroDivisionError("bug"), "Interrupted: x")


if __name__ == "__main__":
    unittest.main()
