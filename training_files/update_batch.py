"""What one HybridPPO update learns from: how many online and offline samples, both joined
into one batch, and the advantages each minibatch's policy gradient uses.

Why here and not in the class: the update itself (HybridPPO.train) then reads like SB3's
PPO.train, whose batch is the rollout buffer alone; the offline half is `offline_batch.py`.
"""

from __future__ import annotations

import numpy as np
import torch

from offline_batch import UpdateSamples, normalise_per_source


def sample_counts(n_rollout: int, mix_ratio: float, has_offline: bool,
                  offline_only: bool = False) -> tuple[int, int]:
    """(online, offline) samples of one update, a bounded cost continuous in mix_ratio.

    Up to 0.5 the whole rollout (n_rollout = n_steps * n_envs) and round(n_rollout *
    mix/(1-mix)) offline samples; above 0.5, 2 * n_rollout samples in all, 2 * n_rollout * mix
    of them offline. Never more than twice plain PPO's. `offline_only`: one rollout's worth of
    offline samples (the offline improvement before the first rollout).
    """
    if offline_only:
        return 0, n_rollout
    if not has_offline or mix_ratio == 0:
        return n_rollout, 0
    if mix_ratio <= 0.5:
        return n_rollout, int(round(n_rollout * mix_ratio / (1.0 - mix_ratio)))
    n_offline = int(round(2 * n_rollout * mix_ratio))
    return 2 * n_rollout - n_offline, n_offline


def online_samples(buffer, n_samples: int, rng: np.random.Generator, device) -> UpdateSamples:
    """The rollout buffer flattened the way RolloutBuffer.get does (same sample order); a sorted
    random `n_samples` of its rows when fewer than all are used (mix_ratio above 0.5)."""
    flat = lambda a: buffer.to_torch(buffer.swap_and_flatten(a))  # noqa: E731
    actions = flat(buffer.actions)
    ones = torch.ones(len(actions), device=device)
    samples = UpdateSamples(flat(buffer.observations), actions, flat(buffer.log_probs).flatten(),
                            flat(buffer.values).flatten(), flat(buffer.advantages).flatten(),
                            flat(buffer.returns).flatten(), ones, ones)
    if n_samples < len(actions):
        keep = torch.as_tensor(np.sort(rng.choice(len(actions), n_samples, replace=False)),
                               device=device)
        samples = UpdateSamples(*[field[keep] for field in samples])
    return samples


def joined(online: UpdateSamples | None, offline: UpdateSamples | None
           ) -> tuple[UpdateSamples, torch.Tensor]:
    """Online rows then offline rows as one batch, and a mask of the offline rows."""
    parts = [part for part in (online, offline) if part is not None]
    batch = UpdateSamples(*[torch.cat(fields) for fields in zip(*parts)])
    is_offline = torch.zeros(len(batch.actions), dtype=torch.bool, device=batch.actions.device)
    is_offline[0 if online is None else len(online.actions):] = True
    return batch, is_offline


def policy_advantages(advantages: torch.Tensor, rhos: torch.Tensor, offline: torch.Tensor,
                      offline_advantages: str, centering: str, normalize: bool) -> torch.Tensor:
    """A minibatch's advantages as its policy gradient uses them (HybridPPO's
    offline_advantages and offline_advantage_centering): "positive" keeps the offline rows'
    max(A, 0) by the raw sign and divides by the RMS without centring (centring would bring
    negatives back); "none" zeroes the offline rows after normalising; "signed" keeps both signs.

    Why "positive": the data pull pi towards their actions that beat pi's value and never push
    it away from the others, as self-imitation learning (Oh et al. 2018) and CRR's binary filter
    do; the pull is strong while the data beat the policy and fades once the policy beats them,
    with no coefficient to tune. Pushing away is the part to distrust: it acts on actions pi
    rarely takes, where the ratio and the critic are least reliable. Why "none" (the walker2d
    default, docs/RESULTS.md test W): where BC is no better than its data, the positive half of V-trace
    advantages that are noise around 0 imitates a random half of the data and holds pi there.
    """
    if offline_advantages == "positive":
        advantages = torch.where(offline, advantages.clamp(min=0.0), advantages)
        centering = "none"
    if normalize:
        advantages = normalise_per_source(advantages, rhos, offline, centering)
    if offline_advantages == "none":
        advantages = torch.where(offline, torch.zeros_like(advantages), advantages)
    return advantages


def policy_gradient_loss(surrogate: torch.Tensor, weights: torch.Tensor, offline: torch.Tensor,
                         mean_over: str) -> torch.Tensor:
    """A minibatch's clipped-surrogate loss. "batch": the mean over all its rows (SB3), so
    offline rows out of the policy gradient count as zeros and shrink the online rows' part by
    the offline share. "online": the sum divided by the online rows, so the online part has
    PPO's size whatever the offline share. Why it matters: under SB3's joint gradient clip the
    actor's Adam step works in its eps-dominated, SGD-like regime (docs/RESULTS.md: gradient clipping),
    where a gradient half as large is a step half as large (measured, docs/RESULTS.md test X: "online"
    did worse on weak data, so every entry keeps "batch"). Without offline rows both are the
    mean, computed as SB3 computes it; so is a minibatch without online rows (mix_ratio 1, the
    offline improvement). Offline rows that carry a gradient (positive, signed) then add to the
    online part at the same weight per row.
    """
    weighted = weights * surrogate
    if mean_over == "online":  # counted only here: "batch", every entry's, needs no count
        n_online = int((~offline).sum())
        if 0 < n_online < len(offline):
            return -weighted.sum() / n_online
    return -weighted.mean()
