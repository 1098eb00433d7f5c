"""Deterministic evaluation episodes, raw and D4RL-normalised, for BC and HybridPPO alike."""

from __future__ import annotations

import csv
from pathlib import Path

import gymnasium as gym
import numpy as np
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.monitor import Monitor

from offline_data import normalized_score


def float32_observations(env: gym.Env) -> gym.Env:
    """MPS has no float64 and MuJoCo observations are float64: cast them before SB3 sees them."""
    return gym.wrappers.DtypeObservation(env, np.float32)


def make_eval_env(env_id: str, env_kwargs: dict, seed: int, float32_obs: bool = False) -> gym.Env:
    env = gym.make(env_id, **env_kwargs)
    env = Monitor(float32_observations(env) if float32_obs else env)
    env.reset(seed=seed)
    env.action_space.seed(seed)
    return env


def evaluate(model, env: gym.Env, episodes: int, ref_scores) -> dict:
    """Mean/std return over `episodes` deterministic episodes; normalised score if defined."""
    returns, lengths = evaluate_policy(model, env, n_eval_episodes=episodes, deterministic=True,
                                       return_episode_rewards=True, warn=False)
    mean = float(np.mean(returns))
    return {"mean_reward": mean, "std_reward": float(np.std(returns)),
            "mean_ep_length": float(np.mean(lengths)), "episodes": episodes,
            "normalized_score": normalized_score(mean, ref_scores)}


class PeriodicEval(BaseCallback):
    """Every `eval_freq` env steps: eval/mean_reward and eval/normalized_score, plus a CSV row.

    SB3's EvalCallback dumps its logger before another key can join the same step, so the
    normalised score would land one rollout late; this one records both together.
    """

    def __init__(self, env: gym.Env, eval_freq: int, episodes: int, ref_scores,
                 csv_path: Path | None = None, on_eval=None, eval_at_start: bool = True):
        super().__init__()
        self.env, self.eval_freq, self.episodes, self.ref_scores = env, eval_freq, episodes, ref_scores
        self.csv_path, self.on_eval = csv_path, on_eval
        self.history: list[dict] = []
        self._next = eval_freq
        self.eval_at_start = eval_at_start

    def _on_training_start(self) -> None:
        # The starting point (the BC policy after warm-up) is the baseline a collapse is measured against.
        if self.eval_at_start and self.model.num_timesteps == 0:
            self.run_eval()

    def run_eval(self) -> dict:
        result = evaluate(self.model, self.env, self.episodes, self.ref_scores)
        result["timesteps"] = int(self.model.num_timesteps)
        self.history.append(result)
        self.logger.record("eval/mean_reward", result["mean_reward"])
        self.logger.record("eval/mean_ep_length", result["mean_ep_length"])
        if result["normalized_score"] is not None:
            self.logger.record("eval/normalized_score", result["normalized_score"])
        self.logger.dump(self.model.num_timesteps)
        if self.csv_path is not None:
            new = not self.csv_path.exists()
            with open(self.csv_path, "a", newline="") as fh:
                writer = csv.writer(fh)
                if new:
                    writer.writerow(["timesteps", "mean_reward", "std_reward", "normalized_score"])
                writer.writerow([result["timesteps"], result["mean_reward"], result["std_reward"],
                                 result["normalized_score"]])
        if self.on_eval is not None:
            self.on_eval(result)
        return result

    def _on_step(self) -> bool:
        if self.model.num_timesteps >= self._next:
            self._next += self.eval_freq
            self.run_eval()
        return True
