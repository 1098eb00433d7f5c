"""Tests for collect_dataset's vectorised generation: determinism, per-episode seeds, progress.

Tiny real rollouts: an untrained SB3 policy on Walker2d falls within a few dozen steps, so an
episode costs milliseconds. Loading and writing datasets is covered by test_offline_data.py.

Run with ``python test_collect_dataset.py`` or ``python -m pytest -q test_collect_dataset.py``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import sys
import unittest
import warnings
from pathlib import Path
from unittest import mock

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import collect_dataset  # noqa: E402
from collect_dataset import BUNDLED, collect_episodes, episode_seeds  # noqa: E402
from testing_utils import IsolatedTestCase, save_tiny_policy  # noqa: E402

warnings.filterwarnings("ignore", module="minari")

ENV_ID = "Walker2d-v4"
FIELDS = ("observations", "actions", "rewards", "terminations", "truncations")


def _bytes(buffers: list) -> list[bytes]:
    """Each episode's arrays as bytes: equal lists mean byte-identical data."""
    return [b"".join(np.asarray(getattr(b, f)).tobytes() for f in FIELDS) for b in buffers]


def _observation_blind(path: Path) -> Path:
    """The tiny policy with a zero action head: its mean is the bias whatever the observation.

    A matmul's last bit can depend on the batch size (MKL chooses kernels by shape), so with a
    real policy a one-env run and a vectorised run may part ways after a few steps. Multiplying
    by exact zeros is exact in any kernel, so this policy isolates what vectorisation itself
    must get right: which seed and which noise each episode gets, and where it is stored.
    """
    from stable_baselines3 import PPO

    model = PPO.load(path, device="cpu")
    with torch.no_grad():
        model.policy.action_net.weight.zero_()
        model.policy.action_net.bias.copy_(torch.linspace(-0.3, 0.3, 6))
    model.save(path)
    return path


class VectorisedCollectionTest(IsolatedTestCase):
    def setUp(self):
        super().setUp()
        self.policy = save_tiny_policy(self.tmp / "policies" / "tiny.zip")

    def collect(self, policy: Path, episodes: int, seed: int, n_envs: int, **kwargs) -> list:
        return collect_episodes(ENV_ID, policy, episodes, seed, progress=False, n_envs=n_envs,
                                **kwargs)

    def test_same_seed_gives_byte_identical_episodes_and_another_seed_does_not(self):
        for deterministic in (False, True):
            with self.subTest(deterministic=deterministic):
                a = self.collect(self.policy, 5, seed=3, n_envs=3, deterministic=deterministic)
                b = self.collect(self.policy, 5, seed=3, n_envs=3, deterministic=deterministic)
                c = self.collect(self.policy, 5, seed=4, n_envs=3, deterministic=deterministic)
                self.assertEqual(_bytes(a), _bytes(b))
                self.assertEqual(len(set(_bytes(a)) & set(_bytes(c))), 0)
                self.assertEqual([buf.id for buf in a], list(range(5)))
                for buf in a:
                    self.assertEqual(len(buf.observations), len(buf.actions) + 1)
                    self.assertTrue(buf.terminations[-1] or buf.truncations[-1])
                    self.assertFalse(any(buf.terminations[:-1]) or any(buf.truncations[:-1]))
                # Slots finish at different steps, so later episodes start mid-run: the test
                # covers refilling, not only the first wave.
                self.assertGreater(len({len(buf.rewards) for buf in a}), 1)

    def test_episodes_do_not_depend_on_the_number_of_envs_or_the_slot(self):
        policy = _observation_blind(self.policy)
        one_env = self.collect(policy, 6, seed=7, n_envs=1, action_noise=0.2)
        for n_envs in (2, 4, 8):
            with self.subTest(n_envs=n_envs):
                vectorised = self.collect(policy, 6, seed=7, n_envs=n_envs, action_noise=0.2)
                self.assertEqual(_bytes(vectorised), _bytes(one_env))
        # Episode k is the same however many episodes are asked for.
        self.assertEqual(_bytes(self.collect(policy, 3, seed=7, n_envs=2, action_noise=0.2)),
                         _bytes(one_env[:3]))
        # The noise is real: the episodes differ from one another.
        self.assertEqual(len(set(_bytes(one_env))), 6)

    def test_each_episode_starts_from_its_recorded_seed_with_raw_observations(self):
        buffers = self.collect(self.policy, 4, seed=0, n_envs=3)
        env = gym.make(ENV_ID)
        for buf in buffers:
            first, _ = env.reset(seed=buf.seed)
            # Raw observations (the policy saw them through VecNormalize, not recorded so).
            np.testing.assert_array_equal(buf.observations[0], first.astype(np.float32))
        env.close()
        self.assertEqual(len({buf.seed for buf in buffers}), 4)

    def test_neighbouring_seeds_share_no_episode_seed(self):
        # expert-v0 and expert-v1 differ only by seed 0 vs 1: with seed+k per episode they
        # would hold the same episodes shifted by one.
        v0 = {int(s.generate_state(1)[0]) for s in episode_seeds(0, 100)}
        v1 = {int(s.generate_state(1)[0]) for s in episode_seeds(1, 100)}
        self.assertEqual(len(v0), 100)
        self.assertEqual(v0 & v1, set())
        self.assertEqual(episode_seeds(0, 3)[2].generate_state(4).tolist(),
                         episode_seeds(0, 100)[2].generate_state(4).tolist())

    def test_progress_flag_shows_or_hides_the_bar(self):
        for progress in (True, False):
            err = io.StringIO()
            with contextlib.redirect_stderr(err):
                collect_episodes(ENV_ID, self.policy, 2, seed=0, n_envs=2, progress=progress)
            if progress:
                self.assertIn(f"collect {ENV_ID}", err.getvalue())
                self.assertIn("2/2", err.getvalue())
            else:
                self.assertEqual(err.getvalue(), "")

    def test_generate_bundled_uses_the_recipe_and_honours_progress(self):
        ref = self.tmp / "repo" / "reference_policies"
        save_tiny_policy(ref / "walker2d" / "expert.zip")
        key = ("mujoco", "walker2d", "expert-v0")
        tiny = dataclasses.replace(BUNDLED[key], episodes=3, n_envs=2)
        err, out = io.StringIO(), io.StringIO()
        with mock.patch.object(collect_dataset, "REPO_ROOT", ref.parent), \
                mock.patch.object(collect_dataset, "REFERENCE_DIR", ref), \
                mock.patch.dict(BUNDLED, {key: tiny}), \
                contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            path = collect_dataset.generate_bundled(*key, progress=False)
        self.assertEqual(err.getvalue(), "")
        self.assertIn("2 envs", out.getvalue())
        import minari

        dataset = minari.load_dataset("mujoco/walker2d/expert-v0")
        self.assertEqual(path, collect_dataset.minari_root() / "mujoco/walker2d/expert-v0")
        expected = collect_episodes(ENV_ID, ref / "walker2d" / "expert.zip", 3, tiny.seed,
                                    deterministic=tiny.deterministic, progress=False, n_envs=2)
        for episode, buf in zip(dataset.iterate_episodes(), expected, strict=True):
            np.testing.assert_array_equal(episode.observations, buf.observations)
            np.testing.assert_array_equal(episode.actions, buf.actions)

    def test_inference_runs_on_one_thread_and_the_callers_setting_is_restored(self):
        seen = []
        real = torch.Tensor.numpy

        def spy(tensor, *args, **kwargs):
            seen.append(torch.get_num_threads())
            return real(tensor, *args, **kwargs)

        torch.set_num_threads(2)
        try:
            with mock.patch.object(torch.Tensor, "numpy", spy):
                collect_episodes(ENV_ID, self.policy, 2, seed=0, n_envs=2, progress=False)
            self.assertEqual(torch.get_num_threads(), 2)
        finally:
            torch.set_num_threads(1)  # testing_utils' setting for every test
        self.assertTrue(seen)
        self.assertEqual(set(seen), {1})

    def test_cli_rejects_non_positive_n_envs(self):
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = collect_dataset.main(["--env_id", ENV_ID, "--policy", str(self.policy),
                                         "--episodes", "2", "--n_envs", "0",
                                         "--name", "mujoco/walker2d/cli-v0"])
        self.assertEqual(code, 1)
        self.assertIn("--n_envs", err.getvalue())

    def test_a_file_that_is_not_a_policy_is_one_line(self):
        junk = self.work / "junk.zip"
        junk.write_text("not a zip")
        stats = self.work / "ok_vecnormalize.pkl"
        stats.write_bytes(b"\x80\x04")  # a truncated pickle beside a good policy
        ok = self.work / "ok.zip"
        ok.write_bytes(Path(self.policy).read_bytes())
        for policy, expect in ((junk, "Cannot load policy"),
                               (ok, "Cannot load observation statistics")):
            err = io.StringIO()
            with self.subTest(expect=expect), contextlib.redirect_stderr(err), \
                    contextlib.redirect_stdout(io.StringIO()):
                code = collect_dataset.main(["--env_id", ENV_ID, "--policy", str(policy),
                                             "--episodes", "2", "--name", "mujoco/walker2d/cli-v0"])
                self.assertEqual(code, 1)
                self.assertEqual(len(err.getvalue().strip().splitlines()), 1, err.getvalue())
                self.assertIn(expect, err.getvalue())


if __name__ == "__main__":
    unittest.main()
