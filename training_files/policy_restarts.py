"""Training episodes that start where the evaluated (deterministic) policy has walked to.

Why: on walker2d medium data, HybridPPO's late collapses are the mean action's alone (docs/RESULTS.md,
"What still goes wrong"). On the three late-collapse seeds most of the final models'
deterministic episodes fall after 317-543 steps, while the same models sampling with their
own noise (std 0.11) walk. PPO improves the policy on the states its noisy rollouts visit,
and those rollouts leave the deterministic trajectory within a few steps, so the states the
evaluated policy reaches after a few hundred steps, where it falls, are ones no update looked
at.

A policy gradient is valid for any start-state distribution: it then improves the policy
from those starts. Starting a fraction of the training episodes at a state the current
deterministic policy reaches weights the objective towards the states that are evaluated
(the restart distribution of conservative policy iteration, Kakade and Langford 2002; the
same idea as resetting to states of a reference trajectory, e.g. Salimans and Chen 2018 on
Montezuma's Revenge). The training samples stay on-policy: the deterministic prefix is never
in the rollout buffer, only the state where it ends. Its env steps are real interaction,
though, so they are counted and reported next to the online steps.

Only in-process envs (DummyVecEnv): the wrapper calls the policy being trained.

Measured on walker2d (docs/RESULTS.md, `hybrid-restarts`, fraction 0.5): the late collapses
moved to other seeds rather than going (2 of 20 medium seeds against 2 of 25), and at equal
env interaction (online + prefix steps) P(it > hybrid) was 0.48 on 10 seeds, so it is off on
every entry.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

RESTART_STREAM = 40_000  # the wrapper's RNG: seeded from the env's seed, apart from the env's


class DeterministicRestarts(gym.Wrapper):
    """With probability `fraction`, reset() walks the deterministic policy for k steps first.

    k is uniform on 1 .. time limit - 1. If the deterministic episode ends within k steps (at
    step j), the env is reset once more and walked for a k' uniform on 1 .. j - 1, i.e. to a
    state the policy reached before it fell; if that ends early too, the episode starts from
    the fresh reset. Outside the Monitor wrapper, so logged episode returns include the prefix.

    `policy` (an SB3 policy) is set after the model is built; until then resets are plain.
    """

    def __init__(self, env: gym.Env, fraction: float):
        super().__init__(env)
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"restart fraction must be in (0, 1], got {fraction}")
        if env.spec is None or env.spec.max_episode_steps is None:
            raise ValueError("deterministic restarts need an env with a time limit")
        self.fraction, self.time_limit = fraction, env.spec.max_episode_steps
        self.policy = None
        self.prefix_steps = 0  # env steps walked in prefixes (not in any rollout buffer)
        self.restarts = 0  # episodes that started where a prefix ended
        self.last_prefix = 0  # length of the prefix behind the latest reset (0: none)
        self._rng = np.random.default_rng(RESTART_STREAM)

    def reset(self, *, seed=None, options=None):
        if seed is not None:
            self._rng = np.random.default_rng([seed, RESTART_STREAM])
        obs, info = self.env.reset(seed=seed, options=options)
        self.last_prefix = 0
        if self.policy is None or self._rng.random() >= self.fraction:
            return obs, info
        k = int(self._rng.integers(1, self.time_limit))
        for _ in range(2):
            obs, info, walked, ended = self._walk(obs, info, k)
            if not ended:
                self.restarts += 1
                self.last_prefix = k
                return obs, info
            obs, info = self.env.reset(options=options)  # it fell (or timed out) by step k
            if walked <= 1:
                break
            k = int(self._rng.integers(1, walked))
        return obs, info

    def _walk(self, obs, info, k: int):
        """Up to k deterministic steps: the last obs and info, the steps taken, and whether
        the episode ended on the way."""
        for step in range(1, k + 1):
            action, _ = self.policy.predict(obs, deterministic=True)
            obs, _, terminated, truncated, info = self.env.step(action)
            self.prefix_steps += 1
            if terminated or truncated:
                return obs, info, step, True
        return obs, info, k, False


def restart_wrapper(fraction: float, inner=None):
    """make_vec_env's wrapper_class: `inner` (if any) first, the restarts outermost."""
    def wrap(env: gym.Env) -> gym.Env:
        return DeterministicRestarts(inner(env) if inner else env, fraction)
    return wrap


def attach_policy(venv, policy) -> None:
    """Point every env's restarts at the policy being trained (before the first reset)."""
    venv.set_attr("policy", policy)


def restart_counts(venv) -> dict:
    """Episodes started from a prefix, and the env steps the prefixes took, over all envs."""
    return {"episodes": int(sum(venv.get_attr("restarts"))),
            "env_steps": int(sum(venv.get_attr("prefix_steps")))}
