"""benchmarks/finetune.py, the fine-tuning benchmark's runner: the parts that decide which runs a
worker makes and what it commits. Its runs themselves are the pipeline's (tested elsewhere)."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

from hparams import load_hparams
from testing_utils import REPO_ROOT, load_benchmark
from train_hybrid_pipeline import build_parser

SCRIPT = REPO_ROOT / "benchmarks" / "finetune.py"
finetune = load_benchmark("finetune")


class WorkerShareTest(unittest.TestCase):
    requested = [(d, v, s) for d in ("medium-v0", "expert-v0") for s in range(7)
                 for v in ("hybrid", "bc_ppo")]

    def test_shares_are_disjoint_and_cover_every_run(self):
        for count in (1, 2, 3):
            shares = [finetune.worker_share(self.requested, f"{i}/{count}") for i in range(count)]
            self.assertEqual(sorted(run for share in shares for run in share), sorted(self.requested))
            self.assertEqual(sum(len(share) for share in shares), len(self.requested))

    def test_a_worker_started_late_keeps_its_share(self):
        # Session 21's race: worker 1 started after worker 0 had finished its first run. A share
        # taken over the pending runs then overlapped worker 0's; over the requested runs it
        # does not, whatever is finished.
        first = finetune.worker_share(self.requested, "0/2")
        done = {first[0]}
        late = [run for run in finetune.worker_share(self.requested, "1/2") if run not in done]
        self.assertFalse(set(late) & set(first))
        self.assertEqual(late, self.requested[1::2])

    def test_bad_worker_is_a_one_line_error(self):
        for worker in ("2/2", "-1/2", "1", "a/b", "0/0"):
            with self.assertRaises(ValueError, msg=worker):
                finetune.worker_share(self.requested, worker)
        out = subprocess.run([sys.executable, str(SCRIPT), "--worker", "2/2"],
                             capture_output=True, text=True, cwd=REPO_ROOT)
        self.assertEqual(out.returncode, 2)
        self.assertNotIn("Traceback", out.stderr)
        self.assertIn("--worker '2/2': i must be in 0..n-1", out.stderr.strip().splitlines()[-1])


def hybrid_entry_of(dataset: str, variant: str, env: str, runs: Path):
    """The hybrid hparam entry a benchmark run of `variant` gets, as its command passes it."""
    args, _, _ = finetune.command(dataset, variant, 0, 1000, runs, env)
    parsed = build_parser().parse_args(args)
    return load_hparams(*finetune.KEYS[env], Path(parsed.hparam_file),
                        n_envs=parsed.n_envs, vec_env=parsed.vec_env)[1]


class CommandTest(unittest.TestCase):
    def test_every_variant_is_a_valid_pipeline_command(self):
        # A variant whose flag or hparam the pipeline does not know would only fail hours into a
        # benchmark; here every one is parsed and its hparam entry validated.
        with tempfile.TemporaryDirectory() as tmp:
            for env in finetune.KEYS:
                for variant in finetune.VARIANTS:
                    with self.subTest(env=env, variant=variant):
                        args, tag, log_file = finetune.command("simple-v0", variant, 3, 1000,
                                                               Path(tmp), env)
                        parsed = build_parser().parse_args(args)
                        self.assertEqual((parsed.env, parsed.seed, parsed.total_timesteps),
                                         (env, 3, 1000))
                        self.assertTrue(tag.endswith(f"{variant}_seed3"))
                        self.assertEqual(log_file.parent, Path(tmp) / "logs")
                        path = (Path(parsed.hparam_file) if parsed.hparam_file
                                else finetune.REPO / "hparam.yml")
                        bc_key, hybrid_key = finetune.KEYS[env]
                        # with the flags that override the entry, as run_pipeline applies them
                        _, hybrid = load_hparams(bc_key, hybrid_key, path, n_envs=parsed.n_envs,
                                                 vec_env=parsed.vec_env)
                        for field, value in finetune.VARIANTS[variant].get("hparams", {}).items():
                            self.assertEqual(getattr(hybrid, field), value)

    def test_walker2d_variants_keep_the_previous_default(self):
        # The committed runs of `hybrid`, `bc_ppo` and the ablations were made without the
        # anchor the walker2d entry now holds; a rerun must make the same runs.
        entry = load_hparams(*finetune.KEYS["walker2d"])[1]
        self.assertEqual((entry.anchor_coeff, entry.anchor_episodes, entry.anchor_gate),
                         (10.0, 10, "bc_gain"))
        with tempfile.TemporaryDirectory() as tmp:
            for variant, previous in (("hybrid", (0.0, 0, "none")), ("bc_ppo", (0.0, 0, "none")),
                                      ("hybrid-gated_anchor", (10.0, 10, "bc_gain"))):
                with self.subTest(variant=variant):
                    hybrid = hybrid_entry_of("medium-v0", variant, "walker2d", Path(tmp))
                    self.assertEqual((hybrid.anchor_coeff, hybrid.anchor_episodes,
                                      hybrid.anchor_gate), previous)

    def test_ant_and_humanoid_variants_keep_signed_offline_advantages(self):
        # Their entries left signed offline advantages in test AC; the recorded `hybrid` and
        # `bc_ppo` runs had them, and `hybrid-offline_critic_only` is the entries' setting.
        with tempfile.TemporaryDirectory() as tmp:
            for env in ("ant", "humanoid"):
                self.assertEqual(load_hparams(*finetune.KEYS[env])[1].offline_advantages, "none")
                for variant, previous in (("hybrid", "signed"), ("bc_ppo", "signed"),
                                          ("hybrid-offline_critic_only", "none")):
                    with self.subTest(env=env, variant=variant):
                        hybrid = hybrid_entry_of("simple-v0", variant, env, Path(tmp))
                        self.assertEqual(hybrid.offline_advantages, previous)


class ResultsFileTest(unittest.TestCase):
    def test_finished_skips_a_line_cut_by_a_crash(self):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "finetune.jsonl"
            record = {"dataset": "medium-v0", "variant": "hybrid", "seed": 4, "timesteps": 200_000}
            path.write_text(json.dumps(record) + "\n" + json.dumps({**record, "seed": 5})[:30])
            self.assertEqual(finetune.finished(path), {("walker2d", "medium-v0", "hybrid", 4, 200_000)})

    def test_runs_on_other_bytes_of_a_dataset_do_not_join_the_file(self):
        def record(dataset, sha, env="walker2d"):
            return {"env": env, "dataset": dataset, "variant": "hybrid", "seed": 0,
                    "timesteps": 1000, "dataset_info": {"sources": [{"sha256": sha}]}}
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "finetune.jsonl"
            self.assertIsNone(finetune.data_clash(record("medium-v0", "10b5a993ff"), path))
            finetune.append_result(record("medium-v0", "10b5a993ff"), path)
            finetune.append_result(record("simple-v0", "b3c7a479ff", env="ant"), path)
            self.assertIsNone(finetune.data_clash(record("medium-v0", "10b5a993ff"), path))
            self.assertIsNone(finetune.data_clash(record("medium-v1", "1de5ee24ff"), path))
            self.assertIsNone(finetune.data_clash(record("simple-v0", "b3c7a479ff", "ant"), path))
            message = finetune.data_clash(record("medium-v0", "083b3e6eff"), path)
            self.assertEqual(message, "walker2d medium-v0 here has sha256 083b3e6e, but "
                             "finetune.jsonl holds runs on sha256 10b5a993 (generated on another "
                             "machine?); give these runs their own --results file")
            self.assertIsNotNone(finetune.data_clash(record("simple-v0", "0000", "ant"), path))

    def test_results_name_no_machine_folder(self):
        # Runs made from a worktree inside the main checkout, written to the main one's runs dir.
        with tempfile.TemporaryDirectory() as tmp:
            main = Path(tmp).resolve() / "main"
            worktree = main / "wt"
            (main / ".git").mkdir(parents=True)
            worktree.mkdir()
            (worktree / ".git").write_text("gitdir: elsewhere\n")
            self.assertEqual(finetune.checkout(worktree / "benchmarks" / "runs"), worktree)
            self.assertEqual(finetune.checkout(main / "benchmarks"), main)
            home = str(Path.home())
            entry = {"save_file": f"{main}/benchmarks/runs/m.zip", "code": f"{worktree}/training_files",
                     "data": f"{home}/.minari/datasets/x"}
            cmd = [sys.executable, f"{worktree}/training_files/train_hybrid_pipeline.py",
                   "--save_file", f"{main}/benchmarks/runs/m.zip"]
            entry, cmd = finetune.without_machine_paths(entry, cmd, {main, worktree})
            self.assertEqual(entry, {"save_file": "benchmarks/runs/m.zip", "code": "training_files",
                                     "data": "~/.minari/datasets/x"})
            self.assertEqual(cmd[1:], ["training_files/train_hybrid_pipeline.py", "--save_file",
                                       "benchmarks/runs/m.zip"])


if __name__ == "__main__":
    unittest.main()
