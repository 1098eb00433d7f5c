"""Behaviour cloning into the exact SB3 policy HybridPPO will fine-tune.

The actor is fitted by the Gaussian negative log-likelihood of the dataset actions, which also
fits log_std: HybridPPO starts exploring with the noise BC measured. Checkpoints are SB3 PPO
zips (loadable with PPO.load and by HybridPPO as they are); the CSV holds the unscaled NLL, so
losses compare across runs whatever --bc_coeff is. Both files are replaced atomically so a
crash never leaves half a zip or half a row.
"""

from __future__ import annotations

import json
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.utils import set_random_seed
from filelock import FileLock
from tqdm import tqdm

from atomic_file import exclusive, replace_atomically, write_bytes_atomically
from normalized_policy import obs_normalizer, policy_kwargs
from offline_data import OfflineData

CSV_HEADER = "epoch,train_loss,val_loss\n"


@dataclass(frozen=True)
class BCSettings:
    """The command-line side of BC (the hparam entry gives the rest)."""

    epochs: int
    batch_size: int
    log_interval: int
    save_every_epochs: int
    seed: int
    device: str


def checkpoint_dir(root: Path, dataset: str, env: str) -> Path:
    return root / dataset / env


def run_name(names: list[str]) -> str:
    return "+".join(names)


def checkpoint_file(directory: Path, name: str, epoch: int, val_loss: float) -> Path:
    # The full name ends in .zip: SB3 would read ".XXXX" as a suffix and not add its own.
    return directory / f"{name}_epoch{epoch} with avg loss {val_loss:.4f}.zip"


def metrics_file(directory: Path, name: str) -> Path:
    return directory / f"{name}_metrics.csv"


def settings_file(directory: Path, name: str) -> Path:
    return directory / f"{name}_bc_settings.json"


def settings_record(settings: BCSettings, hparam_key: str, cfg, provenance: list[dict]) -> dict:
    """What decides the checkpoints' weights, compared before they are reused. Leaves out what
    does not change them (eval_episodes, save/log intervals)."""
    return {"seed": settings.seed, "epochs": settings.epochs, "batch_size": settings.batch_size,
            "hparam_bc": hparam_key,
            "bc_config": cfg.model_dump(mode="json", exclude={"eval_episodes"}),
            "data": [{"name": p.get("name"), "source": "minari" if p.get("source") == "generated"
                      else p.get("source"), "sha256": p.get("sha256")} for p in provenance]}


def write_settings(directory: Path, name: str, record: dict) -> Path:
    text = json.dumps(record, indent=2, sort_keys=True) + "\n"
    return write_bytes_atomically(settings_file(directory, name), text.encode("utf-8"))


def read_settings(directory: Path, name: str) -> dict | None:
    """The stored record, or None when absent or unreadable (then nothing can be compared)."""
    path = settings_file(directory, name)
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        warnings.warn(f"{path} is unreadable ({exc}); treating the settings as unknown",
                      stacklevel=2)
        return None
    return record if isinstance(record, dict) else None


def checkpoint_lock(root: Path, dataset: str, env: str, name: str):
    """Held while one run checks, trains, archives, selects and copies the checkpoints of
    (dataset, env, name), so another run never loads one that is being moved or written."""
    root.mkdir(parents=True, exist_ok=True)
    return exclusive(root / f".{dataset}@{env}@{name}.lock",
                     f"Waiting for another run using the BC checkpoints of {dataset}/{env}/{name}")


def _append_metrics_row(path: Path, epoch: int, train_loss: float, val_loss: float) -> None:
    row = f"{epoch},{train_loss!r},{val_loss!r}\n"
    # A read-modify-write: two writers must not interleave (a hidden lock beside the CSV).
    with FileLock(path.with_name(f".{path.name}.lock")):
        old = path.read_text() if path.exists() else CSV_HEADER
        replace_atomically(path, lambda tmp: tmp.write_text(old + row))


def archive_previous(directory: Path, name: str) -> Path | None:
    """Move an earlier run's CSV, settings and checkpoints of `name` aside before retraining."""
    old = [metrics_file(directory, name), settings_file(directory, name),
           *directory.glob(f"{name}_epoch* with avg loss *.zip")]
    old = [p for p in old if p.exists()]
    if not old:
        return None
    dest = directory / "superseded" / f"{name}_{time.strftime('%Y%m%dT%H%M%S')}"
    dest.mkdir(parents=True, exist_ok=True)
    for path in old:
        shutil.move(str(path), dest / path.name)
    return dest


def build_model(cfg, env: gym.Env, device: str, seed: int, model_class=PPO, **ppo_kwargs) -> PPO:
    """A PPO whose policy is the shared normalised actor-critic (for BC and HybridPPO)."""
    return model_class("MlpPolicy", env, policy_kwargs=policy_kwargs(cfg.policy), device=device,
                       seed=seed, verbose=0, **ppo_kwargs)


def split_episodes(data: OfflineData, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    n_episodes = len(data.episode_starts)
    order = np.random.default_rng(seed).permutation(n_episodes)
    n_val = int(round(n_episodes * val_fraction)) if n_episodes > 1 else 0
    n_val = min(max(n_val, 1 if n_episodes > 1 else 0), n_episodes - 1)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def gaussian_nll(policy, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """Per-sample -log pi(a|s) (summed over action dims), actor only."""
    return -policy.get_distribution(obs).log_prob(actions)


def train_bc(data: OfflineData, cfg, settings: BCSettings, out_dir: Path, name: str,
             progress: bool = True) -> Path:
    """Train BC, writing checkpoints and the metrics CSV into out_dir; returns the CSV path."""
    set_random_seed(settings.seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    train_ids, val_ids = split_episodes(data, cfg.val_fraction, settings.seed)
    train = data.select_episodes(train_ids)
    if len(val_ids) == 0:  # a one-episode dataset has nothing to hold out; say so in the log
        val = train
        print("BC: dataset has a single episode, validation uses the training data")
    else:
        val = data.select_episodes(val_ids)

    env = gym.make(cfg.env_id, **cfg.env_kwargs)
    model = build_model(cfg, env, settings.device, settings.seed)
    policy = model.policy
    obs_normalizer(policy).set_statistics(train.observations.mean(0), train.observations.std(0))
    device = policy.device
    tensors = lambda d: (torch.as_tensor(d.observations, device=device),  # noqa: E731
                         torch.as_tensor(d.actions, device=device))
    train_obs, train_act = tensors(train)
    val_obs, val_act = tensors(val)
    optimizer = torch.optim.Adam(policy.parameters(), lr=cfg.learning_rate,
                                 weight_decay=cfg.weight_decay)
    generator = torch.Generator(device="cpu").manual_seed(settings.seed)

    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = metrics_file(out_dir, name)
    print(f"BC: {len(train)} train / {len(val)} val transitions "
          f"({len(train_ids)}/{len(val_ids)} episodes), {settings.epochs} epochs, "
          f"batch {settings.batch_size}, device {device}")
    bar = tqdm(range(1, settings.epochs + 1), desc="BC", unit="epoch", disable=not progress)
    for epoch in bar:
        policy.set_training_mode(True)
        perm = torch.randperm(len(train_obs), generator=generator).to(device)
        total, count = 0.0, 0
        for start in range(0, len(perm), settings.batch_size):
            idx = perm[start:start + settings.batch_size]
            loss = gaussian_nll(policy, train_obs[idx], train_act[idx]).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                policy.log_std.clamp_(min=cfg.log_std_min)
            total += loss.item() * len(idx)
            count += len(idx)
        train_loss = total / count
        val_loss = evaluate_nll(policy, val_obs, val_act)
        bar.set_postfix(train=f"{train_loss:.4f}", val=f"{val_loss:.4f}")
        if epoch % settings.log_interval == 0 or epoch == settings.epochs:
            tqdm.write(f"BC epoch {epoch}/{settings.epochs}: train_loss {train_loss:.4f} "
                       f"val_loss {val_loss:.4f}")
        if epoch % settings.save_every_epochs == 0 or epoch == settings.epochs:
            path = checkpoint_file(out_dir, name, epoch, val_loss)
            replace_atomically(path, lambda tmp: model.save(str(tmp)))
            _append_metrics_row(csv_path, epoch, train_loss, val_loss)
    env.close()
    return csv_path


@torch.no_grad()
def evaluate_nll(policy, obs: torch.Tensor, actions: torch.Tensor, chunk: int = 65536) -> float:
    policy.set_training_mode(False)
    total = sum(gaussian_nll(policy, obs[i:i + chunk], actions[i:i + chunk]).sum().item()
                for i in range(0, len(obs), chunk))
    return total / len(obs)
