"""The exploration noise of a Gaussian policy started from BC: lowered, and never below a floor.

Why: BC's log_std is the noise of the data (the spread of the demonstrator's actions), which is
a poor amount of exploration for fine-tuning: PPO at a fine-tuning learning rate barely moves it,
so without a schedule the policy explores with the data's noise to the end, while the
deterministic policy is what is evaluated and handed over. Three things lower it: the
`--log_std_subtract` flag once at the start, HybridPPO's log_std_decay after every update, and a
rollback (policy_rollback.py) that restores an older policy but keeps the decay applied since.
All three floor the result at log_std_min, the entry's floor for BC's own noise, as does
the frozen copy of BC that serves as the behaviour policy mu (offline_batch.frozen_copy).
"""

from __future__ import annotations

import torch


def floor_log_std(policy, log_std_min: float | None) -> int:
    """Clamp policy.log_std at log_std_min (None: no floor); how many entries were below it."""
    if log_std_min is None or not hasattr(policy, "log_std"):
        return 0
    with torch.no_grad():
        below = int((policy.log_std < log_std_min).sum())
        policy.log_std.clamp_(min=log_std_min)
    return below


def lower_log_std(policy, amount: float, log_std_min: float | None) -> int:
    """Subtract `amount` from every log_std entry, then floor; how many entries hit the floor."""
    if not hasattr(policy, "log_std"):
        return 0
    with torch.no_grad():
        policy.log_std.sub_(amount)
    return floor_log_std(policy, log_std_min)


def decay_log_std(policy, total: float, progress: float, decayed: float,
                  log_std_min: float | None) -> float:
    """Lower log_std to the schedule's value at `progress` (0 to 1 of the run) when the schedule
    falls by `total` in all and `decayed` of it is applied; returns what is applied now.

    HybridPPO calls it after each update, so the next rollout's stored log-probs use the new
    noise and every PPO ratio still starts at 1."""
    if total <= 0 or not hasattr(policy, "log_std"):
        return decayed
    due = total * progress - decayed
    lower_log_std(policy, due, log_std_min)
    return decayed + due
