"""Critic warm-up: fit V to discounted dataset returns before the first rollout, actor frozen.

An untrained critic is the known cause of the early collapse when PPO fine-tunes a BC actor
(DESIGN.md). The value head is refitted by least squares on the critic's features first, so
the output is on the returns' scale (hundreds on walker2d) before any gradient step; Adam then
fits the whole critic with the loss divided by the targets' variance; the head is refitted by
least squares once more on the final features. The fit is judged on held-out episodes, and
if the gradient steps made it worse there than the first least-squares fit, that fit is kept:
on expert data the returns barely vary, and Adam steps on features that already fit were seen
to raise the error (explained variance -0.39 on expert-v0 before this rule).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch.nn import functional as F

from offline_batch import OfflineBuffer, chunked

HELD_OUT_FRACTION = 0.1
LSQ_ROWS = 20_000  # rows of the closed-form head fit (a 257x257 solve)


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


def _values(policy, obs: torch.Tensor) -> torch.Tensor:
    return chunked(lambda o: policy.predict_values(o).flatten(), obs)


@torch.no_grad()
def dataset_returns(policy, buffer: OfflineBuffer, gamma: float) -> torch.Tensor:
    data = buffer.data
    trunc = np.flatnonzero(data.truncations)
    bootstrap = np.zeros(len(data))
    if len(trunc):
        bootstrap[trunc] = _values(policy, buffer.next_observations[trunc]).cpu().numpy()
    g = discounted_returns(data.rewards, data.terminations, data.truncations, bootstrap, gamma)
    return torch.as_tensor(g, dtype=torch.float32, device=buffer.device)


@torch.no_grad()
def _fit_head(policy, obs: torch.Tensor, targets: torch.Tensor, gen: torch.Generator) -> None:
    """Least-squares value head on the critic's current features (ridge 1e-3)."""
    rows = torch.randperm(len(obs), generator=gen)[:LSQ_ROWS].to(obs.device)
    latent = policy.mlp_extractor.forward_critic(policy.extract_features(obs[rows]))
    # float64 on the CPU: MPS has no float64, and this is one small solve.
    x = torch.cat([latent, torch.ones(len(rows), 1, device=obs.device)], dim=1).cpu().double()
    ridge = 1e-3 * torch.eye(x.shape[1], dtype=torch.float64)
    w = torch.linalg.solve(x.T @ x + ridge, x.T @ targets[rows].cpu().double()).to(obs.device)
    policy.value_net.weight.copy_(w[:-1].float().unsqueeze(0))
    policy.value_net.bias.copy_(w[-1:].float())


def _held_out_rows(buffer: OfflineBuffer, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row indices of the fit and held-out episodes (all rows fit a one-episode dataset)."""
    starts = buffer.data.episode_starts
    stops = np.append(starts[1:], len(buffer))
    n_held = int(round(len(starts) * HELD_OUT_FRACTION))
    if len(starts) < 2:
        rows = torch.arange(len(buffer), device=buffer.device)
        return rows, rows
    held = np.random.default_rng(seed).permutation(len(starts))[:max(1, n_held)]
    mask = np.zeros(len(buffer), dtype=bool)
    for i in held:
        mask[starts[i]:stops[i]] = True
    as_rows = lambda m: torch.as_tensor(np.flatnonzero(m), device=buffer.device)  # noqa: E731
    return as_rows(~mask), as_rows(mask)


def _fit_quality(policy, obs: torch.Tensor, targets: torch.Tensor) -> dict:
    with torch.no_grad():
        pred = _values(policy, obs)
    err = pred - targets
    var = targets.var().item() if len(targets) > 1 else 0.0
    mse = err.pow(2).mean().item()
    return {"mse": mse, "rmse": mse ** 0.5, "target_mean": targets.mean().item(),
            "explained_variance": 1.0 - mse / var if var > 0 else float("nan")}


def warm_up_critic(policy, buffer: OfflineBuffer, grad_steps: int, learning_rate: float,
                   batch_size: int, gamma: float, seed: int) -> dict:
    """Fit the critic of `policy` to the dataset's discounted returns; returns warmup/* stats.

    Truncated episode ends bootstrap from the current V, refreshed four times. Only the value
    branch (mlp_extractor.value_net and value_net) is optimised.
    """
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    fit_rows, held_rows = _held_out_rows(buffer, seed)
    obs = buffer.observations
    policy.set_training_mode(False)
    targets = dataset_returns(policy, buffer, gamma)
    _fit_head(policy, obs[fit_rows], targets[fit_rows], gen)
    after_lsq = _fit_quality(policy, obs[held_rows], targets[held_rows])
    lsq_state = copy.deepcopy(policy.state_dict())

    params = [*policy.mlp_extractor.value_net.parameters(), *policy.value_net.parameters()]
    optimizer = torch.optim.Adam(params, lr=learning_rate)
    refresh = max(1, grad_steps // 4)
    losses = []
    fit_targets = targets[fit_rows]
    var = fit_targets.var().clamp(min=1e-8)
    policy.set_training_mode(True)
    for step in range(grad_steps):
        if step and step % refresh == 0:
            targets = dataset_returns(policy, buffer, gamma)
            fit_targets = targets[fit_rows]
            var = fit_targets.var().clamp(min=1e-8)
        pick = fit_rows[torch.randint(len(fit_rows), (batch_size,), generator=gen).to(obs.device)]
        loss = F.mse_loss(policy.predict_values(obs[pick]).flatten(), targets[pick]) / var
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    policy.set_training_mode(False)
    kept = "lsq"
    if grad_steps:
        targets = dataset_returns(policy, buffer, gamma)
        _fit_head(policy, obs[fit_rows], targets[fit_rows], gen)
        after_adam = _fit_quality(policy, obs[held_rows], targets[held_rows])
        if after_adam["mse"] <= after_lsq["mse"]:
            kept = "adam"
        else:
            policy.load_state_dict(lsq_state)
    quality = after_lsq if kept == "lsq" else after_adam
    return {"warmup/value_loss": float(np.mean(losses[-10:])) if losses else float("nan"),
            "warmup/first_loss": losses[0] if losses else float("nan"),
            "warmup/explained_variance": quality["explained_variance"],
            "warmup/rmse": quality["rmse"], "warmup/target_mean": quality["target_mean"],
            "warmup/rmse_fraction_of_mean": quality["rmse"] / max(abs(quality["target_mean"]), 1e-8),
            "warmup/lsq_explained_variance": after_lsq["explained_variance"],
            "warmup/kept": kept, "warmup/grad_steps": grad_steps,
            "warmup/held_out_transitions": len(held_rows)}
