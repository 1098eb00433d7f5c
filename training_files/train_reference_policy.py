"""Train a reference policy that generates the bundled offline datasets.

The project ships its own demonstrators because no dataset hub is reachable on the machines
it was built on. Off-policy learners (SAC/TD3) are the usual choice for MuJoCo experts, but on
a 2-core CPU SB3's SAC runs ~26 env steps/s against PPO's ~460, so the reference is SB3 PPO
with VecNormalize (observations and rewards) at SB3's default settings. A checkpoint and its
VecNormalize statistics are written every ``--checkpoint_every`` env steps so an interrupted
run loses at most that much, and ``--resume`` continues from the newest checkpoint.

Several envs (``--n_envs``, SB3's make_vec_env) step together; ``--n_steps`` is per env, as in
SB3, and defaults to 2048 // n_envs so that an update holds SB3's default 2,048 samples
whatever the number of envs. ``--env_kwargs`` are gym.make kwargs (key=value pairs or one
JSON object). The run's settings are kept in ``<out>/run.json``: ``--resume`` and
``--evaluate`` use its env and kwargs, and a resume with another env is refused.

Usage:
  python training_files/train_reference_policy.py --env_id Walker2d-v4 --timesteps 1200000 \
      --seed 0 --out reference_policies/runs/walker2d
  python training_files/train_reference_policy.py --env_id Ant-v4 \
      --env_kwargs use_contact_forces=true --n_envs 4 --timesteps 2000000 --seed 0 \
      --out reference_policies/runs/ant            # add --resume to continue
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import warnings
from pathlib import Path

import numpy as np

from atomic_file import replace_atomically, write_bytes_atomically
from collect_dataset import parse_env_kwargs
from errors import PipelineError, exit_code

RUN_FILE = "run.json"
DEFAULT_ENV_ID = "Walker2d-v4"


def _checkpoints(out: Path) -> list[tuple[Path, Path]]:
    """(model zip, VecNormalize stats) of every checkpoint that has both, newest first."""
    found = []
    for zip_path in out.glob("ppo_*_steps.zip"):
        m = re.fullmatch(r"ppo_(\d+)_steps\.zip", zip_path.name)
        stats = out / f"ppo_vecnormalize_{m.group(1)}_steps.pkl" if m else None
        if m and stats.exists():
            found.append((int(m.group(1)), zip_path, stats))
    return [(zip_path, stats) for _, zip_path, stats in sorted(found, reverse=True)]


def _load_newest(checkpoints: list[tuple[Path, Path]], out: Path, venv):
    """The newest of `checkpoints` that loads: SB3's CheckpointCallback writes its files in
    place, so a run killed while writing one leaves it damaged, and the one before is resumed."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import VecNormalize

    for zip_path, stats in checkpoints:
        try:
            model = PPO.load(zip_path, env=VecNormalize.load(str(stats), venv), device="cpu")
        except Exception as exc:  # a truncated zip or pickle raises one of several types
            print(f"Skipping checkpoint {zip_path.name}: it does not load ({type(exc).__name__})")
            continue
        print(f"Resuming from {zip_path} at {model.num_timesteps} steps")
        return model
    raise PipelineError(f"No checkpoint in {out} loads: start afresh in another --out")


def read_run(out: Path) -> dict | None:
    path = out / RUN_FILE
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise PipelineError(f"{path} is unreadable ({exc})") from exc


def _check_same_env(out: Path, env_id: str, env_kwargs: dict) -> None:
    """A resume must continue on the env the checkpoints were trained on."""
    run = read_run(out)
    if run is not None and (run["env_id"], run["env_kwargs"]) != (env_id, env_kwargs):
        raise PipelineError(
            f"{out} was trained on {run['env_id']} {run['env_kwargs']}, not {env_id} "
            f"{env_kwargs}: resume with the same --env_id/--env_kwargs or use another --out")


def train_reference_policy(env_id: str, timesteps: int, seed: int, out: Path,
                           checkpoint_every: int, resume: bool, n_envs: int = 1,
                           env_kwargs: dict | None = None, n_steps: int | None = None,
                           progress: bool = True):
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import CheckpointCallback
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    env_kwargs = dict(env_kwargs or {})
    n_steps = n_steps or max(2048 // n_envs, 2)
    # One thread: a 64x64 MLP gains nothing from more, and the other core stays free.
    torch.set_num_threads(1)
    if resume:
        _check_same_env(out, env_id, env_kwargs)
    checkpoints = _checkpoints(out)
    if not resume and checkpoints:
        raise PipelineError(f"{out} already holds checkpoints: pass --resume to continue them, "
                            "or use another --out")
    try:
        venv = make_vec_env(env_id, n_envs=n_envs, seed=seed, env_kwargs=env_kwargs)
    except Exception as exc:  # gymnasium raises several types for a bad id or kwargs
        raise PipelineError(f"Cannot create env {env_id} {env_kwargs}: {exc}") from exc
    out.mkdir(parents=True, exist_ok=True)
    resumed = resume and bool(checkpoints)
    if resumed:
        model = _load_newest(checkpoints, out, venv)
        venv = model.get_env()
    else:
        venv = VecNormalize(venv, norm_obs=True, norm_reward=True)
        model = PPO("MlpPolicy", venv, n_steps=n_steps, seed=seed, device="cpu", verbose=0,
                    tensorboard_log=str(out / "tb"))
    run = {"env_id": env_id, "env_kwargs": env_kwargs, "seed": seed, "n_envs": n_envs,
           "n_steps": model.n_steps, "timesteps": timesteps}
    write_bytes_atomically(out / RUN_FILE, (json.dumps(run, indent=2) + "\n").encode("utf-8"))
    remaining = timesteps - model.num_timesteps
    if remaining > 0:
        model.learn(
            total_timesteps=remaining,
            reset_num_timesteps=not resumed,
            progress_bar=progress,
            # save_freq counts vec-env steps: n_envs env steps each.
            callback=CheckpointCallback(save_freq=max(checkpoint_every // n_envs, 1),
                                        save_path=str(out), name_prefix="ppo",
                                        save_vecnormalize=True),
        )
    replace_atomically(out / "final.zip", lambda tmp: model.save(str(tmp)))
    replace_atomically(out / "final_vecnormalize.pkl", lambda tmp: venv.save(str(tmp)))
    return model


def evaluate_checkpoints(env_id: str, out: Path, episodes: int, seed: int = 100,
                         env_kwargs: dict | None = None) -> list[dict]:
    """Mean return of every checkpoint, stochastic (as datasets are collected) and deterministic."""
    from collect_dataset import collect_episodes

    rows = []
    checkpoints = sorted(out.glob("ppo_*_steps.zip"), key=lambda p: int(p.stem.split("_")[1]))
    for zip_path in checkpoints:
        steps = int(zip_path.stem.split("_")[1])
        stats = out / f"ppo_vecnormalize_{steps}_steps.pkl"
        if not stats.exists():  # killed between SB3's two writes: no statistics to act with
            print(f"{steps:>8} steps: skipped, {stats.name} is missing", flush=True)
            continue
        # collect_episodes looks for <stem>_vecnormalize.pkl beside the zip
        link = zip_path.with_name(f"{zip_path.stem}_vecnormalize.pkl")
        if not link.is_symlink():
            link.symlink_to(stats.name)
        row = {"steps": steps}
        for mode, deterministic in (("stochastic", False), ("deterministic", True)):
            returns = [sum(b.rewards) for b in collect_episodes(
                env_id, zip_path, episodes, seed, env_kwargs=env_kwargs,
                deterministic=deterministic, progress=False)]
            row[mode] = (float(np.mean(returns)), float(np.std(returns)))
        print(f"{steps:>8} steps: stochastic {row['stochastic'][0]:7.1f} +- {row['stochastic'][1]:6.1f}"
              f"   deterministic {row['deterministic'][0]:7.1f} +- {row['deterministic'][1]:6.1f}",
              flush=True)
        rows.append(row)
    return rows


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env_id", default=None,
                        help="Gymnasium env id (default: Walker2d-v4; with --evaluate, the env "
                             "in <out>/run.json)")
    parser.add_argument("--env_kwargs", nargs="+", default=None, metavar="KEY=VALUE",
                        help="gym.make kwargs: key=value pairs (values read as JSON) or one "
                             "JSON object, e.g. use_contact_forces=true")
    parser.add_argument("--n_envs", type=int, default=1, help="envs stepped together (default: 1)")
    parser.add_argument("--n_steps", type=int, default=None,
                        help="PPO rollout steps per env (default: 2048 // n_envs)")
    parser.add_argument("--timesteps", type=int, default=1_200_000, help="total env steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("reference_policies/runs/walker2d"),
                        help="folder for checkpoints, VecNormalize stats, run.json and TensorBoard")
    parser.add_argument("--checkpoint_every", type=int, default=100_000, help="env steps")
    parser.add_argument("--resume", action="store_true", help="continue from newest checkpoint")
    parser.add_argument("--evaluate", type=int, default=0, metavar="EPISODES",
                        help="only evaluate every checkpoint in --out over EPISODES episodes")
    parser.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # The references are v4 envs on purpose (D4RL's layouts); gymnasium (imported above with
    # collect_dataset) would print its "is out of date" note beside every message.
    warnings.filterwarnings("ignore", message=".*is out of date.*")
    try:
        for flag in ("n_envs", "timesteps", "checkpoint_every"):
            if getattr(args, flag) <= 0:
                raise PipelineError(f"--{flag} must be positive")
        if args.n_steps is not None and args.n_steps < 2:
            raise PipelineError("--n_steps must be at least 2")
        env_kwargs = parse_env_kwargs(args.env_kwargs)
        if args.evaluate:
            # The env the checkpoints were trained on, unless the command line says otherwise.
            run = read_run(args.out) or {}
            evaluate_checkpoints(args.env_id or run.get("env_id", DEFAULT_ENV_ID), args.out,
                                 args.evaluate,
                                 env_kwargs=env_kwargs if args.env_kwargs else run.get("env_kwargs"))
            return 0
        train_reference_policy(args.env_id or DEFAULT_ENV_ID, args.timesteps, args.seed, args.out,
                               args.checkpoint_every, args.resume, n_envs=args.n_envs,
                               env_kwargs=env_kwargs, n_steps=args.n_steps,
                               progress=not args.no_progress)
    except (KeyboardInterrupt, Exception) as exc:
        return exit_code(exc, "Interrupted" if args.evaluate else
                         f"Interrupted: the checkpoints saved so far are in {args.out}; "
                         "--resume continues from the newest")
    return 0


if __name__ == "__main__":
    sys.exit(main())
