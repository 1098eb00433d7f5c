"""QUICKSTART's ant and humanoid keys on Minari-v5-shaped data: the env the dataset records.

Minari's mujoco/ant/* and mujoco/humanoid/* data were recorded on Ant-v5 (105-dim obs) and
Humanoid-v5 (348-dim); QUICKSTART's keys name Ant-v4 with contact forces (111-dim) and
Humanoid-v4 (376-dim). The pipeline then runs on the recorded env, says so in one line and
logs both envs. The tests write tiny v5-shaped Minari datasets themselves (a few short
random-action episodes, recording their env spec) and run the real command on them.

Run with ``python test_recorded_env.py`` or ``python -m pytest -q test_recorded_env.py``.
"""

from __future__ import annotations

import json
import sys
import unittest
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import gymnasium as gym  # noqa: E402

from errors import PipelineError  # noqa: E402
from offline_data import load_offline_data  # noqa: E402
from testing_utils import IsolatedTestCase, write_hparam_file, write_random_minari  # noqa: E402

warnings.filterwarnings("ignore", module="minari")

ANT_V4 = ("Ant-v4", {"use_contact_forces": True})


class RecordedEnvResolutionTest(IsolatedTestCase):
    """load_offline_data picks the env: the entry's, else the recorded one, else one error."""

    def test_ant_v5_data_with_the_ant_v4_entry_run_on_ant_v5(self):
        write_random_minari("mujoco/ant/simple-v0", "Ant-v5", episodes=2, max_steps=5)
        data = load_offline_data("mujoco", "ant", ["simple-v0"], *ANT_V4)
        self.assertEqual((data.env_id, data.env_kwargs), ("Ant-v5", {}))
        self.assertEqual(data.observations.shape[1:], (105,))
        for part in ("Ant-v4 {'use_contact_forces': True}", "obs (111,)", "obs (105,)",
                     "run on Ant-v5, the env the dataset records"):
            self.assertIn(part, data.env_note)
        self.assertNotIn("\n", data.env_note)
        # The BC split keeps the env (bc.train_bc builds its env from the config, but a
        # subset must not silently lose what the whole says).
        self.assertEqual(data.select_episodes([1]).env_id, "Ant-v5")

    def test_entry_env_that_fits_is_kept_and_no_note(self):
        write_random_minari("mujoco/ant/simple-v0", "Ant-v5", episodes=1, max_steps=5)
        data = load_offline_data("mujoco", "ant", ["simple-v0"], "Ant-v5")
        self.assertEqual((data.env_id, data.env_kwargs, data.env_note), ("Ant-v5", {}, None))

    def test_recorded_kwargs_and_time_limit_come_from_the_dataset(self):
        # Built from the dataset's spec, never from the entry's env_kwargs (Ant-v5 has no
        # use_contact_forces); a time limit other than the registered one is kept.
        write_random_minari("mujoco/ant/medium-v0", "Ant-v5", episodes=2, max_steps=5,
                            recorded_env_kwargs={"max_episode_steps": 50})
        data = load_offline_data("mujoco", "ant", ["medium-v0"], *ANT_V4)
        self.assertEqual((data.env_id, data.env_kwargs), ("Ant-v5", {"max_episode_steps": 50}))
        env = gym.make(data.env_id, **data.env_kwargs)
        self.assertEqual(env.spec.max_episode_steps, 50)
        self.assertEqual(env.observation_space.shape, (105,))
        env.close()
        self.assertEqual(data.provenance[0]["recorded_env_kwargs"], {"max_episode_steps": 50})

    def test_humanoid_v5_data_with_the_humanoid_v4_entry(self):
        write_random_minari("mujoco/humanoid/simple-v0", "Humanoid-v5", episodes=2, max_steps=5)
        data = load_offline_data("mujoco", "humanoid", ["simple-v0"], "Humanoid-v4")
        self.assertEqual((data.env_id, data.env_kwargs), ("Humanoid-v5", {}))
        self.assertIn("obs (376,)", data.env_note)
        self.assertIn("obs (348,)", data.env_note)

    def test_recorded_env_that_does_not_fit_either_is_one_error_line(self):
        write_random_minari("mujoco/ant/simple-v0", "Ant-v5", episodes=1, max_steps=5,
                            recorded_env_kwargs={"include_cfrc_ext_in_observation": False})
        with self.assertRaises(PipelineError) as ctx:
            load_offline_data("mujoco", "ant", ["simple-v0"], *ANT_V4)
        msg = str(ctx.exception)
        self.assertNotIn("\n", msg)
        for part in ("obs (105,)", "obs (111,)", "recorded on Ant-v5", "obs (27,)",
                     "do not fit it either"):
            self.assertIn(part, msg)

    def test_another_env_is_never_used_in_place_of_the_entry(self):
        # Walker2d data with a Hopper entry is a wrong key, not a version change.
        write_random_minari("mujoco/walker2d/simple-v0", "Walker2d-v4", episodes=1, max_steps=5)
        with self.assertRaises(PipelineError) as ctx:
            load_offline_data("mujoco", "walker2d", ["simple-v0"], "Hopper-v4",
                              candidates={"Walker2d-v4-bc-large": ("Walker2d-v4", {})})
        msg = str(ctx.exception)
        self.assertIn("recorded on Walker2d-v4 (not Hopper-v4 at another version", msg)
        self.assertIn("hparam entries that fit: Walker2d-v4-bc-large", msg)

    def test_datasets_recording_different_envs_are_refused(self):
        write_random_minari("mujoco/ant/simple-v0", "Ant-v5", episodes=1, max_steps=5)
        write_random_minari("mujoco/ant/medium-v0", "Ant-v5", episodes=1, max_steps=5,
                            recorded_env_kwargs={"max_episode_steps": 50})
        with self.assertRaisesRegex(PipelineError, "different envs or kwargs per dataset"):
            load_offline_data("mujoco", "ant", ["simple-v0", "medium-v0"], *ANT_V4)


class RecordedEnvCommandTest(IsolatedTestCase):
    """The real command with QUICKSTART's keys on tiny v5-shaped Minari data."""

    def run_keys(self, env: str, key: str, name: str = "simple-v0"):
        hp = write_hparam_file(self.work / "hparam.yml", bc_key=f"{key}-bc-large",
                               hybrid_key=f"{key}-hybrid")
        return self.run_cli("--dataset", "mujoco", "--env", env, "--names", name,
                            "--hparam_bc", f"{key}-bc-large", "--hparam_hybrid", f"{key}-hybrid",
                            "--num_bc_epochs", "1", "--hparam_file", str(hp), "--no_progress",
                            "--save_file", "model.zip", "--seed", "3")

    def check_run_on_recorded_env(self, env: str, key: str, entry_env: tuple, recorded: str,
                                  obs_dim: int):
        write_random_minari(f"mujoco/{env}/simple-v0", recorded, episodes=3, max_steps=12)
        proc = self.run_keys(env, key)
        self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
        self.assertNotIn("Traceback", proc.stderr)
        notes = [line for line in proc.stdout.splitlines() if line.startswith("Note: ")]
        self.assertEqual(len(notes), 1, proc.stdout)
        self.assertIn(f"run on {recorded}, the env the dataset records", notes[0])
        self.assertIn(f"the hparam entry's env {entry_env[0]}", notes[0])

        (entry,) = json.loads((self.work / "logs" / "pipeline_runs.json").read_text())
        self.assertEqual(entry["status"], "ok")
        self.assertEqual(entry["env"]["hparam_env"],
                         {"env_id": entry_env[0], "env_kwargs": entry_env[1]})
        self.assertEqual(entry["env"]["used_env"], {"env_id": recorded, "env_kwargs": {}})
        self.assertEqual(entry["env"]["note"], notes[0][len("Note: "):])
        # Every stage ran on the recorded env: the configs, the BC settings record, and the
        # models (the test evaluation loads the zips and steps them in the recorded env).
        for stage in ("bc", "hybrid"):
            self.assertEqual(entry["config"][stage]["env_id"], recorded)
        self.assertEqual(entry["bc_settings"]["bc_config"]["env_id"], recorded)
        self.assertEqual(entry["final_test_eval"]["episodes"], 2)
        self.assertGreater(entry["final_test_eval"]["mean_ep_length"], 0)
        self.assertIn("eval", entry["bc"])
        from stable_baselines3 import PPO

        model = PPO.load(self.work / "model.zip", device="cpu")
        self.assertEqual(model.observation_space.shape, (obs_dim,))

    def test_ant_keys_run_on_ant_v5_data(self):
        self.check_run_on_recorded_env("ant", "Ant-v4", ANT_V4, "Ant-v5", 105)

    def test_humanoid_keys_run_on_humanoid_v5_data(self):
        self.check_run_on_recorded_env("humanoid", "Humanoid-v4", ("Humanoid-v4", {}),
                                       "Humanoid-v5", 348)

    def test_recorded_env_that_does_not_fit_either_exits_with_one_line(self):
        write_random_minari("mujoco/ant/simple-v0", "Ant-v5", episodes=1, max_steps=5,
                            recorded_env_kwargs={"include_cfrc_ext_in_observation": False})
        proc = self.run_keys("ant", "Ant-v4")
        self.assertEqual(proc.returncode, 1)
        self.assertNotIn("Traceback", proc.stderr)
        lines = proc.stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, proc.stderr)
        self.assertTrue(lines[0].startswith("ERROR: Dataset has obs (105,)"), lines[0])
        self.assertIn("do not fit it either", lines[0])
        (entry,) = json.loads((self.work / "logs" / "pipeline_runs.json").read_text())
        self.assertEqual((entry["status"], entry["error"]), ("failed", lines[0]))
        self.assertFalse((self.work / "model.zip").exists())


if __name__ == "__main__":
    unittest.main()
