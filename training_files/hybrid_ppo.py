"""HybridPPO: SB3 PPO whose every update also learns from offline data, corrected by V-trace.

Online rollouts come from SB3's own `collect_rollouts` and keep GAE (they are on-policy).
Offline data enter each update as contiguous dataset segments whose targets are V-trace
(Espeholt et al. 2018) under the current policy, computed at the start of `train()` before
anything is shuffled. Three log-probabilities stay apart: mu (behaviour, fixed: the frozen BC
policy or the dataset's own log-probs), pi_old (policy at the start of this update, the PPO
ratio's denominator for both sources) and pi (the policy being optimised).

Only `train()` and `_setup_learn()` are overridden (the way sb3-contrib's MaskablePPO does), so
SB3's rollouts, logger keys and save/load stay intact; a saved zip loads with `PPO.load`.
"""

from __future__ import annotations

import copy
from typing import NamedTuple

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.save_util import load_from_zip_file
from stable_baselines3.common.utils import explained_variance
from torch.nn import functional as F

from offline_data import OfflineData
from vtrace import vtrace


class UpdateSamples(NamedTuple):
    """Samples of one update from one source (online GAE or offline V-trace), flattened."""

    observations: torch.Tensor
    actions: torch.Tensor
    old_log_prob: torch.Tensor  # pi_old
    old_values: torch.Tensor
    advantages: torch.Tensor  # V-trace policy-gradient advantages
    returns: torch.Tensor  # V-trace targets v_s
    weights: torch.Tensor  # OOD weights in [0, 1]


def ood_weights(actions: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, z_threshold: float,
                temperature: float, min_weight: float) -> torch.Tensor:
    """1 for actions within z_threshold RMS standard deviations of pi, decaying beyond.

    z is the RMS over action dims of (a - mean)/std, so its scale does not grow with the action
    dimension; a dataset action the current policy would almost never take gets little say in
    the policy-gradient and BC terms (its V-trace value target is kept: rho already caps it).
    """
    z = torch.sqrt((((actions - mean) / std) ** 2).mean(dim=-1))
    weights = torch.exp(-torch.clamp(z - z_threshold, min=0.0) / temperature)
    return torch.clamp(weights, min=min_weight)


def discounted_returns(rewards: np.ndarray, terminations: np.ndarray, truncations: np.ndarray,
                       bootstrap: np.ndarray, gamma: float) -> np.ndarray:
    """Per-step discounted return of dataset episodes; truncated ends bootstrap from `bootstrap`."""
    out = np.empty(len(rewards), dtype=np.float64)
    running = 0.0
    for t in range(len(rewards) - 1, -1, -1):
        if terminations[t]:
            running = rewards[t]
        elif truncations[t]:
            running = rewards[t] + gamma * bootstrap[t]
        else:
            running = rewards[t] + gamma * running
        out[t] = running
    return out


class HybridPPO(PPO):
    """PPO + offline segments with V-trace, OOD weights, a BC term and a critic warm-up.

    :param offline_data: transitions to mix in (None: plain PPO).
    :param behaviour_policy: frozen estimate of mu (the best BC policy); ignored when the data
        carry their own behaviour log-probs.
    :param mix_ratio: offline share of the samples in each update. Each update adds
        round(online * mix/(1-mix)) offline transitions, rounded to whole segments, and
        scales the minibatch so the number of gradient steps equals plain PPO's. 0 is plain
        PPO; 1 still collects rollouts (evaluation, logging) but learns from n_steps*n_envs
        offline transitions only.
    :param bc_coeff: weight of the OOD-weighted -log pi(a|s) on offline samples (DAPG-style).
    :param warm_start_steps: value-only gradient steps on dataset returns before the first
        rollout (policy frozen); an untrained critic is the known cause of the early collapse.
    """

    def __init__(self, *args, offline_data: OfflineData | None = None, behaviour_policy=None,
                 mix_ratio: float = 0.5, rho_bar: float = 1.0, c_bar: float = 0.95,
                 bc_coeff: float = 0.0, warm_start_steps: int = 0, warmup_learning_rate: float = 1e-3,
                 warmup_batch_size: int = 256, segment_length: int = 64,
                 ood_z_threshold: float = 2.0, ood_temperature: float = 1.0,
                 ood_min_weight: float = 0.0, log_std_min: float | None = None, **kwargs):
        if not 0.0 <= mix_ratio <= 1.0:
            raise ValueError(f"mix_ratio must be in [0, 1], got {mix_ratio}")
        self.mix_ratio = mix_ratio
        self.rho_bar, self.c_bar, self.bc_coeff = rho_bar, c_bar, bc_coeff
        self.warm_start_steps, self.warmup_learning_rate = warm_start_steps, warmup_learning_rate
        self.warmup_batch_size, self.segment_length = warmup_batch_size, segment_length
        self.ood_z_threshold, self.ood_temperature = ood_z_threshold, ood_temperature
        self.ood_min_weight, self.log_std_min = ood_min_weight, log_std_min
        self.warmed_up = False
        self.warmup_stats: dict = {}
        self.offline_data, self.behaviour_policy = None, None
        super().__init__(*args, **kwargs)
        if offline_data is not None:
            self.set_offline_data(offline_data, behaviour_policy)

    # ------------------------------------------------------------------ set-up
    def _excluded_save_params(self) -> list[str]:
        # Datasets and the behaviour policy are inputs, not model state: keep zips small.
        return super()._excluded_save_params() + [
            "offline_data", "behaviour_policy", "_offline", "_offline_rng"]

    def load_bc_checkpoint(self, path) -> None:
        """Initialise the policy (weights and frozen obs statistics) from a BC zip."""
        _, params, _ = load_from_zip_file(path, device=self.device)
        self.policy.load_state_dict(params["policy"])

    def subtract_log_std(self, amount: float) -> None:
        """Start exploring with less noise than BC measured (applied once, at start).

        The result is floored at log_std_min at once, so the first rollout already uses the
        noise every later update will allow."""
        with torch.no_grad():
            self.policy.log_std.sub_(amount)
            if self.log_std_min is not None:
                floored = int((self.policy.log_std < self.log_std_min).sum())
                self.policy.log_std.clamp_(min=self.log_std_min)
                if floored:
                    print(f"HybridPPO: {floored} of {self.policy.log_std.numel()} log_std entries "
                          f"raised to the floor log_std_min={self.log_std_min} (BC's noise minus "
                          f"--log_std_subtract {amount} was below it)")

    def set_offline_data(self, data: OfflineData, behaviour_policy=None) -> None:
        """Move the dataset to the device once and fix mu for every transition."""
        as_t = lambda a, dtype=torch.float32: torch.as_tensor(a, dtype=dtype, device=self.device)  # noqa: E731
        self.offline_data = data
        obs, actions = as_t(data.observations), as_t(data.actions)
        if data.behaviour_log_probs is not None:
            mu = as_t(data.behaviour_log_probs).reshape(-1)
        else:
            # Always a copy: freezing the caller's object could freeze the live policy itself.
            behaviour_policy = copy.deepcopy(behaviour_policy if behaviour_policy is not None
                                             else self.policy)
            behaviour_policy.set_training_mode(False)
            for p in behaviour_policy.parameters():
                p.requires_grad_(False)
            if self.log_std_min is not None and hasattr(behaviour_policy, "log_std"):
                # Deterministic demonstrations give BC a near-zero std; pi is floored at
                # log_std_min, so an unfloored mu would make pi/mu ~ 0 for every dataset action
                # and switch V-trace off. mu gets the same floor as pi.
                behaviour_policy.log_std.clamp_(min=self.log_std_min)
            with torch.no_grad():
                mu = torch.cat([behaviour_policy.get_distribution(obs[i:i + 65536])
                                .log_prob(actions[i:i + 65536]) for i in range(0, len(obs), 65536)])
        self.behaviour_policy = behaviour_policy
        self._offline = {
            "observations": obs, "actions": actions, "rewards": as_t(data.rewards),
            "next_observations": as_t(data.next_observations),
            "terminations": as_t(data.terminations, torch.bool),
            "episode_ends": as_t(data.episode_ends, torch.bool), "mu_log_prob": mu,
        }
        self._offline_rng = np.random.default_rng(self.seed)

    def _setup_learn(self, *args, **kwargs):
        out = super()._setup_learn(*args, **kwargs)
        if self.offline_data is not None and self.warm_start_steps > 0 and not self.warmed_up:
            self.warm_up_value_function(self.warm_start_steps)
        return out

    # ------------------------------------------------------------------ critic warm-up
    def _value_params(self) -> list[torch.nn.Parameter]:
        return [*self.policy.mlp_extractor.value_net.parameters(), *self.policy.value_net.parameters()]

    @torch.no_grad()
    def _dataset_returns(self) -> torch.Tensor:
        off, data = self._offline, self.offline_data
        trunc = np.flatnonzero(data.truncations)
        bootstrap = np.zeros(len(data))
        if len(trunc):
            bootstrap[trunc] = self._predict_values(off["next_observations"][trunc]).cpu().numpy()
        g = discounted_returns(data.rewards, data.terminations, data.truncations, bootstrap, self.gamma)
        return torch.as_tensor(g, dtype=torch.float32, device=self.device)

    def _predict_values(self, obs: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
        return torch.cat([self.policy.predict_values(obs[i:i + chunk]).flatten()
                          for i in range(0, len(obs), chunk)])

    def warm_up_value_function(self, grad_steps: int) -> dict:
        """Fit V to dataset returns with the actor frozen.

        The value head is first refitted by least squares on the critic's current features, so
        the output is on the scale of the returns (hundreds on walker2d) before any gradient
        step; the loss is the MSE divided by the targets' variance (= 1 - explained variance),
        which makes Adam's steps independent of the reward scale. Truncated episode ends
        bootstrap from the current V, refreshed four times during the warm-up.
        """
        obs = self._offline["observations"]
        gen = torch.Generator(device="cpu").manual_seed(int(self.seed or 0))
        self.policy.set_training_mode(False)
        targets = self._dataset_returns()
        with torch.no_grad():
            rows = torch.randperm(len(obs), generator=gen)[:20000].to(self.device)
            latent = self.policy.mlp_extractor.forward_critic(self.policy.extract_features(obs[rows]))
            # float64 on the CPU: MPS has no float64, and this is one small solve.
            x = torch.cat([latent, torch.ones(len(rows), 1, device=self.device)], dim=1).cpu().double()
            ridge = 1e-3 * torch.eye(x.shape[1], dtype=torch.float64)
            w = torch.linalg.solve(x.T @ x + ridge, x.T @ targets[rows].cpu().double()).to(self.device)
            self.policy.value_net.weight.copy_(w[:-1].float().unsqueeze(0))
            self.policy.value_net.bias.copy_(w[-1:].float())
        optimizer = torch.optim.Adam(self._value_params(), lr=self.warmup_learning_rate)
        refresh = max(1, grad_steps // 4)
        losses = []
        self.policy.set_training_mode(True)
        var = targets.var().clamp(min=1e-8)
        for step in range(grad_steps):
            if step and step % refresh == 0:
                targets = self._dataset_returns()
                var = targets.var().clamp(min=1e-8)
            idx = torch.randint(len(obs), (self.warmup_batch_size,), generator=gen).to(self.device)
            loss = F.mse_loss(self.policy.predict_values(obs[idx]).flatten(), targets[idx]) / var
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        with torch.no_grad():
            ev = explained_variance(self._predict_values(obs).cpu().numpy(), targets.cpu().numpy())
        self.warmed_up = True
        stats = {"warmup/value_loss": float(np.mean(losses[-10:])) if losses else float("nan"),
                 "warmup/first_loss": losses[0] if losses else float("nan"),
                 "warmup/explained_variance": float(ev), "warmup/grad_steps": grad_steps}
        self.warmup_stats = stats
        for key, value in stats.items():
            self.logger.record(key, value)
        self.logger.dump(self.num_timesteps)
        return stats

    # ------------------------------------------------------------------ offline batch
    def _n_offline(self) -> int:
        n_online = self.n_steps * self.n_envs
        if self.mix_ratio >= 1.0:
            return n_online
        return int(round(n_online * self.mix_ratio / (1.0 - self.mix_ratio)))

    @torch.no_grad()
    def _offline_batch(self) -> tuple[UpdateSamples, dict]:
        """Draw segments and compute V-trace with the current policy, before any shuffling."""
        off = self._offline
        n = len(off["rewards"])
        length = min(self.segment_length, n)
        n_segments = max(1, int(round(self._n_offline() / length)))
        starts = self._offline_rng.integers(0, n - length + 1, size=n_segments)
        idx = torch.as_tensor(starts[None, :] + np.arange(length)[:, None], device=self.device)
        flat = idx.reshape(-1)  # time-major: row t of every segment, then row t+1

        obs, actions = off["observations"][flat], off["actions"][flat]
        dist = self.policy.get_distribution(obs)
        log_pi = dist.log_prob(actions)
        values = self.policy.predict_values(obs).flatten()
        next_values = self.policy.predict_values(off["next_observations"][flat]).flatten()
        log_rhos = log_pi - off["mu_log_prob"][flat]
        shape = (length, n_segments)
        out = vtrace(log_rhos.view(shape), off["rewards"][flat].view(shape), values.view(shape),
                     next_values.view(shape), off["terminations"][flat].view(shape),
                     off["episode_ends"][flat].view(shape), self.gamma, self.rho_bar, self.c_bar)
        gauss = dist.distribution
        weights = ood_weights(actions, gauss.mean, gauss.stddev, self.ood_z_threshold,
                              self.ood_temperature, self.ood_min_weight)
        rhos = log_rhos.exp()
        stats = {"vtrace/rho_mean": rhos.mean().item(),
                 "vtrace/rho_clip_frac": (rhos > self.rho_bar).float().mean().item(),
                 "vtrace/target_mean": out.vs.mean().item(),
                 "offline/explained_variance": explained_variance(
                     values.cpu().numpy(), out.vs.flatten().cpu().numpy()),
                 "ood/weight_mean": weights.mean().item(),
                 "ood/downweighted_frac": (weights < 1.0).float().mean().item(),
                 "offline/samples": len(flat)}
        return UpdateSamples(obs, actions, log_pi, values, out.pg_advantages.flatten(),
                            out.vs.flatten(), weights), stats

    def _online_batch(self) -> UpdateSamples:
        """The rollout buffer flattened the way RolloutBuffer.get does (same sample order)."""
        buf = self.rollout_buffer
        flat = lambda a: buf.to_torch(buf.swap_and_flatten(a))  # noqa: E731
        actions = flat(buf.actions)
        n = len(actions)
        return UpdateSamples(flat(buf.observations), actions, flat(buf.log_probs).flatten(),
                            flat(buf.values).flatten(), flat(buf.advantages).flatten(),
                            flat(buf.returns).flatten(), torch.ones(n, device=self.device))

    # ------------------------------------------------------------------ update
    def train(self) -> None:
        """One PPO update over online GAE samples and offline V-trace samples."""
        self.policy.set_training_mode(False)
        use_offline = self.offline_data is not None and self.mix_ratio > 0
        use_online = self.mix_ratio < 1.0 or not use_offline
        parts, offline_stats = [], {}
        if use_online:
            parts.append(self._online_batch())
        if use_offline:
            offline, offline_stats = self._offline_batch()
            parts.append(offline)
        n_online = len(parts[0].actions) if use_online else 0
        batch = UpdateSamples(*[torch.cat(fields) for fields in zip(*parts)])
        is_offline = torch.zeros(len(batch.actions), dtype=torch.bool, device=self.device)
        is_offline[n_online:] = True

        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        clip_range = self.clip_range(self._current_progress_remaining)
        if self.clip_range_vf is not None:
            clip_range_vf = self.clip_range_vf(self._current_progress_remaining)
        # Same number of gradient steps as plain PPO: the minibatch grows with the offline share.
        n_total = len(batch.actions)
        minibatch = max(1, int(round(self.batch_size * n_total / (self.n_steps * self.n_envs))))

        entropy_losses, pg_losses, value_losses, bc_losses, clip_fractions = [], [], [], [], []
        approx_kl_divs = []
        continue_training = True
        for epoch in range(self.n_epochs):
            approx_kl_divs = []
            indices = np.random.permutation(n_total)
            for start in range(0, n_total, minibatch):
                mb = torch.as_tensor(indices[start:start + minibatch], device=self.device)
                actions = batch.actions[mb]
                if isinstance(self.action_space, spaces.Discrete):
                    actions = actions.long().flatten()
                values, log_prob, entropy = self.policy.evaluate_actions(batch.observations[mb], actions)
                values = values.flatten()
                offline_mb, weights = is_offline[mb], batch.weights[mb]
                advantages = self._normalize_per_source(batch.advantages[mb], offline_mb)

                ratio = torch.exp(log_prob - batch.old_log_prob[mb])
                surrogate = torch.min(advantages * ratio,
                                      advantages * torch.clamp(ratio, 1 - clip_range, 1 + clip_range))
                policy_loss = -(weights * surrogate).mean()
                pg_losses.append(policy_loss.item())
                clip_fractions.append(torch.mean((torch.abs(ratio - 1) > clip_range).float()).item())

                if self.clip_range_vf is None:
                    values_pred = values
                else:
                    old_values = batch.old_values[mb]
                    values_pred = old_values + torch.clamp(values - old_values, -clip_range_vf, clip_range_vf)
                value_loss = F.mse_loss(batch.returns[mb], values_pred)
                value_losses.append(value_loss.item())

                entropy_loss = -torch.mean(-log_prob) if entropy is None else -torch.mean(entropy)
                entropy_losses.append(entropy_loss.item())

                loss = policy_loss + self.ent_coef * entropy_loss + self.vf_coef * value_loss
                if self.bc_coeff > 0 and bool(offline_mb.any()):
                    bc_loss = -(weights[offline_mb] * log_prob[offline_mb]).mean()
                    bc_losses.append(bc_loss.item())
                    loss = loss + self.bc_coeff * bc_loss

                with torch.no_grad():
                    log_ratio = log_prob - batch.old_log_prob[mb]
                    approx_kl_div = torch.mean((torch.exp(log_ratio) - 1) - log_ratio).cpu().numpy()
                    approx_kl_divs.append(approx_kl_div)
                if self.target_kl is not None and approx_kl_div > 1.5 * self.target_kl:
                    continue_training = False
                    if self.verbose >= 1:
                        print(f"Early stopping at step {epoch} due to reaching max kl: {approx_kl_div:.2f}")
                    break

                self.policy.optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
                self.policy.optimizer.step()
                if self.log_std_min is not None and hasattr(self.policy, "log_std"):
                    with torch.no_grad():
                        self.policy.log_std.clamp_(min=self.log_std_min)
            self._n_updates += 1
            if not continue_training:
                break

        self._record_train_stats(entropy_losses, pg_losses, value_losses, bc_losses,
                                 approx_kl_divs, clip_fractions, loss, clip_range, offline_stats)
        if self.clip_range_vf is not None:
            self.logger.record("train/clip_range_vf", clip_range_vf)

    def _normalize_per_source(self, advantages: torch.Tensor, offline: torch.Tensor) -> torch.Tensor:
        """GAE and V-trace advantages have different scales: each is normalised on its own."""
        if not self.normalize_advantage:
            return advantages
        out = advantages.clone()
        for mask in (~offline, offline):
            if int(mask.sum()) > 1:
                part = advantages[mask]
                out[mask] = (part - part.mean()) / (part.std() + 1e-8)
        return out

    def _record_train_stats(self, entropy_losses, pg_losses, value_losses, bc_losses,
                            approx_kl_divs, clip_fractions, loss, clip_range, offline_stats) -> None:
        buf = self.rollout_buffer
        explained_var = explained_variance(buf.values.flatten(), buf.returns.flatten())
        record = self.logger.record
        record("train/entropy_loss", np.mean(entropy_losses))
        record("train/policy_gradient_loss", np.mean(pg_losses))
        record("train/value_loss", np.mean(value_losses))
        record("train/approx_kl", np.mean(approx_kl_divs))
        record("train/clip_fraction", np.mean(clip_fractions))
        record("train/loss", loss.item())
        record("train/explained_variance", explained_var)
        if bc_losses:
            record("train/bc_loss", np.mean(bc_losses))
        if hasattr(self.policy, "log_std"):
            record("train/std", torch.exp(self.policy.log_std).mean().item())
        record("train/n_updates", self._n_updates, exclude="tensorboard")
        record("train/clip_range", clip_range)
        for key, value in offline_stats.items():
            record(key, value)
        record("train/mix_ratio", self.mix_ratio, exclude="stdout")
