"""Train a reference policy that generates the bundled offline datasets.

The project ships its own demonstrators because no dataset hub is reachable on the machines
it was built on. Off-policy learners (SAC/TD3) are the usual choice for MuJoCo experts, but on
a 2-core CPU SB3's SAC runs ~26 env steps/s against PPO's ~460, so the reference is SB3 PPO
with VecNormalize (observations and rewards) at SB3's default settings. A checkpoint and its
VecNormalize statistics are written every ``--checkpoint_every`` steps so an interrupted run
loses at most that much, and ``--resume`` continues from the newest checkpoint.

Usage:
  python training_files/train_reference_policy.py --env_id Walker2d-v4 --timesteps 1200000 \
      --seed 0 --out reference_policies/runs/walker2d
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import CheckpointCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import VecNormalize


def _newest_checkpoint(out: Path) -> tuple[Path, Path] | None:
    found = []
    for zip_path in out.glob("ppo_*_steps.zip"):
        m = re.fullmatch(r"ppo_(\d+)_steps\.zip", zip_path.name)
        stats = out / f"ppo_vecnormalize_{m.group(1)}_steps.pkl" if m else None
        if m and stats.exists():
            found.append((int(m.group(1)), zip_path, stats))
    if not found:
        return None
    _, zip_path, stats = max(found)
    return zip_path, stats


def train_reference_policy(env_id: str, timesteps: int, seed: int, out: Path,
                           checkpoint_every: int, resume: bool) -> PPO:
    # One thread: a 64x64 MLP gains nothing from more, and the other core stays free.
    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    venv = make_vec_env(env_id, n_envs=1, seed=seed)
    newest = _newest_checkpoint(out) if resume else None
    if newest is not None:
        zip_path, stats = newest
        venv = VecNormalize.load(str(stats), venv)
        model = PPO.load(zip_path, env=venv, device="cpu")
        print(f"Resuming from {zip_path} at {model.num_timesteps} steps")
    else:
        venv = VecNormalize(venv, norm_obs=True, norm_reward=True)
        model = PPO("MlpPolicy", venv, seed=seed, device="cpu", verbose=0,
                    tensorboard_log=str(out / "tb"))
    remaining = timesteps - model.num_timesteps
    if remaining > 0:
        model.learn(
            total_timesteps=remaining,
            reset_num_timesteps=newest is None,
            progress_bar=True,
            callback=CheckpointCallback(save_freq=checkpoint_every, save_path=str(out),
                                        name_prefix="ppo", save_vecnormalize=True),
        )
    model.save(out / "final.zip")
    venv.save(str(out / "final_vecnormalize.pkl"))
    return model


def evaluate_checkpoints(env_id: str, out: Path, episodes: int, seed: int = 100) -> list[dict]:
    """Mean return of every checkpoint, stochastic (as datasets are collected) and deterministic."""
    from collect_dataset import collect_episodes

    rows = []
    checkpoints = sorted(out.glob("ppo_*_steps.zip"), key=lambda p: int(p.stem.split("_")[1]))
    for zip_path in checkpoints:
        steps = int(zip_path.stem.split("_")[1])
        stats = out / f"ppo_vecnormalize_{steps}_steps.pkl"
        # collect_episodes looks for <stem>_vecnormalize.pkl beside the zip
        link = zip_path.with_name(f"{zip_path.stem}_vecnormalize.pkl")
        if not link.exists():
            link.symlink_to(stats.name)
        row = {"steps": steps}
        for mode, deterministic in (("stochastic", False), ("deterministic", True)):
            returns = [sum(b.rewards) for b in collect_episodes(
                env_id, zip_path, episodes, seed, deterministic=deterministic, progress=False)]
            row[mode] = (float(np.mean(returns)), float(np.std(returns)))
        print(f"{steps:>8} steps: stochastic {row['stochastic'][0]:7.1f} +- {row['stochastic'][1]:6.1f}"
              f"   deterministic {row['deterministic'][0]:7.1f} +- {row['deterministic'][1]:6.1f}",
              flush=True)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env_id", default="Walker2d-v4", help="Gymnasium env id")
    parser.add_argument("--timesteps", type=int, default=1_200_000, help="total env steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("reference_policies/runs/walker2d"),
                        help="folder for checkpoints, VecNormalize stats and TensorBoard")
    parser.add_argument("--checkpoint_every", type=int, default=100_000, help="env steps")
    parser.add_argument("--resume", action="store_true", help="continue from newest checkpoint")
    parser.add_argument("--evaluate", type=int, default=0, metavar="EPISODES",
                        help="only evaluate every checkpoint in --out over EPISODES episodes")
    args = parser.parse_args()
    if args.evaluate:
        evaluate_checkpoints(args.env_id, args.out, args.evaluate)
        return
    train_reference_policy(args.env_id, args.timesteps, args.seed, args.out,
                           args.checkpoint_every, args.resume)


if __name__ == "__main__":
    main()
