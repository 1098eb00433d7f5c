"""Tests for offline_data (dataset resolution and loading) and collect_dataset (generation).

Everything runs on tiny real data written by the tests: Minari datasets rolled out by an
untrained SB3 policy (a few dozen Walker2d steps each) and D4RL-layout HDF5 files.

Run with ``python test_offline_data.py`` or ``python -m pytest -q test_offline_data.py``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import sys
import tempfile
import unittest
import warnings
from pathlib import Path
from unittest import mock

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import h5py  # noqa: E402
import numpy as np  # noqa: E402

import collect_dataset  # noqa: E402
from collect_dataset import (BUNDLED, D4RL_REF_SCORES, collect_episodes, minari_root,  # noqa: E402
                             write_minari_dataset)
from errors import PipelineError  # noqa: E402
from offline_data import (d4rl_dir, d4rl_file_name, d4rl_ref_scores,  # noqa: E402
                          load_offline_data, normalized_score)
from testing_utils import (IsolatedTestCase, save_tiny_policy, write_d4rl_hdf5,  # noqa: E402
                           write_tiny_minari)

# Minari's own advice warnings (code_permalink, author_email, eval_env) are noise here.
warnings.filterwarnings("ignore", module="minari")


def _read_h5(path: Path) -> dict:
    with h5py.File(path, "r") as f:
        out = {k: f[k][:] for k in f if isinstance(f[k], h5py.Dataset)}
        if "infos" in f:
            out.update({f"infos/{k}": f["infos"][k][:] for k in f["infos"]})
    return out


def _minari_episodes(dataset_id: str) -> list:
    import minari

    return list(minari.load_dataset(dataset_id).iterate_episodes())


def _episode_lengths(data) -> list[int]:
    starts = data.episode_starts
    stops = np.append(starts[1:], len(data))
    return (stops - starts).tolist()


class _Base(IsolatedTestCase):
    """One untrained policy for the whole file (creating it costs about a second)."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls._policy_dir = tempfile.TemporaryDirectory(prefix="hybrid-test-policy-")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cls.policy = save_tiny_policy(Path(cls._policy_dir.name) / "tiny.zip")

    @classmethod
    def tearDownClass(cls):
        cls._policy_dir.cleanup()
        super().tearDownClass()

    def setUp(self):
        super().setUp()
        self._warn = warnings.catch_warnings()
        self._warn.__enter__()
        warnings.filterwarnings("ignore", module="minari")
        warnings.filterwarnings("ignore", category=DeprecationWarning)

    def tearDown(self):
        self._warn.__exit__(None, None, None)
        super().tearDown()

    # ----------------------------------------------------------------- helpers
    def tiny_minari(self, dataset_id: str, episodes: int = 3, seed: int = 0,
                    env_id: str = "Walker2d-v4") -> Path:
        return write_tiny_minari(dataset_id, episodes=episodes, seed=seed, env_id=env_id,
                                 policy=self.policy)

    def d4rl_file(self, file_name: str, *args, **kwargs) -> Path:
        return write_d4rl_hdf5(d4rl_dir() / file_name, *args, **kwargs)

    def assertEpisodeStructure(self, data, n_episodes: int):
        """Each episode ends in exactly one flag; the last row ends an episode."""
        self.assertEqual(data.terminations.dtype, bool)
        self.assertEqual(data.truncations.dtype, bool)
        self.assertFalse(np.any(data.terminations & data.truncations),
                         "a step is both a termination and a truncation")
        self.assertTrue(data.episode_ends[-1], "the last transition does not end an episode")
        self.assertEqual(int(data.episode_ends.sum()), n_episodes)
        self.assertEqual(len(data.observations), len(data))
        self.assertEqual(len(data.next_observations), len(data))
        self.assertEqual(len(data.actions), len(data))

    def assertNextObsChained(self, data):
        """next_observations[t] == observations[t+1] wherever t+1 is in the same episode."""
        inside = np.flatnonzero(~data.episode_ends[:-1])
        np.testing.assert_array_equal(data.next_observations[inside], data.observations[inside + 1])

    def assertNoPartialMinari(self, dataset_id: str):
        root = minari_root()
        self.assertFalse((root / dataset_id).exists(), f"partial folder {root / dataset_id} left")
        staging = list(root.glob(".staging-*")) if root.exists() else []
        self.assertEqual(staging, [], f"staging folders left: {staging}")


# =========================================================================== path 1: Minari

class MinariPathTest(_Base):
    def test_minari_dataset_loads_with_consistent_transitions(self):
        self.tiny_minari("mujoco/walker2d/expert-v0", episodes=3)
        data = load_offline_data("mujoco", "walker2d", ["expert-v0"], "Walker2d-v4")
        episodes = _minari_episodes("mujoco/walker2d/expert-v0")
        self.assertEqual(len(episodes), 3)

        self.assertEqual(len(data.provenance), 1)
        prov = data.provenance[0]
        self.assertEqual(prov["source"], "minari")
        self.assertEqual(prov["dataset_id"], "mujoco/walker2d/expert-v0")
        self.assertEqual(prov["name"], "expert-v0")
        self.assertEqual(prov["recorded_env_id"], "Walker2d-v4")
        self.assertEqual(prov["episodes"], 3)
        self.assertEqual(Path(prov["path"]), minari_root() / "mujoco/walker2d/expert-v0")

        self.assertEpisodeStructure(data, 3)
        self.assertNextObsChained(data)
        self.assertEqual(_episode_lengths(data), [len(ep.rewards) for ep in episodes])
        self.assertEqual(len(data), sum(len(ep.rewards) for ep in episodes))
        np.testing.assert_allclose(data.episode_returns, [ep.rewards.sum() for ep in episodes],
                                   rtol=1e-5, atol=1e-4)
        # The flags and observations are Minari's, episode by episode.
        for ep, start in zip(episodes, data.episode_starts):
            stop = start + len(ep.rewards)
            np.testing.assert_array_equal(data.observations[start:stop], ep.observations[:-1])
            np.testing.assert_array_equal(data.next_observations[stop - 1], ep.observations[-1])
            np.testing.assert_array_equal(data.actions[start:stop], ep.actions)
            self.assertEqual(bool(data.terminations[stop - 1]), bool(ep.terminations[-1]))
        self.assertEqual(data.observations.dtype, np.float32)
        self.assertEqual(data.observations.shape[1:], (17,))
        self.assertEqual(data.actions.shape[1:], (6,))
        self.assertIsNone(data.behaviour_log_probs)
        # Reference scores come from the dataset's own metadata (written by collect_dataset).
        self.assertEqual(data.ref_scores, D4RL_REF_SCORES["walker2d"])
        self.assertEqual(data.ref_scores_source, "minari:mujoco/walker2d/expert-v0")

    def test_same_env_gives_no_version_warning(self):
        self.tiny_minari("mujoco/walker2d/expert-v0", episodes=1)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            load_offline_data("mujoco", "walker2d", ["expert-v0"], "Walker2d-v4")
        self.assertEqual([str(w.message) for w in caught if "recorded on" in str(w.message)], [])

    def test_recorded_env_version_differs_warns_without_error(self):
        self.tiny_minari("mujoco/walker2d/expert-v0", episodes=2, env_id="Walker2d-v5")
        with self.assertWarnsRegex(UserWarning, r"recorded on Walker2d-v5.*Walker2d-v4"):
            data = load_offline_data("mujoco", "walker2d", ["expert-v0"], "Walker2d-v4")
        self.assertEqual(data.provenance[0]["recorded_env_id"], "Walker2d-v5")
        self.assertEpisodeStructure(data, 2)

    def test_minari_shape_mismatch_names_recorded_env(self):
        self.tiny_minari("mujoco/walker2d/expert-v0", episodes=1)
        with self.assertRaises(PipelineError) as ctx:
            load_offline_data("mujoco", "walker2d", ["expert-v0"], "Hopper-v4",
                              candidates={"Walker2d-v4-bc-large": ("Walker2d-v4", {}),
                                          "Hopper-v4-bc": ("Hopper-v4", {})})
        msg = str(ctx.exception)
        self.assertIn("(17,)", msg)
        self.assertIn("(11,)", msg)
        self.assertIn("recorded on Walker2d-v4", msg)
        self.assertIn("Walker2d-v4-bc-large", msg)
        self.assertNotIn("Hopper-v4-bc", msg.split("fit:")[-1])

    def test_broken_minari_folder_is_a_pipeline_error(self):
        data_dir = minari_root() / "mujoco/walker2d/expert-v0/data"
        data_dir.mkdir(parents=True)
        (data_dir / "main_data.hdf5").write_bytes(b"not an hdf5 file" * 10)
        with self.assertRaisesRegex(PipelineError, "cannot be read"):
            load_offline_data("mujoco", "walker2d", ["expert-v0"], "Walker2d-v4")

    def test_select_episodes_keeps_whole_episodes_in_order(self):
        self.tiny_minari("mujoco/walker2d/expert-v0", episodes=3)
        data = load_offline_data("mujoco", "walker2d", ["expert-v0"], "Walker2d-v4")
        sub = data.select_episodes(np.array([2, 0]))
        self.assertEqual(_episode_lengths(sub), [_episode_lengths(data)[2], _episode_lengths(data)[0]])
        np.testing.assert_allclose(sub.episode_returns, data.episode_returns[[2, 0]])
        self.assertEpisodeStructure(sub, 2)
        self.assertNextObsChained(sub)


# =========================================================================== path 2: D4RL

class D4RLPathTest(_Base):
    def test_d4rl_file_names(self):
        self.assertEqual(d4rl_file_name("walker2d", "expert-v0"), "walker2d_expert.hdf5")
        self.assertEqual(d4rl_file_name("walker2d", "expert-v2"), "walker2d_expert-v2.hdf5")
        self.assertEqual(d4rl_file_name("walker2d", "medium-replay-v2"),
                         "walker2d_medium_replay-v2.hdf5")
        self.assertEqual(d4rl_file_name("walker2d", "medium-expert-v0"),
                         "walker2d_medium_expert.hdf5")
        with self.assertRaisesRegex(PipelineError, "-v<N>"):
            d4rl_file_name("walker2d", "expert")

    def test_d4rl_with_timeouts_without_next_obs(self):
        # Episodes: 5 steps (timeout), 7 steps (terminal), 4 steps (timeout).
        path = self.d4rl_file("walker2d_expert.hdf5", 17, 6, [5, 7, 4],
                              terminal_last=[False, True, False])
        raw = _read_h5(path)
        data = load_offline_data("mujoco", "walker2d", ["expert-v0"], "Walker2d-v4")
        prov = data.provenance[0]
        self.assertEqual(prov["source"], "d4rl")
        self.assertEqual(Path(prov["path"]), path)
        self.assertEqual(prov["sha256"], hashlib.sha256(path.read_bytes()).hexdigest())
        self.assertFalse(prov["behaviour_log_probs"])

        # The step at each timeout (4 and 15) has no successor: dropped.
        kept = np.array([0, 1, 2, 3] + list(range(5, 15)))
        self.assertEqual(len(data), len(kept))
        np.testing.assert_array_equal(data.observations, raw["observations"][kept])
        np.testing.assert_array_equal(data.actions, raw["actions"][kept])
        np.testing.assert_array_equal(data.rewards, raw["rewards"][kept])
        self.assertEpisodeStructure(data, 3)
        self.assertEqual(_episode_lengths(data), [4, 7, 3])
        self.assertEqual(np.flatnonzero(data.truncations).tolist(), [3, 13])
        self.assertEqual(np.flatnonzero(data.terminations).tolist(), [10])
        # The truncated step's next obs is the dropped step's obs.
        np.testing.assert_array_equal(data.next_observations[3], raw["observations"][4])
        np.testing.assert_array_equal(data.next_observations[13], raw["observations"][15])
        self.assertNextObsChained(data)
        np.testing.assert_allclose(
            data.episode_returns,
            [raw["rewards"][0:4].sum(), raw["rewards"][5:12].sum(), raw["rewards"][12:15].sum()],
            rtol=1e-5)
        self.assertEqual(data.ref_scores, D4RL_REF_SCORES["walker2d"])
        self.assertEqual(data.ref_scores_source, "d4rl:walker2d")

    def test_d4rl_with_next_observations_keeps_every_step(self):
        path = self.d4rl_file("walker2d_expert-v2.hdf5", 17, 6, [5, 7, 4],
                              terminal_last=[False, True, False], with_next_obs=True)
        raw = _read_h5(path)
        data = load_offline_data("mujoco", "walker2d", ["expert-v2"], "Walker2d-v4")
        self.assertEqual(data.provenance[0]["source"], "d4rl")
        self.assertEqual(Path(data.provenance[0]["path"]).name, "walker2d_expert-v2.hdf5")
        self.assertEqual(len(data), 16)
        np.testing.assert_array_equal(data.observations, raw["observations"])
        np.testing.assert_array_equal(data.next_observations, raw["next_observations"])
        self.assertEpisodeStructure(data, 3)
        self.assertEqual(np.flatnonzero(data.truncations).tolist(), [4, 15])
        self.assertEqual(np.flatnonzero(data.terminations).tolist(), [11])
        np.testing.assert_allclose(
            data.episode_returns,
            [raw["rewards"][0:5].sum(), raw["rewards"][5:12].sum(), raw["rewards"][12:].sum()],
            rtol=1e-5)

    def test_medium_replay_v2_file_is_found(self):
        self.d4rl_file("walker2d_medium_replay-v2.hdf5", 17, 6, [6, 6])
        data = load_offline_data("mujoco", "walker2d", ["medium-replay-v2"], "Walker2d-v4")
        self.assertEqual(Path(data.provenance[0]["path"]).name, "walker2d_medium_replay-v2.hdf5")
        self.assertEpisodeStructure(data, 2)

    def test_v0_without_timeouts_cuts_at_max_episode_steps(self):
        # 2500 steps: one terminal after 300 steps, then no flags at all (v0 style).
        path = self.d4rl_file("walker2d_expert.hdf5", 17, 6, [300, 2200],
                              terminal_last=[True, False], with_timeouts=False, with_next_obs=True)
        with h5py.File(path, "r") as f:
            self.assertNotIn("timeouts", f)
        data = load_offline_data("mujoco", "walker2d", ["expert-v0"], "Walker2d-v4")
        self.assertEqual(len(data), 2500)
        self.assertEpisodeStructure(data, 4)
        self.assertEqual(_episode_lengths(data), [300, 1000, 1000, 200])
        self.assertEqual(np.flatnonzero(data.terminations).tolist(), [299])
        self.assertEqual(np.flatnonzero(data.truncations).tolist(), [1299, 2299, 2499])

    def test_v0_without_timeouts_or_next_obs_drops_each_cut_step(self):
        path = self.d4rl_file("walker2d_expert.hdf5", 17, 6, [2500], with_timeouts=False)
        raw = _read_h5(path)
        data = load_offline_data("mujoco", "walker2d", ["expert-v0"], "Walker2d-v4")
        # Steps 999, 1999 and 2499 end their 1000-step episodes and have no successor.
        self.assertEqual(len(data), 2497)
        self.assertEqual(_episode_lengths(data), [999, 999, 499])
        self.assertFalse(data.terminations.any())
        self.assertEqual(np.flatnonzero(data.truncations).tolist(), [998, 1997, 2496])
        np.testing.assert_array_equal(data.next_observations[998], raw["observations"][999])
        np.testing.assert_array_equal(data.next_observations[1997], raw["observations"][1999])
        np.testing.assert_array_equal(data.observations[999], raw["observations"][1000])
        self.assertNextObsChained(data)

    def test_action_log_probs_become_behaviour_log_probs(self):
        path = self.d4rl_file("walker2d_expert-v2.hdf5", 17, 6, [5, 5], with_next_obs=True,
                              with_log_probs=True)
        raw = _read_h5(path)
        data = load_offline_data("mujoco", "walker2d", ["expert-v2"], "Walker2d-v4")
        self.assertTrue(data.provenance[0]["behaviour_log_probs"])
        self.assertIsNotNone(data.behaviour_log_probs)
        np.testing.assert_array_equal(data.behaviour_log_probs, raw["infos/action_log_probs"])

    def test_action_log_probs_follow_dropped_steps(self):
        path = self.d4rl_file("walker2d_expert-v2.hdf5", 17, 6, [5, 5], with_log_probs=True)
        raw = _read_h5(path)
        data = load_offline_data("mujoco", "walker2d", ["expert-v2"], "Walker2d-v4")
        kept = np.array([0, 1, 2, 3, 5, 6, 7, 8])
        np.testing.assert_array_equal(data.behaviour_log_probs, raw["infos/action_log_probs"][kept])
        sub = data.select_episodes(np.array([1]))
        np.testing.assert_array_equal(sub.behaviour_log_probs, raw["infos/action_log_probs"][5:9])

    def test_minari_takes_precedence_over_d4rl(self):
        self.d4rl_file("walker2d_expert.hdf5", 17, 6, [50, 50])
        self.tiny_minari("mujoco/walker2d/expert-v0", episodes=2)
        minari_len = sum(len(ep.rewards) for ep in _minari_episodes("mujoco/walker2d/expert-v0"))
        data = load_offline_data("mujoco", "walker2d", ["expert-v0"], "Walker2d-v4")
        self.assertEqual(data.provenance[0]["source"], "minari")
        self.assertEqual(len(data), minari_len)
        self.assertNotEqual(len(data), 98)


# =========================================================================== path 3: generation

class GenerationTest(_Base):
    def _buffers_equal(self, a, b) -> bool:
        if len(a) != len(b):
            return False
        for x, y in zip(a, b):
            for attr in ("observations", "actions", "rewards", "terminations", "truncations"):
                xa, ya = np.asarray(getattr(x, attr)), np.asarray(getattr(y, attr))
                if xa.shape != ya.shape or not np.array_equal(xa, ya):
                    return False
        return True

    def test_collect_episodes_is_deterministic_per_seed(self):
        a = collect_episodes("Walker2d-v4", self.policy, 2, seed=3, progress=False)
        b = collect_episodes("Walker2d-v4", self.policy, 2, seed=3, progress=False)
        c = collect_episodes("Walker2d-v4", self.policy, 2, seed=4, progress=False)
        self.assertTrue(self._buffers_equal(a, b), "same seed gave different episodes")
        self.assertFalse(self._buffers_equal(a, c), "different seeds gave identical episodes")
        self.assertFalse(np.array_equal(a[0].observations[0], c[0].observations[0]))
        for buf in a:
            self.assertEqual(len(buf.observations), len(buf.actions) + 1)
            self.assertEqual(buf.observations.shape[1:], (17,))
            self.assertTrue(buf.terminations[-1] or buf.truncations[-1])
            self.assertFalse(any(buf.terminations[:-1]) or any(buf.truncations[:-1]))
            low, high = -1.0, 1.0  # Walker2d's action bounds
            self.assertTrue(np.all(buf.actions >= low) and np.all(buf.actions <= high))

    def test_failed_create_leaves_no_partial_folder(self):
        from minari.data_collector import EpisodeBuffer

        good = collect_episodes("Walker2d-v4", self.policy, 3, seed=0, progress=False)
        # Episode 1 holds actions HDF5 cannot store: Minari fails after writing episode 0.
        broken = EpisodeBuffer(id=1, seed=None, observations=good[1].observations,
                               actions=np.full((len(good[1].rewards), 6), "a"),
                               rewards=good[1].rewards, terminations=good[1].terminations,
                               truncations=good[1].truncations, infos={})
        dataset_id = "mujoco/walker2d/gen-v0"
        with self.assertRaises(Exception):
            write_minari_dataset(dataset_id, [good[0], broken, good[2]], "Walker2d-v4", None,
                                 None, "test", "test")
        self.assertNoPartialMinari(dataset_id)

        # An invalid dataset id fails too, without leaving a staging folder.
        with self.assertRaises(Exception):
            write_minari_dataset("mujoco/walker2d/bad name-v0", good, "Walker2d-v4", None, None,
                                 "test", "test")
        self.assertNoPartialMinari("mujoco/walker2d/bad name-v0")

        # The same name can then be written properly and loads.
        path = write_minari_dataset(dataset_id, good, "Walker2d-v4", None,
                                    D4RL_REF_SCORES["walker2d"], "test", "test")
        self.assertEqual(path, minari_root() / dataset_id)
        self.assertEqual(list(minari_root().glob(".staging-*")), [])
        data = load_offline_data("mujoco", "walker2d", ["gen-v0"], "Walker2d-v4")
        self.assertEqual(len(data), sum(len(b.rewards) for b in good))
        self.assertEpisodeStructure(data, 3)

        # Writing over an existing dataset is refused rather than clobbering it.
        with self.assertRaisesRegex(PipelineError, "already exists"):
            write_minari_dataset(dataset_id, good, "Walker2d-v4", None, None, "test", "test")

    # Regression (was a bug): collect_dataset.py write_minari_dataset: buffers whose action (or observation) shape
    # does not match the env are written without complaint (Minari 0.5.4 does not check), so
    # an unusable dataset lands in the user's Minari directory and blocks the name.
    def test_write_rejects_buffers_with_wrong_action_shape(self):
        from minari.data_collector import EpisodeBuffer

        good = collect_episodes("Walker2d-v4", self.policy, 2, seed=0, progress=False)
        bad = [EpisodeBuffer(id=b.id, seed=b.seed, observations=b.observations,
                             actions=b.actions[:, :3], rewards=b.rewards,
                             terminations=b.terminations, truncations=b.truncations, infos={})
               for b in good]
        dataset_id = "mujoco/walker2d/wrongact-v0"
        try:
            with self.assertRaisesRegex(PipelineError, "action"):
                write_minari_dataset(dataset_id, bad, "Walker2d-v4", None, None, "test", "test")
        finally:
            self.assertNoPartialMinari(dataset_id)

    # Regression (was a bug): offline_data.py _load_minari: episodes of different obs/action
    # shapes in one Minari dataset crashed np.concatenate with a raw ValueError. Our writer
    # now refuses such buffers, so the dataset is written with Minari's own function (which
    # checks nothing), as any other tool could have written it.
    def test_minari_episodes_with_different_shapes_is_a_pipeline_error(self):
        import gymnasium as gym
        import minari
        from minari.data_collector import EpisodeBuffer

        good = collect_episodes("Walker2d-v4", self.policy, 2, seed=0, progress=False)
        odd = EpisodeBuffer(id=1, seed=None, observations=good[1].observations[:, :5],
                            actions=good[1].actions, rewards=good[1].rewards,
                            terminations=good[1].terminations, truncations=good[1].truncations,
                            infos={})
        env = gym.make("Walker2d-v4")
        minari.create_dataset_from_buffers(
            dataset_id="mujoco/walker2d/mixed-v0", buffer=[good[0], odd], env=env,
            algorithm_name="test", author="test", author_email="test@example.com",
            code_permalink="test", ref_min_score=0.0, ref_max_score=1.0, description="test")
        self.assertTrue((minari_root() / "mujoco/walker2d/mixed-v0/data").exists())  # premise
        with self.assertRaises(PipelineError) as cm:
            load_offline_data("mujoco", "walker2d", ["mixed-v0"], "Walker2d-v4")
        self.assertIn("episode 1 has obs/action shapes (5,)", str(cm.exception))

    def test_cli_writes_a_dataset_minari_opens(self):
        import minari

        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = collect_dataset.main(["--env_id", "Walker2d-v4", "--policy", str(self.policy),
                                         "--episodes", "2", "--seed", "5",
                                         "--name", "mujoco/walker2d/cli-v0"])
        self.assertEqual(code, 0)
        self.assertIn("Wrote", out.getvalue())
        ds = minari.load_dataset("mujoco/walker2d/cli-v0")
        self.assertEqual(ds.total_episodes, 2)
        self.assertEqual(ds.env_spec.id, "Walker2d-v4")
        meta = ds.storage.metadata
        self.assertAlmostEqual(meta["ref_min_score"], D4RL_REF_SCORES["walker2d"][0])
        self.assertAlmostEqual(meta["ref_max_score"], D4RL_REF_SCORES["walker2d"][1])
        # The CLI records what collect_episodes produces for that seed.
        expected = collect_episodes("Walker2d-v4", self.policy, 2, seed=5, progress=False)
        got = list(ds.iterate_episodes())
        for ep, buf in zip(got, expected):
            np.testing.assert_array_equal(ep.observations, buf.observations)
            np.testing.assert_array_equal(ep.actions, buf.actions)

    def test_cli_rejects_bad_input_with_exit_1(self):
        cases = {
            "episodes": ["--episodes", "0", "--policy", str(self.policy)],
            "Policy file not found": ["--episodes", "1", "--policy", str(self.tmp / "none.zip")],
        }
        for expected, extra in cases.items():
            err = io.StringIO()
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                code = collect_dataset.main(["--env_id", "Walker2d-v4", "--seed", "0",
                                             "--name", "mujoco/walker2d/cli-v0", *extra])
            self.assertEqual(code, 1, expected)
            self.assertIn("ERROR", err.getvalue())
            self.assertIn(expected, err.getvalue())
            self.assertNoPartialMinari("mujoco/walker2d/cli-v0")

    # Regression (was a bug): collect_dataset.py main(): a --name without -v<N> (a user typo) is not validated; it
    # reaches minari.create_dataset_from_buffers after the whole rollout and escapes as a raw
    # TypeError traceback instead of "ERROR: ..." with exit 1.
    def test_cli_rejects_dataset_name_without_version(self):
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = collect_dataset.main(["--env_id", "Walker2d-v4", "--policy", str(self.policy),
                                         "--episodes", "1", "--name", "mujoco/walker2d/expert"])
        self.assertEqual(code, 1)
        self.assertIn("ERROR", err.getvalue())

    def test_generate_bundled_with_committed_reference_policy(self):
        policy = collect_dataset.REFERENCE_DIR / "walker2d" / "expert.zip"
        if not policy.exists():
            self.skipTest(f"{policy} is not committed yet; generate_bundled needs it")
        # generate_bundled has no episodes parameter: shrink the recipe (config, not logic).
        tiny = dataclasses.replace(BUNDLED[("mujoco", "walker2d", "expert-v0")], episodes=1)
        with mock.patch.dict(BUNDLED, {("mujoco", "walker2d", "expert-v0"): tiny}), \
                contextlib.redirect_stdout(io.StringIO()):
            data = load_offline_data("mujoco", "walker2d", ["expert-v0"], "Walker2d-v4")
        self.assertEqual(data.provenance[0]["source"], "generated")
        self.assertEpisodeStructure(data, 1)
        self.assertTrue((minari_root() / "mujoco/walker2d/expert-v0/data").exists())

    def _stand_in_reference_dir(self, with_policy: bool):
        """A repository copy holding a tiny policy as reference_policies/walker2d/expert.zip."""
        repo = Path(tempfile.mkdtemp(prefix="repo-", dir=self.tmp))
        ref = repo / "reference_policies"
        if with_policy:
            save_tiny_policy(ref / "walker2d" / "expert.zip")
        else:
            ref.mkdir(parents=True)
        tiny = dataclasses.replace(BUNDLED[("mujoco", "walker2d", "expert-v0")], episodes=2)
        stack = contextlib.ExitStack()
        stack.enter_context(mock.patch.object(collect_dataset, "REPO_ROOT", repo))
        stack.enter_context(mock.patch.object(collect_dataset, "REFERENCE_DIR", ref))
        stack.enter_context(mock.patch.dict(BUNDLED, {("mujoco", "walker2d", "expert-v0"): tiny}))
        stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
        stack.enter_context(contextlib.redirect_stderr(io.StringIO()))
        return stack

    def test_loader_generates_a_bundled_name_then_reuses_it(self):
        with self._stand_in_reference_dir(with_policy=True):
            data = load_offline_data("mujoco", "walker2d", ["expert-v0"], "Walker2d-v4")
            self.assertEqual(data.provenance[0]["source"], "generated")
            self.assertEpisodeStructure(data, 2)
            self.assertNextObsChained(data)
            self.assertEqual(data.ref_scores, D4RL_REF_SCORES["walker2d"])
            again = load_offline_data("mujoco", "walker2d", ["expert-v0"], "Walker2d-v4")
        self.assertEqual(again.provenance[0]["source"], "minari")
        np.testing.assert_array_equal(again.observations, data.observations)

    def test_generate_false_or_missing_reference_policy_is_a_pipeline_error(self):
        with self._stand_in_reference_dir(with_policy=True):
            with self.assertRaisesRegex(PipelineError, "Dataset mujoco/walker2d/expert-v0 not "
                                        "found.*bundled names that generate offline: expert-v0"):
                load_offline_data("mujoco", "walker2d", ["expert-v0"], "Walker2d-v4",
                                  generate=False)
        self.assertNoPartialMinari("mujoco/walker2d/expert-v0")
        with self._stand_in_reference_dir(with_policy=False):
            with self.assertRaisesRegex(PipelineError, "Policy file not found"):
                load_offline_data("mujoco", "walker2d", ["expert-v0"], "Walker2d-v4")
        self.assertNoPartialMinari("mujoco/walker2d/expert-v0")

    def test_nothing_found_names_every_place_searched(self):
        with self.assertRaises(PipelineError) as ctx:
            load_offline_data("mujoco", "hopper", ["expert-v0"], "Hopper-v4")
        msg = str(ctx.exception)
        self.assertIn(str(minari_root() / "mujoco/hopper/expert-v0"), msg)
        self.assertIn(str(d4rl_dir() / "hopper_expert.hdf5"), msg)
        self.assertIn("minari download mujoco/hopper/expert-v0", msg)
        self.assertIn("no bundled policy for hopper", msg)
        self.assertNoPartialMinari("mujoco/hopper/expert-v0")

    def test_unknown_walker2d_name_lists_bundled_names(self):
        with self.assertRaises(PipelineError) as ctx:
            load_offline_data("mujoco", "walker2d", ["random-v3"], "Walker2d-v4")
        msg = str(ctx.exception)
        self.assertIn("walker2d_random-v3.hdf5", msg)
        self.assertIn("expert-v0, expert-v1, medium-v0", msg)


# =========================================================================== concatenation

class ConcatenationTest(_Base):
    def test_two_names_keep_episode_boundaries(self):
        self.tiny_minari("mujoco/walker2d/expert-v0", episodes=2, seed=0)
        path = self.d4rl_file("walker2d_medium-v2.hdf5", 17, 6, [6, 9],
                              terminal_last=[True, False], with_next_obs=True)
        first = load_offline_data("mujoco", "walker2d", ["expert-v0"], "Walker2d-v4")
        second = load_offline_data("mujoco", "walker2d", ["medium-v2"], "Walker2d-v4")
        both = load_offline_data("mujoco", "walker2d", ["expert-v0", "medium-v2"], "Walker2d-v4")

        self.assertEqual([p["name"] for p in both.provenance], ["expert-v0", "medium-v2"])
        self.assertEqual([p["source"] for p in both.provenance], ["minari", "d4rl"])
        self.assertEqual(len(both), len(first) + len(second))
        self.assertEpisodeStructure(both, 4)
        np.testing.assert_allclose(both.episode_returns,
                                   np.concatenate([first.episode_returns, second.episode_returns]))
        self.assertTrue(both.episode_ends[len(first) - 1], "boundary between datasets is no end")
        self.assertIn(len(first), both.episode_starts.tolist())
        np.testing.assert_array_equal(both.observations[len(first):], _read_h5(path)["observations"])
        np.testing.assert_array_equal(both.next_observations[:len(first)], first.next_observations)
        self.assertEqual(_episode_lengths(both), _episode_lengths(first) + [6, 9])
        self.assertEqual(both.ref_scores, D4RL_REF_SCORES["walker2d"])

    def test_log_probs_kept_only_when_every_part_has_them(self):
        self.d4rl_file("walker2d_expert-v2.hdf5", 17, 6, [4, 4], with_next_obs=True,
                       with_log_probs=True, seed=1)
        self.d4rl_file("walker2d_medium-v2.hdf5", 17, 6, [3, 3], with_next_obs=True,
                       with_log_probs=True, seed=2)
        self.d4rl_file("walker2d_random-v2.hdf5", 17, 6, [3, 3], with_next_obs=True, seed=3)
        both = load_offline_data("mujoco", "walker2d", ["expert-v2", "medium-v2"], "Walker2d-v4")
        self.assertEqual(both.behaviour_log_probs.shape, (14,))
        mixed = load_offline_data("mujoco", "walker2d", ["expert-v2", "random-v2"], "Walker2d-v4")
        self.assertIsNone(mixed.behaviour_log_probs)
        self.assertEpisodeStructure(mixed, 4)

    def test_names_with_different_shapes_are_refused(self):
        self.d4rl_file("walker2d_expert-v2.hdf5", 17, 6, [5])
        self.d4rl_file("walker2d_medium-v2.hdf5", 20, 6, [5])
        with self.assertRaisesRegex(PipelineError, "different obs/action shapes"):
            load_offline_data("mujoco", "walker2d", ["expert-v2", "medium-v2"], "Walker2d-v4")


# =========================================================================== bad input

class BadInputTest(_Base):
    NAME = "walker2d_expert-v2.hdf5"

    def load(self, **kwargs):
        return load_offline_data("mujoco", "walker2d", ["expert-v2"], "Walker2d-v4", **kwargs)

    def write_raw(self, **arrays) -> Path:
        path = d4rl_dir() / self.NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(path, "w") as f:
            for key, value in arrays.items():
                f[key] = value
        return path

    def base_arrays(self, n: int = 10, obs_dim: int = 17, act_dim: int = 6) -> dict:
        rng = np.random.default_rng(0)
        timeouts = np.zeros(n, bool)
        if n:
            timeouts[-1] = True
        return dict(observations=rng.standard_normal((n, obs_dim)).astype(np.float32),
                    actions=rng.uniform(-1, 1, (n, act_dim)).astype(np.float32),
                    rewards=rng.standard_normal(n).astype(np.float32),
                    terminals=np.zeros(n, bool), timeouts=timeouts)

    def test_nan_in_observations_or_rewards(self):
        for key in ("observations", "rewards", "actions"):
            for next_obs in (False, True):
                with self.subTest(key=key, next_obs=next_obs):
                    arrays = self.base_arrays()
                    if next_obs:
                        arrays["next_observations"] = arrays["observations"].copy()
                    arrays[key][2] = np.nan
                    self.write_raw(**arrays)
                    with self.assertRaisesRegex(PipelineError, f"{key} contain NaN"):
                        self.load()
        arrays = self.base_arrays()
        arrays["next_observations"] = arrays["observations"].copy()
        arrays["next_observations"][5, 0] = np.inf
        self.write_raw(**arrays)
        with self.assertRaisesRegex(PipelineError, "next_observations contain NaN or inf"):
            self.load()

    def test_empty_file_with_next_observations(self):
        arrays = self.base_arrays(n=0)
        arrays["next_observations"] = arrays["observations"]
        self.write_raw(**arrays)
        with self.assertRaisesRegex(PipelineError, "empty"):
            self.load()

    # Regression (was a bug): offline_data.py _load_d4rl line 214 `drop[-1] |= not terms[-1]`: a 0-row file
    # without next_observations raises IndexError instead of PipelineError (same for v0 files
    # without timeouts). Fix: after the length check add
    # `if n == 0: raise PipelineError(f"D4RL file {path} is empty (0 rows)")`.
    def test_empty_file_without_next_observations(self):
        self.write_raw(**self.base_arrays(n=0))
        with self.assertRaisesRegex(PipelineError, "empty"):
            self.load()

    def test_mismatched_lengths(self):
        cases = {
            "observations": dict(observations=np.zeros((9, 17), np.float32)),
            "actions": dict(actions=np.zeros((11, 6), np.float32)),
            "terminals": dict(terminals=np.zeros(8, bool)),
            "next_observations": dict(next_observations=np.zeros((9, 17), np.float32)),
        }
        for label, override in cases.items():
            with self.subTest(label=label):
                self.write_raw(**{**self.base_arrays(), **override})
                with self.assertRaisesRegex(PipelineError, "rows|lengths differ") as ctx:
                    self.load()
                self.assertIn(str(d4rl_dir() / self.NAME), str(ctx.exception))

    # Regression (was a bug): offline_data.py _load_d4rl line 198: `timeouts` is not in the length check, so a
    # file whose timeouts is one row short (and has no next_observations) dies with a numpy
    # broadcast ValueError. Fix: include len(timeouts) (when present) in that check.
    def test_timeouts_length_mismatch(self):
        arrays = self.base_arrays()
        arrays["timeouts"] = arrays["timeouts"][:-1]
        self.write_raw(**arrays)
        with self.assertRaises(PipelineError):
            self.load()

    # Regression (was a bug): offline_data.py _from_arrays: next_observations' feature shape is never compared
    # with observations', so a (n, 16) next_observations beside (n, 17) observations loads
    # silently and breaks later in V-trace/BC. Fix: in _from_arrays raise PipelineError when
    # next_obs.shape[1:] != obs.shape[1:].
    def test_next_observations_shape_mismatch(self):
        arrays = self.base_arrays()
        arrays["next_observations"] = np.zeros((10, 16), np.float32)
        self.write_raw(**arrays)
        with self.assertRaises(PipelineError):
            self.load()

    # Regression (was a bug): offline_data.py _load_d4rl/_from_arrays: infos/action_log_probs is neither length-
    # checked nor checked for NaN, so a 9-row log-prob array beside 10 transitions is
    # silently kept (misaligned importance weights). Fix: in _from_arrays, when log_probs is
    # not None, require len(log_probs) == n and np.isfinite(log_probs).all().
    def test_log_probs_length_mismatch(self):
        arrays = self.base_arrays()
        arrays["next_observations"] = arrays["observations"].copy()
        arrays["infos/action_log_probs"] = np.zeros(9, np.float32)
        self.write_raw(**arrays)
        with self.assertRaises(PipelineError):
            self.load()

    # Regression (was a bug): same place as above; NaN behaviour log-probs would turn every V-trace ratio NaN.
    def test_log_probs_nan(self):
        arrays = self.base_arrays()
        arrays["next_observations"] = arrays["observations"].copy()
        arrays["infos/action_log_probs"] = np.full(10, np.nan, np.float32)
        self.write_raw(**arrays)
        with self.assertRaises(PipelineError):
            self.load()

    def test_corrupt_file(self):
        path = d4rl_dir() / self.NAME
        path.parent.mkdir(parents=True)
        path.write_bytes(np.random.default_rng(0).bytes(4096))
        with self.assertRaisesRegex(PipelineError, "not a readable HDF5") as ctx:
            self.load()
        self.assertIn(str(path), str(ctx.exception))

    def test_missing_key(self):
        for key in ("observations", "actions", "rewards", "terminals"):
            with self.subTest(key=key):
                arrays = self.base_arrays()
                del arrays[key]
                self.write_raw(**arrays)
                with self.assertRaisesRegex(PipelineError, f"lacks the key\\(s\\) {key}"):
                    self.load()

    def test_obs_shape_mismatch_without_fitting_candidate(self):
        self.d4rl_file(self.NAME, 20, 6, [5, 5])
        with self.assertRaises(PipelineError) as ctx:
            self.load(candidates={"Walker2d-v4-bc-large": ("Walker2d-v4", {})})
        msg = str(ctx.exception)
        self.assertIn("obs (20,)", msg)
        self.assertIn("obs (17,)", msg)
        self.assertIn("Walker2d-v4", msg)
        self.assertIn("no hparam entry fits", msg)

    def test_obs_shape_mismatch_names_the_fitting_hparam_entry(self):
        self.d4rl_file(self.NAME, 111, 8, [5, 5])
        candidates = {"Walker2d-v4-bc-large": ("Walker2d-v4", {}),
                      "Ant-v4-plain": ("Ant-v4", {}),
                      "Missing-env": ("NoSuchEnv-v9", {}),
                      "Ant-v4-bc-large": ("Ant-v4", {"use_contact_forces": True})}
        with self.assertRaises(PipelineError) as ctx:
            self.load(candidates=candidates)
        msg = str(ctx.exception)
        self.assertIn("(111,)", msg)
        self.assertIn("(8,)", msg)
        self.assertIn("(17,)", msg)
        fits = msg.split("hparam entries that fit:")[-1]
        self.assertIn("Ant-v4-bc-large", fits)
        self.assertNotIn("Ant-v4-plain", fits)
        self.assertNotIn("Walker2d-v4-bc-large", fits)
        self.assertNotIn("Missing-env", fits)

    def test_unknown_env_id_is_a_pipeline_error(self):
        self.d4rl_file(self.NAME, 17, 6, [5])
        with self.assertRaisesRegex(PipelineError, "Cannot create env NoSuchEnv-v9"):
            load_offline_data("mujoco", "walker2d", ["expert-v2"], "NoSuchEnv-v9")


# =========================================================================== other envs

class OtherEnvShapesTest(_Base):
    def test_ant_with_contact_forces(self):
        path = self.d4rl_file("ant_expert-v2.hdf5", 111, 8, [7, 5], with_next_obs=True)
        data = load_offline_data("mujoco", "ant", ["expert-v2"], "Ant-v4",
                                 {"use_contact_forces": True})
        self.assertEqual(data.observations.shape, (12, 111))
        self.assertEqual(data.next_observations.shape, (12, 111))
        self.assertEqual(data.actions.shape, (12, 8))
        np.testing.assert_array_equal(data.observations, _read_h5(path)["observations"])
        self.assertEpisodeStructure(data, 2)
        self.assertEqual(data.ref_scores, D4RL_REF_SCORES["ant"])
        # Without the kwarg Ant-v4 has 27-dim observations: the file does not fit.
        with self.assertRaisesRegex(PipelineError, r"obs \(27,\)"):
            load_offline_data("mujoco", "ant", ["expert-v2"], "Ant-v4")

    def test_humanoid(self):
        self.d4rl_file("humanoid_expert.hdf5", 376, 17, [6, 4])
        data = load_offline_data("mujoco", "humanoid", ["expert-v0"], "Humanoid-v4")
        self.assertEqual(data.observations.shape, (8, 376))
        self.assertEqual(data.actions.shape, (8, 17))
        self.assertEpisodeStructure(data, 2)
        self.assertIsNone(data.ref_scores)
        self.assertEqual(data.ref_scores_source, "none")
        self.assertIsNone(normalized_score(float(data.episode_returns[0]), data.ref_scores))


# =========================================================================== scores

class NormalizedScoreTest(unittest.TestCase):
    def test_walker2d_reference_scores(self):
        ref = d4rl_ref_scores("walker2d")
        self.assertEqual(ref, (1.629008, 4592.3))
        self.assertAlmostEqual(normalized_score(1.629008, ref), 0.0, places=9)
        self.assertAlmostEqual(normalized_score(4592.3, ref), 100.0, places=9)
        self.assertAlmostEqual(normalized_score((1.629008 + 4592.3) / 2, ref), 50.0, places=9)
        self.assertLess(normalized_score(0.0, ref), 0.0)

    def test_humanoid_has_no_reference_scores(self):
        self.assertIsNone(d4rl_ref_scores("humanoid"))
        self.assertIsNone(normalized_score(5000.0, None))
        self.assertIsNone(normalized_score(5000.0, d4rl_ref_scores("humanoid")))


if __name__ == "__main__":
    unittest.main()
