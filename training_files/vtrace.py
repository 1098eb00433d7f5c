"""V-trace targets and advantages (Espeholt et al. 2018, IMPALA, Sec. 4.1), pure torch.

Layout is time-major [T, B]: B segments of T consecutive dataset transitions. A segment may
contain episode boundaries; `segment_ends[t]` cuts the recursion after step t, so the pieces
on either side are independent segments (no value leaks from the next episode). Every step
carries V(x_{t+1}) from its own stored next observation, so a cut bootstraps correctly:
after a truncation from V(next_obs), after a termination from nothing.

  rho_t = min(rho_bar, pi/mu),  c_t = min(c_bar, pi/mu)
  delta_t = rho_t (r_t + gamma (1 - term_t) V(x_{t+1}) - V(x_t))
  v_t = V(x_t) + delta_t + gamma (1 - end_t) c_t (v_{t+1} - V(x_{t+1}))
  A_t = rho_t (r_t + gamma (1 - term_t) v_{t+1} - V(x_t)),  v_{t+1} := V(x_{t+1}) at a cut

c_bar is applied directly, as in the paper; rlax's `lambda_` variant uses min(lambda, lambda*rho)
instead, which is a different trace (see DESIGN.md).
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class VTraceOutput(NamedTuple):
    vs: torch.Tensor  # value targets v_t, [T, B]
    pg_advantages: torch.Tensor  # rho_t (r_t + gamma v_{t+1} - V(x_t)), [T, B]
    clipped_rhos: torch.Tensor  # min(rho_bar, pi/mu), [T, B]


@torch.no_grad()
def vtrace(log_rhos: torch.Tensor, rewards: torch.Tensor, values: torch.Tensor,
           next_values: torch.Tensor, terminations: torch.Tensor, segment_ends: torch.Tensor,
           gamma: float, rho_bar: float = 1.0, c_bar: float = 1.0) -> VTraceOutput:
    """V-trace over [T, B] tensors; log_rhos = log pi(a|x) - log mu(a|x). No gradients flow."""
    rhos = torch.exp(log_rhos)
    clipped_rhos = torch.clamp(rhos, max=rho_bar)
    cs = torch.clamp(rhos, max=c_bar)
    not_term = 1.0 - terminations.to(values.dtype)
    cont = 1.0 - torch.maximum(segment_ends, terminations).to(values.dtype)
    cont[-1] = 0.0  # the last row always ends its segment
    discounted_next = gamma * not_term * next_values
    deltas = clipped_rhos * (rewards + discounted_next - values)

    # Backward recursion over time only; acc_t = v_t - V(x_t).
    acc = torch.zeros_like(values[0])
    vs_minus_v = torch.empty_like(values)
    for t in range(values.shape[0] - 1, -1, -1):
        acc = deltas[t] + gamma * cont[t] * cs[t] * acc
        vs_minus_v[t] = acc
    vs = values + vs_minus_v

    # v_{t+1}: the next row's target inside a segment, V(x_{t+1}) at a cut.
    vs_next = next_values.clone()
    vs_next[:-1] = torch.where(cont[:-1] > 0, vs[1:], next_values[:-1])
    pg_advantages = clipped_rhos * (rewards + gamma * not_term * vs_next - values)
    return VTraceOutput(vs, pg_advantages, clipped_rhos)
