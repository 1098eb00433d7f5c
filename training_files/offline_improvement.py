"""Offline policy improvement before the first env step, and its revert.

Why: BC copies the data's actions and ignores their rewards. A few PPO updates on offline
samples alone, with V-trace advantages under a critic fitted to the data, improve on BC
without an env step: One-step RL (Brandfonbrener et al. 2021) improves on BC from one critic
fit of the behaviour policy, BPPO and Uni-O4 do it with PPO's clipped objective, as here.
PPO started from BC cannot: its first improvement costs env steps. The improved policy is
kept only if it evaluates >= BC (hybrid_training.py's gate); otherwise everything the updates
changed is put back, so the run continues exactly as one without them.
"""

from __future__ import annotations

import copy
import time

import numpy as np
import torch

from policy_rollback import restore, snapshot


def improve_offline(model, n_updates: int) -> None:
    """`n_updates` of HybridPPO's updates on offline samples alone (model._offline_only), after
    a snapshot of all they change. They do not count as the online updates that the
    critic-only phase and bc_decay count; their stats are logged once, at step 0."""
    started = time.perf_counter()
    model._before_improvement = {
        **snapshot(model),
        "numpy_rng": np.random.get_state(), "torch_rng": torch.get_rng_state(),
        "offline_rng": copy.deepcopy(model.offline.rng.bit_generator.state),
        "n_updates": model._n_updates}
    model._offline_only = True
    try:
        for _ in range(n_updates):
            model.train()
    finally:
        model._offline_only = False
    model.offline_improved = True
    model.offline_improvement_seconds = time.perf_counter() - started
    model.logger.record("offline_improvement/updates", n_updates)
    model.logger.record("offline_improvement/seconds", model.offline_improvement_seconds)
    model.logger.dump(model.num_timesteps)


def settle(model, keep: bool) -> None:
    """Keep the improvement, or go back to exactly where it started (policy, optimizer, random
    number generators, update count): a reverted run then continues as the same run without
    offline updates would. Either way the snapshot is dropped."""
    saved, model._before_improvement = model._before_improvement, None
    if keep or saved is None:
        return
    restore(model, saved)  # the noise schedule has not moved: offline updates skip it
    np.random.set_state(saved["numpy_rng"])
    torch.set_rng_state(saved["torch_rng"])
    model.offline.rng.bit_generator.state = saved["offline_rng"]
    model._n_updates = saved["n_updates"]
