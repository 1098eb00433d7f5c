"""BC on offline data -> best BC checkpoint -> hybrid PPO fine-tuning -> run log.

The five steps of QUICKSTART's WORKFLOW, each one call into its own module:
  1. checkpoints.decide_bc         reuse or retrain (stored BC settings compared; asks only on a terminal)
  2. bc.train_bc                   checkpoints + <name>_metrics.csv
  3. checkpoints.find_best_checkpoint   lowest val_loss that loads
  4. hybrid_training.train_hybrid  HybridPPO from that checkpoint, V-trace on offline data
  5. run_log.append_run            logs/pipeline_runs.json
Every mistake a user can cause ends as one line on stderr and a non-zero exit; every output
location is checked (preflight.py) before any data is generated or anything trained.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from errors import (EXIT_ERROR, EXIT_INTERRUPTED, PipelineError, error_line,  # noqa: E402
                    raised_by_ctrl_c)

DEFAULT_LOG = Path("logs/pipeline_runs.json")


# ------------------------------------------------------------------------------ arguments

def _typed(kind, check, requirement):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid {kind.__name__} value: '{text}'") from None
        if not check(value):
            raise argparse.ArgumentTypeError(f"{text} is not {requirement}")
        return value
    parse.__name__ = kind.__name__
    return parse


positive_int = _typed(int, lambda v: v > 0, "a positive integer")
non_negative_int = _typed(int, lambda v: v >= 0, "a non-negative integer")
positive_float = _typed(float, lambda v: v > 0 and v < float("inf"), "a positive number")
non_negative_float = _typed(float, lambda v: 0 <= v < float("inf"), "a non-negative number")
unit_float = _typed(float, lambda v: 0.0 <= v <= 1.0, "between 0 and 1")
seed_int = _typed(int, lambda v: 0 <= v < 2**32 - 20_000, "a seed between 0 and 4294947295")
finite_float = _typed(float, lambda v: abs(v) < float("inf"), "a finite number")
# --dataset/--env/--names become path parts (checkpoints, TensorBoard, Minari ids, D4RL file
# names): a slash or '..' would read and write outside those folders. '+' joins several
# names into one checkpoint name, so it is refused inside a name.
_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def plain_name(text: str) -> str:
    if not _PLAIN_NAME.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a plain name (letters, digits and -_. only, starting with a "
            "letter or digit)")
    return text


class _OneLineParser(argparse.ArgumentParser):
    """argparse's errors as one line (its default prints the whole usage block first)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _OneLineParser(
        prog="train_hybrid_pipeline.py",
        description="Train BC on an offline MuJoCo dataset, pick the best BC checkpoint by "
                    "validation loss, fine-tune it online with HybridPPO (PPO + offline data "
                    "with V-trace), and append the run to logs/pipeline_runs.json.",
        epilog="See README.md and docs/QUICKSTART.txt for the workflow and outputs.")
    req = p.add_argument_group("required")
    req.add_argument("--dataset", required=True, type=plain_name, help="Dataset type (e.g., mujoco)")
    req.add_argument("--env", required=True, type=plain_name,
                     help="Environment name (e.g., walker2d, humanoid, ant)")
    req.add_argument("--names", required=True, nargs="+", type=plain_name,
                     help="Dataset variant names (e.g., expert-v0 expert-v1); several are "
                          "concatenated with episode boundaries kept")
    req.add_argument("--hparam_bc", required=True, help="Hparam key for BC training (e.g., Walker2d-v4-bc-large)")
    req.add_argument("--hparam_hybrid", required=True, help="Hparam key for hybrid PPO (e.g., Walker2d-v4-hybrid)")

    opt = p.add_argument_group("optional")
    opt.add_argument("--seed", type=seed_int, default=42, help="Random seed (default: %(default)s)")
    reuse = opt.add_mutually_exclusive_group()
    reuse.add_argument("--skip_bc", action="store_true",
                       help="Skip BC training if checkpoint exists (trains when none exists)")
    reuse.add_argument("--force_bc_retrain", action="store_true",
                       help="Force BC retraining (earlier checkpoints move to superseded/)")
    opt.add_argument("--num_bc_epochs", type=positive_int, default=50, help="BC epochs (default: %(default)s)")
    opt.add_argument("--bc_batch_size", type=positive_int, default=128, help="BC batch size (default: %(default)s)")
    opt.add_argument("--bc_coeff", type=non_negative_float, default=0.005,
                     help="BC loss coefficient: weight of the OOD-weighted -log pi(a|s) on "
                          "offline samples in the hybrid loss (BC training itself is unscaled) (default: %(default)s)")
    opt.add_argument("--warm_start_steps", type=non_negative_int, default=100,
                     help="Value finetune steps: gradient steps fitting only the critic to "
                          "dataset returns before the first rollout (not env steps) (default: %(default)s)")
    opt.add_argument("--log_interval", type=positive_int, default=10, help="BC logging interval (epochs) (default: %(default)s)")
    opt.add_argument("--save_every_epochs", type=positive_int, default=5,
                     help="Save BC checkpoint every N epochs (and at the last epoch) (default: %(default)s)")
    opt.add_argument("--mix_ratio", type=unit_float, default=0.5,
                     help="Offline/online split, 0..1: offline share of each update's samples "
                          "(0 = plain PPO; 1 = offline only, rollouts still collected for "
                          "evaluation and logging) (default: %(default)s)")
    opt.add_argument("--rho_bar", type=positive_float, default=1.0, help="V-trace rho_bar cap (default: %(default)s)")
    opt.add_argument("--c_bar", type=positive_float, default=0.95, help="V-trace c_bar cap (default: %(default)s)")
    opt.add_argument("--log_std_subtract", type=finite_float, default=0.0,
                     help="Subtract from log_std: applied once to the BC policy when HybridPPO "
                          "starts (less initial exploration noise than BC learned) (default: %(default)s)")
    opt.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto",
                     help="Device: auto picks cuda, else mps, else cpu (default: %(default)s)")

    extra = p.add_argument_group("more")
    extra.add_argument("--save_file", type=Path, default=None,
                       help="Hybrid PPO zip (default: hybrid_ppo_<env>_<timestamp>.zip)")
    extra.add_argument("--total_timesteps", type=positive_int, default=None,
                       help="Online env steps of hybrid PPO (default: the hparam entry's total_timesteps)")
    extra.add_argument("--hparam_file", type=Path, default=None,
                       help="hparam YAML file (default: hparam.yml at the repository root)")
    extra.add_argument("--bc_checkpoint_dir", type=Path, default=Path("bc_checkpoints"),
                       help="Root of BC checkpoints: <dir>/<dataset>/<env>/ (default: %(default)s)")
    extra.add_argument("--log_file", type=Path, default=DEFAULT_LOG, help="Append-only run log (default: %(default)s)")
    extra.add_argument("--n_envs", type=positive_int, default=None,
                       help="Envs stepped together in the rollouts (default: the hparam entry's "
                            "n_envs); n_steps stays per env, as in SB3")
    extra.add_argument("--vec_env", choices=["dummy", "subproc", "split"], default=None,
                       help="dummy: envs step in this process; subproc: one process per env; "
                            "split: half of them in one worker process, the same samples as "
                            "dummy (default: the hparam entry's vec_env)")
    extra.add_argument("--torch_threads", type=positive_int, default=1,
                       help="torch intra-op threads on CPU (default: %(default)s; the 256x256 "
                            "MLPs gain nothing from more, and lose a lot when cores are shared)")
    extra.add_argument("--wandb", action="store_true",
                       help="Also log to Weights & Biases (offline unless WANDB_MODE says otherwise)")
    extra.add_argument("--wandb_project", default="hybrid-ppo-pipeline", help="W&B project (default: %(default)s)")
    extra.add_argument("--no_progress", action="store_true", help="Hide progress bars")
    return p


# ------------------------------------------------------------------------------ helpers

def resolve_device(choice: str) -> str:
    import torch

    cuda = torch.cuda.is_available()
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if choice == "auto":
        device = "cuda" if cuda else "mps" if mps else "cpu"
        print(f"Device: {device} (auto)")
        return device
    if (choice == "cuda" and not cuda) or (choice == "mps" and not mps):
        raise PipelineError(f"--device {choice} requested but {choice.upper()} is not available "
                            "on this machine; use --device cpu or auto")
    print(f"Device: {choice}")
    return choice


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("torch", "stable-baselines3", "gymnasium", "mujoco", "minari", "numpy", "h5py"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def _start_wandb(args, config: dict):
    import wandb

    os.environ.setdefault("WANDB_MODE", "offline")
    try:
        return wandb.init(project=args.wandb_project, config=config, sync_tensorboard=True,
                          name=Path(config["save_file"]).stem)
    except Exception as exc:  # wandb raises its own types for login/network problems
        raise PipelineError(f"W&B could not start ({exc}); set WANDB_MODE=offline or drop --wandb") from exc


def tensorboard_dir(args, save_file: Path) -> Path:
    return Path("tb_test") / "hybrid" / args.dataset / args.env / save_file.stem


# ------------------------------------------------------------------------------ pipeline

def run_pipeline(args, entry: dict, on_eval=None) -> dict:
    """The WORKFLOW proper; fills `entry` as it goes so a failure still logs what happened.
    `on_eval(result)` also sees each periodic evaluation (sweep.py reports them to Ray Tune)."""
    import preflight

    save_file = Path(entry["save_file"])
    preflight.check_outputs(save_file, args.bc_checkpoint_dir / args.dataset / args.env,
                            tensorboard_dir(args, save_file))
    from hparams import DEFAULT_HPARAM_FILE, load_hparams

    bc_cfg, hybrid_cfg = load_hparams(args.hparam_bc, args.hparam_hybrid,
                                      args.hparam_file or DEFAULT_HPARAM_FILE,
                                      n_envs=args.n_envs, vec_env=args.vec_env)
    entry["config"] = {"bc": bc_cfg.model_dump(), "hybrid": hybrid_cfg.model_dump()}
    device = resolve_device(args.device)
    entry["device"] = device
    if device == "cpu":
        import torch

        torch.set_num_threads(args.torch_threads)

    from stable_baselines3.common.utils import set_random_seed

    import bc
    import checkpoints
    from evaluation import TEST_SEED_OFFSET, evaluate
    from hparams import env_entries
    from hybrid_training import HybridSettings, test_evaluation, train_hybrid
    from atomic_file import replace_atomically
    from offline_data import load_offline_data

    # gymnasium's import puts its own "once" filter for its DeprecationWarnings in front of the
    # one set under __main__, so "Ant-v4 is out of date" reached stderr beside the one error
    # line; set again now that gymnasium is imported.
    warnings.filterwarnings("ignore", message=".*is out of date.*")
    set_random_seed(args.seed)
    entry["stage"] = "data"
    seconds = entry["seconds"] = {}  # wall time per stage
    clock = time.perf_counter()
    candidates = env_entries(args.hparam_file or DEFAULT_HPARAM_FILE)
    data = load_offline_data(args.dataset, args.env, args.names, hybrid_cfg.env_id,
                             hybrid_cfg.env_kwargs, candidates, progress=not args.no_progress)
    seconds["dataset"] = round(time.perf_counter() - clock, 2)
    entry["dataset"] = {"sources": data.provenance, "transitions": len(data),
                        "episodes": len(data.episode_starts),
                        "mean_episode_return": float(data.episode_returns.mean()),
                        "ref_scores": data.ref_scores, "ref_scores_source": data.ref_scores_source}
    print(f"Offline data: {len(data)} transitions in {len(data.episode_starts)} episodes "
          f"({', '.join(p['source'] + ':' + p['name'] for p in data.provenance)}), "
          f"mean episode return {data.episode_returns.mean():.1f}; normalised scores use "
          f"{data.ref_scores_source}")
    # One env for every step from here on (BC, its evaluation, training, evaluation, test):
    # the entry's, or the env the dataset records when only that one takes its shapes.
    entry["env"] = {"hparam_env": {"env_id": hybrid_cfg.env_id, "env_kwargs": hybrid_cfg.env_kwargs},
                    "used_env": {"env_id": data.env_id, "env_kwargs": data.env_kwargs},
                    "source": "hparam entry" if data.env_note is None else "dataset's env spec",
                    "note": data.env_note}
    if data.env_note is not None:
        print(f"Note: {data.env_note}")
        used = {"env_id": data.env_id, "env_kwargs": data.env_kwargs}
        bc_cfg, hybrid_cfg = bc_cfg.model_copy(update=used), hybrid_cfg.model_copy(update=used)
        entry["config"] = {"bc": bc_cfg.model_dump(), "hybrid": hybrid_cfg.model_dump()}

    # 1-2. BC, and 3. selection, under a lock per (dataset, env, names): a concurrent run
    # must never retrain, archive or half-write the checkpoint this one is about to load.
    entry["stage"] = "bc"
    ckpt_dir = bc.checkpoint_dir(args.bc_checkpoint_dir, args.dataset, args.env)
    name = bc.run_name(args.names)
    bc_settings = bc.BCSettings(args.num_bc_epochs, args.bc_batch_size, args.log_interval,
                                args.save_every_epochs, args.seed, device)
    wanted = bc.settings_record(bc_settings, args.hparam_bc, bc_cfg, data.provenance)
    entry["bc_settings"] = wanted
    tb_dir = tensorboard_dir(args, save_file)
    with bc.checkpoint_lock(args.bc_checkpoint_dir, args.dataset, args.env, name):
        decision = checkpoints.decide_bc(ckpt_dir, name, wanted, args.skip_bc,
                                         args.force_bc_retrain)
        entry["bc_decision"] = decision.as_log()
        if decision.train:
            moved = bc.archive_previous(ckpt_dir, name) if ckpt_dir.is_dir() else None
            if moved:
                print(f"Earlier BC checkpoints of {name} moved to {moved}")
            clock = time.perf_counter()
            bc.train_bc(data, bc_cfg, bc_settings, ckpt_dir, name, progress=not args.no_progress)
            seconds["bc_training"] = round(time.perf_counter() - clock, 2)
            bc.write_settings(ckpt_dir, name, wanted)
        entry["bc_trained"] = decision.train
        best = checkpoints.find_best_checkpoint(ckpt_dir, name)
        # This run loads its own copy (kept with the run's TensorBoard files): once the lock
        # is released another run may move the original to superseded/.
        tb_dir.mkdir(parents=True, exist_ok=True)
        bc_zip = replace_atomically(tb_dir / "bc_start.zip",
                                    lambda tmp: shutil.copyfile(best.path, tmp))
    entry["bc"] = {"best_checkpoint": str(best.path), "val_loss": best.val_loss,
                   "train_loss": best.train_loss, "best_epoch": best.epoch,
                   "epochs": best.epochs_trained, "loaded_copy": str(bc_zip)}
    print(f"Best BC checkpoint: {best.path} (epoch {best.epoch}, val_loss {best.val_loss:.4f})")
    if bc_cfg.eval_episodes > 0:
        from stable_baselines3 import PPO

        # On the test seeds: with as many episodes as the final test, this is BC's test score.
        clock = time.perf_counter()
        bc_eval = evaluate(PPO.load(bc_zip, device=device), bc_cfg.env_id, bc_cfg.env_kwargs,
                           bc_cfg.eval_episodes, args.seed + TEST_SEED_OFFSET, data.ref_scores,
                           float32_obs=device == "mps")
        entry["bc"]["eval"] = bc_eval
        seconds["bc_evaluation"] = round(time.perf_counter() - clock, 2)
        print(f"BC policy: {_describe(bc_eval)}")

    # 4. hybrid PPO
    entry["stage"] = "hybrid"
    if args.mix_ratio == 0 and args.bc_coeff > 0:
        print(f"Note: --mix_ratio 0 puts no offline samples in the updates, so --bc_coeff "
              f"{args.bc_coeff} has no effect")
    settings = HybridSettings(args.mix_ratio, args.rho_bar, args.c_bar, args.bc_coeff,
                              args.warm_start_steps, args.log_std_subtract, args.seed, device,
                              args.total_timesteps or hybrid_cfg.total_timesteps, save_file, tb_dir)
    entry["tensorboard_dir"] = str(tb_dir)
    run = None
    if args.wandb:
        run = _start_wandb(args, {**vars(args), **entry})
        entry["wandb_run"] = {"id": run.id, "dir": run.dir, "mode": os.environ.get("WANDB_MODE")}
    print(f"Hybrid PPO: {settings.total_timesteps} online steps, mix_ratio {args.mix_ratio}, "
          f"TensorBoard: {tb_dir}")

    def report(ev):
        note = f" ({ev['note']})" if ev.get("note") else ""
        back = (f"; more than rollback_drop below the best: training goes on from step "
                f"{ev['rollback_to']}'s policy" if "rollback_to" in ev else "")
        print(f"  eval @ {ev['timesteps']} steps{note}: {_describe(ev)}{back}", flush=True)
        if on_eval is not None:
            on_eval(ev)

    try:
        result = train_hybrid(data, bc_zip, hybrid_cfg, settings,
                              progress=not args.no_progress, on_eval=report)
    finally:
        if run is not None:
            run.finish()
    entry.update(hybrid_save_file=str(result.save_file), hybrid_best_file=str(result.best_file),
                 hybrid_timesteps=result.timesteps, final_eval=result.final_eval,
                 best_eval=result.best_eval, warmup=result.warmup, evaluations=result.evaluations)
    seconds.update(result.seconds)
    if result.restarts is not None:
        entry["restarts"] = result.restarts
        print(f"Deterministic restarts: {result.restarts['episodes']} episodes started where the "
              f"deterministic policy had walked, {result.restarts['env_steps']} env steps of "
              f"prefixes on top of the {result.timesteps} online steps")
    if result.anchor_gate is not None:
        entry["anchor_gate"] = result.anchor_gate
    if result.rollbacks is not None:
        entry["rollbacks"] = result.rollbacks
        print(f"Rollbacks (rollback_drop {hybrid_cfg.rollback_drop}): {len(result.rollbacks)}"
              + "".join(f"; at {r['at']} steps to {r['to']}"
                        + ("" if r["applied"] else " (the run ended first)")
                        for r in result.rollbacks))
    if result.save_error:
        entry["hybrid_save_error"] = result.save_error
        raise PipelineError(result.save_error)
    print(f"Saved hybrid PPO model to {result.save_file} after {result.timesteps} steps; "
          f"best by periodic evaluation (step {result.best_eval['timesteps']}): "
          f"{result.best_file}")
    if result.interrupted:
        raise KeyboardInterrupt
    if result.confirmation is not None:
        c = result.confirmation
        print(f"Confirmation on {c['best']['episodes']} new selection episodes: best "
              f"{_describe(c['best'])}; BC {_describe(c['bc'])} -> "
              + ("the best model is kept" if c["kept"] else "BC is handed over"))

    # 5. one test evaluation, on seeds the choice never saw, of the chosen, final and BC models
    clock = time.perf_counter()
    test = lambda path: test_evaluation(path, hybrid_cfg, args.seed, device, data.ref_scores)  # noqa: E731
    entry["final_test_eval"] = final_test = test(result.save_file)
    bc_eval = entry["bc"].get("eval")
    entry["bc"]["test_eval"] = (bc_eval if bc_eval and bc_eval["episodes"] == hybrid_cfg.test_episodes
                                else test(bc_zip))
    # Source "bc": the kept model holds BC's actor unchanged (the critic alone was warmed up),
    # so its deterministic test episodes are BC's, already measured.
    chosen_test = {"final": final_test, "bc": entry["bc"]["test_eval"]}.get(result.best_source) \
        or test(result.best_file)
    entry["result"] = {"model": str(result.handed_over), "source": result.best_source,
                       "test_eval": chosen_test}
    if result.confirmation is not None:
        entry["result"]["confirmation"] = result.confirmation
    seconds["test_evaluation"] = round(time.perf_counter() - clock, 2)
    return entry


def _describe(ev: dict) -> str:
    norm = ev["normalized_score"]
    return (f"return {ev['mean_reward']:.1f} +- {ev['std_reward']:.1f}"
            + (f" (normalised {norm:.1f})" if norm is not None else "")
            + f" over {ev['episodes']} episodes")


def print_result(entry: dict) -> None:
    """The last lines of a run: which model to use, and the test scores behind the choice."""
    result = entry["result"]
    print(f"Test evaluation ({result['test_eval']['episodes']} episodes, seeds never used for "
          f"the choice): BC {_describe(entry['bc']['test_eval'])}; final model "
          f"{_describe(entry['final_test_eval'])}")
    print(f"Use this model: {result['model']} ({result['source']}): {_describe(result['test_eval'])}")


def _interrupted_message(entry: dict) -> str:
    """Say what Ctrl-C kept, by how far the run got (nothing is trained while data load)."""
    logged = "run logged as 'interrupted'"
    stage = entry.get("stage")
    if "hybrid_save_file" in entry:
        return f"Interrupted: what was trained is saved ({entry['hybrid_save_file']}); {logged}"
    if stage == "hybrid":
        return (f"Interrupted before hybrid PPO trained: no hybrid model saved; BC checkpoints "
                f"are kept; {logged}")
    if stage == "bc":
        return (f"Interrupted during BC: checkpoints saved so far are kept, no hybrid model was "
                f"trained; {logged}")
    return (f"Interrupted before any training: nothing was trained or saved (a dataset being "
            f"generated is discarded); {logged}")


def main(argv: list[str] | None = None, on_eval=None, entry_fields: dict | None = None,
         append=None) -> int:
    """The command. A caller running it as a library (sweep.py) may pass `on_eval` (see
    run_pipeline), `entry_fields` merged into the run-log entry (e.g. `sweep_id`), and
    `append(entry, log_file)` in place of run_log.append_run (e.g. to write on another machine)."""
    args = build_parser().parse_args(argv)
    started = time.time()
    stamp = datetime.now(timezone.utc)
    save_file = args.save_file or Path(f"hybrid_ppo_{args.env}_{stamp.strftime('%Y%m%d_%H%M%S')}.zip")
    entry = {"time": stamp.isoformat(timespec="seconds"), "argv": sys.argv[:1] + (argv or sys.argv[1:]),
             "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
             "save_file": str(save_file), "status": "running", **(entry_fields or {})}
    try:
        from preflight import check_log_file

        check_log_file(args.log_file)  # nowhere to log this failure: one line, nothing else
    except PipelineError as exc:
        print(error_line(exc), file=sys.stderr)
        return EXIT_ERROR
    code, message = 0, None
    try:
        run_pipeline(args, entry, on_eval)
        entry["status"] = "ok"
    except (KeyboardInterrupt, Exception) as exc:
        if raised_by_ctrl_c(exc):  # also a PipelineError wrapping an interrupted import
            message, code = _interrupted_message(entry), EXIT_INTERRUPTED
            entry["status"] = "interrupted"
        elif isinstance(exc, PipelineError):
            message = error_line(exc)
            entry.update(status="failed", error=message)
            code = EXIT_ERROR
        else:  # a bug, not bad input: log it, then show the traceback
            entry.update(status="failed", error=f"{type(exc).__name__}: {exc}")
            _log(args, entry, started, append)
            raise
    log_problem = _log(args, entry, started, append)
    if log_problem:  # the run's own outcome and the log's failure share the one line
        message = f"{message}; {log_problem}" if message else f"ERROR: {log_problem}"
        code = code or EXIT_ERROR
    if message:
        print(message, file=sys.stderr)
    if entry.get("result") and not message:
        print_result(entry)
    return code


def _log(args, entry: dict, started: float, append=None) -> str | None:
    """Append the entry to the run log; if that fails, keep it elsewhere and say where."""
    entry.update(wall_time_s=round(time.time() - started, 1), git_commit=_git_commit(),
                 versions=_versions(), host={"platform": platform.platform(),
                                             "cpus": os.cpu_count()})
    from filelock import Timeout

    from run_log import append_run

    try:
        path = (append or append_run)(entry, args.log_file)
    except (OSError, Timeout) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        return f"the run log {args.log_file} could not be written ({reason}); {_log_fallback(entry)}"
    print(f"Run logged to {path} (status: {entry['status']})")
    return None


def _log_fallback(entry: dict) -> str:
    """The entry as its own one-run log in the temp dir, else printed on stdout."""
    import tempfile

    from run_log import append_run

    name = f"pipeline_run_{entry['time'].replace(':', '')}_{os.getpid()}.json"
    for folder in (Path(tempfile.gettempdir()), Path.cwd()):
        try:
            return f"this run's entry was written to {append_run(entry, folder / name)}"
        except OSError:
            continue
    print(json.dumps(entry, default=str))
    return "this run's entry was printed on stdout"


if __name__ == "__main__":
    warnings.filterwarnings("ignore", message=".*is out of date.*")
    sys.exit(main())
