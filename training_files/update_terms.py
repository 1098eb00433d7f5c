"""What HybridPPO's update adds to SB3's PPO update: the actor's two extra loss terms at this
update's weights, and the update's logged statistics.

Why here and not in the class: HybridPPO.train then reads like SB3's PPO.train, with the
batch from `update_batch.py` and these terms added to PPO's loss. The terms are added in a
fixed order (BC, then the anchor), so every run repeats bit for bit.
"""

from __future__ import annotations

import numpy as np
import torch
from stable_baselines3.common.utils import explained_variance


class ActorTerms:
    """The BC term on offline rows and the mean-action anchor, at this update's weights.

    BC: bc_coeff * bc_decay ** update times the OOD-weighted -log pi(a|s) of the offline rows
    (DAPG's lambda0 * lambda1^k). Anchor: anchor_coeff * anchor_decay ** update times the KL of
    the mean action to the start's (`policy_anchor.py`), off in the critic-only updates.
    """

    def __init__(self, model, observations: torch.Tensor, critic_only: bool):
        updates = model.policy_updates
        self.bc_coeff = model.bc_coeff * model.bc_decay ** updates
        self.anchor, self.batch_size = model._anchor, model.batch_size
        self.anchor_coeff = (0.0 if self.anchor is None or critic_only
                             else model.anchor_coeff * model.anchor_decay ** updates)
        # the start's mean actions on the update's states, once per update (fixed states: none)
        self.start_means = (self.anchor.start_means(observations)
                            if self.anchor_coeff > 0 and self.anchor.states is None else None)
        self.bc_losses: list[float] = []
        self.anchor_losses: list[float] = []

    def added_to(self, loss, policy, log_prob: torch.Tensor, offline: torch.Tensor,
                 weights: torch.Tensor, mb: torch.Tensor):
        """`loss` plus the minibatch's terms (`policy.action_dist` is the minibatch's)."""
        if self.bc_coeff > 0 and bool(offline.any()):
            bc_loss = -(weights[offline] * log_prob[offline]).mean()
            self.bc_losses.append(bc_loss.item())
            loss = loss + self.bc_coeff * bc_loss
        if self.anchor_coeff > 0:
            anchor_loss = self.anchor.loss(
                policy, None if self.start_means is None else self.start_means[mb], self.batch_size)
            self.anchor_losses.append(anchor_loss.item())
            loss = loss + self.anchor_coeff * anchor_loss
        return loss

    def record(self, record) -> None:
        if self.bc_losses:
            record("train/bc_loss", np.mean(self.bc_losses))
            record("train/bc_coeff", self.bc_coeff)
        if self.anchor_losses:  # KL of the mean action to the start, at the start's noise
            record("train/anchor_kl", np.mean(self.anchor_losses))
            record("train/anchor_coeff", self.anchor_coeff)


def trust_region_stats(log_ratio: torch.Tensor, offline: torch.Tensor, clip_range: float,
                       update_has_online: bool) -> tuple[np.ndarray | None, float | None]:
    """SB3's approx_kl (k3 estimator) and clip_fraction, on the rows the rollout policy sampled.

    k3 estimates KL(pi_old || pi) only on actions drawn from pi_old; offline actions come from
    the data's policy, whose log-ratios (3-5x the online rows' late in a run) measure the data's
    distance, not the update's step, and would reach `target_kl`'s early stop for it. An update
    without online rows (mix_ratio 1, the offline-only updates) has no such rows: there all
    rows, the only estimate it has. A minibatch of a mixed update that drew no online rows
    (possible above mix_ratio 0.5): (None, None), no estimate and no early stop from it."""
    online = ~offline
    if update_has_online and not bool(online.any()):
        return None, None
    with torch.no_grad():
        rows = log_ratio[online] if update_has_online else log_ratio
        approx_kl = torch.mean((torch.exp(rows) - 1) - rows).cpu().numpy()
        clip_fraction = torch.mean((torch.abs(torch.exp(rows) - 1) > clip_range).float()).item()
    return approx_kl, clip_fraction


def record_update(model, stats: dict[str, list], loss, clip_range: float, clip_range_vf,
                  critic_only: bool, offline_stats: dict) -> None:
    """SB3's PPO.train log keys, plus the offline samples' statistics and HybridPPO's own."""
    record = model.logger.record
    if not model._offline_only:  # the rollout buffer is still empty before the first rollout
        buf = model.rollout_buffer
        record("train/explained_variance",
               explained_variance(buf.values.flatten(), buf.returns.flatten()))
    for key in ("entropy_loss", "policy_gradient_loss", "value_loss", "approx_kl",
                "clip_fraction"):
        if stats[key]:  # (approx_kl: none if the last epoch's minibatches drew no online rows)
            record(f"train/{key}", np.mean(stats[key]))
    record("train/loss", loss.item())
    if hasattr(model.policy, "log_std"):
        record("train/std", torch.exp(model.policy.log_std).mean().item())
    record("train/n_updates", model._n_updates, exclude="tensorboard")
    record("train/clip_range", clip_range)
    if clip_range_vf is not None:
        record("train/clip_range_vf", clip_range_vf)
    for key, value in offline_stats.items():
        record(key, value)
    record("train/mix_ratio", model.mix_ratio, exclude="stdout")
    record("train/critic_only", int(critic_only))
