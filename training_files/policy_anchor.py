"""Anchor of the mean action to the policy fine-tuning started from, with a decaying weight.

Why: on medium-v0 the first actor updates sometimes cost a third of BC's score within 10-30k
steps; the seeds recover, but a user who stops there keeps a worse policy. The penalty is the
KL between the current policy and the start (the BC policy) if both had the start's
exploration noise, 0.5 * sum_i ((mean_i(s) - start_mean_i(s)) / start_std_i)^2, averaged over
states. Only the mean is anchored: the deterministic action is what is evaluated and handed
over, and the noise has its own schedule (log_std_decay). HybridPPO weighs it by
anchor_coeff * anchor_decay^k over updates, next to the BC term's weight: DAPG's
lambda0 * lambda1^k (Rajeswaran et al. 2018), held early, free later, when the critic has
seen enough of the fine-tuned policy's own returns.

Which states: the update's (online and offline), or a fixed set, the states the start policy
visits in its own deterministic episodes (hparam anchor_episodes; anchor_keep completed keeps
only the episodes that ran to the time limit). Measured on walker2d (docs/RESULTS.md): on the
update's states it did not stop the early dips; on BC's own episodes it made them shallower
(worst early evaluation 77-78% of BC instead of 55%) without moving the end of the run, and on
expert data it cost evaluations (83% of BC at weight 10, 85% at weight 1). On the walker2d
entry, gated (below), since 2026-11-28 (docs/RESULTS.md, test L'); off on the ant and humanoid
entries, where it is unmeasured.

How strongly (hparam anchor_gate bc_gain, `gain_gate`): in proportion to how far BC's own
episodes outscore the data it imitated. Where BC is no better than its data (expert data; weak
BC on medium data) the offline V-trace term (positive advantages, the default when the gate
was chosen) already held what BC does, and the anchor only slowed learning or cost expert
evaluations; the early dips gather on the seeds where BC outscores its medium data by half
again or more (docs/RESULTS.md).
"""

from __future__ import annotations

import numpy as np
import torch

from offline_batch import chunked, frozen_copy


def gain_gate(bc_return: float, data_return: float) -> float:
    """BC's gain over its data as a share of the data's own return, clipped to [0, 1]:
    clip((R_bc - R_data) / |R_data|, 0, 1). 0 where BC's episodes score no more than the data's
    mean episode return, 1 from R_data + |R_data| (twice it when positive: a round scale, not
    fitted). Returns need not be positive (a cost-only reward, a poor walker2d dataset):
    dividing by |R_data| keeps "better than the data" positive on either side of 0, and at
    R_data = 0, the limit of that, any gain is full weight."""
    if data_return > 0:  # this expression, not the general one, keeps committed runs bit for bit
        gain = bc_return / data_return - 1.0
    elif data_return < 0:
        gain = 1.0 - bc_return / data_return
    else:
        gain = 1.0 if bc_return > 0 else 0.0
    return float(np.clip(gain, 0.0, 1.0))


@torch.no_grad()
def mean_actions(policy, observations: torch.Tensor) -> torch.Tensor:
    """`policy`'s mean action for every row, in bounded memory."""
    return chunked(lambda o: policy.get_distribution(o).distribution.mean, observations)


class MeanActionAnchor:
    """The starting policy's mean actions and the penalty that keeps the mean action near them.

    `states`: where the penalty holds. None: on the update's own states (online rollouts and
    offline samples). Otherwise on a fixed set, the states the start policy visits in its own
    deterministic episodes (evaluation.visited_states, called by hybrid_training.build_hybrid),
    a random `batch` of them per gradient step. Why: on walker2d medium-v0 BC's noisy rollouts
    fall after 197-277 steps while its deterministic episodes last 335-961, so the update's
    states hold little of what the evaluated policy does after its first steps.
    """

    def __init__(self, policy, states: torch.Tensor | None = None):
        if not hasattr(policy, "log_std"):
            raise ValueError("anchor_coeff needs a Gaussian policy with a state-independent "
                             "log_std (SB3's DiagGaussian, as on every MuJoCo entry)")
        self.start_std = torch.exp(policy.log_std).detach()
        self.states = states
        # On the update's states the start's means are needed at every update, from a frozen
        # copy; on fixed states only once, here, while the policy still is the start.
        self.start = frozen_copy(policy, None) if states is None else None
        self.states_start_means = None if states is None else mean_actions(policy, states)

    def start_means(self, observations: torch.Tensor) -> torch.Tensor:
        """The start policy's mean action for every row (computed once per update)."""
        return mean_actions(self.start, observations)

    def penalty(self, means: torch.Tensor, start_means: torch.Tensor) -> torch.Tensor:
        """Mean over rows of the KL above (nats); differentiable in `means`."""
        return 0.5 * (((means - start_means) / self.start_std) ** 2).sum(dim=-1).mean()

    def penalty_on_states(self, policy, batch: int) -> torch.Tensor:
        """The penalty on `batch` of the fixed states, drawn with NumPy's global RNG (seeded
        by SB3 like the minibatch order, so a run stays deterministic for its seed)."""
        rows = torch.as_tensor(np.random.randint(len(self.states), size=batch),
                               device=self.states.device)
        means = policy.get_distribution(self.states[rows]).distribution.mean
        return self.penalty(means, self.states_start_means[rows])

    def loss(self, policy, start_means: torch.Tensor | None, batch: int) -> torch.Tensor:
        """The penalty for one minibatch: on `batch` of the fixed states, or on the minibatch's
        own states, whose distribution get_distribution/evaluate_actions has just left in
        policy.action_dist (SB3's proba_distribution keeps and returns `self`), against
        `start_means`, the start's means on those states."""
        if self.states is not None:
            return self.penalty_on_states(policy, batch)
        return self.penalty(policy.action_dist.distribution.mean, start_means)
