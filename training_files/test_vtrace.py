"""Tests for vtrace.py: against an independent per-step reference and on limiting cases.

Run with `python test_vtrace.py` or `python -m pytest -q test_vtrace.py`.
"""

from __future__ import annotations

import math
import random
import unittest

import torch
from torch.testing import assert_close

from vtrace import vtrace

DT = torch.float64


def make_inputs(seed: int, T: int, B: int, p_end: float = 0.2, p_term: float = 0.5,
                log_rho_scale: float = 1.0, lone_terms: bool = False):
    """Random [T, B] inputs laid out like a dataset.

    Inside a piece next_values[t] == values[t + 1] (next_obs[t] is obs[t + 1]); at a cut
    (segment_end or termination, and always at t = T-1) next_values[t] is arbitrary. A
    termination normally comes with a segment_end; with lone_terms some terminations are
    not flagged as segment_ends (the termination alone must then cut the recursion).
    """
    g = torch.Generator().manual_seed(seed)
    log_rhos = torch.randn(T, B, generator=g, dtype=DT) * log_rho_scale
    rewards = torch.randn(T, B, generator=g, dtype=DT)
    values = torch.randn(T, B, generator=g, dtype=DT)
    segment_ends = torch.rand(T, B, generator=g) < p_end
    terminations = segment_ends & (torch.rand(T, B, generator=g) < p_term)
    if lone_terms:
        lone = torch.rand(T, B, generator=g) < 0.1
        terminations = terminations | lone
    cut = segment_ends | terminations
    cut[-1] = True
    arbitrary = torch.randn(T, B, generator=g, dtype=DT) * 3.0
    next_values = arbitrary.clone()
    next_values[:-1] = torch.where(cut[:-1], arbitrary[:-1], values[1:])
    return log_rhos, rewards, values, next_values, terminations, segment_ends


def reference(log_rhos, rewards, values, next_values, terminations, segment_ends,
              gamma, rho_bar, c_bar):
    """Per-step reference in plain Python floats, non-recursive sum form (IMPALA eq. 1).

    v_s = V(x_s) + sum_{t=s}^{e} gamma^{t-s} (prod_{i=s}^{t-1} c_i) delta_t, where e is the
    end of the piece containing s (first t >= s with a segment_end, a termination, or
    t = T-1). A_s = rho_s (r_s + gamma v_{s+1} - V(x_s)) with v_{s+1} = V(x_{s+1}) at a cut
    and 0 after a termination.
    """
    T, B = values.shape
    lr, r, v, nv = (x.tolist() for x in (log_rhos, rewards, values, next_values))
    term, end = terminations.tolist(), segment_ends.tolist()
    vs = [[0.0] * B for _ in range(T)]
    adv = [[0.0] * B for _ in range(T)]
    rho_c = [[0.0] * B for _ in range(T)]
    for b in range(B):
        ratio = [math.exp(lr[t][b]) for t in range(T)]
        rho = [min(rho_bar, x) for x in ratio]
        c = [min(c_bar, x) for x in ratio]
        is_cut = [bool(end[t][b]) or bool(term[t][b]) or t == T - 1 for t in range(T)]
        boot = [0.0 if term[t][b] else nv[t][b] for t in range(T)]
        delta = [rho[t] * (r[t][b] + gamma * boot[t] - v[t][b]) for t in range(T)]
        for s in range(T - 1, -1, -1):
            e = s
            while not is_cut[e]:
                e += 1
            total = 0.0
            for t in range(s, e + 1):
                prod_c = 1.0
                for i in range(s, t):
                    prod_c *= c[i]
                total += gamma ** (t - s) * prod_c * delta[t]
            vs[s][b] = v[s][b] + total
        for s in range(T):
            v_next = boot[s] if is_cut[s] else vs[s + 1][b]
            adv[s][b] = rho[s] * (r[s][b] + gamma * v_next - v[s][b])
            rho_c[s][b] = rho[s]
    return (torch.tensor(vs, dtype=DT), torch.tensor(adv, dtype=DT),
            torch.tensor(rho_c, dtype=DT))


def nstep_return(rewards, next_values, terminations, segment_ends, gamma, s, b):
    """Discounted return from s to the end of its piece, bootstrapped unless it terminates."""
    T = rewards.shape[0]
    ret, t = 0.0, s
    while True:
        ret += gamma ** (t - s) * rewards[t, b].item()
        if terminations[t, b]:
            return ret
        if segment_ends[t, b] or t == T - 1:
            return ret + gamma ** (t - s + 1) * next_values[t, b].item()
        t += 1


# The gammas below are exactly representable in float32 (0.875, 63/64, ...): vtrace.py
# currently multiplies gamma by float32 masks (`terminations.float()`), which rounds gamma
# to float32 even for float64 inputs. TestVTraceDtype pins that separately.


class TestVTraceEquivalence(unittest.TestCase):
    CONFIGS = [  # (gamma, rho_bar, c_bar, log_rho_scale)
        (0.984375, 1.0, 0.95, 1.0),
        (0.875, 2.0, 0.5, 1.5),
        (0.96875, 1.0, 1.0, 0.7),
        (0.75, 0.7, 1.3, 1.0),
    ]

    def check(self, inputs, gamma, rho_bar, c_bar):
        out = vtrace(*inputs, gamma=gamma, rho_bar=rho_bar, c_bar=c_bar)
        ref_vs, ref_adv, ref_rho = reference(*inputs, gamma=gamma, rho_bar=rho_bar,
                                             c_bar=c_bar)
        assert_close(out.vs, ref_vs)
        assert_close(out.pg_advantages, ref_adv)
        assert_close(out.clipped_rhos, ref_rho)

    def test_matches_reference_random(self):
        rng = random.Random(0)
        n = 0
        for seed in range(6):
            for gamma, rho_bar, c_bar, scale in self.CONFIGS:
                T, B = rng.randint(7, 20), rng.randint(3, 5)
                inputs = make_inputs(seed * 31 + n, T, B, log_rho_scale=scale)
                lr = inputs[0]
                ratios = lr.exp()
                # Ratios fall on both sides of the clipping thresholds.
                self.assertTrue((ratios > max(rho_bar, c_bar)).any())
                self.assertTrue((ratios < min(rho_bar, c_bar)).any())
                self.assertTrue(inputs[5][:-1].any(), "want a cut inside a segment")
                with self.subTest(seed=seed, gamma=gamma, rho_bar=rho_bar, c_bar=c_bar):
                    self.check(inputs, gamma, rho_bar, c_bar)
                n += 1

    def test_matches_reference_dense_cuts_and_lone_terminations(self):
        for seed in range(4):
            inputs = make_inputs(100 + seed, 12, 4, p_end=0.5, lone_terms=True)
            with self.subTest(seed=seed):
                self.check(inputs, 0.9375, 1.0, 0.95)

    def test_no_cuts_long_trace(self):
        inputs = make_inputs(7, 15, 3, p_end=0.0)
        self.assertFalse(inputs[5].any())
        self.check(inputs, 0.984375, 2.0, 0.5)


class TestVTraceLimits(unittest.TestCase):
    def test_on_policy_gives_nstep_return(self):
        for seed in range(3):
            gamma = 0.875
            lr, r, v, nv, term, end = make_inputs(200 + seed, 11, 4)
            lr = torch.zeros_like(lr)
            out = vtrace(lr, r, v, nv, term, end, gamma=gamma, rho_bar=1.0, c_bar=1.0)
            expected = torch.tensor(
                [[nstep_return(r, nv, term, end, gamma, s, b) for b in range(4)]
                 for s in range(11)], dtype=DT)
            assert_close(out.vs, expected)
            assert_close(out.clipped_rhos, torch.ones_like(lr))

    def test_tiny_c_bar_gives_one_step_targets(self):
        for rho_bar in (1.0, 2.0):
            gamma = 0.9375
            lr, r, v, nv, term, end = make_inputs(300, 13, 5, log_rho_scale=1.5)
            out = vtrace(lr, r, v, nv, term, end, gamma=gamma, rho_bar=rho_bar, c_bar=1e-12)
            rho = lr.exp().clamp(max=rho_bar)
            boot = torch.where(term, torch.zeros_like(nv), nv)
            expected = v + rho * (r + gamma * boot - v)
            assert_close(out.vs, expected)

    def test_termination_stops_bootstrap_timeout_bootstraps(self):
        T, B, k, gamma = 8, 3, 4, 0.875
        lr, r, v, nv, _, _ = make_inputs(400, T, B, p_end=0.0)
        end = torch.zeros(T, B, dtype=torch.bool)
        end[k] = True
        term = torch.zeros(T, B, dtype=torch.bool)
        term[k, 0] = True  # column 0: termination at k; columns 1, 2: timeout at k
        base = vtrace(lr, r, v, nv, term, end, gamma=gamma, rho_bar=1.0, c_bar=0.95)
        nv2 = nv.clone()
        nv2[k] += 5.0
        moved = vtrace(lr, r, v, nv2, term, end, gamma=gamma, rho_bar=1.0, c_bar=0.95)
        # Terminal column: nothing changes anywhere.
        assert_close(moved.vs[:, 0], base.vs[:, 0])
        assert_close(moved.pg_advantages[:, 0], base.pg_advantages[:, 0])
        # Timeout columns: v and A at k shift by the bootstrap, rows after k are untouched.
        rho_k = lr[k, 1:].exp().clamp(max=1.0)
        assert_close(moved.vs[k, 1:] - base.vs[k, 1:], rho_k * gamma * 5.0)
        assert_close(moved.pg_advantages[k, 1:] - base.pg_advantages[k, 1:],
                     rho_k * gamma * 5.0)
        self.assertTrue((moved.vs[:k + 1, 1:] != base.vs[:k + 1, 1:]).all())
        assert_close(moved.vs[k + 1:], base.vs[k + 1:])
        assert_close(moved.pg_advantages[k + 1:], base.pg_advantages[k + 1:])

    def test_segment_end_equals_two_halves(self):
        T, B, gamma = 12, 4, 0.96875
        for k in (0, 5, T - 2):
            lr, r, v, nv, _, _ = make_inputs(500 + k, T, B, p_end=0.0, log_rho_scale=1.2)
            term = torch.zeros(T, B, dtype=torch.bool)
            term[k, ::2] = True  # half the columns terminate at the cut
            end = torch.zeros(T, B, dtype=torch.bool)
            end[k] = True
            full = vtrace(lr, r, v, nv, term, end, gamma=gamma, rho_bar=2.0, c_bar=0.5)
            none = torch.zeros(T, B, dtype=torch.bool)
            first = vtrace(lr[:k + 1], r[:k + 1], v[:k + 1], nv[:k + 1], term[:k + 1],
                           none[:k + 1], gamma=gamma, rho_bar=2.0, c_bar=0.5)
            second = vtrace(lr[k + 1:], r[k + 1:], v[k + 1:], nv[k + 1:], term[k + 1:],
                            none[k + 1:], gamma=gamma, rho_bar=2.0, c_bar=0.5)
            with self.subTest(k=k):
                for field in ("vs", "pg_advantages", "clipped_rhos"):
                    assert_close(getattr(full, field),
                                 torch.cat([getattr(first, field), getattr(second, field)]))

    def test_no_gradient(self):
        lr, r, v, nv, term, end = make_inputs(600, 9, 3)
        lr, r, v, nv = (x.clone().requires_grad_(True) for x in (lr, r, v, nv))
        out = vtrace(lr, r, v, nv, term, end, gamma=0.984375, rho_bar=1.0, c_bar=0.95)
        for field, x in zip(out._fields, out):
            with self.subTest(field=field):
                self.assertFalse(x.requires_grad)
                self.assertIsNone(x.grad_fn)

    def test_last_row_always_ends_segment(self):
        T, B, gamma = 7, 3, 0.875
        lr, r, v, nv, _, _ = make_inputs(700, T, B, p_end=0.0)
        none = torch.zeros(T, B, dtype=torch.bool)
        base = vtrace(lr, r, v, nv, none, none, gamma=gamma, rho_bar=1.0, c_bar=0.95)
        rho_last = lr[-1].exp().clamp(max=1.0)
        assert_close(base.vs[-1], v[-1] + rho_last * (r[-1] + gamma * nv[-1] - v[-1]))
        assert_close(base.pg_advantages[-1], rho_last * (r[-1] + gamma * nv[-1] - v[-1]))
        nv2 = nv.clone()
        nv2[-1] += 2.0
        moved = vtrace(lr, r, v, nv2, none, none, gamma=gamma, rho_bar=1.0, c_bar=0.95)
        assert_close(moved.vs[-1] - base.vs[-1], rho_last * gamma * 2.0)
        # The bootstrap also propagates back through the trace to earlier rows.
        self.assertTrue((moved.vs[0] != base.vs[0]).all())


class TestVTraceDtype(unittest.TestCase):
    def test_outputs_keep_input_dtype(self):
        inputs = make_inputs(800, 6, 3)
        out = vtrace(*inputs, gamma=0.984375)
        for field, x in zip(out._fields, out):
            self.assertEqual(x.dtype, DT, field)

    def test_float64_gamma_not_rounded_to_float32(self):
        inputs = make_inputs(801, 10, 3)
        gamma = 0.9  # not representable in float32
        out = vtrace(*inputs, gamma=gamma, rho_bar=1.0, c_bar=0.95)
        ref_vs, ref_adv, _ = reference(*inputs, gamma=gamma, rho_bar=1.0, c_bar=0.95)
        assert_close(out.vs, ref_vs, rtol=1e-12, atol=1e-12)
        assert_close(out.pg_advantages, ref_adv, rtol=1e-12, atol=1e-12)


if __name__ == "__main__":
    unittest.main()
