"""Tests for hybrid_ppo.py (HybridPPO) and hybrid_training.py (train_hybrid), on tiny real data.

Offline data are real Minari datasets rolled out on Walker2d-v4 by a tiny untrained policy and
loaded with offline_data.load_offline_data (built once per module, cached), or OfflineData built
from arrays where a test needs control over episode ends or behaviour log-probs.

Run with `python test_hybrid_ppo.py` or `python -m pytest -q test_hybrid_ppo.py`.
"""

from __future__ import annotations

import copy
import csv
import functools
import inspect
import math
import os
import shutil
import sys
import tempfile
import unittest
import warnings
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from stable_baselines3 import PPO  # noqa: E402
from stable_baselines3.common.env_util import make_vec_env  # noqa: E402
from stable_baselines3.common.logger import configure  # noqa: E402
from stable_baselines3.common.save_util import load_from_zip_file  # noqa: E402
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor  # noqa: E402
from stable_baselines3.common.utils import explained_variance  # noqa: E402

from hparams import PolicyConfig, load_hparams  # noqa: E402
from critic_learning_rate import actor_and_critic_parameters  # noqa: E402
from critic_thread import can_split  # noqa: E402
from critic_warmup import discounted_returns  # noqa: E402
from gradient_clipping import clip_gradients  # noqa: E402
from hybrid_ppo import HybridPPO  # noqa: E402
from offline_batch import ood_weights  # noqa: E402
from normalized_policy import obs_normalizer, policy_kwargs  # noqa: E402
from offline_data import OfflineData, load_offline_data  # noqa: E402
from testing_utils import (IsolatedTestCase, save_tiny_policy, write_hparam_file,  # noqa: E402
                           write_tiny_minari)
from vtrace import vtrace  # noqa: E402

ENV_ID = "Walker2d-v4"
OFFLINE_KEYS = ("vtrace/rho_mean", "vtrace/rho_clip_frac", "ood/weight_mean",
                "ood/downweighted_frac", "train/bc_loss")

# --------------------------------------------------------------------------- module fixtures
# (testing_utils sets torch to one thread for every test.)
_DATA_ROOT: Path | None = None


def setUpModule():
    global _DATA_ROOT
    _DATA_ROOT = Path(tempfile.mkdtemp(prefix="hybrid-ppo-test-data-"))


def tearDownModule():
    if _DATA_ROOT is not None:
        shutil.rmtree(_DATA_ROOT, ignore_errors=True)
    stochastic_data.cache_clear()
    deterministic_data.cache_clear()


@contextmanager
def _data_env():
    """Point HOME and Minari at the module's data folder while a shared dataset is built."""
    root = _DATA_ROOT or Path(tempfile.mkdtemp(prefix="hybrid-ppo-test-data-"))
    keys = ("HOME", "MINARI_DATASETS_PATH")
    old = {k: os.environ.get(k) for k in keys}
    (root / "home").mkdir(parents=True, exist_ok=True)
    os.environ.update(HOME=str(root / "home"), MINARI_DATASETS_PATH=str(root / "minari"))
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning, module="minari")
            yield root
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@functools.lru_cache(maxsize=None)
def stochastic_data() -> OfflineData:
    """12 episodes (~10-30 steps each, all terminated) of a tiny stochastic policy."""
    with _data_env():
        write_tiny_minari("mujoco/walker2d/tiny-v0", episodes=12, seed=0)
        return load_offline_data("mujoco", "walker2d", ["tiny-v0"], ENV_ID)


@functools.lru_cache(maxsize=None)
def deterministic_data() -> OfflineData:
    """12 episodes (~100 steps each) of the same kind of tiny policy, acting deterministically.

    The stochastic tiny policy's returns are dominated by noisy forward-velocity rewards (the
    return-to-go is barely a function of the state), so no critic reaches EV > 0.5 on held-out
    episodes of it; deterministic rollouts give returns a critic can actually learn.
    """
    from collect_dataset import D4RL_REF_SCORES, collect_episodes, write_minari_dataset

    with _data_env() as root:
        policy = save_tiny_policy(root / "home" / "det_policy.zip", ENV_ID, seed=0)
        buffers = collect_episodes(ENV_ID, policy, 12, seed=0, deterministic=True, progress=False)
        write_minari_dataset("mujoco/walker2d/tinydet-v0", buffers, ENV_ID, None,
                             D4RL_REF_SCORES.get("walker2d"), algorithm_name="tiny test policy",
                             description="test, deterministic actions")
        return load_offline_data("mujoco", "walker2d", ["tinydet-v0"], ENV_ID)


def tiny_policy_kwargs(pi=(16,), vf=(16,)) -> dict:
    """The project's policy (frozen obs normaliser inside), tiny."""
    return policy_kwargs(PolicyConfig(net_arch={"pi": list(pi), "vf": list(vf)}))


def make_hybrid(env=ENV_ID, **kwargs) -> HybridPPO:
    defaults = dict(n_steps=64, batch_size=32, n_epochs=2, seed=0, device="cpu",
                    policy_kwargs=tiny_policy_kwargs())
    return HybridPPO("MlpPolicy", env, **{**defaults, **kwargs})


def with_fields(data: OfflineData, **changes) -> OfflineData:
    """A copy of `data` with some arrays replaced (OfflineData built from arrays)."""
    fields = dict(observations=data.observations, actions=data.actions, rewards=data.rewards,
                  terminations=data.terminations, truncations=data.truncations,
                  next_observations=data.next_observations,
                  behaviour_log_probs=data.behaviour_log_probs, ref_scores=data.ref_scores)
    fields.update(changes)
    return OfflineData(**fields)


def policy_log_probs(policy, data: OfflineData) -> torch.Tensor:
    with torch.no_grad():
        return policy.get_distribution(torch.as_tensor(data.observations)).log_prob(
            torch.as_tensor(data.actions))


def params_equal(a, b) -> bool:
    sa, sb = a.policy.state_dict(), b.policy.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def read_progress(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# --------------------------------------------------------------------------- tests
class PlainPPOEquivalenceTest(IsolatedTestCase):
    """mix_ratio 0 with the offline path configured: HybridPPO.train == PPO.train, bit for bit."""

    def _learn(self, cls, steps: int = 256, **kwargs):
        env = make_vec_env(ENV_ID, n_envs=2, seed=7)
        model = cls("MlpPolicy", env, n_steps=64, batch_size=32, n_epochs=2, seed=7, device="cpu",
                    policy_kwargs={"net_arch": [16]}, **kwargs)
        model.learn(steps)
        env.close()
        return model

    def _hybrid_mix0(self, **kwargs):
        model = self._learn(HybridPPO, offline_data=stochastic_data(), mix_ratio=0.0,
                            bc_coeff=0.0, warm_start_steps=0, **kwargs)
        self.assertIsNotNone(model.offline_data)  # the offline path is configured, only unused
        self.assertIsNotNone(model.offline.mu_log_prob)
        return model

    def test_train_is_an_override_not_a_call_to_ppo_train(self):
        self.assertIsNot(HybridPPO.train, PPO.train)
        source = inspect.getsource(HybridPPO.train)
        self.assertNotIn("super().train", source)
        self.assertNotIn("PPO.train", source)

    def test_mix0_equals_plain_ppo(self):
        plain = self._learn(PPO)
        hybrid = self._hybrid_mix0()
        self.assertEqual(plain._n_updates, 4)  # 2 updates x 2 epochs: the loop really ran
        self.assertEqual(hybrid._n_updates, plain._n_updates)
        self.assertIsNotNone(hybrid._critic)  # the critic's half ran in its own thread
        self.assertTrue(params_equal(plain, hybrid))
        untrained = PPO("MlpPolicy", ENV_ID, seed=7, device="cpu", policy_kwargs={"net_arch": [16]})
        self.assertFalse(params_equal(plain, untrained))  # the comparison can fail

    def test_mix0_equals_plain_ppo_with_target_kl(self):
        plain = self._learn(PPO, target_kl=1e-5)
        hybrid = self._hybrid_mix0(target_kl=1e-5)
        self.assertLess(plain._n_updates, 4)  # early stopping really happened
        self.assertEqual(hybrid._n_updates, plain._n_updates)
        self.assertTrue(params_equal(plain, hybrid))

    def test_mix0_equals_plain_ppo_with_clip_range_vf(self):
        plain = self._learn(PPO, clip_range_vf=0.001)
        hybrid = self._hybrid_mix0(clip_range_vf=0.001)
        self.assertTrue(params_equal(plain, hybrid))
        self.assertFalse(params_equal(plain, self._learn(PPO)))  # the clipping really binds


class ParallelUpdateTest(IsolatedTestCase):
    """The critic's half of each minibatch in a second thread gives the same update."""

    def _learn(self, parallel_update: bool, **kwargs):
        model = make_hybrid(offline_data=stochastic_data(), mix_ratio=0.5, bc_coeff=0.1,
                            segment_length=16, critic_only_updates=1, anchor_coeff=1.0,
                            seed=5, parallel_update=parallel_update, **kwargs)
        model.learn(192)  # 3 updates: one critic-only, two with the actor, BC term and anchor
        return model

    def test_same_parameters_with_and_without_the_critic_thread(self):
        threaded, joint = self._learn(True), self._learn(False)
        self.assertIsNotNone(threaded._critic)
        self.assertIsNone(joint._critic)
        self.assertTrue(params_equal(threaded, joint))
        self.assertFalse(params_equal(threaded, make_hybrid(seed=5)))  # training moved it

    def test_a_trainable_shared_extractor_keeps_the_joint_update(self):
        shared = {"net_arch": {"pi": [16], "vf": [16]},
                  "features_extractor_class": TrainableExtractor}
        model = self._learn(True, policy_kwargs=shared)
        self.assertFalse(can_split(model.policy))
        self.assertIsNone(model._critic)
        self.assertTrue(can_split(make_hybrid().policy))


class CriticLearningRateTest(IsolatedTestCase):
    """critic_learning_rate: the critic's group steps at its own rate; zips stay SB3's."""

    def _learn(self, critic_learning_rate=None, timesteps=192, critic_only_updates=1, **kwargs):
        model = make_hybrid(offline_data=stochastic_data(), mix_ratio=0.5, bc_coeff=0.1,
                            segment_length=16, critic_only_updates=critic_only_updates, seed=7,
                            learning_rate=lambda remaining: 1e-3 * (1 + remaining) / 2,
                            critic_learning_rate=critic_learning_rate, **kwargs)
        model.learn(timesteps)
        return model

    def test_the_same_rate_gives_the_same_run_and_a_larger_one_moves_only_the_critic_first(self):
        self.assertTrue(params_equal(self._learn(1e-3), self._learn(None)))
        # while the updates are critic-only, the actor is untouched either way
        faster, same = self._learn(4e-3, critic_only_updates=3), self._learn(None, critic_only_updates=3)
        for (name, a), b in zip(faster.policy.named_parameters(), same.policy.parameters()):
            critic = name.startswith(("mlp_extractor.value_net", "value_net"))
            self.assertEqual(torch.equal(a, b), not critic, name)

    def test_the_critic_group_follows_the_schedule_scaled(self):
        model = self._learn(4e-3)
        actor, critic = model.policy.optimizer.param_groups
        lr = model.lr_schedule(model._current_progress_remaining)
        self.assertLess(lr, 1e-3)  # the schedule has moved
        self.assertAlmostEqual(actor["lr"], lr)
        self.assertAlmostEqual(critic["lr"], 4 * lr)
        value_params = {id(p) for m in (model.policy.mlp_extractor.value_net,
                                        model.policy.value_net) for p in m.parameters()}
        self.assertEqual({id(p) for p in critic["params"]}, value_params)

    def test_the_zip_loads_as_sb3_ppo_and_back_with_every_parameters_state(self):
        model = self._learn(4e-3)
        path = self.work / "model.zip"
        model.save(path)
        state = model.policy.optimizer.state

        def same_state(other):
            for a, b in zip(model.policy.parameters(), other.policy.parameters()):
                for key in ("exp_avg", "exp_avg_sq", "step"):
                    self.assertTrue(torch.equal(state[a][key], other.policy.optimizer.state[b][key]))

        plain = PPO.load(path, device="cpu")
        self.assertEqual(len(plain.policy.optimizer.param_groups), 1)
        same_state(plain)
        again = HybridPPO.load(path, device="cpu")
        self.assertEqual([g["lr"] for g in again.policy.optimizer.param_groups],
                         [g["lr"] for g in model.policy.optimizer.param_groups])
        same_state(again)

    def test_a_critic_only_extractor_keeps_its_state_through_the_zip(self):
        # its parameters come first in policy.parameters() but last in the critic's group
        separate = {"net_arch": {"pi": [16], "vf": [16]}, "share_features_extractor": False,
                    "features_extractor_class": TrainableExtractor}
        model = self._learn(4e-3, policy_kwargs=separate)
        path = self.work / "model.zip"
        model.save(path)
        plain = PPO.load(path, device="cpu")
        for a, b in zip(model.policy.parameters(), plain.policy.parameters()):
            self.assertTrue(torch.equal(model.policy.optimizer.state[a]["exp_avg"],
                                        plain.policy.optimizer.state[b]["exp_avg"]))


class GradientClippingTest(IsolatedTestCase):
    """grad_clip: joint is SB3's clip of the whole gradient; separate bounds the actor's and the
    critic's each, so a large critic gradient no longer scales the actor's."""

    @staticmethod
    def _norm(params) -> float:
        return float(torch.sqrt(sum((p.grad ** 2).sum() for p in params)))

    def _set_grads(self, policy, actor_scale: float | None, critic_scale: float):
        actor, critic = actor_and_critic_parameters(policy)
        gen = torch.Generator().manual_seed(0)
        for params, scale in ((actor, actor_scale), (critic, critic_scale)):
            for p in params:
                p.grad = None if scale is None else scale * torch.randn(p.shape, generator=gen)
        return actor, critic

    def test_separate_leaves_a_small_actor_gradient_alone_under_a_large_critic_one(self):
        policy = make_hybrid().policy
        actor, critic = self._set_grads(policy, 1e-3, 10.0)
        before = [p.grad.clone() for p in actor]
        clip_gradients(policy, 0.5, "separate")
        self.assertTrue(all(torch.equal(p.grad, g) for p, g in zip(actor, before)))
        self.assertAlmostEqual(self._norm(critic), 0.5, places=4)
        # the same gradients clipped jointly: the actor's shrinks with the critic's
        actor, critic = self._set_grads(policy, 1e-3, 10.0)
        small = self._norm(actor)
        clip_gradients(policy, 0.5, "joint")
        self.assertAlmostEqual(self._norm(actor + critic), 0.5, places=4)
        self.assertLess(self._norm(actor), small / 10)

    def test_separate_clips_a_large_actor_gradient_and_skips_an_actor_without_one(self):
        policy = make_hybrid().policy
        actor, critic = self._set_grads(policy, 10.0, 1e-3)
        small = self._norm(critic)
        clip_gradients(policy, 0.5, "separate")
        self.assertAlmostEqual(self._norm(actor), 0.5, places=4)
        self.assertAlmostEqual(self._norm(critic), small, places=6)
        actor, critic = self._set_grads(policy, None, 10.0)  # a critic-only update
        clip_gradients(policy, 0.5, "separate")
        self.assertTrue(all(p.grad is None for p in actor))
        self.assertAlmostEqual(self._norm(critic), 0.5, places=4)

    def test_a_run_with_separate_clipping_differs_from_joint_and_repeats(self):
        def learn(grad_clip):
            model = make_hybrid(offline_data=stochastic_data(), mix_ratio=0.5, bc_coeff=0.1,
                                segment_length=16, seed=3, max_grad_norm=0.5, grad_clip=grad_clip)
            model.learn(192)
            return model

        separate = learn("separate")
        self.assertTrue(params_equal(separate, learn("separate")))
        self.assertFalse(params_equal(separate, learn("joint")))  # the clip binds here


class TrainableExtractor(BaseFeaturesExtractor):
    """A features extractor with weights: shared by actor and critic under SB3's default."""

    def __init__(self, observation_space, features_dim: int = 8):
        super().__init__(observation_space, features_dim)
        self.linear = torch.nn.Linear(observation_space.shape[0], features_dim)

    def forward(self, observations):
        return torch.tanh(self.linear(observations))


class OfflineMixingTest(IsolatedTestCase):

    def test_mix_half_changes_learning_and_logs_offline_keys(self):
        data = stochastic_data()
        kwargs = dict(n_steps=64, batch_size=32, n_epochs=2, seed=3, device="cpu",
                      policy_kwargs=tiny_policy_kwargs())
        plain = PPO("MlpPolicy", ENV_ID, **kwargs)
        plain.learn(192)
        hybrid = HybridPPO("MlpPolicy", ENV_ID, offline_data=data, mix_ratio=0.5, bc_coeff=0.1,
                           segment_length=16, **kwargs)
        hybrid.set_logger(configure(str(self.work / "log"), ["csv"]))
        hybrid.learn(192)
        self.assertFalse(params_equal(plain, hybrid))

        rows = read_progress(self.work / "log" / "progress.csv")
        # SB3 dumps an update's stats at the next iteration: 3 updates give 2 rows.
        train_rows = [r for r in rows if r.get("train/n_updates")]
        self.assertEqual(len(train_rows), 2)
        for key in OFFLINE_KEYS:
            values = [float(r[key]) for r in train_rows if r.get(key, "") != ""]
            self.assertEqual(len(values), 2, key)
            self.assertTrue(all(math.isfinite(v) for v in values), (key, values))
        weights = [float(r["ood/weight_mean"]) for r in train_rows]
        self.assertTrue(all(0.0 <= w <= 1.0 for w in weights), weights)
        self.assertTrue(all(float(r["vtrace/rho_mean"]) > 0 for r in train_rows))
        self.assertEqual({float(r["offline/samples"]) for r in train_rows}, {64.0})

    def test_sample_counts(self):
        data = stochastic_data()
        for mix, expected in ((0.5, (128, 128)), (0.25, (128, 43)), (0.75, (64, 192)),
                              (1.0, (0, 256)), (0.0, (128, 0))):
            model = make_hybrid(n_steps=128, offline_data=data, mix_ratio=mix, segment_length=16)
            self.assertEqual(model._sample_counts(), expected, mix)
        model = make_hybrid(env=make_vec_env(ENV_ID, n_envs=2), n_steps=128, offline_data=data,
                            mix_ratio=1.0)
        self.assertEqual(model._sample_counts(), (0, 512))  # 2 * n_steps * n_envs

        # Rounded to whole segments: 43 -> round(43/16) = 3 segments of 16.
        model = make_hybrid(n_steps=128, offline_data=data, mix_ratio=0.25, segment_length=16)
        batch, stats = model._offline_batch()
        self.assertEqual(len(batch.actions), 3 * 16)
        self.assertEqual(stats["offline/samples"], 48)
        for field in batch:
            self.assertEqual(len(field), 48)

    def test_update_batch_holds_a_subset_of_the_rollout_then_the_offline_rows(self):
        # mix 0.75: 64 of the 128 rollout rows (in the buffer's order), then 192 offline rows.
        model = make_hybrid(n_steps=128, offline_data=stochastic_data(), mix_ratio=0.75,
                            segment_length=16)
        model.learn(128)  # one rollout and its update; the buffer keeps that rollout
        batch, is_offline, stats = model._update_samples()
        self.assertEqual(is_offline.tolist(), [False] * 64 + [True] * 192)
        rollout = model.rollout_buffer.swap_and_flatten(model.rollout_buffer.observations)
        rows = [int(np.flatnonzero((rollout == o.numpy()).all(axis=1))[0])
                for o in batch.observations[:64]]
        self.assertEqual(rows, sorted(set(rows)))  # distinct rows, in the buffer's order
        self.assertTrue(torch.equal(batch.weights[:64], torch.ones(64)))
        self.assertEqual(stats["offline/samples"], 192)

    def test_sample_counts_bounded_and_continuous_in_mix_ratio(self):
        """0.99 once put ~99x PPO's samples into an update; now never more than 2x, no jumps."""
        model = make_hybrid(n_steps=128, offline_data=stochastic_data(), segment_length=16)
        counts = []
        for mix in np.linspace(0.0, 1.0, 201):
            model.mix_ratio = float(mix)
            online, offline = model._sample_counts()
            self.assertLessEqual(online + offline, 256, mix)
            if mix > 0:
                self.assertAlmostEqual(offline / (online + offline), mix, delta=0.01)
            counts.append(offline)
        self.assertTrue(all(b >= a for a, b in zip(counts, counts[1:])))  # monotone
        self.assertLessEqual(max(b - a for a, b in zip(counts, counts[1:])), 3)  # no jump

    def _mix_model_after_train(self, mix: float, fill) -> HybridPPO:
        model = make_hybrid(offline_data=stochastic_data(), mix_ratio=mix, segment_length=16,
                            seed=5)
        buf = model.rollout_buffer
        for name in ("observations", "actions", "rewards", "returns", "values", "log_probs",
                     "advantages"):
            arr = getattr(buf, name)
            arr[...] = fill(arr.shape)
        buf.full = True
        model.set_logger(configure(str(self.work / f"log_{mix}"), ["csv"]))
        np.random.seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # explained variance of NaN rollouts
            model.train()
        return model

    def test_mix_one_uses_no_online_samples(self):
        rng = np.random.default_rng(0)
        nan_online = self._mix_model_after_train(1.0, lambda s: np.full(s, np.nan, np.float32))
        other_online = self._mix_model_after_train(1.0, lambda s: rng.standard_normal(s))
        for p in nan_online.policy.parameters():
            self.assertTrue(torch.isfinite(p).all())
        self.assertTrue(params_equal(nan_online, other_online))
        untrained = make_hybrid(offline_data=stochastic_data(), mix_ratio=1.0, seed=5)
        self.assertFalse(params_equal(nan_online, untrained))  # it did learn, from offline data
        # The same poisoned rollout does reach the update when online samples are used: NaN
        # observations give a NaN Gaussian mean, which torch's argument check rejects.
        with self.assertRaises(ValueError):
            self._mix_model_after_train(0.5, lambda s: np.full(s, np.nan, np.float32))


class SegmentVTraceTest(IsolatedTestCase):
    """Offline segments are time-major and episode ends inside a segment bootstrap correctly."""

    def setUp(self):
        super().setUp()
        base = stochastic_data()
        # Every other episode ends in a truncation instead of a termination (same arrays
        # otherwise: next_observations[t] is that episode's own last observation).
        ends = np.flatnonzero(base.episode_ends)
        terms = base.terminations.copy()
        truncs = np.zeros_like(terms)
        truncs[ends[1::2]], terms[ends[1::2]] = True, False
        probe = make_hybrid(seed=11)
        rng = np.random.default_rng(1)
        mu = policy_log_probs(probe.policy, base).numpy() + rng.normal(0, 0.7, len(base))
        self.data = with_fields(base, terminations=terms, truncations=truncs,
                                behaviour_log_probs=mu.astype(np.float32))
        self.model = make_hybrid(n_steps=256, seed=11, offline_data=self.data, mix_ratio=0.5,
                                 segment_length=32, rho_bar=1.0, c_bar=0.95, gamma=0.9)

    def _segment_indices(self, batch, length: int) -> np.ndarray:
        """[T, B] dataset indices of the batch, recovered from the observations themselves."""
        obs = batch.observations.numpy().reshape(length, -1, self.data.observations.shape[1])
        starts = []
        for b in range(obs.shape[1]):
            hits = np.flatnonzero((self.data.observations == obs[0, b]).all(axis=1))
            self.assertEqual(len(hits), 1)
            starts.append(hits[0])
        idx = np.asarray(starts)[None, :] + np.arange(length)[:, None]
        # Time-major and contiguous: row t of segment b is dataset row start_b + t.
        np.testing.assert_array_equal(obs, self.data.observations[idx])
        np.testing.assert_array_equal(
            batch.actions.numpy().reshape(length, -1, self.data.actions.shape[1]),
            self.data.actions[idx])
        return idx

    def test_time_major_segments_and_vtrace_targets(self):
        model, data, length = self.model, self.data, 32
        batch, stats = model._offline_batch()
        self.assertEqual(len(batch.actions), 8 * length)
        idx = self._segment_indices(batch, length)
        T, B = idx.shape
        flat = idx.reshape(-1)

        policy = model.policy
        with torch.no_grad():
            obs = torch.as_tensor(data.observations[flat])
            log_pi = policy.get_distribution(obs).log_prob(torch.as_tensor(data.actions[flat]))
            values = policy.predict_values(obs).flatten()
            next_values = policy.predict_values(torch.as_tensor(data.next_observations[flat])).flatten()
            next_row_values = policy.predict_values(
                torch.as_tensor(data.observations[np.minimum(flat + 1, len(data) - 1)])).flatten()
        mu = torch.as_tensor(data.behaviour_log_probs[flat])
        as_tb = lambda x: torch.as_tensor(x).reshape(T, B)  # noqa: E731
        ref = vtrace(as_tb(log_pi - mu), as_tb(data.rewards[flat]), as_tb(values),
                     as_tb(next_values), as_tb(data.terminations[flat]),
                     as_tb(data.episode_ends[flat]), 0.9, 1.0, 0.95)
        torch.testing.assert_close(batch.returns, ref.vs.reshape(-1), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(batch.advantages, ref.pg_advantages.reshape(-1),
                                   rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(batch.old_values, values, rtol=1e-6, atol=1e-6)
        # pi_old (the current policy), not mu, is the PPO ratio's denominator.
        torch.testing.assert_close(batch.old_log_prob, log_pi, rtol=1e-6, atol=1e-6)
        self.assertGreater((batch.old_log_prob - mu).abs().max().item(), 0.1)

        # Closed form at every cut, independent of vtrace.py: the recursion stops there and
        # bootstraps from the step's OWN next observation (nothing after a termination).
        rho = torch.clamp(torch.exp(log_pi - mu), max=1.0)
        r = torch.as_tensor(data.rewards[flat])
        term = torch.as_tensor(data.terminations[flat]).float()
        one_step = values + rho * (r + 0.9 * (1 - term) * next_values - values)
        one_step_adv = rho * (r + 0.9 * (1 - term) * next_values - values)
        t_of = np.repeat(np.arange(T), B)
        cut = data.episode_ends[flat] | (t_of == T - 1)
        inner_trunc = data.truncations[flat] & (t_of < T - 1)
        inner_term = data.terminations[flat] & (t_of < T - 1)
        self.assertTrue(inner_trunc.any() and inner_term.any(), "no boundary inside a segment")
        cut_t = torch.as_tensor(cut)
        torch.testing.assert_close(batch.returns[cut_t], one_step[cut_t], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(batch.advantages[cut_t], one_step_adv[cut_t], rtol=1e-5, atol=1e-5)
        # ...which differs from bootstrapping on the next row (the next episode's first state),
        # so the check above would catch that leak.
        trunc_t = torch.as_tensor(inner_trunc)
        self.assertGreater((next_values[trunc_t] - next_row_values[trunc_t]).abs().min().item(), 1e-4)
        # Away from cuts the target is a multi-step one (the recursion did run).
        self.assertGreater((batch.returns[~cut_t] - one_step[~cut_t]).abs().max().item(), 1e-3)
        self.assertAlmostEqual(stats["vtrace/rho_mean"], torch.exp(log_pi - mu).mean().item(), places=4)

    def test_episode_after_a_cut_does_not_leak_into_targets(self):
        """Changing the next episode's rewards leaves targets up to the boundary untouched."""
        model, data, length = self.model, self.data, 32
        model.offline.rng = np.random.default_rng(3)
        batch, _ = model._offline_batch()
        idx = self._segment_indices(batch, length)
        ends = np.flatnonzero(data.episode_ends)
        # A segment with an episode end at a row t < T-1.
        b, t = next((b, t) for b in range(idx.shape[1]) for t in range(length - 1)
                    if idx[t, b] in set(ends))
        boundary = idx[t, b]
        next_end = ends[ends > boundary][0]
        rewards = data.rewards.copy()
        rewards[boundary + 1:next_end + 1] += 100.0
        changed = with_fields(data, rewards=rewards)
        model.set_offline_data(changed)
        model.offline.rng = np.random.default_rng(3)
        batch2, _ = model._offline_batch()
        vs1, vs2 = batch.returns.reshape(length, -1), batch2.returns.reshape(length, -1)
        torch.testing.assert_close(vs2[:t + 1, b], vs1[:t + 1, b], rtol=0, atol=1e-6)
        self.assertGreater((vs2[t + 1:, b] - vs1[t + 1:, b]).abs().max().item(), 1.0)


class BehaviourPolicyTest(IsolatedTestCase):
    """mu (fixed behaviour) vs pi_old (policy at the start of the update)."""

    def test_copy_of_policy_as_behaviour_gives_unit_rhos(self):
        data = stochastic_data()
        model = make_hybrid(n_steps=128, mix_ratio=0.5, segment_length=16)
        model.set_offline_data(data, behaviour_policy=copy.deepcopy(model.policy))
        batch, stats = model._offline_batch()
        self.assertAlmostEqual(stats["vtrace/rho_mean"], 1.0, places=5)
        # mu is fixed at set_offline_data: moving the policy moves rho, not mu.
        model.subtract_log_std(0.5)
        _, moved = model._offline_batch()
        self.assertGreater(abs(moved["vtrace/rho_mean"] - 1.0), 0.05)
        # No behaviour policy given: mu defaults to a frozen copy of the current policy.
        fresh = make_hybrid(n_steps=128, mix_ratio=0.5, segment_length=16, offline_data=data)
        self.assertAlmostEqual(fresh._offline_batch()[1]["vtrace/rho_mean"], 1.0, places=5)

    def test_dataset_behaviour_log_probs_are_used(self):
        base = stochastic_data()
        model = make_hybrid(n_steps=128, mix_ratio=0.5, segment_length=16)
        logp = policy_log_probs(model.policy, base).numpy()
        results = {}
        for shift in (0.3, -0.3):
            data = with_fields(base, behaviour_log_probs=(logp + shift).astype(np.float32))
            # The data's own log-probs win over a behaviour policy (which would give rho = 1).
            model.set_offline_data(data, behaviour_policy=copy.deepcopy(model.policy))
            batch, stats = model._offline_batch()
            results[shift] = stats
            self.assertAlmostEqual(stats["vtrace/rho_mean"], math.exp(-shift), places=4)
        self.assertEqual(results[0.3]["vtrace/rho_clip_frac"], 0.0)
        self.assertEqual(results[-0.3]["vtrace/rho_clip_frac"], 1.0)


class OODWeightsTest(unittest.TestCase):

    def test_weights(self):
        torch.manual_seed(0)
        mean = torch.randn(5, 4)
        std = torch.rand(5, 4) + 0.1
        kw = dict(z_threshold=2.0, temperature=1.0, min_weight=0.05)
        at_mean = ood_weights(mean.clone(), mean, std, **kw)
        self.assertTrue(torch.equal(at_mean, torch.ones(5)))
        far = ood_weights(mean + 10 * std, mean, std, **kw)
        self.assertTrue(bool(((far < 1) & (far >= 0.05)).all()), far)
        # Without a floor 10 std is exp(-(10 - 2)/1).
        far0 = ood_weights(mean - 10 * std, mean, std, z_threshold=2.0, temperature=1.0,
                           min_weight=0.0)
        torch.testing.assert_close(far0, torch.full((5,), math.exp(-8.0)))

        direction = torch.randn(5, 4).sign()
        distances = torch.linspace(0, 10, 41)
        w = torch.stack([ood_weights(mean + d * direction * std, mean, std, z_threshold=2.0,
                                     temperature=1.0, min_weight=0.0) for d in distances])
        self.assertTrue(bool((w[1:] <= w[:-1]).all()))  # monotone in distance
        inside = distances <= 2.0
        self.assertTrue(bool((w[inside] == 1).all()))
        self.assertTrue(bool((w[~inside][1:] < w[~inside][:-1]).all()))  # strictly beyond
        self.assertTrue(bool((w[~inside] < 1).all()))


class WarmUpTest(IsolatedTestCase):

    def test_warm_up_fits_held_out_returns_and_leaves_actor_alone(self):
        data = deterministic_data()
        n_eps = len(data.episode_starts)
        self.assertEqual(n_eps, 12)
        train, held = data.select_episodes(np.arange(9)), data.select_episodes(np.arange(9, 12))
        model = make_hybrid(policy_kwargs=tiny_policy_kwargs(pi=(16,), vf=(32, 32)))
        obs_normalizer(model.policy).set_statistics(train.observations.mean(0),
                                                    train.observations.std(0))
        model.set_offline_data(train)
        model.set_logger(configure(str(self.work / "log"), ["csv"]))

        def held_out_ev() -> float:
            with torch.no_grad():
                v = model.policy.predict_values(torch.as_tensor(held.observations)).flatten().numpy()
                v_next = model.policy.predict_values(
                    torch.as_tensor(held.next_observations)).flatten().numpy()
            g = discounted_returns(held.rewards, held.terminations, held.truncations, v_next,
                                   model.gamma)
            return float(explained_variance(v, g))

        actor = lambda: {k: v.clone() for k, v in model.policy.state_dict().items()  # noqa: E731
                         if k.startswith(("mlp_extractor.policy_net", "action_net", "log_std",
                                          "features_extractor"))}
        before = actor()
        self.assertIn("log_std", before)
        self.assertTrue(any(k.startswith("action_net") for k in before))
        ev_before = held_out_ev()
        critic_before = copy.deepcopy(model.policy.value_net.state_dict())

        stats = model.warm_up_value_function(100)  # the command line's default
        ev_after = held_out_ev()
        self.assertLess(ev_before, 0.5)
        self.assertGreater(ev_after, 0.5, f"held-out EV {ev_before:.3f} -> {ev_after:.3f}")
        after = actor()
        self.assertEqual(before.keys(), after.keys())
        for k in before:
            self.assertTrue(torch.equal(before[k], after[k]), k)
        self.assertFalse(torch.equal(critic_before["weight"], model.policy.value_net.weight))
        self.assertTrue(model.warmed_up)
        self.assertEqual(stats["warmup/grad_steps"], 100)
        self.assertGreater(stats["warmup/explained_variance"], 0.5)
        rows = read_progress(self.work / "log" / "progress.csv")
        self.assertTrue(any(r.get("warmup/value_loss") for r in rows))

    def test_discounted_returns(self):
        rewards = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
        terms = np.array([False, True, False, False, False])
        truncs = np.array([False, False, False, False, True])
        bootstrap = np.array([0, 0, 0, 0, 10.0])
        g = discounted_returns(rewards, terms, truncs, bootstrap, 0.5)
        np.testing.assert_allclose(g, [1 + 0.5 * 2, 2, 3 + 0.5 * (4 + 0.5 * 10), 4 + 0.5 * 10,
                                       5 + 0.5 * 10])


class PolicyStateTest(IsolatedTestCase):

    def test_subtract_log_std(self):
        model = make_hybrid()
        with torch.no_grad():
            model.policy.log_std.copy_(torch.linspace(-1, 0.5, model.policy.log_std.numel()))
        before = model.policy.log_std.detach().clone()
        model.subtract_log_std(0.3)
        after = model.policy.log_std.detach()
        self.assertTrue(torch.equal(after, before - 0.3))
        torch.testing.assert_close(after - before, torch.full_like(before, -0.3))

    def test_log_std_floor_applies_to_pi_at_start_and_to_mu(self):
        # Deterministic demonstrations leave BC with a tiny std: both pi (from the first
        # rollout on) and the behaviour estimate mu are floored at log_std_min.
        model = make_hybrid(log_std_min=-2.5)
        with torch.no_grad():
            model.policy.log_std.copy_(torch.tensor([-4.0, -1.0] * 3))
        model.set_offline_data(stochastic_data())
        self.assertTrue(torch.equal(model.behaviour_policy.log_std.detach(), torch.tensor([-2.5, -1.0] * 3)))
        self.assertTrue(torch.equal(model.policy.log_std.detach(), torch.tensor([-4.0, -1.0] * 3)))
        model.subtract_log_std(0.5)
        self.assertTrue(torch.equal(model.policy.log_std.detach(), torch.tensor([-2.5, -1.5] * 3)))

    def test_save_and_load_without_dataset(self):
        real = stochastic_data()
        rng = np.random.default_rng(0)
        n = 20_000  # ~3 MB of incompressible random transitions
        big = OfflineData(
            rng.standard_normal((n, 17)).astype(np.float32),
            rng.uniform(-1, 1, (n, 6)).astype(np.float32),
            rng.standard_normal(n).astype(np.float32), np.zeros(n, bool),
            np.arange(n) % 50 == 49, rng.standard_normal((n, 17)).astype(np.float32))
        model = make_hybrid(offline_data=big, mix_ratio=0.5, segment_length=16)
        mean, std = real.observations.mean(0), real.observations.std(0)
        obs_normalizer(model.policy).set_statistics(mean, std)
        model.learn(128)
        path = self.work / "hybrid.zip"
        model.save(path)

        obs = real.observations[:40]
        live = model.predict(obs, deterministic=True)[0]
        as_hybrid = HybridPPO.load(path, device="cpu")
        as_ppo = PPO.load(path, device="cpu")
        np.testing.assert_array_equal(as_hybrid.predict(obs, deterministic=True)[0], live)
        np.testing.assert_array_equal(as_ppo.predict(obs, deterministic=True)[0], live)
        np.testing.assert_allclose(obs_normalizer(as_ppo.policy).obs_mean.numpy(), mean)
        self.assertIsNone(as_hybrid.offline_data)

        saved_data, _, _ = load_from_zip_file(path, device="cpu")
        for key in ("offline_data", "behaviour_policy", "offline"):
            self.assertNotIn(key, saved_data)
        self.assertEqual(saved_data["mix_ratio"], 0.5)
        dataset_bytes = big.observations.nbytes + big.next_observations.nbytes
        self.assertGreater(dataset_bytes, 2_000_000)
        self.assertLess(path.stat().st_size, 200_000)


class TrainHybridEndToEndTest(IsolatedTestCase):

    def _bc_checkpoint(self, data, bc_cfg) -> Path:
        import bc

        settings = bc.BCSettings(epochs=2, batch_size=64, log_interval=1, save_every_epochs=1,
                                 seed=0, device="cpu")
        out = self.work / "bc_checkpoints" / "mujoco" / "walker2d"
        bc.train_bc(data, bc_cfg, settings, out, "tiny-v0")
        (ckpt,) = out.glob("tiny-v0_epoch2 with avg loss *.zip")
        return ckpt

    def test_train_hybrid_from_bc_checkpoint(self):
        from hybrid_training import HybridResult, HybridSettings, build_hybrid, train_hybrid

        data = stochastic_data()
        bc_cfg, cfg = load_hparams("Walker2d-v4-bc-large", "Walker2d-v4-hybrid",
                                   write_hparam_file(self.tmp / "hparam.yml"))
        self.assertEqual((cfg.n_steps, cfg.total_timesteps, cfg.eval_freq), (128, 256, 128))
        ckpt = self._bc_checkpoint(data, bc_cfg)
        bc_model = PPO.load(ckpt, device="cpu")
        subtract = 0.5
        settings = HybridSettings(
            mix_ratio=0.5, rho_bar=1.0, c_bar=0.95, bc_coeff=0.01, warm_start_steps=20,
            log_std_subtract=subtract, seed=0, device="cpu", total_timesteps=256,
            save_file=self.work / "hybrid_models" / "tiny", tb_dir=self.work / "tb" / "tiny")

        # The model train_hybrid starts from: mu is the BC policy before the subtraction.
        start = build_hybrid(data, ckpt, cfg, settings)
        bc_state = bc_model.policy.state_dict()
        mu_state = start.behaviour_policy.state_dict()
        self.assertEqual(bc_state.keys(), mu_state.keys())
        for k in bc_state:
            self.assertTrue(torch.equal(bc_state[k], mu_state[k]), k)
        self.assertTrue(torch.equal(start.policy.log_std, bc_state["log_std"] - subtract))
        torch.testing.assert_close(start.offline.mu_log_prob,
                                   policy_log_probs(bc_model.policy, data))
        for k, v in start.policy.state_dict().items():
            if k != "log_std":
                self.assertTrue(torch.equal(v, bc_state[k]), k)
        start.env.close()

        result = train_hybrid(data, ckpt, cfg, settings, progress=False)
        self.assertIsInstance(result, HybridResult)
        self.assertFalse(result.interrupted)
        self.assertEqual(result.timesteps, 256)
        self.assertEqual(result.save_file, self.work / "hybrid_models" / "tiny.zip")
        self.assertTrue(result.save_file.is_file())
        self.assertEqual([e["timesteps"] for e in result.evaluations], [0, 128, 256])
        self.assertEqual(result.final_eval["timesteps"], 256)
        self.assertEqual(result.warmup["warmup/grad_steps"], 20)
        if result.best_eval["timesteps"] > 0:  # a trained model won: BC had to be beaten again
            self.assertEqual(result.confirmation["best"]["episodes"], cfg.confirm_episodes)
            self.assertGreater(result.seconds["confirmation"], 0)
        else:
            self.assertIsNone(result.confirmation)

        tb = settings.tb_dir
        self.assertTrue(list(tb.glob("events.out.tfevents*")), list(tb.iterdir()))
        with open(tb / "eval.csv", newline="") as fh:
            eval_rows = list(csv.DictReader(fh))
        self.assertEqual([int(r["timesteps"]) for r in eval_rows], [0, 128, 256])
        progress = read_progress(tb / "progress.csv")
        self.assertTrue(any(r.get("vtrace/rho_mean") for r in progress))
        self.assertTrue(any(r.get("eval/normalized_score") for r in progress))

        # log_std_subtract survives training (8 Adam steps at lr 5e-5 move log_std < 1e-3), and
        # the noise schedule has lowered it by log_std_decay in total by the last update.
        saved = PPO.load(result.save_file, device="cpu")
        expected = (bc_state["log_std"] - subtract - cfg.log_std_decay).clamp(min=cfg.log_std_min)
        torch.testing.assert_close(saved.policy.log_std.detach(), expected, rtol=0, atol=1e-2)

    def test_anchor_states_are_the_bc_policys_own_episodes(self):
        from evaluation import ANCHOR_SEED_OFFSET, visited_states
        from hybrid_training import HybridSettings, build_hybrid

        data = stochastic_data()
        changes = {"anchor_coeff": 1.0, "anchor_episodes": 2}
        bc_cfg, cfg = load_hparams("Walker2d-v4-bc-large", "Walker2d-v4-hybrid",
                                   write_hparam_file(self.tmp / "hparam.yml", hybrid=changes))
        ckpt = self._bc_checkpoint(data, bc_cfg)
        settings = HybridSettings(
            mix_ratio=0.5, rho_bar=1.0, c_bar=0.95, bc_coeff=0.0, warm_start_steps=0,
            log_std_subtract=0.5, seed=3, device="cpu", total_timesteps=128,
            save_file=self.work / "m", tb_dir=self.work / "tb")
        model = build_hybrid(data, ckpt, cfg, settings)
        model.env.close()
        expected, _ = visited_states(PPO.load(ckpt, device="cpu"), cfg.env_id, cfg.env_kwargs,
                                     2, 3 + ANCHOR_SEED_OFFSET)
        np.testing.assert_array_equal(model.anchor_states, expected)
        cfg = cfg.model_copy(update={"anchor_episodes": 0})  # off: the update's states
        off = build_hybrid(data, ckpt, cfg, settings)
        off.env.close()
        self.assertIsNone(off.anchor_states)

    def test_an_evaluation_due_on_the_last_step_scores_the_saved_model(self):
        """256 steps in rollouts of 128 with eval_freq 128: the evaluation due at 256 falls on
        the last env step, before SB3's last update; it waits for it, so the final evaluation
        (a candidate for the model handed over) is of the model saved."""
        from evaluation import SELECTION_SEED_OFFSET, EvalEnv
        from hybrid_training import HybridSettings, train_hybrid

        data = stochastic_data()
        bc_cfg, cfg = load_hparams("Walker2d-v4-bc-large", "Walker2d-v4-hybrid",
                                   write_hparam_file(self.tmp / "hparam.yml"))
        cfg = cfg.model_copy(update={"critic_only_updates": 0, "learning_rate": 3e-3,
                                     "lr_schedule": "constant"})  # linear: the last step is 0
        settings = HybridSettings(
            mix_ratio=0.5, rho_bar=1.0, c_bar=0.95, bc_coeff=0.01, warm_start_steps=10,
            log_std_subtract=0.0, seed=0, device="cpu", total_timesteps=256,
            save_file=self.work / "last", tb_dir=self.work / "tb" / "last")
        result = train_hybrid(data, self._bc_checkpoint(data, bc_cfg), cfg, settings,
                              progress=False)
        self.assertEqual([e["timesteps"] for e in result.evaluations], [0, 128, 256])
        env = EvalEnv(cfg.env_id, cfg.env_kwargs, cfg.eval_episodes, SELECTION_SEED_OFFSET)
        saved = env.evaluate(PPO.load(result.save_file, device="cpu"), None)
        env.close()
        self.assertEqual(saved["mean_reward"], result.final_eval["mean_reward"])
        self.assertNotEqual(result.evaluations[1]["mean_reward"], saved["mean_reward"])

    def test_an_anchor_without_completed_episodes_runs_as_no_anchor(self):
        """The start policy's episodes are rolled out before training and draw on no RNG the
        run uses: with none kept (the tiny BC policy falls in every one) the run is the run
        without an anchor, bit for bit."""
        from hybrid_training import HybridSettings, train_hybrid

        data = stochastic_data()
        bc_cfg, cfg = load_hparams("Walker2d-v4-bc-large", "Walker2d-v4-hybrid",
                                   write_hparam_file(self.tmp / "hparam.yml"))
        ckpt = self._bc_checkpoint(data, bc_cfg)
        params = {}
        for name, changes in (("none", {"anchor_coeff": 0.0}),
                              ("completed", {"anchor_coeff": 10.0, "anchor_episodes": 2,
                                             "anchor_keep": "completed"})):
            settings = HybridSettings(
                mix_ratio=0.5, rho_bar=1.0, c_bar=0.95, bc_coeff=0.01, warm_start_steps=10,
                log_std_subtract=0.0, seed=4, device="cpu", total_timesteps=256,
                save_file=self.work / name, tb_dir=self.work / "tb" / name)
            result = train_hybrid(data, ckpt, cfg.model_copy(update=changes), settings,
                                  progress=False)
            params[name] = PPO.load(result.save_file, device="cpu")
        self.assertTrue(params_equal(params["none"], params["completed"]))

    def test_anchor_gate_weighs_the_anchor_by_bcs_gain_over_its_data(self):
        """anchor_gate bc_gain: anchor_coeff times clip((R_bc - R_data) / |R_data|, 0, 1), R_bc
        the return of BC's anchor episodes, R_data the data's mean episode return. Data that BC
        does not outscore gives no anchor, and then the run is the run without one, bit for
        bit; data with a negative mean return has a weight too (gain_gate's own test)."""
        from evaluation import ANCHOR_SEED_OFFSET, visited_states
        from hybrid_training import HybridSettings, build_hybrid, train_hybrid

        data = stochastic_data()
        changes = {"anchor_coeff": 10.0, "anchor_episodes": 2, "anchor_gate": "bc_gain"}
        bc_cfg, cfg = load_hparams("Walker2d-v4-bc-large", "Walker2d-v4-hybrid",
                                   write_hparam_file(self.tmp / "hparam.yml", hybrid=changes))
        ckpt = self._bc_checkpoint(data, bc_cfg)
        _, episodes = visited_states(PPO.load(ckpt, device="cpu"), cfg.env_id, cfg.env_kwargs,
                                     2, 5 + ANCHOR_SEED_OFFSET)
        bc_return, data_return = episodes["mean_reward"], float(data.episode_returns.mean())
        self.assertGreater(data_return, 0)

        def settings(name, steps=128):
            return HybridSettings(
                mix_ratio=0.5, rho_bar=1.0, c_bar=0.95, bc_coeff=0.01, warm_start_steps=10,
                log_std_subtract=0.0, seed=5, device="cpu", total_timesteps=steps,
                save_file=self.work / name, tb_dir=self.work / "tb" / name)

        # rewards scaled so that BC's episodes score 1.5x the data's: half the weight
        halfway = with_fields(data, rewards=data.rewards * bc_return / (1.5 * data_return))
        model = build_hybrid(halfway, ckpt, cfg, settings("half"))
        model.env.close()
        self.assertAlmostEqual(model.anchor_gate["gate"], 0.5, places=5)
        self.assertAlmostEqual(model.anchor_coeff, 5.0, places=4)
        self.assertEqual(model.anchor_gate["bc_return"], bc_return)

        # data twice as good as BC's episodes: no anchor, the same run as anchor_coeff 0
        better = with_fields(data, rewards=data.rewards * 2 * bc_return / data_return)
        params = {}
        for name, hybrid_cfg in (("gated", cfg), ("off", cfg.model_copy(update={
                "anchor_coeff": 0.0, "anchor_episodes": 0, "anchor_gate": "none"}))):
            result = train_hybrid(better, ckpt, hybrid_cfg, settings(name, 256), progress=False)
            params[name] = PPO.load(result.save_file, device="cpu")
            if name == "gated":
                self.assertEqual(result.anchor_gate["gate"], 0.0)
                self.assertEqual(result.anchor_gate["anchor_coeff"], 0.0)
            else:
                self.assertIsNone(result.anchor_gate)
        self.assertTrue(params_equal(params["gated"], params["off"]))

        # data with a negative mean return (rewards negated) that BC's episodes outscore by
        # more than its magnitude: the full weight, not an error
        model = build_hybrid(with_fields(data, rewards=-np.abs(data.rewards)), ckpt, cfg,
                             settings("negative"))
        model.env.close()
        self.assertLess(model.anchor_gate["data_return"], 0)
        self.assertEqual(model.anchor_gate["gate"], 1.0)
        self.assertAlmostEqual(model.anchor_coeff, 10.0)

    def test_offline_improvement_is_evaluated_and_kept_only_if_not_worse(self):
        from hybrid_training import HybridSettings, train_hybrid

        data = stochastic_data()
        changes = {"offline_policy_updates": 8, "offline_improvement_gate": True,
                   "critic_only_updates": 5,  # the actor moves offline only
                   "offline_advantages": "positive"}  # offline samples in the policy gradient
        bc_cfg, cfg = load_hparams("Walker2d-v4-bc-large", "Walker2d-v4-hybrid",
                                   write_hparam_file(self.tmp / "hparam.yml", hybrid=changes))
        ckpt = self._bc_checkpoint(data, bc_cfg)
        decisions = set()
        # negated rewards: the "improvement" learns to do worse, so the gate has to revert
        for seed, rewards in ((0, data.rewards), (1, -data.rewards), (2, -data.rewards)):
            data = with_fields(data, rewards=rewards)
            settings = HybridSettings(
                mix_ratio=0.5, rho_bar=1.0, c_bar=0.95, bc_coeff=0.0, warm_start_steps=20,
                log_std_subtract=0.0, seed=seed, device="cpu", total_timesteps=128,
                save_file=self.work / f"m{seed}", tb_dir=self.work / "tb" / f"s{seed}")
            result = train_hybrid(data, ckpt, cfg, settings, progress=False)
            bc, improved = result.evaluations[:2]
            self.assertEqual((bc["timesteps"], improved["timesteps"]), (0, 0))
            self.assertNotIn("note", bc)
            kept = improved["mean_reward"] >= bc["mean_reward"]
            self.assertEqual(improved["note"],
                             "offline improvement, " + ("kept" if kept else "reverted to BC"))
            self.assertGreater(result.seconds["offline_improvement"], 0)
            from plot_runs import read_columns
            with open(settings.tb_dir / "eval.csv", newline="") as fh:
                notes = [r["note"] for r in csv.DictReader(fh)]
            self.assertEqual(notes[:3], ["", "offline improvement", ""])
            xs, _ = read_columns(settings.tb_dir / "eval.csv", "timesteps", "mean_reward")
            self.assertEqual(xs, [0.0, 128.0])  # the plotted curve leaves the candidate out
            decisions.add(kept)
            if not kept:  # reverted (actor frozen by the critic-only update): BC's score again
                self.assertAlmostEqual(result.evaluations[2]["mean_reward"], bc["mean_reward"],
                                       places=6)
        self.assertEqual(decisions, {True, False})  # both branches ran



if __name__ == "__main__":
    unittest.main()
