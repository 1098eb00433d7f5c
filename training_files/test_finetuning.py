"""Vectorised rollouts and evaluation, and this round's fine-tuning mechanisms.

- Evaluation stepped in one vectorised env gives the same returns as one env at a time for
  the same episode seeds; dummy and subproc rollouts give the same samples for the same seeds.
- Critic-only updates leave the actor untouched and move the critic; the linear lr schedule
  reaches ~0; bc_decay shrinks the BC weight; offline advantage centring modes differ as
  documented; positive-only offline advantages never push the actor away from the data;
  offline samples with offline_advantages "none" train the critic only, and at
  offline_value_weight 0 not even that, and with no BC term and the surrogate averaged over
  the online rows they leave an update equal to plain PPO's; offline policy updates
  move the actor before the first env step; the mean-action anchor keeps the actor near its
  start with a decaying weight, on the update's states or on fixed ones (the states the
  start policy visits, which evaluate_policy's callback collects); and a reverted
  improvement continues as the run without it; the averaged actor is the documented EMA, is
  what evaluations and saves see, and leaves training unchanged; deterministic restarts start
  an episode exactly where the deterministic policy walked, within the same time limit, walk
  again short of a fall, keep training deterministic for a seed and refuse subproc envs; a
  rollback restores the best evaluation's policy and optimizer at the next rollout with the
  noise schedule kept, and a run in which none triggers is the run without it; the
  best-model keeper never
  hands over a model measured worse than the start, and a best model that loses to BC on the
  confirmation episodes is not handed over.
"""

from __future__ import annotations

import copy
import math
import unittest
import warnings
from unittest import mock

import gymnasium as gym
import numpy as np
import torch
from torch.nn import functional as F
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import configure
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

from evaluation import (EvalEnv, PeriodicEval, SELECTION_SEED_OFFSET, TEST_SEED_OFFSET,
                        visited_states)
from critic_thread import ppo_value_loss
from hparams import HybridConfig
from hybrid_ppo import HybridPPO
from hybrid_training import (BestModelKeeper, HybridResult, StageTimes, confirm_best,
                              make_train_env)
from offline_batch import normalise_per_source
from policy_anchor import gain_gate
from policy_restarts import DeterministicRestarts, attach_policy, restart_counts, restart_wrapper
from policy_rollback import PolicyRollback
import split_vec_env
from split_vec_env import SplitVecEnv
from test_hybrid_ppo import (ENV_ID, make_hybrid, params_equal, read_progress,  # noqa: F401
                             setUpModule, stochastic_data, tearDownModule, tiny_policy_kwargs,
                             with_fields)
from testing_utils import IsolatedTestCase
from update_batch import policy_gradient_loss
from update_terms import trust_region_stats

warnings.filterwarnings("ignore", message=".*is out of date.*")


def tiny_ppo(seed: int = 0) -> PPO:
    return PPO("MlpPolicy", ENV_ID, seed=seed, device="cpu", policy_kwargs={"net_arch": [16]})


def one_episode(model, seed: int, **env_kwargs) -> tuple[list, float]:
    """One deterministic episode in one env alone: the observations acted on, and the return."""
    env = Monitor(gym.make(ENV_ID, **env_kwargs))
    obs, _ = env.reset(seed=seed)
    observations, total, done = [], 0.0, False
    while not done:
        observations.append(obs)
        action, _ = model.predict(obs, deterministic=True)
        obs, reward, term, trunc, _ = env.step(action)
        total += reward
        done = term or trunc
    env.close()
    return observations, total


class VectorisedEvaluationTest(IsolatedTestCase):

    def test_same_returns_as_one_episode_at_a_time(self):
        model = tiny_ppo()
        episodes, seed = 4, 123
        env = EvalEnv(ENV_ID, {}, episodes, seed)
        vectorised = env.evaluate(model, None)
        env.close()
        one_at_a_time = [one_episode(model, seed + i)[1] for i in range(episodes)]
        self.assertAlmostEqual(vectorised["mean_reward"], float(np.mean(one_at_a_time)), places=6)
        self.assertAlmostEqual(vectorised["std_reward"], float(np.std(one_at_a_time)), places=6)
        self.assertGreater(np.std(one_at_a_time), 0)  # different seeds really differ
        self.assertEqual(vectorised["episodes"], episodes)

    def test_visited_states_are_the_states_the_policy_acts_on(self):
        model = tiny_ppo()
        episodes, seed = 3, 321
        states, result = visited_states(model, ENV_ID, {}, episodes, seed)
        expected = np.asarray([o for i in range(episodes) for o in one_episode(model, seed + i)[0]],
                              dtype=np.float32)
        by_rows = lambda a: a[np.lexsort(a.T[::-1])]  # noqa: E731  (episodes interleave)
        np.testing.assert_allclose(by_rows(states), by_rows(expected), rtol=1e-5, atol=1e-5)
        self.assertEqual(len(states), round(result["mean_ep_length"] * episodes))
        self.assertEqual(result["kept_episodes"], episodes)

    def test_completed_only_keeps_the_episodes_that_reach_the_time_limit(self):
        model = tiny_ppo()
        episodes, seed, limit = 4, 5, 105  # lengths 102, 115, 107, 109 without a limit
        kwargs = {"max_episode_steps": limit}  # gym.make's TimeLimit: some episodes reach it
        _, result = visited_states(model, ENV_ID, kwargs, episodes, seed)
        lengths = [len(one_episode(model, seed + i, **kwargs)[0]) for i in range(episodes)]
        completed = [n for n in lengths if n == limit]
        self.assertTrue(0 < len(completed) < episodes, lengths)  # both kinds occur
        states, kept = visited_states(model, ENV_ID, kwargs, episodes, seed, completed_only=True)
        self.assertEqual(kept["kept_episodes"], len(completed))
        self.assertEqual(len(states), sum(completed))
        self.assertEqual(result["mean_ep_length"], kept["mean_ep_length"])  # all are evaluated

    def test_repeated_evaluations_use_the_same_seeds(self):
        model = tiny_ppo()
        env = EvalEnv(ENV_ID, {}, 3, 7)
        first, second = env.evaluate(model, None), env.evaluate(model, None)
        env.close()
        self.assertEqual(first["mean_reward"], second["mean_reward"])
        other = EvalEnv(ENV_ID, {}, 3, 8)
        self.assertNotEqual(other.evaluate(model, None)["mean_reward"], first["mean_reward"])
        other.close()


class VecEnvKindsTest(IsolatedTestCase):

    def test_dummy_and_subproc_rollouts_give_the_same_samples(self):
        buffers = {}
        for cls in (DummyVecEnv, SubprocVecEnv):
            env = make_vec_env(ENV_ID, n_envs=2, seed=3, vec_env_cls=cls)
            model = PPO("MlpPolicy", env, n_steps=32, batch_size=32, n_epochs=1, seed=3,
                        device="cpu", policy_kwargs={"net_arch": [16]})
            model.learn(64)  # two rollouts, one update between them
            buf = model.rollout_buffer
            buffers[cls] = (buf.observations.copy(), buf.actions.copy(), buf.rewards.copy())
            env.close()
        for a, b in zip(buffers[DummyVecEnv], buffers[SubprocVecEnv]):
            np.testing.assert_array_equal(a, b)
        self.assertGreater(np.abs(buffers[DummyVecEnv][2]).sum(), 0)


class SplitVecEnvTest(IsolatedTestCase):
    """vec_env split: half the envs in a worker that samples their actions itself."""

    def _hybrid(self, cls, callback=None, steps: int = 3 * 4 * 32, env=None, **kwargs):
        env = env or make_vec_env(ENV_ID, n_envs=4, seed=3, vec_env_cls=cls)
        model = make_hybrid(env=env, n_steps=32, batch_size=64, n_epochs=2, seed=3,
                            offline_data=stochastic_data(), segment_length=16, **kwargs)
        model.learn(steps, callback=callback)  # three rollouts, two updates between them
        buf = model.rollout_buffer
        samples = (buf.observations.copy(), buf.actions.copy(), buf.rewards.copy(),
                   buf.values.copy(), buf.log_probs.copy(), buf.episode_starts.copy())
        return model, env, samples

    def test_split_rollouts_give_the_same_samples_and_updates_as_dummy(self):
        dummy, dummy_env, dummy_samples = self._hybrid(DummyVecEnv)
        split, split_env, split_samples = self._hybrid(SplitVecEnv)
        for a, b in zip(dummy_samples, split_samples):
            np.testing.assert_array_equal(a, b)
        self.assertTrue(params_equal(dummy, split))
        self.assertTrue(dummy_samples[5][1:].any())  # episodes ended and restarted inside
        # the worker chose every action of its envs but each rollout's first
        self.assertEqual(split_env.worker_sampled_steps, 3 * (32 - 1))
        dummy_env.close()
        split_env.close()
        self.assertFalse(split_env.process.is_alive())

    def test_the_pipeline_splits_two_envs_or_more(self):
        def cfg(n_envs):
            return HybridConfig(env_id=ENV_ID, policy={"net_arch": {"pi": [16], "vf": [16]}},
                                total_timesteps=64, n_envs=n_envs, vec_env="split")
        one, two = make_train_env(cfg(1), 0, "cpu"), make_train_env(cfg(2), 0, "cpu")
        self.assertIsInstance(one, DummyVecEnv)
        self.assertIsInstance(two, SplitVecEnv)
        self.assertEqual((two.local.num_envs, two.num_envs), (1, 2))
        one.close()
        two.close()

    def test_where_policy_rows_depend_on_each_other_the_worker_steps_in_lockstep(self):
        _, _, dummy_samples = self._hybrid(DummyVecEnv)
        env = make_vec_env(ENV_ID, n_envs=4, seed=3, vec_env_cls=SplitVecEnv)
        model = make_hybrid(env=env, seed=3, policy_kwargs=tiny_policy_kwargs())
        obs = env.reset()
        self.assertTrue(split_vec_env.rows_independent(model.policy, obs, env.first_remote))
        env.seed(3)  # the reset above used make_vec_env's seeds
        with mock.patch.object(split_vec_env, "rows_independent", return_value=False), \
                self.assertWarnsRegex(UserWarning, "lockstep"):
            _, env, split_samples = self._hybrid(SplitVecEnv, env=env)
        for a, b in zip(dummy_samples, split_samples):
            np.testing.assert_array_equal(a, b)
        self.assertEqual(env.worker_sampled_steps, 0)
        env.close()

    def test_a_draw_from_torch_during_a_rollout_stops_the_run(self):
        class DrawsNoise(BaseCallback):
            def _on_step(self):
                if self.n_calls == 5:
                    torch.rand(1)
                return True

        env = make_vec_env(ENV_ID, n_envs=4, seed=3, vec_env_cls=SplitVecEnv)
        with self.assertRaisesRegex(RuntimeError, "use --vec_env dummy"):
            self._hybrid(SplitVecEnv, callback=DrawsNoise(), env=env)
        env.close()
        self.assertFalse(env.process.is_alive())

    def test_a_rollout_stopped_early_leaves_an_env_that_says_so(self):
        class Stops(BaseCallback):
            def _on_step(self):
                return self.n_calls < 5

        model, env, _ = self._hybrid(SplitVecEnv, callback=Stops())
        self.assertEqual(model.num_timesteps, 5 * 4)
        with self.assertRaisesRegex(RuntimeError, "make a new env"):
            model.learn(128, reset_num_timesteps=False)
        env.close()  # the worker, blocked mid-rollout, is stopped
        self.assertFalse(env.process.is_alive())

    def test_outside_announced_rollouts_it_steps_like_dummy(self):
        buffers, envs = {}, {}
        for cls in (DummyVecEnv, SplitVecEnv):  # plain PPO announces no rollout
            envs[cls] = env = make_vec_env(ENV_ID, n_envs=3, seed=3, vec_env_cls=cls)
            model = PPO("MlpPolicy", env, n_steps=32, batch_size=32, n_epochs=1, seed=3,
                        device="cpu", policy_kwargs={"net_arch": [16]})
            model.learn(96)
            buf = model.rollout_buffer
            buffers[cls] = (buf.observations.copy(), buf.actions.copy(), buf.rewards.copy())
        for a, b in zip(buffers[DummyVecEnv], buffers[SplitVecEnv]):
            np.testing.assert_array_equal(a, b)
        split = envs[SplitVecEnv]
        self.assertEqual(split.worker_sampled_steps, 0)
        split.set_attr("tag", 7, indices=[0, 2])  # env 0 here, env 2 in the worker
        self.assertEqual(split.get_attr("tag", indices=[0, 2]), [7, 7])
        self.assertEqual(split.env_is_wrapped(Monitor), [True, True, True])
        for env in envs.values():
            env.close()


class FineTuningMechanismsTest(IsolatedTestCase):

    def _learn(self, steps: int = 192, log: str = "log", **kwargs):
        model = make_hybrid(n_steps=64, batch_size=32, n_epochs=2, seed=1,
                            offline_data=stochastic_data(), segment_length=16,
                            policy_kwargs=tiny_policy_kwargs(), **kwargs)
        model.set_logger(configure(str(self.work / log), ["csv"]))
        model.learn(steps)
        return model

    @staticmethod
    def _actor(model) -> dict:
        return {k: v.clone() for k, v in model.policy.state_dict().items()
                if k.startswith(("mlp_extractor.policy_net", "action_net", "log_std"))}

    def test_critic_only_updates_freeze_the_actor(self):
        start = make_hybrid(n_steps=64, seed=1, policy_kwargs=tiny_policy_kwargs())
        frozen = self._learn(critic_only_updates=3)  # all 3 updates of 192 steps
        moved = self._learn(critic_only_updates=1, log="log_moved")
        for k, v in self._actor(start).items():
            self.assertTrue(torch.equal(v, self._actor(frozen)[k]), k)
        self.assertFalse(torch.equal(start.policy.value_net.weight, frozen.policy.value_net.weight))
        self.assertTrue(any(not torch.equal(v, self._actor(moved)[k])
                            for k, v in self._actor(start).items()))

    def test_bc_decay_shrinks_the_logged_bc_weight(self):
        model = self._learn(steps=256, bc_coeff=0.1, bc_decay=0.5)
        rows = read_progress(self.work / "log" / "progress.csv")
        coeffs = [float(r["train/bc_coeff"]) for r in rows if r.get("train/bc_coeff")]
        self.assertEqual(coeffs, [0.1, 0.05, 0.025])  # rows lag one update (SB3's dump)
        self.assertEqual(model.policy_updates, 4)

    def test_mean_action_anchor_holds_the_start_and_decays(self):
        start = make_hybrid(n_steps=64, seed=1, policy_kwargs=tiny_policy_kwargs())
        obs = torch.as_tensor(stochastic_data().observations[:256])
        with torch.no_grad():
            start_mean = start.policy.get_distribution(obs).distribution.mean
        drift = {}
        for coeff in (0.0, 100.0):
            model = self._learn(steps=256, log=f"anchor{coeff}", anchor_coeff=coeff,
                                anchor_decay=0.5, learning_rate=3e-3)
            with torch.no_grad():
                mean = model.policy.get_distribution(obs).distribution.mean
            drift[coeff] = float((mean - start_mean).pow(2).sum(-1).mean())
            if coeff:  # the penalty is the documented KL, computed from the live distribution
                std = torch.exp(start.policy.log_std).detach()
                expected = 0.5 * (((mean - start_mean) / std) ** 2).sum(-1).mean()
                torch.testing.assert_close(model._anchor.penalty(mean, model._anchor.start_means(obs)),
                                           expected)
                rows = read_progress(self.work / f"anchor{coeff}" / "progress.csv")
                coeffs = [float(r["train/anchor_coeff"]) for r in rows if r.get("train/anchor_coeff")]
                self.assertEqual(coeffs, [100.0, 50.0, 25.0])
                self.assertNotIn("_anchor", model.get_parameters())
        self.assertGreater(drift[0.0], 0.0)
        self.assertLess(drift[100.0], 0.5 * drift[0.0])

    def test_anchor_on_fixed_states_holds_those_states(self):
        """With set_anchor_states the penalty is drawn from those states, not the update's."""
        held = stochastic_data().observations[::7][:64]
        start = make_hybrid(n_steps=64, seed=1, policy_kwargs=tiny_policy_kwargs())
        obs = torch.as_tensor(held)
        with torch.no_grad():
            start_mean = start.policy.get_distribution(obs).distribution.mean
        drift = {}
        for coeff in (0.0, 100.0):
            model = make_hybrid(n_steps=64, batch_size=32, n_epochs=2, seed=1,
                                offline_data=stochastic_data(), segment_length=16,
                                policy_kwargs=tiny_policy_kwargs(), anchor_coeff=coeff,
                                learning_rate=3e-3)
            model.set_anchor_states(held)
            model.set_logger(configure(str(self.work / f"fixed{coeff}"), ["csv"]))
            model.learn(256)
            with torch.no_grad():
                mean = model.policy.get_distribution(obs).distribution.mean
            drift[coeff] = float((mean - start_mean).pow(2).sum(-1).mean())
        self.assertEqual(len(model._anchor.states), len(held))
        torch.testing.assert_close(model._anchor.states_start_means, start_mean)
        self.assertNotIn("anchor_states", model.get_parameters())
        rows = read_progress(self.work / "fixed100.0" / "progress.csv")
        self.assertTrue(any(r.get("train/anchor_kl") for r in rows))
        self.assertGreater(drift[0.0], 0.0)
        self.assertLess(drift[100.0], 0.5 * drift[0.0])

    def test_no_fixed_states_means_no_anchor(self):
        """anchor_keep completed with no completed episode: no anchor, not the update's states."""
        model = make_hybrid(n_steps=64, batch_size=32, n_epochs=2, seed=1,
                            offline_data=stochastic_data(), segment_length=16,
                            policy_kwargs=tiny_policy_kwargs(), anchor_coeff=100.0)
        model.set_anchor_states(np.zeros((0, model.observation_space.shape[0]), np.float32))
        model.set_logger(configure(str(self.work / "empty"), ["csv"]))
        model.learn(128)
        self.assertIsNone(model._anchor)
        plain = self._learn(steps=128, log="plain")  # the same run without any anchor
        self.assertTrue(params_equal(model, plain))

    def test_gain_gate_on_either_side_of_zero(self):
        """clip((R_bc - R_data) / |R_data|, 0, 1): the same reading for positive and negative
        returns, defined at 0, and for positive returns exactly the ratio committed runs used."""
        cases = [((150.0, 100.0), 0.5), ((250.0, 100.0), 1.0), ((80.0, 100.0), 0.0),
                 ((-50.0, -100.0), 0.5), ((-150.0, -100.0), 0.0), ((20.0, -100.0), 1.0),
                 ((5.0, 0.0), 1.0), ((0.0, 0.0), 0.0), ((-5.0, 0.0), 0.0)]
        for (bc_return, data_return), gate in cases:
            with self.subTest(bc_return=bc_return, data_return=data_return):
                self.assertAlmostEqual(gain_gate(bc_return, data_return), gate)
        for bc_return, data_return in ((3906.2, 2764.9), (1402.3, 1135.0), (0.7, 0.3)):
            self.assertEqual(gain_gate(bc_return, data_return),
                             float(np.clip(bc_return / data_return - 1.0, 0.0, 1.0)))

    def test_policy_average_is_an_ema_of_the_actor_from_its_start(self):
        """The average starts at the actor as it first moves, then folds in each update with
        decay exp(-steps per update / time constant); rollouts never see it."""
        snapshots = []
        model = make_hybrid(n_steps=64, batch_size=32, n_epochs=2, seed=1,
                            offline_data=stochastic_data(), segment_length=16,
                            policy_kwargs=tiny_policy_kwargs(), critic_only_updates=1,
                            learning_rate=3e-3, policy_average_steps=100)
        train = model.train

        def train_and_keep():
            train()
            snapshots.append(self._actor(model))
        model.train = train_and_keep
        model.set_logger(configure(str(self.work / "avg"), ["csv"]))
        model.learn(256)  # 4 updates: one critic-only, then three that move the actor

        decay = math.exp(-64 / 100)
        expected = {k: v for k, v in snapshots[0].items() if not k.startswith("log_std")}
        for later in snapshots[1:]:
            expected = {k: decay * v + (1 - decay) * later[k] for k, v in expected.items()}
        live = self._actor(model)
        with model.evaluated_actor():
            averaged = self._actor(model)
            for k, v in expected.items():
                torch.testing.assert_close(averaged[k], v)
            torch.testing.assert_close(averaged["log_std"], live["log_std"])  # noise: the live one
        for k, v in self._actor(model).items():
            self.assertTrue(torch.equal(v, live[k]), k)  # the live actor is back
        self.assertFalse(torch.allclose(averaged["action_net.weight"], live["action_net.weight"]))
        self.assertNotIn("_actor_average", model.get_parameters())

        plain = self._learn(steps=256, log="plain", critic_only_updates=1, learning_rate=3e-3)
        self.assertTrue(params_equal(model, plain))  # training itself is unchanged

    def test_evaluations_and_saves_use_the_averaged_actor(self):
        """PeriodicEval evaluates (and its on_eval hook saves) the average; before the first
        update there is none, and the start is evaluated."""
        seen = []
        model = make_hybrid(n_steps=64, batch_size=32, n_epochs=2, seed=1,
                            offline_data=stochastic_data(), segment_length=16,
                            policy_kwargs=tiny_policy_kwargs(), learning_rate=3e-3,
                            policy_average_steps=200)
        env = EvalEnv(ENV_ID, {}, 2, SELECTION_SEED_OFFSET)

        def on_eval(result, m):
            average = m._actor_average and m._actor_average.average.module[1]  # action_net's
            seen.append((m.policy.action_net.weight.detach().clone(),
                         None if average is None else average.weight.detach().clone()))
            m.save(str(self.work / f"eval{len(seen)}.zip"))
        evaluator = PeriodicEval(env, 128, None, on_eval=on_eval)
        model.set_logger(configure(str(self.work / "eval"), ["csv"]))
        model.learn(256, callback=evaluator)
        env.close()
        self.assertEqual([r["timesteps"] for r in evaluator.history], [0, 128, 256])
        self.assertIsNone(seen[0][1])  # step 0: no update yet, the start is evaluated
        for evaluated, average in seen[1:]:
            torch.testing.assert_close(evaluated, average)
        saved = PPO.load(self.work / "eval3.zip", device="cpu")
        torch.testing.assert_close(saved.policy.action_net.weight, seen[-1][1])
        self.assertFalse(torch.allclose(seen[-1][0], model.policy.action_net.weight))

        # swapping the average in and out around each evaluation leaves training as it was
        plain = make_hybrid(n_steps=64, batch_size=32, n_epochs=2, seed=1,
                            offline_data=stochastic_data(), segment_length=16,
                            policy_kwargs=tiny_policy_kwargs(), learning_rate=3e-3)
        env = EvalEnv(ENV_ID, {}, 2, SELECTION_SEED_OFFSET)
        plain.set_logger(configure(str(self.work / "plain"), ["csv"]))
        plain.learn(256, callback=PeriodicEval(env, 128, None))
        env.close()
        self.assertTrue(params_equal(model, plain))

    def test_advantage_centring_modes(self):
        adv = torch.tensor([1.0, 2.0, 3.0, 10.0, 20.0, 30.0])
        rhos = torch.tensor([1.0, 1.0, 1.0, 0.5, 1.0, 0.2])
        offline = torch.tensor([False, False, False, True, True, True])
        out = {}
        for mode in ("mean", "rho", "none"):
            out[mode] = normalise_per_source(adv, rhos, offline, mode)
        for mode in out:  # the online part is SB3's rule whatever the mode
            torch.testing.assert_close(out[mode][:3], (adv[:3] - 2.0) / adv[:3].std())
        torch.testing.assert_close(out["mean"][3:], (adv[3:] - 20.0) / adv[3:].std())
        off = adv[3:]
        torch.testing.assert_close(out["none"][3:], off / off.pow(2).mean().sqrt())
        b = off.mean() / rhos[3:].mean()
        rho_centred = off - rhos[3:] * b
        torch.testing.assert_close(out["rho"][3:], rho_centred / rho_centred.pow(2).mean().sqrt())
        # rho-weighted centring removes the baseline where rho is large, keeps it where small
        self.assertAlmostEqual((rhos[3:] * 0 + rho_centred).sum().item(), 0.0, places=4)
        self.assertFalse(torch.allclose(out["rho"][3:], out["mean"][3:]))

    def test_positive_offline_advantages_never_push_away_from_the_data(self):
        # Every offline reward -100, critic at ~0: every V-trace advantage is negative.
        # All samples offline (mix_ratio 1): with "positive"
        # no sample carries a policy gradient, so the actor stays; with "signed" it moves.
        data = stochastic_data()
        data = with_fields(data, rewards=np.full_like(data.rewards, -100.0))
        start = make_hybrid(n_steps=64, seed=1, policy_kwargs=tiny_policy_kwargs())
        runs = {}
        for mode, centring in (("positive", "none"), ("positive", "rho"), ("signed", "none")):
            model = make_hybrid(n_steps=64, batch_size=32, n_epochs=2, seed=1, offline_data=data,
                                segment_length=16, policy_kwargs=tiny_policy_kwargs(),
                                mix_ratio=1.0, offline_advantage_centering=centring,
                                offline_advantages=mode)
            model.set_logger(configure(str(self.work / f"{mode}_{centring}"), ["csv"]))
            model.learn(64)  # one update: its advantages come from the untrained critic
            runs[mode if mode == "signed" else centring] = self._actor(model)
        for k, v in self._actor(start).items():  # by the raw sign, whatever the centring
            self.assertTrue(torch.equal(v, runs["none"][k]), k)
            self.assertTrue(torch.equal(v, runs["rho"][k]), k)
        self.assertTrue(any(not torch.equal(v, runs["signed"][k])
                            for k, v in self._actor(start).items()))

    def test_offline_advantages_none_leaves_the_actor_to_online_samples(self):
        # All samples offline (mix_ratio 1): "none" trains the critic alone, "positive" the
        # actor too (the data's rewards give some positive advantages).
        start = make_hybrid(n_steps=64, seed=1, policy_kwargs=tiny_policy_kwargs())
        runs = {}
        for mode in ("none", "positive"):
            model = make_hybrid(n_steps=64, batch_size=32, n_epochs=2, seed=1,
                                offline_data=stochastic_data(), segment_length=16,
                                policy_kwargs=tiny_policy_kwargs(), mix_ratio=1.0,
                                offline_advantages=mode)
            model.set_logger(configure(str(self.work / mode), ["csv"]))
            model.learn(64)
            runs[mode] = model
        for k, v in self._actor(start).items():
            self.assertTrue(torch.equal(v, self._actor(runs["none"])[k]), k)
        self.assertFalse(torch.equal(start.policy.value_net.weight, runs["none"].policy.value_net.weight))
        self.assertTrue(any(not torch.equal(v, self._actor(runs["positive"])[k])
                            for k, v in self._actor(start).items()))

    def test_policy_gradient_mean_online_gives_the_online_rows_their_ppo_size(self):
        surrogate = torch.tensor([0.5, -1.0, 2.0, 0.0, 0.0, 0.0], requires_grad=True)
        weights = torch.tensor([1.0, 1.0, 1.0, 0.7, 0.9, 1.0])
        offline = torch.tensor([False, False, False, True, True, True])
        online_alone = -(weights[:3] * surrogate[:3]).mean()  # PPO on the online rows alone
        batch = policy_gradient_loss(surrogate, weights, offline, "batch")
        online = policy_gradient_loss(surrogate, weights, offline, "online")
        torch.testing.assert_close(online, online_alone)
        torch.testing.assert_close(batch, online_alone / 2)  # diluted by the offline share
        grad_online, = torch.autograd.grad(online, surrogate)
        torch.testing.assert_close(grad_online[:3], -weights[:3] / 3)
        for rows in (torch.zeros(6, dtype=torch.bool), torch.ones(6, dtype=torch.bool)):
            for mode in ("batch", "online"):  # one source only (mix 0 or 1): SB3's mean
                self.assertTrue(torch.equal(policy_gradient_loss(surrogate, weights, rows, mode),
                                            -(weights * surrogate).mean()))

    def test_trust_region_stats_read_the_rows_the_rollout_policy_sampled(self):
        # online rows barely moved; the data's actions lie far in the policy's tail
        log_ratio = torch.tensor([0.01, -0.02, 0.0, 3.0, -4.0, 2.5])
        offline = torch.tensor([False, False, False, True, True, True])
        sb3_kl = lambda x: torch.mean((torch.exp(x) - 1) - x)  # noqa: E731  (PPO.train's k3)
        kl, clipped = trust_region_stats(log_ratio, offline, 0.1, update_has_online=True)
        torch.testing.assert_close(torch.as_tensor(kl), sb3_kl(log_ratio[:3]))
        self.assertLess(float(kl), 1e-3)  # all rows: ~4.6, past any target_kl's early stop
        self.assertGreater(float(sb3_kl(log_ratio)), 1.0)
        self.assertEqual(clipped, 0.0)  # all rows: half of them clipped
        for rows in (torch.zeros(6, dtype=torch.bool), torch.ones(6, dtype=torch.bool)):
            has_online = not bool(rows.all())  # one source, the update's only one: all rows
            kl, clipped = trust_region_stats(log_ratio, rows, 0.1, update_has_online=has_online)
            torch.testing.assert_close(torch.as_tensor(kl), sb3_kl(log_ratio))
            self.assertEqual(clipped, 0.5)
        # a minibatch without online rows in an update that has them: no estimate, no stop
        all_offline = torch.ones(6, dtype=torch.bool)
        self.assertEqual(trust_region_stats(log_ratio, all_offline, 0.1, update_has_online=True),
                         (None, None))

    def test_target_kl_still_stops_a_mixed_update_and_approx_kl_is_logged(self):
        runs = {kl: self._learn(128, log=f"kl_{kl}", mix_ratio=0.5, offline_advantages="none",
                                target_kl=kl) for kl in (None, 1e-9)}
        self.assertGreater(runs[None]._n_updates, runs[1e-9]._n_updates)  # epochs cut short
        updates = [r for r in read_progress(self.work / "kl_None" / "progress.csv")
                   if r["train/critic_only"]]  # (the first row is the first rollout's, as SB3's)
        self.assertTrue(updates and all(float(r["train/approx_kl"]) > 0 for r in updates))

    def test_policy_gradient_mean_changes_only_runs_with_offline_rows(self):
        runs = {}
        for mix, mode in ((0.0, "batch"), (0.0, "online"), (0.5, "batch"), (0.5, "online")):
            runs[mix, mode] = self._actor(self._learn(
                128, log=f"log_{mix}_{mode}", mix_ratio=mix, offline_advantages="none",
                policy_gradient_mean=mode))
        for k, v in runs[0.0, "batch"].items():
            self.assertTrue(torch.equal(v, runs[0.0, "online"][k]), k)
        self.assertTrue(any(not torch.equal(v, runs[0.5, "online"][k])
                            for k, v in runs[0.5, "batch"].items()))

    def test_offline_value_weight_scales_the_offline_rows_in_the_value_loss(self):
        values = torch.tensor([1.0, 2.0, 0.0, 3.0, -1.0], requires_grad=True)
        returns = torch.tensor([2.0, 0.0, 1.0, 5.0, 1.0])
        offline = torch.tensor([False, False, False, True, True])
        self.assertTrue(torch.equal(ppo_value_loss(values, returns, None, None),
                                    F.mse_loss(returns, values)))  # None: SB3's mean itself
        zero = ppo_value_loss(values, returns, None, None, (~offline).float())
        torch.testing.assert_close(zero, F.mse_loss(returns[:3], values[:3]))  # PPO's, online
        grad, = torch.autograd.grad(zero, values)
        self.assertTrue(torch.equal(grad[3:], torch.zeros(2)))
        half = ppo_value_loss(values, returns, None, None, 1.0 - 0.5 * offline.float())
        errors = (returns - values).detach() ** 2
        torch.testing.assert_close(half, (errors[:3].sum() + 0.5 * errors[3:].sum()) / 4.0)

    def test_offline_value_weight_zero_leaves_offline_rows_out_of_the_critic(self):
        # Offline rows only, out of the policy gradient, no BC term: at weight 0 nothing moves.
        start = make_hybrid(n_steps=64, seed=1, policy_kwargs=tiny_policy_kwargs())
        kept = self._learn(128, log="log_zero", mix_ratio=1.0, offline_advantages="none",
                           bc_coeff=0.0, offline_value_weight=0.0)
        for k, v in start.policy.state_dict().items():
            self.assertTrue(torch.equal(v, kept.policy.state_dict()[k]), k)
        # Without offline rows the weight changes nothing; with them it changes the critic.
        runs = {(mix, w): self._learn(128, log=f"log_{mix}_{w}", mix_ratio=mix,
                                      offline_advantages="none", offline_value_weight=w)
                for mix in (0.0, 0.5) for w in (1.0, 0.0)}
        for k, v in runs[0.0, 1.0].policy.state_dict().items():
            self.assertTrue(torch.equal(v, runs[0.0, 0.0].policy.state_dict()[k]), k)
        self.assertFalse(torch.equal(runs[0.5, 1.0].policy.value_net.weight,
                                     runs[0.5, 0.0].policy.value_net.weight))

    def _one_update(self, mix: float, train: bool = True, **kwargs) -> HybridPPO:
        """One train() on the same filled rollout, whole batch as one minibatch (a minibatch
        that grows with the offline share, so also one for mix 0.5)."""
        model = make_hybrid(n_steps=64, batch_size=64, n_epochs=3, seed=2,
                            offline_data=stochastic_data(), segment_length=16, mix_ratio=mix,
                            policy_kwargs=tiny_policy_kwargs(), **kwargs)
        rng = np.random.default_rng(3)
        buf = model.rollout_buffer
        buf.observations[...] = rng.standard_normal(buf.observations.shape)
        buf.actions[...] = rng.uniform(-1, 1, buf.actions.shape)
        with torch.no_grad():  # pi_old and V of the policy itself, as a real rollout has them
            values, log_probs, _ = model.policy.evaluate_actions(
                torch.as_tensor(buf.observations.reshape(64, -1)),
                torch.as_tensor(buf.actions.reshape(64, -1)))
        buf.values[...], buf.log_probs[...] = values.numpy(), log_probs.numpy().reshape(64, 1)
        buf.advantages[...] = rng.standard_normal(buf.advantages.shape)
        buf.returns[...] = buf.advantages + buf.values
        buf.full = True
        model.set_logger(configure(str(self.work / f"one_update_{id(model)}"), ["csv"]))
        if train:
            model.train()
        return model

    def test_inert_offline_rows_leave_the_update_plain_ppos(self):
        # offline rows out of the policy gradient, averaged out of it, out of the value loss,
        # no BC term: the update is PPO's on the online rows (what test AG/AI's variant assumes)
        inert = dict(offline_advantages="none", policy_gradient_mean="online",
                     offline_value_weight=0.0, bc_coeff=0.0)
        plain, hybrid = self._one_update(0.0, **inert), self._one_update(0.5, **inert)
        self.assertEqual(hybrid._sample_counts(), (64, 64))  # offline rows are in the update
        start = self._one_update(0.0, train=False, **inert)  # the policy before the update
        moved = False
        for k, v in plain.policy.state_dict().items():
            torch.testing.assert_close(hybrid.policy.state_dict()[k], v, rtol=1e-5, atol=1e-6)
            moved |= not torch.allclose(start.policy.state_dict()[k], v)
        self.assertTrue(moved)
        for active in (dict(offline_value_weight=1.0), dict(bc_coeff=0.5),
                       dict(policy_gradient_mean="batch")):  # each one makes it differ
            other = self._one_update(0.5, **{**inert, **active})
            self.assertFalse(all(torch.allclose(other.policy.state_dict()[k], v, rtol=1e-5,
                                                atol=1e-6)
                                 for k, v in plain.policy.state_dict().items()), active)

    def test_offline_policy_updates_move_the_actor_before_any_env_step(self):
        # Critic-only for every online update: only the offline updates can move the actor.
        start = make_hybrid(n_steps=64, seed=1, policy_kwargs=tiny_policy_kwargs())
        frozen = self._learn(steps=128, critic_only_updates=2, warm_start_steps=20)
        improved = self._learn(steps=128, log="improved", critic_only_updates=2,
                               warm_start_steps=20, offline_policy_updates=3)
        for k, v in self._actor(start).items():
            self.assertTrue(torch.equal(v, self._actor(frozen)[k]), k)
        self.assertTrue(any(not torch.equal(v, self._actor(improved)[k])
                            for k, v in self._actor(start).items()))
        plain = self._learn(steps=128, log="plain", critic_only_updates=2, warm_start_steps=20,
                            offline_policy_updates=3, mix_ratio=0.0)  # PPO: no offline samples
        self.assertFalse(plain.offline_improved)
        # they are not online updates: the critic-only phase still covered both rollouts
        self.assertEqual(improved.policy_updates, 2)
        rows = read_progress(self.work / "improved" / "progress.csv")
        marked = [i for i, r in enumerate(rows) if r.get("offline_improvement/updates")]
        self.assertEqual([rows[i]["offline_improvement/updates"] for i in marked], ["3"])
        self.assertEqual(rows[marked[0]]["train/critic_only"], "0")  # the offline updates' row
        later = [r["train/critic_only"] for r in rows[marked[0] + 1:] if r.get("train/critic_only")]
        self.assertTrue(later and set(later) == {"1"}, later)

    def test_reverted_offline_improvement_continues_as_a_run_without_it(self):
        def build(updates: int, log: str):
            model = make_hybrid(n_steps=64, batch_size=32, n_epochs=2, seed=1,
                                offline_data=stochastic_data(), segment_length=16,
                                policy_kwargs=tiny_policy_kwargs(), offline_policy_updates=updates)
            model.set_logger(configure(str(self.work / log), ["csv"]))
            return model

        def run(updates: int, log: str):
            model = build(updates, log)
            model.learn(64)  # the improvement runs, then one rollout and one update
            return model

        plain = run(0, "plain")
        before = self._actor(make_hybrid(n_steps=64, seed=1, policy_kwargs=tiny_policy_kwargs()))
        model = build(2, "log")
        model._setup_learn(64)
        model.improve_offline(2)
        self.assertTrue(any(not torch.equal(v, self._actor(model)[k]) for k, v in before.items()))
        model.settle_offline_improvement(keep=False)
        for k, v in before.items():
            self.assertTrue(torch.equal(v, self._actor(model)[k]), k)
        self.assertIsNone(model._before_improvement)  # the copy is dropped once settled
        # reverted inside learn (as the gate does it): the run is the run without offline updates
        reverted = build(2, "reverted")
        original = reverted.improve_offline

        def improve_then_revert(n):
            original(n)
            reverted.settle_offline_improvement(keep=False)
        reverted.improve_offline = improve_then_revert
        reverted.learn(64)
        self.assertTrue(reverted.offline_improved)
        self.assertTrue(params_equal(reverted, plain))
        self.assertEqual(reverted._n_updates, plain._n_updates)
        # the pre-improvement copy is not model state: a saved zip does not carry it
        from stable_baselines3.common.save_util import load_from_zip_file
        kept = run(2, "kept")
        self.assertFalse(params_equal(kept, plain))
        kept.save(self.work / "improved.zip")
        data, _, _ = load_from_zip_file(self.work / "improved.zip", device="cpu")
        self.assertNotIn("_before_improvement", data)

    def test_linear_lr_schedule_reaches_zero(self):
        from stable_baselines3.common.utils import LinearSchedule

        model = self._learn(steps=256, learning_rate=LinearSchedule(1e-3, 0.0, 1.0))
        rows = read_progress(self.work / "log" / "progress.csv")
        lrs = [float(r["train/learning_rate"]) for r in rows if r.get("train/learning_rate")]
        self.assertEqual(len(lrs), 3)
        self.assertTrue(all(b < a for a, b in zip(lrs, lrs[1:])), lrs)
        self.assertAlmostEqual(lrs[0], 1e-3 * (1 - 64 / 256), places=8)  # after the first rollout
        self.assertEqual(model.policy.optimizer.param_groups[0]["lr"], 0.0)  # the last update


    def test_log_std_decay_follows_env_steps_and_floor(self):
        start = make_hybrid(n_steps=64, seed=1, policy_kwargs=tiny_policy_kwargs())
        log_std0 = start.policy.log_std.detach().clone()
        # actor frozen by critic-only updates: log_std moves by the schedule alone
        model = self._learn(steps=256, critic_only_updates=4, log_std_decay=1.0)
        torch.testing.assert_close(model.policy.log_std.detach(), log_std0 - 1.0)
        rows = read_progress(self.work / "log" / "progress.csv")
        stds = [float(r["train/std"]) for r in rows if r.get("train/std")]
        expected = [float(torch.exp(log_std0 - d).mean()) for d in (0.25, 0.5, 0.75)]
        np.testing.assert_allclose(stds, expected, rtol=1e-5)  # rows lag one update
        floored = self._learn(steps=256, log="floor", log_std_decay=1.0, log_std_min=-0.5)
        self.assertTrue(bool((floored.policy.log_std >= -0.5).all()))
        self.assertAlmostEqual(floored.log_std_decayed, 1.0, places=6)


class BestModelKeeperTest(IsolatedTestCase):

    def test_keeps_the_start_unless_beaten_and_names_the_source(self):
        path = self.work / "run_best.zip"
        keeper = BestModelKeeper(path)
        start, later = tiny_ppo(0), tiny_ppo(1)
        keeper({"mean_reward": 10.0, "timesteps": 0}, start)
        keeper({"mean_reward": 9.0, "timesteps": 100}, later)  # worse: the start stays
        self.assertTrue(params_equal(PPO.load(path, device="cpu"), start))
        self.assertEqual(keeper.best["timesteps"], 0)
        result = HybridResult(self.work / "run.zip", path, 100, False,
                              {"mean_reward": 9.0, "timesteps": 100}, keeper.best)
        self.assertEqual(result.best_source, "bc")
        keeper({"mean_reward": 10.0, "timesteps": 200}, later)  # a tie does not replace it
        self.assertEqual(keeper.best["timesteps"], 0)
        keeper({"mean_reward": 11.0, "timesteps": 300}, later)
        self.assertTrue(params_equal(PPO.load(path, device="cpu"), later))
        final = {"mean_reward": 5.0, "timesteps": 400}
        self.assertEqual(HybridResult(self.work / "run.zip", path, 400, False, final,
                                      keeper.best).best_source, "best")
        self.assertEqual(HybridResult(self.work / "run.zip", path, 300, False, keeper.best,
                                      keeper.best).best_source, "final")
        # a kept offline improvement is evaluated at step 0 too, but is not BC's actor
        improved = {"mean_reward": 12.0, "timesteps": 0, "note": "offline improvement, kept"}
        self.assertEqual(HybridResult(self.work / "run.zip", path, 400, False, final,
                                      improved).best_source, "best")

    def test_confirmation_scores_both_on_new_episodes_and_can_hand_over_bc(self):
        from types import SimpleNamespace

        cfg = SimpleNamespace(env_id=ENV_ID, env_kwargs={}, eval_episodes=3, confirm_episodes=4)
        seed = 7
        files = {}
        for name, model_seed in (("bc", 0), ("other", 1)):
            files[name] = self.work / f"{name}.zip"
            tiny_ppo(model_seed).save(files[name])
        same = confirm_best(files["bc"], files["bc"], cfg, seed, "cpu", None)
        self.assertTrue(same["kept"])  # a tie keeps the best
        self.assertEqual(same["best"]["mean_reward"], same["bc"]["mean_reward"])
        # The episodes follow the periodic ones (seed + offset .. + eval_episodes - 1) and
        # stay clear of the test episodes.
        start = seed + SELECTION_SEED_OFFSET + cfg.eval_episodes
        self.assertEqual(same["best"]["seeds"], [start, start + 3])
        self.assertLess(start + 3, seed + TEST_SEED_OFFSET)
        env = EvalEnv(ENV_ID, {}, 4, start)
        direct = env.evaluate(PPO.load(files["other"], device="cpu"), None)
        env.close()
        versus = confirm_best(files["other"], files["bc"], cfg, seed, "cpu", None)
        self.assertEqual(versus["best"]["mean_reward"], direct["mean_reward"])
        self.assertEqual(versus["kept"], direct["mean_reward"] >= same["bc"]["mean_reward"])

        # what the run hands over, for both verdicts (best found at step 300 of 400)
        best = {"mean_reward": 11.0, "timesteps": 300}
        final = {"mean_reward": 5.0, "timesteps": 400}
        for kept, source, handed in ((True, "best", "run_best.zip"), (False, "bc", "bc.zip")):
            result = HybridResult(self.work / "run.zip", self.work / "run_best.zip", 400, False,
                                  final, best, bc_file=files["bc"],
                                  confirmation={**versus, "kept": kept})
            self.assertEqual((result.best_source, result.handed_over),
                             (source, self.work / handed))
        final_best = HybridResult(self.work / "run.zip", self.work / "run_best.zip", 400, False,
                                  best | {"timesteps": 400}, best | {"timesteps": 400},
                                  bc_file=files["bc"], confirmation={**versus, "kept": True})
        self.assertEqual(final_best.handed_over, self.work / "run.zip")



class StageTimesTest(unittest.TestCase):
    def test_evaluations_count_in_no_stage(self):
        """A periodic evaluation inside a rollout and the final one at training end (after the
        last update) are evaluation time, neither rollout nor update time."""
        evaluator = mock.Mock(seconds=0.0)
        times = StageTimes(evaluator)
        clock = iter([0.0, 10.0, 12.0, 20.0, 30.0])
        with mock.patch("hybrid_training.time.perf_counter", lambda: next(clock)):
            times._on_rollout_start()  # 0
            evaluator.seconds = 3.0  # a periodic evaluation
            times._on_rollout_end()  # 10: rollouts 10 - 3
            times._on_rollout_start()  # 12: an update of 2
            times._on_rollout_end()  # 20: rollouts 8
            evaluator.seconds = 7.0  # the final evaluation, after the last update
            times._on_training_end()  # 30: an update of 10 - 4
        self.assertEqual(times.seconds, {"rollouts": 15.0, "updates": 8.0})


class DeterministicRestartsTest(IsolatedTestCase):
    """Training episodes that start where the deterministic policy walked (policy_restarts)."""

    def test_an_episode_starts_where_the_deterministic_policy_walked_and_keeps_its_time_limit(self):
        model, limit = tiny_ppo(), 60  # this policy stands for ~100 steps: prefixes succeed
        env = DeterministicRestarts(gym.make(ENV_ID, max_episode_steps=limit), 1.0)
        obs, _ = env.reset(seed=0)
        self.assertEqual(env.last_prefix, 0)  # no policy yet: a plain reset
        env.policy = model.policy
        timed_out = 0
        for seed in range(4):
            before = env.prefix_steps
            obs, _ = env.reset(seed=seed)
            k = env.last_prefix
            self.assertTrue(0 < k < limit)
            self.assertEqual(env.prefix_steps - before, k)  # walked once, not trained on
            walked = one_episode(model, seed, max_episode_steps=limit)[0]  # a plain env
            np.testing.assert_allclose(obs, walked[k])
            steps, done = 0, False
            while not done:  # the time limit counts the prefix
                action, _ = model.predict(obs, deterministic=True)  # stands past the limit
                obs, _, terminated, truncated, _ = env.step(action)
                steps, done = steps + 1, terminated or truncated
            if not terminated:
                self.assertEqual(k + steps, limit)
                timed_out += 1
        self.assertEqual(env.restarts, 4)
        self.assertGreater(timed_out, 0)
        env.close()

    def test_a_prefix_that_falls_is_walked_again_short_of_the_fall(self):
        model = tiny_ppo()  # falls after ~100-115 steps, long before the 1000-step limit
        env = DeterministicRestarts(gym.make(ENV_ID), 0.5)
        env.policy = model.policy
        retried = plain = 0
        for seed in range(12):
            before = env.prefix_steps
            env.reset(seed=seed)
            walked, k = env.prefix_steps - before, env.last_prefix
            if walked == 0:
                plain += 1
            elif walked > k:  # a first attempt fell, then a shorter prefix (or none)
                retried += 1
                self.assertLess(k, walked - k)
        self.assertTrue(0 < plain < 12 and retried > 0, (plain, retried))

    def test_training_with_restarts_is_on_policy_and_deterministic_for_a_seed(self):
        def run():
            env = make_vec_env(ENV_ID, n_envs=2, seed=4, wrapper_class=restart_wrapper(1.0))
            model = make_hybrid(env, n_steps=64, batch_size=32, n_epochs=2, seed=4,
                                offline_data=stochastic_data(), segment_length=16,
                                policy_kwargs=tiny_policy_kwargs(), learning_rate=3e-3)
            attach_policy(env, model.policy)
            model.set_logger(configure(str(self.work / "restarts"), ["csv"]))
            model.learn(256)
            counts = restart_counts(env)
            env.close()
            return model, counts

        (first, counts), (second, again) = run(), run()
        self.assertGreater(counts["episodes"], 0)
        self.assertGreater(counts["env_steps"], counts["episodes"])
        self.assertEqual(first.num_timesteps, 256)  # prefixes are not online samples
        self.assertEqual(counts, again)
        self.assertTrue(params_equal(first, second))

    def test_envs_in_other_processes_are_refused_with_the_entry(self):
        """Refused where the entry loads, before any data or BC work (test_bad_inputs: the
        command's one line); split with one env steps it in this process, so it is allowed."""
        entry = dict(env_id=ENV_ID, policy={"net_arch": {"pi": [16], "vf": [16]}},
                     total_timesteps=64, deterministic_restarts=0.5)
        for vec_env, n_envs in (("subproc", 2), ("subproc", 1), ("split", 2)):
            with self.subTest(vec_env=vec_env, n_envs=n_envs), \
                    self.assertRaisesRegex(ValueError, "deterministic_restarts needs vec_env dummy"):
                HybridConfig(**entry, n_envs=n_envs, vec_env=vec_env)
        for vec_env, n_envs in (("dummy", 2), ("split", 1)):
            HybridConfig(**entry, n_envs=n_envs, vec_env=vec_env)


class PolicyRollbackTest(IsolatedTestCase):

    def _model(self, **kwargs):
        model = make_hybrid(n_steps=64, batch_size=32, n_epochs=2, seed=2,
                            offline_data=stochastic_data(), segment_length=16,
                            policy_kwargs=tiny_policy_kwargs(), learning_rate=3e-3, **kwargs)
        model.set_logger(configure(str(self.work / "rollback"), ["csv"]))
        return model

    def test_a_fall_restores_the_best_state_at_the_next_rollout_with_the_noise_schedule(self):
        model = self._model(log_std_decay=1.0)
        rollback = PolicyRollback(0.3)
        seen = {}

        def state():
            return ({k: v.clone() for k, v in model.policy.state_dict().items()},
                    copy.deepcopy(model.policy.optimizer.state_dict()["state"]),
                    model.log_std_decayed)

        class Script(BaseCallback):  # the evaluations' verdicts, at chosen rollout starts
            def _on_rollout_start(self):
                seen["rollout"] = seen.get("rollout", 0) + 1
                if seen["rollout"] == 2:  # after one update: a new best
                    rollback.after_eval({"timesteps": 64, "mean_reward": 100.0}, model, True)
                    seen["best"] = state()
                if seen["rollout"] == 4:  # after three: first a small drop, then a fall
                    seen["moved"] = state()
                    seen["small"] = {"timesteps": 192, "mean_reward": 71.0}
                    rollback.after_eval(seen["small"], model, False)
                    seen["fall"] = {"timesteps": 192, "mean_reward": 69.0}
                    rollback.after_eval(seen["fall"], model, False)
                    seen["before_restore"] = state()
                    seen["before_restore_log"] = copy.deepcopy(rollback.rollbacks)

            def _on_step(self):
                return True

        class After(BaseCallback):  # the state the next rollout starts from
            def _on_rollout_start(self):
                if seen["rollout"] == 4:
                    seen["restored"] = state()

            def _on_step(self):
                return True

        model.learn(320, callback=[Script(), rollback, After()])
        best, best_adam, decayed_at_best = seen["best"]
        moved = seen["moved"][0]
        self.assertFalse(all(torch.equal(moved[k], best[k]) for k in moved))
        self.assertNotIn("rollback_to", seen["small"])  # within 30% of the best: no rollback
        self.assertEqual(seen["fall"]["rollback_to"], 64)
        for k, v in seen["before_restore"][0].items():  # nothing moves before the rollout
            self.assertTrue(torch.equal(v, moved[k]), k)
        self.assertEqual(seen["before_restore_log"], [{"at": 192, "to": 64, "applied": False}])
        self.assertEqual(rollback.rollbacks, [{"at": 192, "to": 64, "applied": True}])

        restored, adam, decayed = seen["restored"]
        since = decayed - decayed_at_best
        self.assertGreater(since, 0.3)  # two updates' worth of the noise schedule
        for k, v in restored.items():
            expected = best[k] - since if k == "log_std" else best[k]
            self.assertTrue(torch.allclose(v, expected, atol=1e-6, rtol=0), k)
        for i, values in best_adam.items():
            for name, value in values.items():
                self.assertTrue(torch.equal(adam[i][name], value), (i, name))
        # training on from it left the snapshot as it was (a second fall returns to the same)
        self.assertFalse(all(torch.equal(v, restored[k])
                             for k, v in model.policy.state_dict().items()))
        kept = rollback.best["state"]
        for k, v in kept["policy"].items():
            self.assertTrue(torch.equal(v, best[k]), k)
        for i, values in best_adam.items():
            for name, value in values.items():
                self.assertTrue(torch.equal(kept["optimizer"]["state"][i][name], value))

    def test_the_offline_improvement_gates_candidate_is_no_fall(self):
        model = self._model()
        rollback = PolicyRollback(0.3)
        rollback.after_eval({"timesteps": 0, "mean_reward": 100.0}, model, True)  # BC
        candidate = {"timesteps": 0, "mean_reward": 10.0, "note": "offline improvement"}
        rollback.after_eval(candidate, model, False)  # the gate reverts it to BC itself
        self.assertEqual((rollback.rollbacks, rollback.pending), ([], None))
        self.assertNotIn("rollback_to", candidate)
        fall = {"timesteps": 64, "mean_reward": 10.0}  # a periodic one that low: rolled back
        rollback.after_eval(fall, model, False)
        self.assertEqual(rollback.rollbacks, [{"at": 64, "to": 0, "applied": False}])
        kept = {"timesteps": 0, "mean_reward": 120.0, "note": "offline improvement"}
        rollback.after_eval(kept, model, True)  # above BC: kept, the best to return to
        self.assertEqual(rollback.best["mean_reward"], 120.0)

    def _run(self, drop: float):
        model = self._model()
        env = EvalEnv(ENV_ID, {}, 2, 10_000)
        rollback = PolicyRollback(drop) if drop > 0 else None
        keeper = BestModelKeeper(self.work / f"best_{drop}.zip", rollback=rollback)
        evaluator = PeriodicEval(env, 64, None, on_eval=keeper)
        model.learn(512, callback=[evaluator] + ([rollback] if rollback else []))
        env.close()
        return model, evaluator.history, rollback

    def test_a_run_where_no_evaluation_falls_far_enough_is_the_run_without_rollback(self):
        plain, plain_history, _ = self._run(0.0)
        never, never_history, rollback = self._run(0.999)
        self.assertEqual(rollback.rollbacks, [])
        self.assertEqual(never_history, plain_history)
        self.assertTrue(params_equal(never, plain))
        # the same run with any fall sending it back differs from then on, reproducibly
        first, history, rollback = self._run(1e-9)
        second, again, _ = self._run(1e-9)
        self.assertTrue(rollback.rollbacks)
        fell = next(i for i, ev in enumerate(history) if "rollback_to" in ev)
        self.assertEqual(history[:fell], plain_history[:fell])
        self.assertEqual(history[fell]["mean_reward"], plain_history[fell]["mean_reward"])
        self.assertFalse(params_equal(first, plain))
        self.assertEqual(history, again)
        self.assertTrue(params_equal(first, second))

    def test_rollback_with_an_averaged_actor_is_refused(self):
        with self.assertRaisesRegex(ValueError, "rollback_drop needs policy_average_steps 0"):
            HybridConfig(env_id=ENV_ID, policy={"net_arch": {"pi": [16], "vf": [16]}},
                         total_timesteps=64, rollback_drop=0.3, policy_average_steps=1000)


if __name__ == "__main__":
    unittest.main()
