"""Gradient-norm clipping of the policy: jointly, as SB3's PPO does, or the actor and the critic
each on its own.

Why: SB3 clips the norm of the whole policy's gradient (max_grad_norm). Here the actor and the
critic share no trainable parameter, and the critic's gradient, from a value loss on returns in
the hundreds, is nearly all of the joint norm. The joint clip then multiplies the actor's
gradient by about max_grad_norm / |critic's gradient|, so how far the actor moves on a
minibatch follows the critic's error on it, not the policy's own loss: minibatches where the
critic is far off count less, and a rising value loss slows the actor. Nor does Adam undo the
scale: on walker2d the actor's clipped gradient is so small that Adam's eps (1e-5) outweighs
sqrt(v_hat), and the actor keeps only 2-4% of Adam's normalised step
(benchmarks/grad_clip_diag.py). Code that keeps an optimizer per network clips each network's
gradient on its own (Uni-O4's `ppo_finetune/ppo.py`: 0.5 for each), so the actor's gradient is
left alone unless it is large itself. Measured on walker2d, not better (docs/RESULTS.md): joint stays.
"""

from __future__ import annotations

from typing import Literal

import torch

from critic_learning_rate import actor_and_critic_parameters

GradClip = Literal["joint", "separate"]


def clip_gradients(policy, max_norm: float, mode: GradClip = "joint") -> None:
    """Clip the policy's gradients in place: joint (SB3) or the actor's and critic's apart."""
    if mode == "joint":
        torch.nn.utils.clip_grad_norm_(policy.parameters(), max_norm)
        return
    for params in actor_and_critic_parameters(policy):
        with_grad = [p for p in params if p.grad is not None]  # critic-only updates: no actor grad
        if with_grad:
            torch.nn.utils.clip_grad_norm_(with_grad, max_norm)
