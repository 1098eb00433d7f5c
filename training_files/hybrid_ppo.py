"""HybridPPO: SB3 PPO whose every update also learns from offline data, corrected by V-trace.

Online rollouts come from SB3's own `collect_rollouts` and keep GAE (they are on-policy).
Offline data enter each update as contiguous dataset segments whose targets are V-trace
(Espeholt et al. 2018) under the current policy (`offline_batch.py`). Three log-probabilities
stay apart: mu (behaviour, fixed: the frozen BC policy or the dataset's own log-probs), pi_old
(policy at the start of this update, the PPO ratio's denominator for both sources) and pi (the
policy being optimised).

Of SB3's learning loop only `train()`, `_setup_learn()` (critic warm-up) and
`collect_rollouts()` (the optional offline improvement before the first rollout) are
overridden, calling SB3's own (and, for a critic rate of its own, the optimizer's set-up and
save/load), so SB3's rollouts, logger keys and save/load stay intact; a saved zip loads with
`PPO.load`. The update's samples are `update_batch.py`'s, the offline half `offline_batch.py`'s. With
every mechanism switched off (mix_ratio 0, bc_coeff 0, no warm-up, no critic-only updates,
no anchor), `train()` is SB3's PPO.train bit for bit (tested).
"""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import nullcontext
from typing import Literal

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.save_util import load_from_zip_file

import offline_improvement
from critic_learning_rate import loaded_parameters, saved_parameters, set_rates, split_optimizer
from critic_thread import CriticThread, can_split, ppo_value_loss
from critic_warmup import warm_up_critic
from exploration_noise import decay_log_std, floor_log_std, lower_log_std
from gradient_clipping import GradClip, clip_gradients
from hparams import OODConfig
from offline_batch import OfflineBuffer, UpdateSamples
from offline_data import OfflineData
from policy_anchor import MeanActionAnchor
from policy_average import ActorAverage
from split_vec_env import SplitVecEnv
from update_batch import (joined, online_samples, policy_advantages, policy_gradient_loss,
                          sample_counts)
from update_terms import ActorTerms, record_update, trust_region_stats

class HybridPPO(PPO):
    """PPO + offline segments with V-trace, OOD weights, a BC term and critic warm-ups.

    Each hparam.yml field of the same name says why it exists (`hparams.HybridConfig`).

    :param offline_data: transitions to mix in (None: plain PPO).
    :param behaviour_policy: frozen estimate of mu (the best BC policy); ignored when the data
        carry their own behaviour log-probs.
    :param mix_ratio: offline share of each update's samples, at a cost bounded and continuous
        in it (`update_batch.sample_counts`); the minibatch grows with the update so the number
        of gradient steps equals plain PPO's.
    :param bc_coeff, bc_decay: the OOD-weighted -log pi(a|s) of offline samples, weighted
        bc_coeff * bc_decay ** update (DAPG; `update_terms.ActorTerms`).
    :param warm_start_steps: value-only gradient steps on the data's returns before the first
        rollout (`critic_warmup.py`).
    :param critic_only_updates: the first updates train the critic alone, actor frozen (DPPO's
        n_critic_warmup_itr): the warm-up fits the data's returns, these the tuned policy's.
    :param offline_advantage_centering: "mean" (SB3's rule, biased off-policy), "rho" or "none"
        (`offline_batch.normalise_per_source`).
    :param offline_policy_updates: updates on offline samples alone after the warm-up and before
        the first rollout (`offline_improvement.py`).
    :param offline_advantages: which offline V-trace advantages enter the policy gradient:
        "signed", "positive" (self-imitation) or "none" (`update_batch.policy_advantages`).
    :param policy_gradient_mean: the clipped surrogate's mean over the minibatch ("batch", SB3)
        or over its online rows ("online"; `update_batch.policy_gradient_loss`).
    :param offline_value_weight: an offline row's weight in the value loss (an online row's is
        1), whose weighted mean the critic minimises; 0: after its warm-ups the critic learns
        from online returns, as PPO's does.
    :param log_std_decay: log_std falls by this much over the run, linearly in env steps,
        floored at log_std_min (`exploration_noise.py`).
    :param anchor_coeff, anchor_decay: a penalty holding the mean action near the start policy's
        (`policy_anchor.py`) on the update's states or on those of `set_anchor_states`.
    :param policy_average_steps: time constant (env steps) of an EMA of the actor's weights that
        evaluations and saves see inside `evaluated_actor()` (`policy_average.py`); 0: off.
    :param parallel_update: the critic's half of each minibatch in a second thread
        (`critic_thread.py`): the same update on two CPU cores.
    :param critic_learning_rate: the critic's own initial rate on the same schedule
        (`critic_learning_rate.py`); None: the actor's, as in SB3.
    :param grad_clip: "joint" (SB3) or "separate" gradient clipping (`gradient_clipping.py`).
    """

    def __init__(self, *args, offline_data: OfflineData | None = None, behaviour_policy=None,
                 mix_ratio: float = 0.5, rho_bar: float = 1.0, c_bar: float = 0.95,
                 bc_coeff: float = 0.0, bc_decay: float = 1.0, warm_start_steps: int = 0,
                 warmup_learning_rate: float = 1e-3, warmup_batch_size: int = 256,
                 critic_only_updates: int = 0, segment_length: int = 64,
                 ood: OODConfig | None = None,
                 offline_advantage_centering: Literal["mean", "rho", "none"] = "mean",
                 offline_advantages: Literal["signed", "positive", "none"] = "signed",
                 offline_policy_updates: int = 0,
                 policy_gradient_mean: Literal["batch", "online"] = "batch",
                 offline_value_weight: float = 1.0,
                 log_std_min: float | None = None, log_std_decay: float = 0.0,
                 anchor_coeff: float = 0.0, anchor_decay: float = 1.0,
                 policy_average_steps: int = 0, parallel_update: bool = True,
                 critic_learning_rate: float | None = None, grad_clip: GradClip = "joint",
                 **kwargs):
        if not 0.0 <= mix_ratio <= 1.0:
            raise ValueError(f"mix_ratio must be in [0, 1], got {mix_ratio}")
        self.mix_ratio = mix_ratio
        self.rho_bar, self.c_bar = rho_bar, c_bar
        self.bc_coeff, self.bc_decay = bc_coeff, bc_decay
        self.warm_start_steps, self.warmup_learning_rate = warm_start_steps, warmup_learning_rate
        self.warmup_batch_size, self.critic_only_updates = warmup_batch_size, critic_only_updates
        self.segment_length, self.ood = segment_length, ood or OODConfig()
        self.offline_advantage_centering = offline_advantage_centering
        self.offline_advantages = offline_advantages
        self.offline_policy_updates, self.offline_improved = offline_policy_updates, False
        self.policy_gradient_mean = policy_gradient_mean
        self.offline_value_weight = offline_value_weight
        self.offline_improvement_seconds = 0.0
        self._before_improvement: dict | None = None
        self._offline_only = False  # the current update draws offline samples alone
        self.log_std_min = log_std_min
        self.log_std_decay, self.log_std_decayed = log_std_decay, 0.0
        self.anchor_coeff, self.anchor_decay = anchor_coeff, anchor_decay
        self._anchor: MeanActionAnchor | None = None  # made when learning starts
        self.anchor_states: np.ndarray | None = None  # None: the anchor holds on update states
        self.anchor_gate: dict | None = None  # anchor_gate bc_gain: the returns it compared
        self.policy_average_steps = policy_average_steps
        self._actor_average: ActorAverage | None = None  # made when the actor first moves
        self.parallel_update = parallel_update
        self.critic_learning_rate = critic_learning_rate
        self.grad_clip = grad_clip
        self._critic: CriticThread | None = None  # made at the first update
        self.warmed_up = False
        self.warmup_stats: dict = {}
        self.policy_updates = 0  # train() calls, for bc_decay and the critic-only phase
        self.offline: OfflineBuffer | None = None
        super().__init__(*args, **kwargs)
        if offline_data is not None:
            self.set_offline_data(offline_data, behaviour_policy)

    # ------------------------------------------------------------------ set-up
    def _excluded_save_params(self) -> list[str]:
        # The dataset and the behaviour policy are inputs, not model state: keep zips small.
        # The pre-improvement copy (for the gate's revert) is a second policy: not saved either.
        return super()._excluded_save_params() + ["offline", "_before_improvement", "_anchor",
                                                   "anchor_states", "anchor_gate",
                                                   "_actor_average", "_critic"]

    def _setup_model(self) -> None:
        super()._setup_model()
        if self.critic_learning_rate is not None:
            split_optimizer(self.policy, self._critic_lr_ratio())

    def _critic_lr_ratio(self) -> float:
        return self.critic_learning_rate / self.lr_schedule(1.0)

    def _update_learning_rate(self, optimizers) -> None:
        super()._update_learning_rate(optimizers)
        if self.critic_learning_rate is not None:
            set_rates(self.policy.optimizer, self.lr_schedule(self._current_progress_remaining),
                      self._critic_lr_ratio())
            self.logger.record("train/critic_learning_rate", self.policy.optimizer.param_groups[1]["lr"])

    def get_parameters(self) -> dict[str, dict]:
        """SB3's, with the optimizer state in SB3's one group, so that PPO.load reads it."""
        params = super().get_parameters()
        return params if self.critic_learning_rate is None else saved_parameters(self.policy, params)

    def set_parameters(self, load_path_or_dict, exact_match: bool = True, device="auto") -> None:
        if self.critic_learning_rate is not None:
            load_path_or_dict = loaded_parameters(self.policy, load_path_or_dict,
                                                  self._critic_lr_ratio(), device)
        super().set_parameters(load_path_or_dict, exact_match, device)

    def _critic_thread(self) -> CriticThread | None:
        """The critic's half of each minibatch runs in this thread (critic_thread.py), or None:
        parallel_update off, a GPU (its kernels already run beside Python), or a trainable
        parameter shared by actor and critic."""
        if (self._critic is None and self.parallel_update and self.device.type == "cpu"
                and can_split(self.policy)):
            self._critic = CriticThread()
        return self._critic

    @property
    def offline_data(self) -> OfflineData | None:
        return None if self.offline is None else self.offline.data

    @property
    def behaviour_policy(self):
        return None if self.offline is None else self.offline.behaviour_policy

    def load_bc_checkpoint(self, path) -> None:
        """Initialise the policy (weights and frozen obs statistics) from a BC zip."""
        _, params, _ = load_from_zip_file(path, device=self.device)
        self.policy.load_state_dict(params["policy"])

    def subtract_log_std(self, amount: float) -> None:
        """Start exploring with less noise than BC measured (applied once, at start).

        The result is floored at log_std_min at once, so the first rollout already uses the
        noise every later update will allow."""
        floored = lower_log_std(self.policy, amount, self.log_std_min)
        if floored:
            print(f"HybridPPO: {floored} of {self.policy.log_std.numel()} log_std entries "
                  f"raised to the floor log_std_min={self.log_std_min} (BC's noise minus "
                  f"--log_std_subtract {amount} was below it)")

    def set_anchor_states(self, observations: np.ndarray) -> None:
        """Hold the mean-action anchor on these states instead of each update's (before learn);
        none at all: no anchor."""
        self.anchor_states = np.asarray(observations, dtype=np.float32)

    def set_offline_data(self, data: OfflineData, behaviour_policy=None) -> None:
        """Move the dataset to the device once and fix mu for every transition."""
        self.offline = OfflineBuffer(data, self.device, behaviour_policy or self.policy,
                                     self.log_std_min, self.seed)

    def _setup_learn(self, *args, **kwargs):
        out = super()._setup_learn(*args, **kwargs)
        no_states = self.anchor_states is not None and len(self.anchor_states) == 0
        if self.anchor_coeff > 0 and self._anchor is None and not no_states:
            # the policy as fine-tuning starts (an empty set of fixed states: no anchor)
            states = (None if self.anchor_states is None else
                      torch.as_tensor(self.anchor_states, dtype=torch.float32, device=self.device))
            self._anchor = MeanActionAnchor(self.policy, states)
        if self.offline is not None and self.warm_start_steps > 0 and not self.warmed_up:
            self.warm_up_value_function(self.warm_start_steps)
        return out

    def collect_rollouts(self, env, callback, rollout_buffer, n_rollout_steps: int) -> bool:
        # The offline improvement runs here, not in _setup_learn: callbacks' on_training_start
        # (the step-0 evaluation, BC's score and the best-model keeper's first candidate) comes
        # between the two, and must still see the BC policy.
        if (self.offline is not None and self.mix_ratio > 0 and self.offline_policy_updates > 0
                and not self.offline_improved):  # mix_ratio 0: no offline samples, as PPO
            self.improve_offline(self.offline_policy_updates)
        if isinstance(env, SplitVecEnv):  # its worker samples its own envs' actions
            env.begin_rollout(self.policy, n_rollout_steps)
        return super().collect_rollouts(env, callback, rollout_buffer, n_rollout_steps)

    def improve_offline(self, n_updates: int) -> None:
        """n_updates updates on offline samples alone (`offline_improvement.py`)."""
        offline_improvement.improve_offline(self, n_updates)

    def settle_offline_improvement(self, keep: bool) -> None:
        """Keep the offline improvement, or put back everything it changed."""
        offline_improvement.settle(self, keep)

    def warm_up_value_function(self, grad_steps: int) -> dict:
        """Fit V to the dataset's returns with the actor frozen (see critic_warmup.py)."""
        started = time.perf_counter()
        stats = warm_up_critic(self.policy, self.offline, grad_steps, self.warmup_learning_rate,
                               self.warmup_batch_size, self.gamma, int(self.seed or 0))
        stats["warmup/seconds"] = time.perf_counter() - started
        self.warmed_up = True
        self.warmup_stats = stats
        for key, value in stats.items():
            self.logger.record(key, value)
        self.logger.dump(self.num_timesteps)
        return stats

    # ------------------------------------------------------------------ samples of one update
    def _sample_counts(self) -> tuple[int, int]:
        """(online, offline) samples of one update; see mix_ratio in the class docstring."""
        return sample_counts(self.n_steps * self.n_envs, self.mix_ratio,
                             self.offline is not None, self._offline_only)

    def _offline_batch(self, n_samples: int | None = None) -> tuple[UpdateSamples, dict]:
        """The update's offline segments with V-trace under the current policy and critic."""
        n_samples = self._sample_counts()[1] if n_samples is None else n_samples
        return self.offline.sample(self.policy, n_samples, self.segment_length, self.gamma,
                                   self.rho_bar, self.c_bar, self.ood)

    def _update_samples(self) -> tuple[UpdateSamples, torch.Tensor, dict]:
        """Online then offline samples of this update, and which rows are offline."""
        n_online, n_offline = self._sample_counts()
        online = (online_samples(self.rollout_buffer, n_online,
                                 None if self.offline is None else self.offline.rng,
                                 self.device) if n_online else None)
        offline, stats = self._offline_batch(n_offline) if n_offline else (None, {})
        return *joined(online, offline), stats

    # ------------------------------------------------------------------ update
    def train(self) -> None:
        """One PPO update over online GAE samples and offline V-trace samples."""
        self.policy.set_training_mode(False)
        batch, is_offline, offline_stats = self._update_samples()
        critic_only = not self._offline_only and self.policy_updates < self.critic_only_updates
        terms = ActorTerms(self, batch.observations, critic_only)
        value_weights = (None if self.offline_value_weight == 1.0 else
                         1.0 - (1.0 - self.offline_value_weight) * is_offline.float())
        moves_actor = not critic_only and not self._offline_only
        if moves_actor and self.policy_average_steps > 0 and self._actor_average is None:
            self._actor_average = ActorAverage(self.policy, self.policy_average_steps,
                                               self.n_steps * self.n_envs)

        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        clip_range = self.clip_range(self._current_progress_remaining)
        clip_range_vf = (None if self.clip_range_vf is None
                         else self.clip_range_vf(self._current_progress_remaining))
        # Same number of gradient steps as plain PPO: the minibatch grows with the offline share.
        n_total = len(batch.actions)
        minibatch = max(1, int(round(self.batch_size * n_total / (self.n_steps * self.n_envs))))

        critic = self._critic_thread()
        has_online = bool((~is_offline).any())  # see trust_region_stats
        stats: dict[str, list] = defaultdict(list)
        continue_training = True
        for epoch in range(self.n_epochs):
            stats["approx_kl"] = []
            indices = np.random.permutation(n_total)
            for start in range(0, n_total, minibatch):
                mb = torch.as_tensor(indices[start:start + minibatch], device=self.device)
                actions = batch.actions[mb]
                if isinstance(self.action_space, spaces.Discrete):
                    actions = actions.long().flatten()
                row_weights = None if value_weights is None else value_weights[mb]
                self.policy.optimizer.zero_grad()
                if critic is not None:  # the value loss's forward and backward, beside the actor's
                    value_job = critic.submit(self.policy, batch.observations[mb],
                                              batch.returns[mb], self.vf_coef,
                                              batch.old_values[mb], clip_range_vf, row_weights)
                    distribution = self.policy.get_distribution(batch.observations[mb])
                    log_prob, entropy = distribution.log_prob(actions), distribution.entropy()
                else:
                    values, log_prob, entropy = self.policy.evaluate_actions(batch.observations[mb],
                                                                             actions)
                offline_mb, weights = is_offline[mb], batch.weights[mb]
                advantages = policy_advantages(
                    batch.advantages[mb], batch.rhos[mb], offline_mb, self.offline_advantages,
                    self.offline_advantage_centering, self.normalize_advantage)

                ratio = torch.exp(log_prob - batch.old_log_prob[mb])
                surrogate = torch.min(advantages * ratio,
                                      advantages * torch.clamp(ratio, 1 - clip_range, 1 + clip_range))
                policy_loss = policy_gradient_loss(surrogate, weights, offline_mb,
                                                   self.policy_gradient_mean)
                stats["policy_gradient_loss"].append(policy_loss.item())

                if critic is not None:
                    value_term = 0.0  # the critic thread adds its gradient; joined after backward
                else:
                    value_loss = ppo_value_loss(values.flatten(), batch.returns[mb],
                                                batch.old_values[mb], clip_range_vf, row_weights)
                    stats["value_loss"].append(value_loss.item())
                    value_term = self.vf_coef * value_loss

                entropy_loss = -torch.mean(-log_prob) if entropy is None else -torch.mean(entropy)
                stats["entropy_loss"].append(entropy_loss.item())

                if critic_only:
                    loss = value_term  # actor gets no gradient: Adam skips it
                else:
                    loss = policy_loss + self.ent_coef * entropy_loss + value_term
                    loss = terms.added_to(loss, self.policy, log_prob, offline_mb, weights, mb)

                approx_kl_div, clip_fraction = trust_region_stats(
                    log_prob - batch.old_log_prob[mb], offline_mb, clip_range, has_online)
                if approx_kl_div is not None:
                    stats["approx_kl"].append(approx_kl_div)
                    stats["clip_fraction"].append(clip_fraction)
                stop = (self.target_kl is not None and approx_kl_div is not None
                        and approx_kl_div > 1.5 * self.target_kl)
                if not stop and torch.is_tensor(loss) and loss.requires_grad:
                    loss.backward()  # (with the critic thread, in the critic-only updates: nothing)
                if critic is not None:  # its backward has overlapped the actor's
                    value_loss = value_job.result()
                    stats["value_loss"].append(value_loss.item())
                    loss = loss + self.vf_coef * value_loss  # the whole loss, for the log
                if stop:
                    continue_training = False
                    if self.verbose >= 1:
                        print(f"Early stopping at step {epoch} due to reaching max kl: {approx_kl_div:.2f}")
                    break

                clip_gradients(self.policy, self.max_grad_norm, self.grad_clip)
                self.policy.optimizer.step()
                floor_log_std(self.policy, self.log_std_min)
            self._n_updates += 1
            if not continue_training:
                break
        if not self._offline_only:
            self.policy_updates += 1
            self.log_std_decayed = decay_log_std(self.policy, self.log_std_decay,
                                                 1.0 - self._current_progress_remaining,
                                                 self.log_std_decayed, self.log_std_min)
        if moves_actor and self._actor_average is not None:
            self._actor_average.update()
        record_update(self, stats, loss, clip_range, clip_range_vf, critic_only, offline_stats)
        terms.record(self.logger.record)

    def evaluated_actor(self):
        """Context in which the policy is the one to evaluate and save (see policy_average_steps)."""
        return nullcontext() if self._actor_average is None else self._actor_average.swapped_in()
