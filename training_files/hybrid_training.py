"""Pipeline step 4: build HybridPPO from the best BC checkpoint, train it, save it atomically."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import configure
from stable_baselines3.common.utils import set_random_seed

from atomic_file import replace_atomically
from bc import build_model
from errors import PipelineError
from evaluation import PeriodicEval, evaluate, float32_observations, make_eval_env
from hybrid_ppo import HybridPPO
from offline_data import OfflineData


@dataclass(frozen=True)
class HybridSettings:
    """The command-line side of the hybrid step (the hparam entry gives the rest)."""

    mix_ratio: float
    rho_bar: float
    c_bar: float
    bc_coeff: float
    warm_start_steps: int
    log_std_subtract: float
    seed: int
    device: str
    total_timesteps: int
    save_file: Path
    tb_dir: Path


@dataclass
class HybridResult:
    save_file: Path
    timesteps: int
    interrupted: bool
    final_eval: dict
    evaluations: list[dict] = field(default_factory=list)
    warmup: dict = field(default_factory=dict)
    save_error: str | None = None  # the requested path failed; save_file is the fallback


def build_hybrid(data: OfflineData, bc_checkpoint: Path, cfg, settings: HybridSettings,
                 env=None) -> HybridPPO:
    """HybridPPO initialised from a BC zip; mu is the BC policy before log_std_subtract."""
    set_random_seed(settings.seed)
    env = env or make_vec_env(cfg.env_id, n_envs=cfg.n_envs, seed=settings.seed,
                              env_kwargs=cfg.env_kwargs,
                              wrapper_class=float32_observations if settings.device == "mps" else None)
    model = build_model(
        cfg, env, settings.device, settings.seed, model_class=HybridPPO,
        learning_rate=cfg.learning_rate, n_steps=cfg.n_steps, batch_size=cfg.batch_size,
        n_epochs=cfg.n_epochs, gamma=cfg.gamma, gae_lambda=cfg.gae_lambda,
        clip_range=cfg.clip_range, ent_coef=cfg.ent_coef, vf_coef=cfg.vf_coef,
        max_grad_norm=cfg.max_grad_norm, target_kl=cfg.target_kl,
        mix_ratio=settings.mix_ratio, rho_bar=settings.rho_bar, c_bar=settings.c_bar,
        bc_coeff=settings.bc_coeff, warm_start_steps=settings.warm_start_steps,
        warmup_learning_rate=cfg.warmup_learning_rate, warmup_batch_size=cfg.warmup_batch_size,
        segment_length=cfg.segment_length, ood_z_threshold=cfg.ood.z_threshold,
        ood_temperature=cfg.ood.temperature, ood_min_weight=cfg.ood.min_weight,
        log_std_min=cfg.log_std_min)
    try:
        model.load_bc_checkpoint(bc_checkpoint)
    except RuntimeError as exc:  # torch's load_state_dict reports shape/key mismatches so
        raise PipelineError(f"BC checkpoint {bc_checkpoint} does not fit the policy of this "
                            "hparam entry (net_arch changed since it was trained?); rerun with "
                            "--force_bc_retrain") from exc
    model.set_offline_data(data)  # mu = a frozen copy of the BC policy, before the subtraction
    model.subtract_log_std(settings.log_std_subtract)
    return model


def save_atomically(model, path: Path) -> Path:
    path = path if path.suffix == ".zip" else path.with_name(path.name + ".zip")
    path.parent.mkdir(parents=True, exist_ok=True)
    return replace_atomically(path, lambda tmp: model.save(str(tmp)))


def save_with_fallback(model, path: Path) -> tuple[Path, str | None]:
    """Save to `path`; if that fails (disk full, folder gone or read-only since the start),
    save to the temp dir, else the working directory, so trained work is never discarded.
    Returns (where it was saved, None or a one-line error naming both paths)."""
    try:
        return save_atomically(model, path), None
    except OSError as exc:
        problem = f"could not save the hybrid model to {path} ({exc.strerror or exc})"
    name = f"{Path(path).stem}_{os.getpid()}.zip"
    for folder in (Path(tempfile.gettempdir()), Path.cwd()):
        try:
            saved = save_atomically(model, folder / name)
        except OSError:
            continue
        return saved, f"{problem}; it was saved to {saved} instead"
    raise PipelineError(f"{problem}, nor to {Path(tempfile.gettempdir()) / name} or "
                        f"{Path.cwd() / name}: the trained model is lost")


def train_hybrid(data: OfflineData, bc_checkpoint: Path, cfg, settings: HybridSettings,
                 progress: bool = True, on_eval=None) -> HybridResult:
    """Train for settings.total_timesteps; Ctrl-C stops cleanly and still saves."""
    model = build_hybrid(data, bc_checkpoint, cfg, settings)
    settings.tb_dir.mkdir(parents=True, exist_ok=True)
    model.set_logger(configure(str(settings.tb_dir), ["tensorboard", "csv"]))
    eval_env = make_eval_env(cfg.env_id, cfg.env_kwargs, settings.seed + 10_000,
                             float32_obs=settings.device == "mps")
    evaluator = PeriodicEval(eval_env, cfg.eval_freq, cfg.eval_episodes, data.ref_scores,
                             csv_path=settings.tb_dir / "eval.csv", on_eval=on_eval)

    interrupted = False
    try:
        model.learn(total_timesteps=settings.total_timesteps, callback=evaluator,
                    progress_bar=progress)
    except KeyboardInterrupt:
        interrupted = True
    save_file, save_error = save_with_fallback(model, settings.save_file)
    final = (evaluator.history[-1] if evaluator.history and
             evaluator.history[-1]["timesteps"] == model.num_timesteps else None)
    if final is None:
        final = evaluate(model, eval_env, cfg.eval_episodes, data.ref_scores)
        final["timesteps"] = int(model.num_timesteps)
    eval_env.close()
    model.env.close()
    return HybridResult(save_file, int(model.num_timesteps), interrupted, final,
                        evaluator.history, dict(model.warmup_stats), save_error)
