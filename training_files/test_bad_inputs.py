"""Bad input, typed as a user would, each run as a real command of the entry script.

Every case must end with exactly one line on stderr, a non-zero exit and no traceback. Cases
whose mistake is visible at the start (flags, names, paths, hparam.yml) must also fail before
the device is chosen, i.e. before torch and the data are touched, so the mistake costs a
second, not a training run; a failure after parsing must still be in the run log.

The commands run in parallel threads (each in its own folder) to keep the file fast.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import unittest
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import yaml

from testing_utils import ENTRY_SCRIPT, REPO_ROOT, IsolatedTestCase, write_hparam_file

BC_KEY, HYBRID_KEY = "Walker2d-v4-bc-large", "Walker2d-v4-hybrid"
QUICK_S = 15.0  # generous: two slow, shared cores run four of these at once


@dataclass
class Bad:
    label: str
    change: Callable[[list[str]], list[str]]  # the good argv -> the bad one
    expect: str  # a fragment of the one stderr line
    code: int = 1
    quick: bool = True  # known at start: must fail before the device (torch) step
    setup: Callable[[Path], None] | None = None  # prepares the case's own folder
    env: dict = field(default_factory=dict)  # None as a value removes the variable
    hparams: Callable[[str], str] | None = None  # edits hparam.yml's text


def flag(name: str, value: str):
    def change(argv):
        argv = list(argv)
        if name in argv:
            argv[argv.index(name) + 1] = value
        else:
            argv += [name, value]
        return argv
    return change


def add(*extra: str):
    return lambda argv: list(argv) + list(extra)


def drop(name: str):
    def change(argv):
        i = argv.index(name)
        return argv[:i] + argv[i + 2:]
    return change


def hparam_edit(old: str, new: str, count: int = 1):
    def edit(text):
        assert old in text, old
        return text.replace(old, new, count)
    return edit


def mkdirs(*paths: str):
    return lambda d: [(d / p).mkdir(parents=True) for p in paths]


def files(*paths: str):
    return lambda d: [(d / p).write_text("a file") for p in paths]


UNREADABLE_TO_ROOT = Path("/proc")  # not writable even by root (tests here run as root)


CASES = [
    # argparse: exit 2
    Bad("mix_ratio above 1", flag("--mix_ratio", "1.5"), "argument --mix_ratio", 2),
    Bad("mix_ratio nan", flag("--mix_ratio", "nan"), "argument --mix_ratio", 2),
    Bad("zero BC epochs", flag("--num_bc_epochs", "0"), "argument --num_bc_epochs", 2),
    Bad("negative batch", flag("--bc_batch_size", "-1"), "argument --bc_batch_size", 2),
    Bad("seed not a number", flag("--seed", "abc"), "argument --seed", 2),
    Bad("negative seed", flag("--seed", "-1"), "argument --seed", 2),
    Bad("unknown device", flag("--device", "tpu"), "argument --device", 2),
    Bad("skip and force", add("--skip_bc", "--force_bc_retrain"), "not allowed", 2),
    Bad("missing --env", drop("--env"), "--env", 2),
    Bad("rho_bar inf", flag("--rho_bar", "inf"), "argument --rho_bar", 2),
    Bad("c_bar zero", flag("--c_bar", "0"), "argument --c_bar", 2),
    Bad("log_std_subtract nan", flag("--log_std_subtract", "nan"), "--log_std_subtract", 2),
    Bad("zero timesteps", flag("--total_timesteps", "0"), "argument --total_timesteps", 2),
    Bad("unknown flag", add("--learning_rate", "1"), "unrecognized arguments", 2),
    # plain names
    Bad("env is a path", flag("--env", "/tmp/x"), "argument --env", 2),
    Bad("names climbs out", flag("--names", "../walker2d/expert-v0"), "argument --names", 2),
    Bad("names with +", flag("--names", "expert-v0+expert-v1"), "argument --names", 2),
    Bad("empty dataset", flag("--dataset", ""), "argument --dataset", 2),
    Bad("env with a space", flag("--env", "walker 2d"), "argument --env", 2),
    Bad("hidden name", flag("--names", ".expert-v0"), "argument --names", 2),
    # output locations
    Bad("save_file is a directory", flag("--save_file", "runs"), "--save_file runs is a directory",
        setup=mkdirs("runs")),
    Bad("save_file under a file", flag("--save_file", "notes.txt/model.zip"),
        "notes.txt is not a directory", setup=files("notes.txt")),
    Bad("save_file + .zip is a directory", flag("--save_file", "model"), "model.zip is a directory",
        setup=mkdirs("model.zip")),
    Bad("best model path is a directory", flag("--save_file", "m.zip"), "m_best.zip is a directory",
        setup=mkdirs("m_best.zip")),
    Bad("save_file read-only", flag("--save_file", str(UNREADABLE_TO_ROOT / "model.zip")),
        "cannot create files in /proc"),
    Bad("log_file is a directory", flag("--log_file", "logs"), "logs is a directory",
        setup=mkdirs("logs")),
    Bad("log_file under a file", flag("--log_file", "notes.txt/runs.json"),
        "notes.txt is not a directory", setup=files("notes.txt")),
    Bad("log_file read-only", flag("--log_file", str(UNREADABLE_TO_ROOT / "runs.json")),
        "cannot create files in /proc"),
    Bad("checkpoint dir is a file", flag("--bc_checkpoint_dir", "ckpts"), "ckpts is not a directory",
        setup=files("ckpts")),
    Bad("TensorBoard root is a file", lambda a: a, "tb_test is not a directory",
        setup=files("tb_test")),
    # hparam.yml
    Bad("hparam file missing", flag("--hparam_file", "nope.yml"), "Cannot read hparam file"),
    Bad("hparam file is a directory", flag("--hparam_file", "hp"), "Cannot read hparam file",
        setup=mkdirs("hp")),
    Bad("BC key missing", flag("--hparam_bc", "Walker2d-v4-bc-huge"),
        "ERROR: BC hparam key 'Walker2d-v4-bc-huge' not found in hparam.yml"),
    Bad("hybrid key missing", flag("--hparam_hybrid", "Walker2d-v9-hybrid"),
        "ERROR: Hybrid hparam key 'Walker2d-v9-hybrid' not found in hparam.yml"),
    Bad("unknown key", lambda a: a, "unknown key 'n_stepz'",
        hparams=hparam_edit("  n_steps:", "  n_stepz:")),
    Bad("negative layer", lambda a: a, "policy.net_arch.pi.0",
        hparams=hparam_edit("pi:\n      - 32\n", "pi:\n      - -5\n")),
    Bad("zero layer", lambda a: a, "policy.net_arch.pi.0",
        hparams=hparam_edit("pi:\n      - 32\n", "pi:\n      - 0\n")),
    Bad("duplicate key", lambda a: a, "duplicate key 'n_epochs'",
        hparams=hparam_edit("  n_epochs: 2\n", "  n_epochs: 2\n  n_epochs: 3\n")),
    Bad("target_kl negative", lambda a: a, "field 'target_kl'",
        hparams=hparam_edit("  target_kl: 0.03\n", "  target_kl: -1\n")),
    Bad("clip_range inf", lambda a: a, "field 'clip_range'",
        hparams=hparam_edit("  clip_range: 0.1\n", "  clip_range: .inf\n")),
    Bad("ent_coef nan", lambda a: a, "field 'ent_coef'",
        hparams=hparam_edit("  ent_coef: 0.0\n", "  ent_coef: .nan\n")),
    Bad("log_std_init nan", lambda a: a, "policy.log_std_init",
        hparams=hparam_edit("    activation: tanh\n", "    activation: tanh\n    log_std_init: .nan\n", 2)),
    Bad("malformed YAML", lambda a: a, "Malformed YAML",
        hparams=lambda t: t + "broken: [1, 2\n"),
    Bad("restarts in subprocess envs", add("--vec_env", "subproc"),
        "deterministic_restarts needs vec_env dummy (got subproc)",
        hparams=hparam_edit("  deterministic_restarts: 0.0\n", "  deterministic_restarts: 0.5\n")),
    Bad("BC and hybrid envs differ", lambda a: a, "must match",
        hparams=lambda t: t.replace("env_id: Walker2d-v4", "env_id: Hopper-v4", 1)),
    # found after the device is chosen
    Bad("device cuda absent", flag("--device", "cuda"), "CUDA is not available", quick=False),
    Bad("dataset nowhere", flag("--names", "medium-v3"),
        "Dataset mujoco/walker2d/medium-v3 not found", quick=False),
    Bad("name without version", flag("--names", "expert"), "must end in -v<N>", quick=False),
    Bad("HOME unwritable, MINARI_DATASETS_PATH unset", lambda a: a,
        "Cannot generate mujoco/walker2d/expert-v0 into the Minari directory", quick=False,
        setup=files("homefile"), env={"MINARI_DATASETS_PATH": None, "HOME": "homefile/home"}),
]


class BadInputsAsRealCommands(IsolatedTestCase):
    def run_case(self, index: int, case: Bad, hparam_text: str) -> dict:
        folder = self.tmp / f"case{index:02d}"
        folder.mkdir()
        hp = folder / "hparam.yml"
        hp.write_text(case.hparams(hparam_text) if case.hparams else hparam_text)
        if case.setup:
            case.setup(folder)
        good = ["--dataset", "mujoco", "--env", "walker2d", "--names", "expert-v0",
                "--hparam_bc", BC_KEY, "--hparam_hybrid", HYBRID_KEY, "--seed", "42",
                "--hparam_file", str(hp), "--no_progress"]
        env = os.environ.copy()
        for key, value in case.env.items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = str(folder / value) if key == "HOME" else value
        started = time.monotonic()
        proc = subprocess.run([sys.executable, str(ENTRY_SCRIPT), *case.change(good)],
                              cwd=folder, env=env, capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, timeout=600)
        return {"proc": proc, "seconds": time.monotonic() - started, "folder": folder}

    def test_each_bad_input_is_one_line_and_a_non_zero_exit(self):
        self.assertGreaterEqual(len(CASES), 35)
        hparam_text = write_hparam_file(self.tmp / "hparam.yml").read_text()
        self.assertIn(HYBRID_KEY, yaml.safe_load(hparam_text))
        with ThreadPoolExecutor(max_workers=4) as pool:
            results = list(pool.map(lambda ic: self.run_case(*ic, hparam_text), enumerate(CASES)))
        for case, result in zip(CASES, results):
            proc = result["proc"]
            with self.subTest(case.label):
                lines = proc.stderr.strip().splitlines()
                self.assertNotIn("Traceback", proc.stderr)
                self.assertEqual(len(lines), 1, proc.stderr)
                self.assertEqual(proc.returncode, case.code, proc.stderr)
                self.assertIn(case.expect, lines[0])
                if case.quick:
                    self.assertNotIn("Device:", proc.stdout, "failed only after the device step")
                    self.assertLess(result["seconds"], QUICK_S)
                log = result["folder"] / "logs" / "pipeline_runs.json"
                if case.code == 1 and not case.label.startswith("log_file"):
                    (entry,) = json.loads(log.read_text())  # a failed run is still logged
                    self.assertEqual((entry["status"], entry["error"]), ("failed", lines[0]))
                elif case.code == 2:
                    self.assertFalse(log.exists())

    def test_cases_are_not_vacuous(self):
        """The good command line the cases start from passes every check made at the start."""
        hp = write_hparam_file(self.work / "hparam.yml")
        sys.path.insert(0, str(REPO_ROOT / "training_files"))
        import preflight
        import train_hybrid_pipeline as tp
        from hparams import load_hparams

        args = tp.build_parser().parse_args(
            ["--dataset", "mujoco", "--env", "walker2d", "--names", "expert-v0", "--hparam_bc",
             BC_KEY, "--hparam_hybrid", HYBRID_KEY, "--hparam_file", str(hp)])
        preflight.check_log_file(args.log_file)
        preflight.check_outputs(Path("m.zip"), Path("bc_checkpoints/mujoco/walker2d"),
                                tp.tensorboard_dir(args, Path("m.zip")))
        load_hparams(BC_KEY, HYBRID_KEY, hp)
        for case in CASES:
            if case.hparams:
                with self.subTest(case.label):
                    self.assertNotEqual(case.hparams(hp.read_text()), hp.read_text())


if __name__ == "__main__":
    unittest.main()
