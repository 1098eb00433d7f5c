"""Deterministic evaluation, raw and D4RL-normalised, for BC and HybridPPO alike.

All episodes of one evaluation step together in one vectorised env (one env per episode,
episode i seeded `seed + i`), so an evaluation costs about one episode's worth of policy calls
instead of `episodes` of them. Every evaluation of a run uses the same episode seeds, which
makes the periodic evaluations comparable with each other; the final test evaluation uses
other seeds, so the model chosen on the periodic ones is scored on episodes it was not picked
on (Agarwal et al. 2021; rl-zoo3's EvalCallback selects and reports on the same episodes).
"""

from __future__ import annotations

import csv
import time
from contextlib import nullcontext
from pathlib import Path

import gymnasium as gym
import numpy as np
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv

from offline_data import normalized_score

# Episode seeds: training envs use seed + rank (SB3's make_vec_env); periodic evaluations (the
# ones a best model is selected on) and the test evaluation each have their own block.
SELECTION_SEED_OFFSET = 10_000
TEST_SEED_OFFSET = 20_000
ANCHOR_SEED_OFFSET = 30_000  # the start policy's episodes whose states hold the anchor


def float32_observations(env: gym.Env) -> gym.Env:
    """MPS has no float64 and MuJoCo observations are float64: cast them before SB3 sees them."""
    return gym.wrappers.DtypeObservation(env, np.float32)


class EvalEnv:
    """`episodes` Monitor-wrapped copies of one env, reset with fixed seeds at every evaluation."""

    def __init__(self, env_id: str, env_kwargs: dict, episodes: int, seed: int,
                 float32_obs: bool = False):
        self.episodes, self.seed = episodes, seed
        self.venv: VecEnv = make_vec_env(env_id, n_envs=episodes, env_kwargs=env_kwargs,
                                         vec_env_cls=DummyVecEnv,
                                         wrapper_class=float32_observations if float32_obs else None)

    def evaluate(self, model, ref_scores, callback=None) -> dict:
        """Mean/std return of one deterministic episode per env; normalised score if defined.
        `callback`: evaluate_policy's, called at every step of an unfinished episode."""
        self.venv.seed(self.seed)  # consumed by the reset inside evaluate_policy
        returns, lengths = evaluate_policy(model, self.venv, n_eval_episodes=self.episodes,
                                           deterministic=True, return_episode_rewards=True,
                                           callback=callback)
        mean = float(np.mean(returns))
        return {"mean_reward": mean, "std_reward": float(np.std(returns)),
                "mean_ep_length": float(np.mean(lengths)), "episodes": self.episodes,
                "seeds": [self.seed, self.seed + self.episodes - 1],
                "normalized_score": normalized_score(mean, ref_scores)}

    def close(self) -> None:
        self.venv.close()


def evaluate(model, env_id: str, env_kwargs: dict, episodes: int, seed: int, ref_scores,
             float32_obs: bool = False) -> dict:
    """One evaluation on a fresh EvalEnv (for one-off evaluations: BC, the test evaluation)."""
    env = EvalEnv(env_id, env_kwargs, episodes, seed, float32_obs)
    try:
        return env.evaluate(model, ref_scores)
    finally:
        env.close()


def visited_states(model, env_id: str, env_kwargs: dict, episodes: int, seed: int,
                   float32_obs: bool = False, completed_only: bool = False) -> tuple[np.ndarray, dict]:
    """The observations the model acts on in `episodes` deterministic episodes (seeds seed + i),
    and the evaluation of those episodes (plus `kept_episodes`). completed_only: only the
    episodes that ran to the time limit (truncated, not terminated: no fall)."""
    per_episode = [[] for _ in range(episodes)]  # one episode per env of the EvalEnv
    completed = [False] * episodes

    def keep(local_vars, _globals):  # evaluate_policy's locals: env i acts on observations[i]
        i = local_vars["i"]
        per_episode[i].append(local_vars["observations"][i].copy())
        if local_vars["done"]:
            completed[i] = bool(local_vars["info"].get("TimeLimit.truncated", False))

    # Creating the envs can draw from NumPy's global RNG (seen once per process with
    # gymnasium 1.4 / SB3 2.9), which also orders the run's minibatches: put it back, so that
    # these episodes leave the run as it would be without them.
    rng_state = np.random.get_state()
    env = EvalEnv(env_id, env_kwargs, episodes, seed, float32_obs)
    try:
        result = env.evaluate(model, None, callback=keep)
    finally:
        env.close()
        np.random.set_state(rng_state)
    kept = [i for i in range(episodes) if completed[i] or not completed_only]
    states = [s for i in kept for s in per_episode[i]]
    shape = (len(states),) + env.venv.observation_space.shape
    return np.asarray(states, dtype=np.float32).reshape(shape), {**result, "kept_episodes": len(kept)}


class PeriodicEval(BaseCallback):
    """Every `eval_freq` env steps: eval/mean_reward and eval/normalized_score, plus a CSV row;
    and at the end of training, so the last evaluation is of the final model.

    SB3's EvalCallback dumps its logger before another key can join the same step, so the
    normalised score would land one rollout late; this one records both together. `on_eval`
    sees each result with the model (the best-model keeper uses it).
    """

    def __init__(self, env: EvalEnv, eval_freq: int, ref_scores, csv_path: Path | None = None,
                 on_eval=None, eval_at_start: bool = True):
        super().__init__()
        self.env, self.eval_freq, self.ref_scores = env, eval_freq, ref_scores
        self.csv_path, self.on_eval = csv_path, on_eval
        self.history: list[dict] = []
        self.seconds = 0.0  # wall time spent evaluating
        self._next = eval_freq
        self.eval_at_start = eval_at_start

    def _on_training_start(self) -> None:
        # The starting point (the BC policy after warm-up) is the baseline a collapse is measured against.
        if self.eval_at_start and self.model.num_timesteps == 0:
            self.run_eval()

    def run_eval(self, note: str | None = None) -> dict:
        # HybridPPO's averaged actor, if it keeps one (policy_average_steps), is the policy
        # evaluated and, through on_eval, the one the best-model keeper saves.
        with getattr(self.model, "evaluated_actor", nullcontext)():
            return self._run_eval(note)

    def _run_eval(self, note: str | None) -> dict:
        started = time.perf_counter()
        result = self.env.evaluate(self.model, self.ref_scores)
        self.seconds += time.perf_counter() - started
        result["timesteps"] = int(self.model.num_timesteps)
        if note is not None:
            result["note"] = note
        self.history.append(result)
        # A noted evaluation (the offline-improvement gate's candidate) is not a point of the
        # periodic curve: its own keys in TensorBoard, its note in the CSV.
        prefix = "eval" if note is None else "eval_" + note.replace(" ", "_")
        self.logger.record(f"{prefix}/mean_reward", result["mean_reward"])
        self.logger.record(f"{prefix}/mean_ep_length", result["mean_ep_length"])
        if result["normalized_score"] is not None:
            self.logger.record(f"{prefix}/normalized_score", result["normalized_score"])
        self.logger.dump(self.model.num_timesteps)
        if self.csv_path is not None:
            new = not self.csv_path.exists()
            with open(self.csv_path, "a", newline="") as fh:
                writer = csv.writer(fh)
                if new:
                    writer.writerow(["timesteps", "mean_reward", "std_reward", "normalized_score",
                                     "note"])
                writer.writerow([result["timesteps"], result["mean_reward"], result["std_reward"],
                                 result["normalized_score"], note or ""])
        if self.on_eval is not None:
            self.on_eval(result, self.model)
        return result

    def _on_step(self) -> bool:
        if self.model.num_timesteps >= self._next:
            self._next += self.eval_freq
            if not self._last_step_of_run():
                self.run_eval()
        return True

    def _last_step_of_run(self) -> bool:
        """The last env step of the last rollout: SB3's last update is still to come, so the
        evaluation at training end, under the same step count, scores the model saved."""
        rollout_ends = self.locals.get("n_steps") == self.locals.get("n_rollout_steps", 0) - 1
        return rollout_ends and self.model.num_timesteps >= self.model._total_timesteps

    def _on_training_end(self) -> None:
        self.score_final()

    def score_final(self) -> None:
        """Evaluate the model as it is now unless its step count has an evaluation already
        (at training end; after an interrupt, which skips that hook)."""
        if not self.history or self.history[-1]["timesteps"] != self.model.num_timesteps:
            self.run_eval()
