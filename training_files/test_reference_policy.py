"""Reference-policy training with several envs and env kwargs, resumed from its checkpoints,
and generation of a bundled name whose recipe needs env kwargs (Ant-v4 with contact forces).

Tiny real runs: a few dozen PPO steps of Ant-v4 with a 20-step time limit, an untrained policy
for generation. What must hold: the kwargs reach every env (training, resume, evaluation,
generation, the dataset's recorded spec), a resume continues where the checkpoints stopped and
refuses another env, and user mistakes are one line.

Run with ``python test_reference_policy.py`` or ``python -m pytest -q test_reference_policy.py``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import subprocess
import sys
import unittest
import warnings
from pathlib import Path
from unittest import mock

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402

import collect_dataset  # noqa: E402
from collect_dataset import BUNDLED, REFERENCE_DIR, BundledRecipe, parse_env_kwargs  # noqa: E402
from errors import PipelineError  # noqa: E402
from offline_data import load_offline_data  # noqa: E402
from testing_utils import IsolatedTestCase, save_tiny_policy  # noqa: E402

warnings.filterwarnings("ignore", module="minari")

SCRIPT = HERE / "train_reference_policy.py"
CONTACT = {"use_contact_forces": True}


class EnvKwargsTest(unittest.TestCase):
    def test_json_and_key_value_give_the_same_kwargs(self):
        self.assertEqual(parse_env_kwargs(['{"use_contact_forces": true}']), CONTACT)
        self.assertEqual(parse_env_kwargs(["use_contact_forces=true"]), CONTACT)
        self.assertEqual(parse_env_kwargs(["frame_skip=5", "xml_file=ant.xml", "x=1.5"]),
                         {"frame_skip": 5, "xml_file": "ant.xml", "x": 1.5})
        self.assertEqual(parse_env_kwargs(None), {})

    def test_bad_kwargs_are_pipeline_errors(self):
        for items, expect in ((['{"a": tru}'], "not valid JSON"), (["[1, 2]"], "not key=value"),
                              (['{"a": 1'], "not valid JSON"), (["use_contact_forces"], "key=value"),
                              (["=1"], "key=value")):
            with self.subTest(items=items), self.assertRaisesRegex(PipelineError, expect):
                parse_env_kwargs(items)


class TrainReferencePolicyTest(IsolatedTestCase):
    def run_script(self, *args: str):
        return subprocess.run([sys.executable, str(SCRIPT), "--no_progress", *args],
                              cwd=self.work, capture_output=True, text=True, timeout=600)

    def test_several_envs_with_kwargs_then_resume_and_evaluate(self):
        from stable_baselines3 import PPO

        out = self.work / "runs" / "ant"
        common = ["--env_id", "Ant-v4", "--n_envs", "2", "--n_steps", "32",
                  "--checkpoint_every", "64", "--out", str(out)]
        kwargs = ["--env_kwargs", "use_contact_forces=true", "max_episode_steps=20"]
        proc = self.run_script(*common, *kwargs, "--timesteps", "128")
        self.assertEqual(proc.returncode, 0, proc.stderr[-2000:])
        for steps in (64, 128):
            self.assertTrue((out / f"ppo_{steps}_steps.zip").exists())
            self.assertTrue((out / f"ppo_vecnormalize_{steps}_steps.pkl").exists())
        run = json.loads((out / "run.json").read_text())
        self.assertEqual((run["env_id"], run["env_kwargs"], run["n_envs"], run["n_steps"]),
                         ("Ant-v4", {**CONTACT, "max_episode_steps": 20}, 2, 32))
        model = PPO.load(out / "final.zip", device="cpu")
        self.assertEqual(model.observation_space.shape, (111,))  # the kwargs reached the envs
        self.assertEqual((model.n_envs, model.num_timesteps), (2, 128))

        # The same kwargs as one JSON object: a resume continues from the newest checkpoint.
        resumed = self.run_script(*common, "--env_kwargs",
                                  '{"use_contact_forces": true, "max_episode_steps": 20}',
                                  "--timesteps", "192", "--resume")
        self.assertEqual(resumed.returncode, 0, resumed.stderr[-2000:])
        self.assertIn(f"Resuming from {out / 'ppo_128_steps.zip'} at 128 steps", resumed.stdout)
        self.assertTrue((out / "ppo_192_steps.zip").exists())
        self.assertEqual(PPO.load(out / "final.zip", device="cpu").num_timesteps, 192)

        # Resuming on another env (Ant-v4 without contact forces: 27-dim obs) is refused, and
        # so is a fresh start over existing checkpoints: one line each.
        for args, expect in ((common + ["--timesteps", "256", "--resume"], "was trained on Ant-v4"),
                             (common + kwargs + ["--timesteps", "256"], "already holds checkpoints")):
            with self.subTest(expect=expect):
                proc = self.run_script(*args)
                self.assertEqual(proc.returncode, 1)
                lines = proc.stderr.strip().splitlines()
                self.assertEqual(len(lines), 1, proc.stderr)
                self.assertIn(expect, lines[0])
        self.assertFalse((out / "ppo_256_steps.zip").exists())

        # --evaluate takes the env and kwargs from run.json (without them, the 111-dim policy
        # could not act in Ant-v4's 27-dim default observation).
        proc = self.run_script("--evaluate", "1", "--out", str(out))
        self.assertEqual(proc.returncode, 0, proc.stderr[-2000:])
        self.assertEqual([line.split()[0] for line in proc.stdout.splitlines() if "steps:" in line],
                         ["64", "128", "192"])

        # A run killed while SB3 wrote its newest checkpoint: the resume takes the one before,
        # and --evaluate skips a checkpoint whose statistics were never written.
        (out / "ppo_vecnormalize_192_steps.pkl").write_bytes(b"\x80\x04")
        resumed = self.run_script(*common, *kwargs, "--timesteps", "256", "--resume")
        self.assertEqual(resumed.returncode, 0, resumed.stderr[-2000:])
        self.assertIn("Skipping checkpoint ppo_192_steps.zip: it does not load", resumed.stdout)
        self.assertIn(f"Resuming from {out / 'ppo_128_steps.zip'} at 128 steps", resumed.stdout)
        self.assertEqual(PPO.load(out / "final.zip", device="cpu").num_timesteps, 256)
        (out / "ppo_vecnormalize_64_steps.pkl").unlink()
        proc = self.run_script("--evaluate", "1", "--out", str(out))
        self.assertEqual(proc.returncode, 0, proc.stderr[-2000:])
        self.assertIn("64 steps: skipped, ppo_vecnormalize_64_steps.pkl is missing", proc.stdout)

    def test_bad_env_kwargs_are_one_line(self):
        proc = self.run_script("--env_id", "Ant-v4", "--env_kwargs", "no_such_kwarg=1",
                               "--timesteps", "64", "--out", str(self.work / "x"))
        self.assertEqual(proc.returncode, 1)
        lines = proc.stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, proc.stderr)
        self.assertIn("Cannot create env Ant-v4", lines[0])


class BundledRecipeWithEnvKwargsTest(IsolatedTestCase):
    """A recipe with env kwargs generates through generate_bundled, as walker2d's do."""

    KEY = ("mujoco", "ant", "simple-v0")

    def generate(self, recipe: BundledRecipe, ref: Path):
        with mock.patch.object(collect_dataset, "REPO_ROOT", ref.parent), \
                mock.patch.object(collect_dataset, "REFERENCE_DIR", ref), \
                mock.patch.dict(BUNDLED, {self.KEY: recipe}), \
                contextlib.redirect_stdout(io.StringIO()) as out:
            data = load_offline_data(*self.KEY[:2], [self.KEY[2]], "Ant-v4", CONTACT,
                                     progress=False)
        return data, out.getvalue()

    def test_ant_recipe_generates_d4rl_shaped_data_deterministically(self):
        ref = self.tmp / "repo" / "reference_policies"
        save_tiny_policy(ref / "ant" / "simple.zip", "Ant-v4", env_kwargs=CONTACT)
        recipe = BundledRecipe("Ant-v4", "simple", seed=0, episodes=3, n_envs=2,
                               env_kwargs={**CONTACT, "max_episode_steps": 15})
        data, out = self.generate(recipe, ref)
        self.assertIn("GENERATING offline dataset mujoco/ant/simple-v0", out)
        prov = data.provenance[0]
        self.assertEqual(prov["source"], "generated")
        self.assertEqual((prov["recorded_env_id"], prov["recorded_env_kwargs"]),
                         ("Ant-v4", {**CONTACT, "max_episode_steps": 15}))
        self.assertEqual(data.observations.shape[1:], (111,))
        self.assertEqual(len(data.episode_starts), 3)
        self.assertEqual((data.env_id, data.env_kwargs, data.env_note), ("Ant-v4", CONTACT, None))
        self.assertEqual(data.ref_scores, collect_dataset.D4RL_REF_SCORES["ant"])
        # The same recipe into another Minari directory gives the same data.
        first = data
        with mock.patch.dict("os.environ", {"MINARI_DATASETS_PATH": str(self.tmp / "minari2")}):
            again, _ = self.generate(recipe, ref)
        np.testing.assert_array_equal(again.observations, first.observations)
        np.testing.assert_array_equal(again.actions, first.actions)
        self.assertEqual(again.provenance[0]["sha256"], prov["sha256"])

    def test_every_bundled_recipe_has_its_policy_file(self):
        for (dataset, env, name), recipe in BUNDLED.items():
            with self.subTest(name=f"{dataset}/{env}/{name}"):
                self.assertTrue((REFERENCE_DIR / env / f"{recipe.policy}.zip").exists())

    def test_bundled_policies_carry_no_path_of_the_machine_that_trained_them(self):
        """SB3 saves `tensorboard_log` into the zip; an absolute path there is one machine's."""
        import zipfile

        for zip_path in sorted(REFERENCE_DIR.glob("*/*.zip")):
            with self.subTest(zip=zip_path.name), zipfile.ZipFile(zip_path) as archive:
                log_dir = json.loads(archive.read("data")).get("tensorboard_log")
                self.assertFalse(log_dir and Path(log_dir).is_absolute(), log_dir)

    def test_bundled_ant_and_humanoid_policies_generate_deterministically_in_the_keys_shapes(self):
        """The committed policies run on their recipe's env (Ant-v4 with contact forces: 111
        dims, D4RL's layout; Humanoid-v4: 376) and give the same bytes for a seed."""
        from hparams import validate_file

        entries = validate_file()
        for key, dims in ((("mujoco", "ant", "simple-v0"), 111),
                          (("mujoco", "humanoid", "simple-v0"), 376)):
            recipe = BUNDLED[key]
            entry = entries[f"{recipe.env_id}-hybrid"]
            with self.subTest(key=key):
                self.assertEqual((recipe.env_id, recipe.env_kwargs), (entry.env_id, entry.env_kwargs))
                runs = [collect_dataset.collect_episodes(recipe.env_id, REFERENCE_DIR / key[1] / f"{recipe.policy}.zip",
                                         2, recipe.seed, env_kwargs=recipe.env_kwargs,
                                         deterministic=recipe.deterministic, progress=False,
                                         n_envs=2) for _ in range(2)]
                self.assertEqual(runs[0][0].observations.shape[1], dims)
                for a, b in zip(*runs, strict=True):
                    np.testing.assert_array_equal(a.observations, b.observations)
                    np.testing.assert_array_equal(a.actions, b.actions)


if __name__ == "__main__":
    unittest.main()
