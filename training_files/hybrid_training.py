"""Pipeline step 4: HybridPPO from the best BC checkpoint, trained, saved, tested.

The run keeps two models: the final one and the best by periodic evaluation, whose first
candidate is the BC policy itself (the evaluation at step 0, before the actor has moved). So
the run never hands over a policy it measured worse than BC (rl-zoo3 keeps `best_model.zip`;
"Three regimes of O2O RL", arXiv 2510.01460, keeps the better of pretrained and fine-tuned).
Because the best of some twenty noisy evaluations is biased upwards (the winner's curse), the
best model must then beat BC once more on fresh selection episodes (`confirm_episodes`), or
the run hands over BC. The chosen model, the final model and BC are then scored on one test
evaluation whose episode seeds were never used for the choice.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import configure
from stable_baselines3.common.utils import LinearSchedule, set_random_seed
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

from atomic_file import replace_atomically
from bc import build_model
from errors import PipelineError
from evaluation import (ANCHOR_SEED_OFFSET, SELECTION_SEED_OFFSET, TEST_SEED_OFFSET, EvalEnv,
                        PeriodicEval, evaluate, float32_observations, visited_states)
from hybrid_ppo import HybridPPO
from offline_data import OfflineData
from policy_anchor import gain_gate
from policy_restarts import attach_policy, restart_counts, restart_wrapper
from policy_rollback import PolicyRollback
from preflight import best_model_file, model_file
from split_vec_env import SplitVecEnv

VEC_ENV_CLASSES = {"dummy": DummyVecEnv, "subproc": SubprocVecEnv, "split": SplitVecEnv}


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
    best_file: Path
    timesteps: int
    interrupted: bool
    final_eval: dict
    best_eval: dict
    evaluations: list[dict] = field(default_factory=list)
    warmup: dict = field(default_factory=dict)
    save_error: str | None = None  # the requested path failed; save_file is the fallback
    seconds: dict = field(default_factory=dict)  # wall time per stage
    restarts: dict | None = None  # deterministic restarts: episodes and prefix env steps
    confirmation: dict | None = None  # confirm_best's verdict; None: not run
    bc_file: Path | None = None  # the BC policy the run started from
    rollbacks: list[dict] | None = None  # rollback_drop > 0: PolicyRollback.rollbacks
    anchor_gate: dict | None = None  # anchor_gate bc_gain: the returns compared, the weight

    @property
    def rejected(self) -> bool:
        """The best model lost to BC on the confirmation episodes."""
        return self.confirmation is not None and not self.confirmation["kept"]

    @property
    def best_source(self) -> str:
        """'bc' when nothing beat the start (or the best failed its confirmation), 'final' when
        the last evaluation was the best.

        A kept offline improvement is evaluated at step 0 too (with a note): not BC's actor."""
        if self.rejected or (self.best_eval["timesteps"] == 0 and not self.best_eval.get("note")):
            return "bc"
        return "final" if self.best_eval["timesteps"] == self.final_eval["timesteps"] else "best"

    @property
    def handed_over(self) -> Path:
        """The model file the run tells the user to use (see best_source)."""
        if self.rejected:
            return self.bc_file
        return self.save_file if self.best_source == "final" else self.best_file


def make_train_env(cfg, seed: int, device: str):
    """cfg.n_envs copies of the env: in this process, one process each, or split between this
    process and one worker (split_vec_env.py; one env: in this process)."""
    wrapper = float32_observations if device == "mps" else None
    if cfg.deterministic_restarts > 0:  # in this process only (HybridConfig checks vec_env)
        wrapper = restart_wrapper(cfg.deterministic_restarts, wrapper)
    return make_vec_env(cfg.env_id, n_envs=cfg.n_envs, seed=seed, env_kwargs=cfg.env_kwargs,
                        vec_env_cls=VEC_ENV_CLASSES[cfg.vec_env_kind], wrapper_class=wrapper)


def build_hybrid(data: OfflineData, bc_checkpoint: Path, cfg, settings: HybridSettings,
                 env=None) -> HybridPPO:
    """HybridPPO initialised from a BC zip; mu is the BC policy before log_std_subtract."""
    set_random_seed(settings.seed)
    env = env or make_train_env(cfg, settings.seed, settings.device)
    learning_rate = (LinearSchedule(cfg.learning_rate, 0.0, 1.0) if cfg.lr_schedule == "linear"
                     else cfg.learning_rate)
    model = build_model(
        cfg, env, settings.device, settings.seed, model_class=HybridPPO,
        learning_rate=learning_rate, n_steps=cfg.n_steps, batch_size=cfg.batch_size,
        n_epochs=cfg.n_epochs, gamma=cfg.gamma, gae_lambda=cfg.gae_lambda,
        clip_range=cfg.clip_range, ent_coef=cfg.ent_coef, vf_coef=cfg.vf_coef,
        max_grad_norm=cfg.max_grad_norm, target_kl=cfg.target_kl,
        mix_ratio=settings.mix_ratio, rho_bar=settings.rho_bar, c_bar=settings.c_bar,
        bc_coeff=settings.bc_coeff, bc_decay=cfg.bc_decay,
        warm_start_steps=settings.warm_start_steps,
        warmup_learning_rate=cfg.warmup_learning_rate, warmup_batch_size=cfg.warmup_batch_size,
        critic_only_updates=cfg.critic_only_updates, segment_length=cfg.segment_length,
        ood=cfg.ood, offline_advantage_centering=cfg.offline_advantage_centering,
        offline_advantages=cfg.offline_advantages,
        offline_policy_updates=cfg.offline_policy_updates,
        policy_gradient_mean=cfg.policy_gradient_mean,
        offline_value_weight=cfg.offline_value_weight,
        log_std_min=cfg.log_std_min, log_std_decay=cfg.log_std_decay,
        anchor_coeff=cfg.anchor_coeff, anchor_decay=cfg.anchor_decay,
        policy_average_steps=cfg.policy_average_steps, parallel_update=cfg.parallel_update,
        critic_learning_rate=cfg.critic_learning_rate, grad_clip=cfg.grad_clip)
    try:
        model.load_bc_checkpoint(bc_checkpoint)
    except RuntimeError as exc:  # torch's load_state_dict reports shape/key mismatches so
        raise PipelineError(f"BC checkpoint {bc_checkpoint} does not fit the policy of this "
                            "hparam entry (net_arch changed since it was trained?); rerun with "
                            "--force_bc_retrain") from exc
    model.set_offline_data(data)  # mu = a frozen copy of the BC policy, before the subtraction
    if cfg.anchor_coeff > 0 and cfg.anchor_episodes > 0:  # where the start policy itself goes
        states, episodes = visited_states(model, cfg.env_id, cfg.env_kwargs, cfg.anchor_episodes,
                                          settings.seed + ANCHOR_SEED_OFFSET,
                                          settings.device == "mps",
                                          completed_only=cfg.anchor_keep == "completed")
        model.set_anchor_states(states)
        print(f"Anchor: the mean action is held on the {len(states)} states of "
              f"{episodes['kept_episodes']} of {cfg.anchor_episodes} deterministic BC episodes "
              f"(anchor_keep {cfg.anchor_keep}; mean return of all {episodes['mean_reward']:.1f})"
              + ("; none kept, so no anchor" if len(states) == 0 else ""))
        if cfg.anchor_gate == "bc_gain":
            data_return = float(data.episode_returns.mean())
            gate = gain_gate(episodes["mean_reward"], data_return)
            model.anchor_coeff = cfg.anchor_coeff * gate  # 0: no anchor at all
            model.anchor_gate = {"bc_return": episodes["mean_reward"], "data_return": data_return,
                                 "gate": gate, "anchor_coeff": model.anchor_coeff}
            print(f"Anchor gate: BC's episodes {episodes['mean_reward']:.1f} against the data's "
                  f"{data_return:.1f} per episode: weight {gate:.2f} x anchor_coeff "
                  f"{cfg.anchor_coeff:g} = {model.anchor_coeff:.3g}")
    model.subtract_log_std(settings.log_std_subtract)
    if cfg.deterministic_restarts > 0:
        attach_policy(model.env, model.policy)
    return model


def save_atomically(model, path: Path) -> Path:
    path = model_file(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return replace_atomically(path, lambda tmp: model.save(str(tmp)))


class BestModelKeeper:
    """on_eval hook: saves the model whenever an evaluation beats every earlier one.

    The step-0 evaluation is the BC policy's (the actor has not moved; warm-up touches only
    the critic), so the kept model is never one measured worse than BC on these episodes.
    A rollback (policy_rollback.py) hears of each evaluation before it is reported.
    """

    def __init__(self, path: Path, report=None, rollback: PolicyRollback | None = None):
        self.requested, self.path, self.report = path, path, report
        self.rollback = rollback
        self.best: dict | None = None

    def __call__(self, result: dict, model) -> None:
        new_best = self.best is None or result["mean_reward"] > self.best["mean_reward"]
        if new_best:
            self.best = result
            # A save location that breaks mid-run must not end training with a traceback:
            # the best model goes where the final one would go (temp dir, else cwd); the run
            # log's hybrid_best_file says where.
            self.path, _ = save_with_fallback(model, self.requested)
        if self.rollback is not None:
            self.rollback.after_eval(result, model, new_best)
        if self.report is not None:
            self.report(result)


class StageTimes(BaseCallback):
    """Wall seconds of rollouts (periodic evaluations excluded), updates and evaluations."""

    def __init__(self, evaluator: PeriodicEval):
        super().__init__()
        self.evaluator = evaluator
        self.seconds = {"rollouts": 0.0, "updates": 0.0}
        self._mark = None
        self._eval_at_mark = 0.0

    def _close(self, stage: str) -> None:
        """Add the time since the mark to `stage`, less the evaluations run in it (the
        periodic ones in rollouts, the final one at training end), and mark again."""
        now = time.perf_counter()
        if self._mark is not None:
            evaluating = self.evaluator.seconds - self._eval_at_mark
            self.seconds[stage] += now - self._mark - evaluating
        self._mark, self._eval_at_mark = now, self.evaluator.seconds

    def _on_rollout_start(self) -> None:
        self._close("updates")

    def _on_rollout_end(self) -> None:
        self._close("rollouts")

    def _on_training_end(self) -> None:
        self._close("updates")

    def _on_step(self) -> bool:
        return True


class OfflineImprovementGate(BaseCallback):
    """Before the first rollout: evaluate the offline-improved policy on the periodic-evaluation
    episodes and keep it only if it scores at least BC's step-0 evaluation, else revert to BC.

    An offline improvement rests on a critic fitted to the data alone and can fail (seen on
    medium-v0: +16 points on one seed, -28 on another). The evaluation is one more candidate
    for the best-model keeper; the test episodes stay unseen. train_hybrid attaches it; a
    HybridPPO.learn called directly runs ungated.
    """

    def __init__(self, evaluator: PeriodicEval):
        super().__init__()
        self.evaluator, self.decision = evaluator, None

    def _on_rollout_start(self) -> None:
        if self.decision is not None or not getattr(self.model, "offline_improved", False):
            return
        bc = self.evaluator.history[0] if self.evaluator.history else {}
        if bc.get("timesteps") != 0 or bc.get("note"):
            raise RuntimeError("the offline-improvement gate needs BC's step-0 evaluation "
                               "(PeriodicEval with eval_at_start=True, listed before the gate)")
        improved = self.evaluator.run_eval("offline improvement")
        keep = improved["mean_reward"] >= bc["mean_reward"]
        self.model.settle_offline_improvement(keep)
        self.decision = "kept" if keep else "reverted to BC"
        improved["note"] = f"offline improvement, {self.decision}"  # as the run log keeps it
        print(f"  offline improvement {self.decision}: return {improved['mean_reward']:.1f} vs "
              f"BC's {bc['mean_reward']:.1f} on the same episodes", flush=True)

    def _on_step(self) -> bool:
        return True


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
    eval_env = EvalEnv(cfg.env_id, cfg.env_kwargs, cfg.eval_episodes,
                       settings.seed + SELECTION_SEED_OFFSET, float32_obs=settings.device == "mps")
    rollback = PolicyRollback(cfg.rollback_drop) if cfg.rollback_drop > 0 else None
    keeper = BestModelKeeper(best_model_file(settings.save_file), on_eval, rollback)
    evaluator = PeriodicEval(eval_env, cfg.eval_freq, data.ref_scores,
                             csv_path=settings.tb_dir / "eval.csv", on_eval=keeper)
    stage_times = StageTimes(evaluator)
    callbacks = [evaluator, stage_times] + ([rollback] if rollback is not None else [])
    if cfg.offline_policy_updates > 0 and cfg.offline_improvement_gate:
        callbacks.insert(1, OfflineImprovementGate(evaluator))  # its evaluation is no rollout time
    interrupted = False
    try:
        model.learn(total_timesteps=settings.total_timesteps,
                    callback=CallbackList(callbacks), progress_bar=progress)
    except KeyboardInterrupt:
        interrupted = True
    with model.evaluated_actor():  # the averaged actor, if the run keeps one
        save_file, save_error = save_with_fallback(model, settings.save_file)
    evaluator.score_final()  # the final model is a candidate too (interrupted: not yet scored)
    eval_env.close()
    restarts = restart_counts(model.env) if cfg.deterministic_restarts > 0 else None
    model.env.close()
    seconds = {**stage_times.seconds, "periodic_evaluation": evaluator.seconds,
               "critic_warmup": model.warmup_stats.get("warmup/seconds", 0.0),
               "offline_improvement": model.offline_improvement_seconds}
    result = HybridResult(save_file=save_file, best_file=keeper.path,
                          timesteps=int(model.num_timesteps), interrupted=interrupted,
                          final_eval=evaluator.history[-1], best_eval=keeper.best,
                          evaluations=evaluator.history, warmup=dict(model.warmup_stats),
                          save_error=save_error, bc_file=Path(bc_checkpoint),
                          restarts=restarts, anchor_gate=model.anchor_gate,
                          rollbacks=None if rollback is None else rollback.rollbacks)
    if cfg.confirm_episodes > 0 and result.best_source != "bc" and not interrupted:
        clock = time.perf_counter()
        result.confirmation = confirm_best(keeper.path, result.bc_file, cfg, settings.seed,
                                           settings.device, data.ref_scores)
        seconds["confirmation"] = time.perf_counter() - clock
    result.seconds = {k: round(v, 2) for k, v in seconds.items()}
    return result


def confirm_best(best_file: Path, bc_file: Path, cfg, seed: int, device: str, ref_scores) -> dict:
    """Score the best model and BC on `cfg.confirm_episodes` selection episodes not used so far.

    The best model won the largest of ~20 noisy 10-episode evaluations, so its score there is
    biased upwards; on new episodes (the same for both models) the comparison is fair. It is
    kept if it scores at least BC's mean return there. The seeds follow the periodic ones and
    stay clear of the test seeds, which remain unseen by every choice.
    """
    from stable_baselines3 import PPO

    start = seed + SELECTION_SEED_OFFSET + cfg.eval_episodes
    env = EvalEnv(cfg.env_id, cfg.env_kwargs, cfg.confirm_episodes, start,
                  float32_obs=device == "mps")
    try:
        best = env.evaluate(PPO.load(best_file, device=device), ref_scores)
        bc = env.evaluate(PPO.load(bc_file, device=device), ref_scores)
    finally:
        env.close()
    return {"best": best, "bc": bc, "kept": best["mean_reward"] >= bc["mean_reward"]}


def test_evaluation(model_file: Path, cfg, seed: int, device: str, ref_scores) -> dict:
    """`cfg.test_episodes` deterministic episodes on seeds no selection has seen."""
    from stable_baselines3 import PPO

    model = PPO.load(model_file, device=device)
    return evaluate(model, cfg.env_id, cfg.env_kwargs, cfg.test_episodes,
                    seed + TEST_SEED_OFFSET, ref_scores, float32_obs=device == "mps")
