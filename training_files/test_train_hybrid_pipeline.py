"""QUICKSTART's unit-test entry point: `cd training_files && python test_train_hybrid_pipeline.py`.

Run with plain python it also runs every unit-test module (arguments, hparams, data, BC,
selection, run log, V-trace, HybridPPO) through unittest's load_tests protocol; pytest
collects those modules on its own and ignores load_tests, so nothing runs twice.
The tests here hold the entry script to docs/QUICKSTART.txt, the user's own document.
"""

from __future__ import annotations

import re
import shlex
import unittest

from testing_utils import REPO_ROOT, IsolatedTestCase
from train_hybrid_pipeline import build_parser

UNIT_MODULES = ["test_cli_and_hparams", "test_bad_inputs", "test_offline_data",
                "test_bc_checkpoints", "test_atomic_file", "test_run_log", "test_vtrace",
                "test_hybrid_ppo", "test_finetuning", "test_collect_dataset", "test_plot_runs"]
QUICKSTART = REPO_ROOT / "docs" / "QUICKSTART.txt"


def load_tests(loader, standard_tests, pattern):
    for name in UNIT_MODULES:
        standard_tests.addTests(loader.loadTestsFromName(name))
    return standard_tests


def quickstart_commands() -> list[list[str]]:
    """Every `python training_files/train_hybrid_pipeline.py ...` command, joined across `\\`."""
    text = QUICKSTART.read_text().replace("\\\n", " ")
    return [shlex.split(line.strip())[2:] for line in text.splitlines()
            if line.strip().startswith("python training_files/train_hybrid_pipeline.py")]


def quickstart_arguments() -> dict[str, str | None]:
    """ARGUMENTS section: flag -> documented default (None for required flags and switches)."""
    section = QUICKSTART.read_text().split("ARGUMENTS")[1].split("HPARAM KEYS")[0]
    out = {}
    for line in section.splitlines():
        m = re.match(r"\s+(--\w+)\b.*?(?:\(default: ([^)]+)\))?$", line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


class QuickStartContract(IsolatedTestCase):
    def test_every_quickstart_command_parses(self):
        commands = quickstart_commands()
        self.assertEqual(len(commands), 4, "BASIC USAGE has four commands")
        parser = build_parser()
        for argv in commands:
            args = parser.parse_args(argv)
            self.assertEqual((args.dataset, args.env), ("mujoco", "walker2d"))
        full = parser.parse_args(commands[1])
        self.assertEqual(full.names, ["expert-v0", "expert-v1"])
        self.assertEqual((full.rho_bar, full.c_bar, full.mix_ratio), (1.0, 0.95, 0.5))

    def test_every_documented_flag_and_default(self):
        documented = quickstart_arguments()
        self.assertEqual(len(documented), 19)
        parser = build_parser()
        actions = {a.option_strings[0]: a for a in parser._actions if a.option_strings}
        for flag, default in documented.items():
            self.assertIn(flag, actions, flag)
            if default is not None:
                value = actions[flag].default
                self.assertEqual(str(value), default, flag)
                self.assertIn(f"(default: {default})", " ".join(parser.format_help().split()))

    def test_hparam_keys_of_quickstart_exist(self):
        from hparams import validate_file

        keys = set(validate_file())
        documented = set(re.findall(r"\b(\w+-v4-(?:bc-large|hybrid))\b", QUICKSTART.read_text()))
        self.assertEqual(len(documented), 6)
        self.assertLessEqual(documented, keys)


if __name__ == "__main__":
    unittest.main()
