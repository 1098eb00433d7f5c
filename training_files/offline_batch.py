"""The offline half of a HybridPPO update: dataset segments, mu, V-trace targets, OOD weights.

The dataset lives on the device once; mu (the behaviour policy's log-prob of every dataset
action) is fixed when the buffer is built. Each update draws contiguous segments and computes
V-trace under the *current* policy and critic, time-major, before anything is shuffled (a
known bug elsewhere ran the scan after shuffling).
"""

from __future__ import annotations

import copy
from typing import NamedTuple

import numpy as np
import torch
from stable_baselines3.common.utils import explained_variance

from exploration_noise import floor_log_std
from offline_data import OfflineData
from vtrace import vtrace

_CHUNK = 65536  # rows per forward pass over the whole dataset (bounded memory)


class UpdateSamples(NamedTuple):
    """Samples of one update from one source (online GAE or offline V-trace), flattened."""

    observations: torch.Tensor
    actions: torch.Tensor
    old_log_prob: torch.Tensor  # pi_old
    old_values: torch.Tensor
    advantages: torch.Tensor  # GAE online, V-trace policy-gradient advantages offline
    returns: torch.Tensor  # GAE returns online, V-trace targets v_s offline
    weights: torch.Tensor  # OOD weights in [0, 1] (1 online)
    rhos: torch.Tensor  # truncated importance weights min(rho_bar, pi/mu) (1 online)


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


def normalise_per_source(advantages: torch.Tensor, rhos: torch.Tensor, offline: torch.Tensor,
                         centering: str) -> torch.Tensor:
    """GAE and V-trace advantages have different scales: each is normalised on its own.

    Online rows: SB3's (A - mean) / (std + 1e-8). Offline rows, by `centering` (HybridPPO's
    offline_advantage_centering): "mean" the same rule, "rho" subtract rho * mean(A)/mean(rho)
    then divide by the RMS, "none" only divide by the RMS. Why not "mean" off-policy: subtracting
    a baseline b from advantages of mu's actions adds -b E_mu[grad log pi] to the gradient, not
    zero once pi != mu; E_mu[rho grad log pi] is zero while rho is not truncated.
    """
    out = advantages.clone()
    online = ~offline
    if int(online.sum()) > 1:
        part = advantages[online]
        out[online] = (part - part.mean()) / (part.std() + 1e-8)
    if int(offline.sum()) > 1:
        part, rho = advantages[offline], rhos[offline]
        if centering == "mean":
            out[offline] = (part - part.mean()) / (part.std() + 1e-8)
        else:
            if centering == "rho":
                part = part - rho * (part.mean() / rho.mean().clamp(min=1e-8))
            out[offline] = part / (part.pow(2).mean().sqrt() + 1e-8)
    return out


def chunked(fn, *tensors: torch.Tensor) -> torch.Tensor:
    """fn over row chunks of the tensors, concatenated (whole-dataset passes in bounded memory)."""
    n = len(tensors[0])
    return torch.cat([fn(*(t[i:i + _CHUNK] for t in tensors)) for i in range(0, n, _CHUNK)])


def frozen_copy(policy, log_std_min: float | None):
    """A frozen copy of `policy` to serve as mu, its log_std floored like pi's.

    Always a copy: freezing the caller's object could freeze the live policy itself. BC on
    deterministic demonstrations learns a near-zero std; pi is floored at log_std_min, so an
    unfloored mu would make pi/mu ~ 0 for every dataset action and switch V-trace off.
    """
    mu = copy.deepcopy(policy)
    mu.set_training_mode(False)
    for p in mu.parameters():
        p.requires_grad_(False)
    floor_log_std(mu, log_std_min)
    return mu


class OfflineBuffer:
    """The dataset as device tensors plus mu; draws V-trace-corrected segments on demand."""

    def __init__(self, data: OfflineData, device, behaviour_policy, log_std_min: float | None,
                 seed: int | None):
        as_t = lambda a, dtype=torch.float32: torch.as_tensor(a, dtype=dtype, device=device)  # noqa: E731
        self.data, self.device = data, device
        self.observations, self.actions = as_t(data.observations), as_t(data.actions)
        self.rewards = as_t(data.rewards)
        self.next_observations = as_t(data.next_observations)
        self.terminations = as_t(data.terminations, torch.bool)
        self.episode_ends = as_t(data.episode_ends, torch.bool)
        self.behaviour_policy = None
        if data.behaviour_log_probs is not None:
            self.mu_log_prob = as_t(data.behaviour_log_probs).reshape(-1)
        else:
            self.behaviour_policy = frozen_copy(behaviour_policy, log_std_min)
            with torch.no_grad():
                self.mu_log_prob = chunked(
                    lambda o, a: self.behaviour_policy.get_distribution(o).log_prob(a),
                    self.observations, self.actions)
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.rewards)

    @torch.no_grad()
    def sample(self, policy, n_samples: int, segment_length: int, gamma: float, rho_bar: float,
               c_bar: float, ood) -> tuple[UpdateSamples, dict]:
        """About n_samples transitions in whole segments, V-trace under the current policy."""
        n = len(self)
        length = min(segment_length, n)
        n_segments = max(1, int(round(n_samples / length)))
        starts = self.rng.integers(0, n - length + 1, size=n_segments)
        idx = torch.as_tensor(starts[None, :] + np.arange(length)[:, None], device=self.device)
        flat = idx.reshape(-1)  # time-major: row t of every segment, then row t+1

        obs, actions = self.observations[flat], self.actions[flat]
        dist = policy.get_distribution(obs)
        log_pi = dist.log_prob(actions)
        values = policy.predict_values(obs).flatten()
        next_values = policy.predict_values(self.next_observations[flat]).flatten()
        log_rhos = log_pi - self.mu_log_prob[flat]
        shape = (length, n_segments)
        out = vtrace(log_rhos.view(shape), self.rewards[flat].view(shape), values.view(shape),
                     next_values.view(shape), self.terminations[flat].view(shape),
                     self.episode_ends[flat].view(shape), gamma, rho_bar, c_bar)
        gauss = dist.distribution
        weights = ood_weights(actions, gauss.mean, gauss.stddev, ood.z_threshold,
                              ood.temperature, ood.min_weight)
        rhos = log_rhos.exp()
        stats = {"vtrace/rho_mean": rhos.mean().item(),
                 "vtrace/rho_clip_frac": (rhos > rho_bar).float().mean().item(),
                 "vtrace/target_mean": out.vs.mean().item(),
                 "offline/explained_variance": explained_variance(
                     values.cpu().numpy(), out.vs.flatten().cpu().numpy()),
                 # RL's Razor (arXiv 2509.04259): forgetting grows with the drift from the start.
                 "offline/log_pi_minus_log_mu": log_rhos.mean().item(),
                 "ood/weight_mean": weights.mean().item(),
                 "ood/downweighted_frac": (weights < 1.0).float().mean().item(),
                 "offline/samples": len(flat)}
        return UpdateSamples(obs, actions, log_pi, values, out.pg_advantages.flatten(),
                             out.vs.flatten(), weights, out.clipped_rhos.flatten()), stats
