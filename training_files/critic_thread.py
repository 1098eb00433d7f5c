"""The critic's half of each PPO minibatch, run in a second thread while the actor's runs here.

Why: at one torch thread per process (more stall when the two cores are shared, README
`--torch_threads`), an update's time is the matmuls of two MLPs that share no trainable
parameter, the actor and the critic. The gradient of PPO's summed loss with respect to the
critic's parameters is the value term's alone, so the critic's forward and backward can run
beside the actor's: torch releases the GIL inside its ops, and each thread runs its ops on
its own core. Each parameter's gradient is computed by the same ops as in one joint backward,
so the update is the same bit for bit (tested against SB3's PPO). Measured on 2 cores:
HybridPPO's walker2d update 1.32-1.34x faster when idle (the actor's half, with the
policy-gradient and BC terms, is the longer one; clipping and Adam's step stay serial); a
bare loop of the same shape 1.6x, and no slower with another job on the second core (the
wait blocks instead of spinning, unlike a second OpenMP thread).

Needs the actor and the critic to share no trainable parameter (`can_split`); SB3's MlpPolicy
shares only its features extractor, which has none here (FrozenObsNormalizer).
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import torch
from torch.nn import functional as F


def can_split(policy) -> bool:
    """True when no trainable parameter feeds both the actor and the critic."""
    def ids(*modules) -> set[int]:
        return {id(p) for module in modules for p in module.parameters() if p.requires_grad}

    critic = ids(policy.vf_features_extractor, policy.mlp_extractor.value_net, policy.value_net)
    actor = ids(policy.pi_features_extractor, policy.mlp_extractor.policy_net, policy.action_net)
    return not critic & actor


class CriticThread:
    """Runs `value_loss` forward and `vf_coef * value_loss` backward in one worker thread."""

    def __init__(self):
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="critic-update")

    def submit(self, policy, observations, returns, vf_coef: float, old_values=None,
               clip_range_vf: float | None = None, weights=None) -> Future:
        """Future of the minibatch's value loss (detached); its gradient is already in .grad."""
        return self.pool.submit(self._value_loss, policy, observations, returns, vf_coef,
                                old_values, clip_range_vf, weights)

    @staticmethod
    def _value_loss(policy, observations, returns, vf_coef, old_values, clip_range_vf, weights):
        values = policy.predict_values(observations).flatten()
        loss = ppo_value_loss(values, returns, old_values, clip_range_vf, weights)
        (vf_coef * loss).backward()
        return loss.detach()


def ppo_value_loss(values, returns, old_values, clip_range_vf: float | None, weights=None):
    """SB3's PPO value loss: MSE to the returns, of the prediction clipped around old_values
    when clip_range_vf is set; with per-row weights, their weighted mean (None: SB3's own
    mean, bit for bit). One formula for the joint update and the critic thread."""
    if clip_range_vf is not None:
        values = old_values + torch.clamp(values - old_values, -clip_range_vf, clip_range_vf)
    if weights is None:
        return F.mse_loss(returns, values)
    return (weights * (returns - values) ** 2).sum() / weights.sum().clamp(min=1e-8)
