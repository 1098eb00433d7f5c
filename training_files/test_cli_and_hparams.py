"""The user contract of the entry script's command line and of hparam.yml.

Covers QUICKSTART's ARGUMENTS section (flags, defaults, --help), the errors argparse raises at
parse time, the one-line errors the real CLI prints for bad hparam keys or an unavailable
device (and the `failed` entry it still logs), hparams.py's validation, and resolve_device.

Run with ``python test_cli_and_hparams.py`` or ``python -m pytest -q test_cli_and_hparams.py``.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shlex
import sys
import unittest
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import yaml  # noqa: E402

import hparams  # noqa: E402
import train_hybrid_pipeline as tp  # noqa: E402
from errors import PipelineError  # noqa: E402
from testing_utils import REPO_ROOT, IsolatedTestCase, write_hparam_file  # noqa: E402

QUICKSTART = REPO_ROOT / "docs" / "QUICKSTART.txt"  # the contract, as committed

# QUICKSTART ARGUMENTS -> "Optional:" defaults, exactly as the contract spells them.
QUICKSTART_DEFAULTS = {
    "--seed": "42", "--num_bc_epochs": "50", "--bc_batch_size": "128", "--bc_coeff": "0.005",
    "--warm_start_steps": "100", "--log_interval": "10", "--save_every_epochs": "5",
    "--mix_ratio": "0.5", "--rho_bar": "1.0", "--c_bar": "0.95", "--log_std_subtract": "0.0",
    "--device": "auto",
}
# ... and the same defaults as the parsed values (with their types).
PARSED_DEFAULTS = {
    "seed": 42, "num_bc_epochs": 50, "bc_batch_size": 128, "bc_coeff": 0.005,
    "warm_start_steps": 100, "log_interval": 10, "save_every_epochs": 5, "mix_ratio": 0.5,
    "rho_bar": 1.0, "c_bar": 0.95, "log_std_subtract": 0.0, "device": "auto",
    "skip_bc": False, "force_bc_retrain": False, "wandb": False, "save_file": None,
}
REQUIRED_FLAGS = ["--dataset", "--env", "--names", "--hparam_bc", "--hparam_hybrid"]
SWITCHES = ["--skip_bc", "--force_bc_retrain", "--wandb"]

MINIMAL_ARGV = ["--dataset", "mujoco", "--env", "walker2d", "--names", "expert-v0",
                "--hparam_bc", "Walker2d-v4-bc-large", "--hparam_hybrid", "Walker2d-v4-hybrid",
                "--seed", "42"]
# QUICKSTART "Full command (with custom V-trace and BC settings)".
FULL_ARGV = ["--dataset", "mujoco", "--env", "walker2d", "--names", "expert-v0", "expert-v1",
             "--hparam_bc", "Walker2d-v4-bc-large", "--hparam_hybrid", "Walker2d-v4-hybrid",
             "--seed", "42", "--num_bc_epochs", "50", "--bc_batch_size", "128",
             "--bc_coeff", "0.005", "--warm_start_steps", "100", "--mix_ratio", "0.5",
             "--rho_bar", "1.0", "--c_bar", "0.95", "--log_std_subtract", "0.0",
             "--device", "auto"]

QUICKSTART_KEYS = {"Walker2d-v4-bc-large": "Walker2d-v4", "Walker2d-v4-hybrid": "Walker2d-v4",
                   "Humanoid-v4-bc-large": "Humanoid-v4", "Humanoid-v4-hybrid": "Humanoid-v4",
                   "Ant-v4-bc-large": "Ant-v4", "Ant-v4-hybrid": "Ant-v4"}
BC_KEY, HYBRID_KEY = "Walker2d-v4-bc-large", "Walker2d-v4-hybrid"


def help_blocks(text: str) -> dict[str, str]:
    """Rendered --help -> {flag: its whole help entry with whitespace collapsed}.

    argparse wraps long entries (e.g. "(default:\\n auto)"), so an entry is the flag's line
    plus the deeper-indented lines under it."""
    blocks: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        match = re.match(r"^  (--\w+)", line)
        if match:
            current = match.group(1)
            blocks[current] = [line]
        elif current and line.startswith("   ") and line.strip():
            blocks[current].append(line)
        else:
            current = None
    return {flag: " ".join(" ".join(lines).split()) for flag, lines in blocks.items()}


def quickstart_commands(text: str) -> list[list[str]]:
    """Every `python training_files/train_hybrid_pipeline.py ...` command's argv in QUICKSTART."""
    joined = re.sub(r"\\\n\s*", " ", text)
    out = []
    for line in joined.splitlines():
        words = shlex.split(line.strip()) if "train_hybrid_pipeline.py" in line else []
        if words[:2] == ["python", "training_files/train_hybrid_pipeline.py"]:
            out.append(words[2:])
    return out


def parse(argv: list[str]):
    return tp.build_parser().parse_args(argv)


class HelpTest(IsolatedTestCase):
    """--help lists every QUICKSTART flag with its default exactly."""

    def _check_help(self, text: str):
        blocks = help_blocks(text)
        for flag, default in QUICKSTART_DEFAULTS.items():
            with self.subTest(flag=flag):
                self.assertIn(flag, blocks, f"{flag} missing from --help")
                self.assertIn(f"(default: {default})", blocks[flag])
        for flag in REQUIRED_FLAGS + SWITCHES + ["--save_file"]:
            with self.subTest(flag=flag):
                self.assertIn(flag, blocks, f"{flag} missing from --help")
        # QUICKSTART OUTPUTS: the hybrid zip defaults to hybrid_ppo_<env>_<timestamp>.zip.
        self.assertIn("hybrid_ppo_<env>_<timestamp>.zip", blocks["--save_file"])
        self.assertIn("auto", blocks["--device"])
        for choice in ("cpu", "cuda", "mps"):
            self.assertIn(choice, blocks["--device"])

    def test_format_help_lists_flags_and_defaults(self):
        self._check_help(tp.build_parser().format_help())

    def test_real_cli_help(self):
        result = self.run_cli("--help", timeout=60)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stderr, "")
        self.assertTrue(result.stdout.startswith("usage: train_hybrid_pipeline.py"))
        self._check_help(result.stdout)
        self.assertFalse((self.work / "logs").exists(), "--help must not write a run log")

    def test_help_states_one_default_per_flag_and_none_for_required(self):
        blocks = help_blocks(tp.build_parser().format_help())
        for flag, block in blocks.items():
            with self.subTest(flag=flag):
                self.assertLessEqual(block.count("(default:"), 1, block)
                self.assertNotIn("(default: None)", block)
        for flag in REQUIRED_FLAGS:
            self.assertNotIn("(default:", blocks[flag])

    def test_help_matches_quickstart_arguments_section(self):
        """Cross-check against the contract text itself, not just the copy above."""
        text = QUICKSTART.read_text()
        section = text.split("ARGUMENTS\n---------", 1)[1].split("HPARAM KEYS", 1)[0]
        listed = dict(re.findall(r"^\s+(--\w+)\b.*?(?:\(default: ([^)]*)\))?$", section, re.M))
        self.assertGreaterEqual(len(listed), len(QUICKSTART_DEFAULTS) + len(REQUIRED_FLAGS))
        blocks = help_blocks(tp.build_parser().format_help())
        for flag, default in listed.items():
            with self.subTest(flag=flag):
                self.assertIn(flag, blocks)
                if default:
                    self.assertIn(f"(default: {default})", blocks[flag])


class ParseTest(unittest.TestCase):
    """Valid command lines parse to the values QUICKSTART promises."""

    def test_defaults(self):
        args = parse(MINIMAL_ARGV[:-2])  # without --seed: default applies
        for name, value in PARSED_DEFAULTS.items():
            with self.subTest(arg=name):
                self.assertEqual(getattr(args, name), value)
                self.assertIs(type(getattr(args, name)), type(value))
        self.assertIsNone(args.hparam_file)
        self.assertIsNone(args.total_timesteps)
        self.assertEqual(args.log_file, Path("logs/pipeline_runs.json"))
        self.assertEqual(args.bc_checkpoint_dir, Path("bc_checkpoints"))

    def test_full_command(self):
        args = parse(FULL_ARGV)
        self.assertEqual((args.dataset, args.env), ("mujoco", "walker2d"))
        self.assertEqual(args.names, ["expert-v0", "expert-v1"])
        self.assertEqual((args.hparam_bc, args.hparam_hybrid), (BC_KEY, HYBRID_KEY))
        expected = {"seed": 42, "num_bc_epochs": 50, "bc_batch_size": 128, "bc_coeff": 0.005,
                    "warm_start_steps": 100, "mix_ratio": 0.5, "rho_bar": 1.0, "c_bar": 0.95,
                    "log_std_subtract": 0.0, "device": "auto"}
        for name, value in expected.items():
            with self.subTest(arg=name):
                self.assertEqual(getattr(args, name), value)
                self.assertIs(type(getattr(args, name)), type(value))

    def test_non_default_values_are_taken(self):
        args = parse(MINIMAL_ARGV + ["--seed", "7", "--num_bc_epochs", "3", "--bc_batch_size", "16",
                                     "--bc_coeff", "0", "--warm_start_steps", "0",
                                     "--log_interval", "2", "--save_every_epochs", "1",
                                     "--mix_ratio", "1", "--rho_bar", "2.5", "--c_bar", "0.5",
                                     "--log_std_subtract", "-0.25", "--device", "cpu",
                                     "--save_file", "out/model.zip", "--wandb", "--skip_bc"])
        self.assertEqual((args.seed, args.num_bc_epochs, args.bc_batch_size), (7, 3, 16))
        self.assertEqual((args.bc_coeff, args.warm_start_steps, args.log_interval), (0.0, 0, 2))
        self.assertEqual((args.save_every_epochs, args.mix_ratio), (1, 1.0))
        self.assertEqual((args.rho_bar, args.c_bar, args.log_std_subtract), (2.5, 0.5, -0.25))
        self.assertEqual(args.device, "cpu")
        self.assertEqual(args.save_file, Path("out/model.zip"))
        self.assertTrue(args.wandb and args.skip_bc and not args.force_bc_retrain)

    def test_names_takes_several(self):
        argv = ["--dataset", "d4rl", "--env", "walker2d", "--names", "medium-v2", "expert-v2",
                "medium-replay-v2", "--hparam_bc", BC_KEY, "--hparam_hybrid", HYBRID_KEY]
        self.assertEqual(parse(argv).names, ["medium-v2", "expert-v2", "medium-replay-v2"])
        self.assertEqual(parse(MINIMAL_ARGV).names, ["expert-v0"])

    def test_mix_ratio_bounds_are_inclusive(self):
        self.assertEqual(parse(MINIMAL_ARGV + ["--mix_ratio", "0"]).mix_ratio, 0.0)
        self.assertEqual(parse(MINIMAL_ARGV + ["--mix_ratio", "1.0"]).mix_ratio, 1.0)

    def test_skip_and_force_each_alone(self):
        self.assertTrue(parse(MINIMAL_ARGV + ["--skip_bc"]).skip_bc)
        self.assertTrue(parse(MINIMAL_ARGV + ["--force_bc_retrain"]).force_bc_retrain)

    def test_every_quickstart_command_parses(self):
        commands = quickstart_commands(QUICKSTART.read_text())
        self.assertEqual(len(commands), 4, commands)
        parsed = [parse(argv) for argv in commands]
        self.assertEqual(parsed[1].names, ["expert-v0", "expert-v1"])
        self.assertEqual(commands[1], FULL_ARGV)
        self.assertTrue(parsed[2].skip_bc)
        self.assertTrue(parsed[3].force_bc_retrain)


class ParseRejectionTest(IsolatedTestCase):
    """Bad command lines stop in argparse: exit 2, one error line (no usage block), no traceback."""

    def assertRejected(self, argv: list[str], *fragments: str) -> str:
        err = io.StringIO()
        with contextlib.redirect_stderr(err), self.assertRaises(SystemExit) as cm:
            parse(argv)
        self.assertEqual(cm.exception.code, 2)
        text = err.getvalue()
        self.assertNotIn("Traceback", text)
        self.assertEqual(len(text.strip().splitlines()), 1, text)
        last = text.strip()
        self.assertTrue(last.startswith("train_hybrid_pipeline.py: error: "), last)
        self.assertTrue(last.endswith("(see --help)"), last)
        for fragment in fragments:
            self.assertIn(fragment, last)
        return last

    def test_skip_bc_with_force_bc_retrain(self):
        self.assertRejected(MINIMAL_ARGV + ["--skip_bc", "--force_bc_retrain"],
                            "--force_bc_retrain", "--skip_bc", "not allowed")
        self.assertRejected(MINIMAL_ARGV + ["--force_bc_retrain", "--skip_bc"], "not allowed")

    def test_mix_ratio_out_of_range(self):
        for value in ("-0.1", "1.5", "nan"):
            with self.subTest(value=value):
                self.assertRejected(MINIMAL_ARGV + ["--mix_ratio", value], "--mix_ratio", value)

    def test_non_positive_counts(self):
        for flag, value in (("--num_bc_epochs", "0"), ("--num_bc_epochs", "-1"),
                            ("--bc_batch_size", "0"), ("--log_interval", "0"),
                            ("--save_every_epochs", "0"), ("--warm_start_steps", "-1")):
            with self.subTest(flag=flag, value=value):
                self.assertRejected(MINIMAL_ARGV + [flag, value], flag, value)

    def test_vtrace_caps_must_be_positive_and_finite(self):
        for flag, value in (("--rho_bar", "0"), ("--c_bar", "-1"), ("--rho_bar", "inf"),
                            ("--c_bar", "nan")):
            with self.subTest(flag=flag, value=value):
                self.assertRejected(MINIMAL_ARGV + [flag, value], flag, value)

    def test_other_float_checks(self):
        self.assertRejected(MINIMAL_ARGV + ["--bc_coeff", "-0.5"], "--bc_coeff")
        self.assertRejected(MINIMAL_ARGV + ["--log_std_subtract", "nan"], "--log_std_subtract")

    def test_unknown_device(self):
        self.assertRejected(MINIMAL_ARGV + ["--device", "tpu"], "--device", "tpu", "invalid choice")

    def test_missing_required_flag(self):
        for flag in REQUIRED_FLAGS:
            with self.subTest(flag=flag):
                i = MINIMAL_ARGV.index(flag)
                argv = MINIMAL_ARGV[:i] + MINIMAL_ARGV[i + 2:]
                self.assertRejected(argv, "required", flag)
        self.assertRejected(["--names"] + MINIMAL_ARGV[MINIMAL_ARGV.index("--hparam_bc"):],
                            "--names")  # --names with no value

    def test_non_numeric_values(self):
        for flag, value in (("--seed", "abc"), ("--num_bc_epochs", "ten"), ("--num_bc_epochs", "2.5"),
                            ("--bc_batch_size", "1e2"), ("--mix_ratio", "half"),
                            ("--rho_bar", "x"), ("--bc_coeff", ""), ("--log_std_subtract", "-")):
            with self.subTest(flag=flag, value=value):
                self.assertRejected(MINIMAL_ARGV + [flag, value], flag)

    def test_names_must_be_plain(self):
        for flag, value in (("--env", "/tmp/x"), ("--env", "walker2d/../ant"),
                            ("--names", "../walker2d/expert-v0"), ("--names", "a+b"),
                            ("--names", ".hidden"), ("--dataset", ""), ("--dataset", "mu joco"),
                            ("--names", "_x"), ("--env", "walker2d\n")):
            with self.subTest(flag=flag, value=value):
                argv = list(MINIMAL_ARGV)
                argv[argv.index(flag) + 1] = value
                self.assertRejected(argv, f"argument {flag}", "not a plain name")
        ok = parse(["--dataset", "D4RL", "--env", "walker2d", "--names", "medium_replay-v2",
                    "expert.v1", "0x", "--hparam_bc", BC_KEY, "--hparam_hybrid", HYBRID_KEY])
        self.assertEqual(ok.names, ["medium_replay-v2", "expert.v1", "0x"])

    def test_real_cli_parse_error(self):
        result = self.run_cli(*MINIMAL_ARGV, "--mix_ratio", "1.5", timeout=60)
        self.assertEqual(result.returncode, 2)
        self.assertEqual(len(result.stderr.strip().splitlines()), 1, result.stderr)
        self.assertIn("error: argument --mix_ratio: 1.5", result.stderr)
        self.assertNotIn("Traceback", result.stderr)
        self.assertEqual(result.stdout, "")


class CliValidationTest(IsolatedTestCase):
    """Mistakes found after parsing: one line on stderr, non-zero exit, run logged as failed."""

    def setUp(self):
        super().setUp()
        self.hparam_file = write_hparam_file(self.work / "hparam.yml")
        self.entries = yaml.safe_load(self.hparam_file.read_text())
        self.log = self.work / "logs" / "pipeline_runs.json"

    def _keep_only(self, key: str):
        self.hparam_file.write_text(yaml.safe_dump({key: self.entries[key]}))

    def _run(self, *extra: str):
        # A dataset that does not exist anywhere: if the pipeline got as far as loading data
        # the error would be about the data, not the one under test.
        return self.run_cli("--dataset", "mujoco", "--env", "walker2d", "--names", "nowhere-v0",
                            "--hparam_bc", BC_KEY, "--hparam_hybrid", HYBRID_KEY,
                            "--hparam_file", str(self.hparam_file), "--no_progress", *extra,
                            timeout=120)

    def assertOneLineError(self, result, expected: str | None = None) -> str:
        self.assertNotEqual(result.returncode, 0)
        self.assertNotIn("Traceback", result.stderr)
        lines = result.stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, result.stderr)
        if expected is not None:
            self.assertEqual(lines[0], expected)
        return lines[0]

    def _log_entries(self) -> list[dict]:
        self.assertTrue(self.log.is_file(), "a failed run must still be logged")
        return json.loads(self.log.read_text())

    def test_missing_bc_key(self):
        self._keep_only(HYBRID_KEY)
        result = self._run()
        message = "ERROR: BC hparam key 'Walker2d-v4-bc-large' not found in hparam.yml"
        self.assertOneLineError(result, message)
        self.assertEqual(result.returncode, 1)
        runs = self._log_entries()
        self.assertEqual(len(runs), 1)
        self.assertEqual(runs[0]["status"], "failed")
        self.assertEqual(runs[0]["error"], message)
        self.assertEqual(runs[0]["args"]["hparam_bc"], BC_KEY)

    def test_missing_hybrid_key(self):
        self._keep_only(BC_KEY)
        result = self._run()
        message = "ERROR: Hybrid hparam key 'Walker2d-v4-hybrid' not found in hparam.yml"
        self.assertOneLineError(result, message)
        runs = self._log_entries()
        self.assertEqual([r["status"] for r in runs], ["failed"])
        self.assertEqual(runs[0]["error"], message)

    def test_failed_runs_append(self):
        self._keep_only(HYBRID_KEY)
        first = self._run()
        self._keep_only(BC_KEY)
        second = self._run()
        runs = self._log_entries()
        self.assertEqual([r["status"] for r in runs], ["failed", "failed"])
        self.assertEqual([r["error"] for r in runs],
                         [first.stderr.strip(), second.stderr.strip()])
        self.assertIn("BC hparam key", runs[0]["error"])
        self.assertIn("Hybrid hparam key", runs[1]["error"])

    def test_invalid_entry_is_one_line(self):
        entries = dict(self.entries)
        entries[HYBRID_KEY] = {**entries[HYBRID_KEY], "learning_rat": 1e-3}
        self.hparam_file.write_text(yaml.safe_dump(entries))
        line = self.assertOneLineError(self._run())
        self.assertTrue(line.startswith("ERROR: "), line)
        self.assertIn("learning_rat", line)
        self.assertIn(HYBRID_KEY, line)
        self.assertEqual(self._log_entries()[0]["error"], line)

    @unittest.skipIf(__import__("torch").cuda.is_available(), "this machine has CUDA")
    def test_device_cuda_unavailable(self):
        result = self._run("--device", "cuda")
        line = self.assertOneLineError(result)
        self.assertTrue(line.startswith("ERROR: "), line)
        self.assertIn("cuda", line.lower())
        self.assertIn("not available", line)
        (run,) = self._log_entries()
        self.assertEqual(run["status"], "failed")
        self.assertEqual(run["error"], line)
        self.assertEqual(run["args"]["device"], "cuda")
        self.assertIn("config", run)  # hparams were loaded before the device check
        self.assertNotIn("dataset", run)  # ... and no data work was done
        self.assertNotIn("device", run)
        self.assertFalse((self.work / "bc_checkpoints").exists())


class RepoHparamFileTest(unittest.TestCase):
    """The hparam.yml shipped in the repository."""

    def test_default_path_is_repo_hparam_yml(self):
        self.assertEqual(hparams.DEFAULT_HPARAM_FILE, REPO_ROOT / "hparam.yml")

    def test_validates_with_all_quickstart_keys(self):
        entries = hparams.validate_file()
        for key, env_id in QUICKSTART_KEYS.items():
            with self.subTest(key=key):
                self.assertIn(key, entries)
                self.assertEqual(entries[key].env_id, env_id)
                model = hparams.HybridConfig if key.endswith("-hybrid") else hparams.BCConfig
                self.assertIsInstance(entries[key], model)
        raw = yaml.safe_load(hparams.DEFAULT_HPARAM_FILE.read_text())
        for key in QUICKSTART_KEYS:
            self.assertIn("env_id", raw[key], f"{key} must state env_id explicitly")

    def test_quickstart_pairs_load_together(self):
        for env in ("Walker2d", "Humanoid", "Ant"):
            with self.subTest(env=env):
                bc, hybrid = hparams.load_hparams(f"{env}-v4-bc-large", f"{env}-v4-hybrid")
                self.assertIsInstance(bc, hparams.BCConfig)
                self.assertIsInstance(hybrid, hparams.HybridConfig)
                self.assertEqual(bc.env_id, f"{env}-v4")
                self.assertEqual(bc.policy.net_arch, hybrid.policy.net_arch)
                self.assertLessEqual(hybrid.batch_size, hybrid.n_steps * hybrid.n_envs)

    def test_repo_values_are_read_not_defaulted(self):
        bc, hybrid = hparams.load_hparams(BC_KEY, HYBRID_KEY)
        self.assertEqual(hybrid.learning_rate, 5.0e-5)  # default would be 3e-4
        self.assertEqual(hybrid.clip_range, 0.1)
        self.assertEqual(hybrid.target_kl, 0.03)
        self.assertEqual(hybrid.total_timesteps, 200000)
        self.assertEqual(list(bc.policy.net_arch.pi), [256, 256])


class HparamValidationTest(IsolatedTestCase):
    """hparams.py on files written by the tests: every mistake is a one-line PipelineError."""

    def setUp(self):
        super().setUp()
        self.path = self.work / "hparam.yml"
        base = yaml.safe_load((REPO_ROOT / "hparam.yml").read_text())
        self.bc = dict(base[BC_KEY])
        self.hybrid = dict(base[HYBRID_KEY])

    def _write(self, bc=None, hybrid=None):
        self.path.write_text(yaml.safe_dump({BC_KEY: {**self.bc, **(bc or {})},
                                             HYBRID_KEY: {**self.hybrid, **(hybrid or {})}}))

    def _load(self):
        return hparams.load_hparams(BC_KEY, HYBRID_KEY, self.path)

    def assertLoadError(self, *fragments: str) -> str:
        with self.assertRaises(PipelineError) as cm:
            self._load()
        message = str(cm.exception)
        self.assertNotIn("\n", message)
        for fragment in fragments:
            self.assertIn(fragment, message)
        return message

    def test_valid_file_loads(self):
        self._write(hybrid={"n_steps": 512, "batch_size": 128})
        bc, hybrid = self._load()
        self.assertEqual((hybrid.n_steps, hybrid.batch_size), (512, 128))
        self.assertEqual(bc.env_id, "Walker2d-v4")

    def test_anchor_gate_needs_anchor_episodes(self):
        self._write(hybrid={"anchor_coeff": 10.0, "anchor_gate": "bc_gain", "anchor_episodes": 0})
        self.assertLoadError("anchor_gate bc_gain needs anchor_episodes > 0", HYBRID_KEY)

    def test_offline_updates_need_offline_advantages_in_the_policy_gradient(self):
        self._write(hybrid={"offline_policy_updates": 5, "offline_advantages": "none"})
        self.assertLoadError("offline_policy_updates needs offline_advantages positive or signed",
                             HYBRID_KEY)
        self._write(hybrid={"offline_policy_updates": 5, "offline_advantages": "positive"})
        self.assertEqual(self._load()[1].offline_policy_updates, 5)

    def test_unknown_key_names_key_and_entry(self):
        self._write(hybrid={"learning_rat": 1e-3})
        self.assertLoadError("unknown key 'learning_rat'", HYBRID_KEY)
        self._write(bc={"val_frac": 0.2})
        self.assertLoadError("unknown key 'val_frac'", BC_KEY)

    def test_unknown_nested_key_names_its_path(self):
        self._write(hybrid={"ood": {"z_thresh": 1.0}})
        self.assertLoadError("ood.z_thresh", HYBRID_KEY)
        self._write(bc={"policy": {"net_arch": {"pi": [8], "vf": [8], "qf": [8]}}})
        self.assertLoadError("policy.net_arch.qf", BC_KEY)

    def test_wrong_type_names_field(self):
        for hybrid, field in (({"n_steps": "abc"}, "n_steps"), ({"learning_rate": [1]}, "learning_rate"),
                              ({"n_epochs": 2.5}, "n_epochs"), ({"target_kl": "off"}, "target_kl")):
            with self.subTest(field=field):
                self._write(hybrid=hybrid)
                self.assertLoadError(f"field '{field}'", HYBRID_KEY)
        self._write(bc={"policy": {"net_arch": {"pi": "big", "vf": [8]}}})
        self.assertLoadError("policy.net_arch.pi", BC_KEY)
        self._write(bc={"policy": {"net_arch": {"pi": [8], "vf": [8]}, "activation": "swish"}})
        self.assertLoadError("policy.activation", BC_KEY)

    def test_out_of_range_value_names_field(self):
        self._write(bc={"val_fraction": 1.5})
        self.assertLoadError("field 'val_fraction'", BC_KEY)
        self._write(hybrid={"gamma": 0})
        self.assertLoadError("field 'gamma'", HYBRID_KEY)

    def test_missing_required_field(self):
        self.hybrid.pop("total_timesteps")
        self._write()
        self.assertLoadError("total_timesteps", HYBRID_KEY)

    def test_malformed_yaml_names_line(self):
        good = yaml.safe_dump({BC_KEY: self.bc}).splitlines()
        broken = good + [f"{HYBRID_KEY}:", "  env_id: Walker2d-v4", "  policy: {net_arch: [1, 2}"]
        self.path.write_text("\n".join(broken) + "\n")
        message = self.assertLoadError("Malformed YAML", str(self.path))
        self.assertRegex(message, rf"line {len(broken)}\b")
        self.path.write_text("a:\n  b: 1\n c: 2\n")
        self.assertLoadError("line 3")
        with self.assertRaises(PipelineError) as cm:
            hparams.validate_file(self.path)
        self.assertIn("line 3", str(cm.exception))

    def test_file_must_be_a_mapping(self):
        for text in ("", "- a\n- b\n", "just text\n"):
            with self.subTest(text=text):
                self.path.write_text(text)
                self.assertLoadError(str(self.path))

    def test_missing_file(self):
        with self.assertRaises(PipelineError) as cm:
            hparams.load_hparams(BC_KEY, HYBRID_KEY, self.work / "nope.yml")
        self.assertIn("nope.yml", str(cm.exception))
        self.assertNotIn("\n", str(cm.exception))

    def test_entry_not_a_mapping(self):
        for raw, key in (([1, 2], BC_KEY), (3, BC_KEY), (None, HYBRID_KEY), ("x", HYBRID_KEY)):
            with self.subTest(raw=raw, key=key):
                data = {BC_KEY: self.bc, HYBRID_KEY: self.hybrid, key: raw}
                self.path.write_text(yaml.safe_dump(data))
                self.assertLoadError(f"'{key}'", "must be a mapping")
                with self.assertRaises(PipelineError) as cm:
                    hparams.validate_file(self.path)
                self.assertIn("must be a mapping", str(cm.exception))

    def test_bc_and_hybrid_must_share_env(self):
        self._write(hybrid={"env_id": "Hopper-v4"})
        self.assertLoadError(BC_KEY, HYBRID_KEY, "Walker2d-v4", "Hopper-v4")
        self._write(hybrid={"env_kwargs": {"terminate_when_unhealthy": False}})
        self.assertLoadError(BC_KEY, HYBRID_KEY, "terminate_when_unhealthy")

    def test_bc_and_hybrid_must_share_policy_net(self):
        self._write(hybrid={"policy": {"net_arch": {"pi": [64, 64], "vf": [64, 64]}}})
        self.assertLoadError(BC_KEY, HYBRID_KEY, "net_arch")
        self._write(hybrid={"policy": {"net_arch": self.bc["policy"]["net_arch"],
                                       "activation": "relu"}})
        self.assertLoadError(BC_KEY, HYBRID_KEY, "activation")

    def test_float_written_without_dot_is_accepted(self):
        """PyYAML (YAML 1.1) reads `3e-4` as the string '3e-4'; a float field must still take
        it as 0.0003 rather than fail or keep a string."""
        self._write()
        text = self.path.read_text()
        text = re.sub(r"(?m)^(  learning_rate:) .*$", r"\1 3e-4", text)
        self.path.write_text(text)
        self.assertEqual(yaml.safe_load(text)[HYBRID_KEY]["learning_rate"], "3e-4")  # premise
        bc, hybrid = self._load()
        self.assertIsInstance(hybrid.learning_rate, float)
        self.assertAlmostEqual(hybrid.learning_rate, 3e-4, places=12)
        self.assertAlmostEqual(bc.learning_rate, 3e-4, places=12)

    # PyYAML's YAML 1.1 reads 1e6 as a string; hparams loads YAML 1.2 floats, and an int
    # field takes a float only when it is a whole number.
    def test_integer_written_in_exponent_form(self):
        self._write()
        original = self.path.read_text()
        self.path.write_text(re.sub(r"(?m)^(  total_timesteps:) .*$", r"\1 1e6", original))
        _, hybrid = self._load()
        self.assertEqual(hybrid.total_timesteps, 1_000_000)
        self.assertIs(type(hybrid.total_timesteps), int)
        self.path.write_text(re.sub(r"(?m)^(  total_timesteps:) .*$", r"\1 2.5e0", original))
        self.assertLoadError(HYBRID_KEY, "field 'total_timesteps'", "2.5")

    def test_layer_sizes_must_be_positive(self):
        for sizes in ([-5], [0], [64, 0]):
            with self.subTest(sizes=sizes):
                self._write(bc={"policy": {"net_arch": {"pi": sizes, "vf": [8]}}})
                self.assertLoadError(BC_KEY, "policy.net_arch.pi", "greater than 0")
                self._write(hybrid={"policy": {"net_arch": {"pi": [8], "vf": sizes}}})
                self.assertLoadError(HYBRID_KEY, "policy.net_arch.vf", "greater than 0")

    def test_target_kl_must_be_positive_when_given(self):
        for value in (-1, 0):
            with self.subTest(value=value):
                self._write(hybrid={"target_kl": value})
                self.assertLoadError(HYBRID_KEY, "field 'target_kl'")
        self._write(hybrid={"target_kl": None})
        self.assertIsNone(self._load()[1].target_kl)

    def test_non_finite_floats_are_rejected(self):
        """YAML spells them .nan/.inf; any float field, top level or nested."""
        cases = [("hybrid", "clip_range", ".inf"), ("hybrid", "ent_coef", ".nan"),
                 ("hybrid", "learning_rate", ".inf"), ("hybrid", "log_std_min", "-.inf"),
                 ("bc", "log_std_min", ".nan"), ("bc", "weight_decay", ".inf")]
        for which, field, value in cases:
            with self.subTest(field=field, value=value):
                self._write()
                entries = yaml.safe_load(self.path.read_text())
                key = HYBRID_KEY if which == "hybrid" else BC_KEY
                text = yaml.safe_dump({k: {kk: vv for kk, vv in v.items() if kk != field}
                                       for k, v in entries.items()})
                text = text.replace(f"{key}:\n", f"{key}:\n  {field}: {value}\n", 1)
                self.path.write_text(text)
                self.assertLoadError(key, f"field '{field}'", "finite")
        self._write(hybrid={"policy": {**self.hybrid["policy"], "log_std_init": float("nan")}})
        self.assertLoadError(HYBRID_KEY, "policy.log_std_init", "finite")
        self._write(hybrid={"ood": {"z_threshold": float("inf")}})
        self.assertLoadError(HYBRID_KEY, "ood.z_threshold", "finite")

    def test_duplicate_keys_are_rejected(self):
        self._write()
        text = self.path.read_text()
        dup = text.replace("  n_epochs: 10\n", "  n_epochs: 10\n  n_epochs: 3\n", 1)
        self.assertNotEqual(dup, text)
        self.assertEqual(yaml.safe_load(dup)[HYBRID_KEY]["n_epochs"], 3)  # PyYAML keeps the last
        self.path.write_text(dup)
        message = self.assertLoadError("duplicate key 'n_epochs'", str(self.path))
        self.assertRegex(message, r"line \d+")
        # A duplicated entry name too.
        self.path.write_text(text + f"{BC_KEY}:\n  env_id: Walker2d-v4\n")
        self.assertLoadError(f"duplicate key '{BC_KEY}'")
        # A YAML merge key followed by an explicit override is not a duplicate.
        merged = (f"base: &b\n  env_id: Walker2d-v4\n  learning_rate: 0.1\n"
                  f"{BC_KEY}:\n  <<: *b\n  learning_rate: 0.2\n")
        from hparams import _load_yaml

        self.path.write_text(merged)
        self.assertEqual(_load_yaml(self.path)[BC_KEY]["learning_rate"], 0.2)

    def test_batch_size_must_fit_rollout(self):
        self._write(hybrid={"n_steps": 256, "n_envs": 1, "batch_size": 512})
        self.assertLoadError(HYBRID_KEY, "batch_size 512", "256")
        self._write(hybrid={"n_steps": 256, "n_envs": 2, "batch_size": 512})  # exactly fits
        _, hybrid = self._load()
        self.assertEqual(hybrid.batch_size, 512)

    def test_validate_file_reports_the_bad_entry(self):
        data = {BC_KEY: self.bc, HYBRID_KEY: self.hybrid,
                "Hopper-v4-hybrid": {**self.hybrid, "env_id": "Hopper-v4", "n_stepz": 4}}
        self.path.write_text(yaml.safe_dump(data))
        self._load()  # the pair in use is fine ...
        with self.assertRaises(PipelineError) as cm:
            hparams.validate_file(self.path)  # ... but the whole-file check names the bad one
        self.assertIn("Hopper-v4-hybrid", str(cm.exception))
        self.assertIn("n_stepz", str(cm.exception))


class ResolveDeviceTest(unittest.TestCase):
    def _resolve(self, choice: str) -> str:
        with contextlib.redirect_stdout(io.StringIO()) as out:
            device = tp.resolve_device(choice)
        self.assertIn(device, out.getvalue())
        return device

    def test_auto_is_cpu_here(self):
        import torch

        if torch.cuda.is_available() or torch.backends.mps.is_available():
            self.skipTest("this machine has an accelerator")
        self.assertEqual(self._resolve("auto"), "cpu")

    def test_cpu(self):
        self.assertEqual(self._resolve("cpu"), "cpu")

    def test_unavailable_accelerator_is_a_pipeline_error(self):
        import torch

        available = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
        for choice in ("cuda", "mps"):
            with self.subTest(device=choice):
                if available[choice]:
                    self.assertEqual(self._resolve(choice), choice)
                    continue
                with self.assertRaises(PipelineError) as cm:
                    self._resolve(choice)
                message = str(cm.exception)
                self.assertIn(choice, message)
                self.assertIn("not available", message)
                self.assertIn("cpu", message)
                self.assertNotIn("\n", message)


if __name__ == "__main__":
    unittest.main()
