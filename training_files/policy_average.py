"""An exponential moving average of the actor's weights: the policy evaluated and handed over.

Why: PPO's last iterate wanders. On walker2d the deterministic policy's periodic evaluations
swing by 10-30 points between neighbouring evaluations while the noisy policy that PPO trains
improves smoothly (docs/RESULTS.md: early dips on expert and medium data, late falls of the
evaluated policy while the rollout return still rises). Averaging the iterates is the classic
answer to an iterate that oscillates around a good region (Polyak and Juditsky 1992); in deep
RL, Nikishin et al. 2018 ("Improving stability in deep RL with weight averaging") averaged
A2C's and DDPG's weights, and in fine-tuning, averaged or interpolated weights of one
pretrained start stay in one basin and are more robust than the last iterate (WiSE-FT,
Wortsman et al. 2022). Here the online policy, which collects the rollouts, is untouched; only
what is evaluated, chosen as the best model and saved is the average.

The average covers the mean-action path only (the actor network and its output layer): the
deterministic action is what is evaluated, the noise has its own schedule, and the critic
keeps training on the online policy's returns. torch's AveragedModel keeps it; its decay per
update is exp(-(env steps per update) / time constant), so the time constant is in env steps
and does not change with n_envs or n_steps.

Measured on walker2d (docs/RESULTS.md, `hybrid-policy_average`, 10k steps): on expert data it
meets both goals (every seed >= 90% of BC, last-3 IQM above BC's); on medium data the early
dips get shallower but the late drift stays and the end is no better (P(it > hybrid) 0.45 on
25 seeds), so it is off on every entry.
"""

from __future__ import annotations

import copy
import math
from contextlib import contextmanager

from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


def mean_action_path(policy) -> nn.ModuleList:
    """The modules that map an observation to the mean action in SB3's ActorCriticPolicy."""
    return nn.ModuleList([policy.mlp_extractor.policy_net, policy.action_net])


class ActorAverage:
    """EMA of the actor's weights, started from the policy as fine-tuning starts.

    :param policy: the SB3 policy being trained (its actor is read, never written, except
        inside `swapped_in`).
    :param time_constant: in env steps; the weight of an update falls by e every this many steps.
    :param steps_per_update: env steps between two updates (n_steps * n_envs).
    """

    def __init__(self, policy, time_constant: int, steps_per_update: int):
        if time_constant <= 0:
            raise ValueError(f"the average's time constant must be > 0 env steps, got {time_constant}")
        self.policy = policy
        self.decay = math.exp(-steps_per_update / time_constant)
        self.average = AveragedModel(mean_action_path(policy),
                                     multi_avg_fn=get_ema_multi_avg_fn(self.decay))
        self.update()  # AveragedModel's first update copies: the average starts at the start

    def update(self) -> None:
        """Fold the actor as it is now into the average (after each update that moved it)."""
        self.average.update_parameters(mean_action_path(self.policy))

    @contextmanager
    def swapped_in(self):
        """The policy carries the averaged actor inside the block and its own actor after it."""
        # load_state_dict copies into the live tensors in place (as the offline-improvement
        # revert does), so the optimizer's parameters keep their storage.
        actor = mean_action_path(self.policy)
        kept = copy.deepcopy(actor.state_dict())
        actor.load_state_dict(self.average.module.state_dict())
        try:
            yield
        finally:
            actor.load_state_dict(kept)
