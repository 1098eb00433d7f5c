"""Seeds x settings of the pipeline as Ray Tune trials: one command, local or on a cluster.

  python training_files/sweep.py --dataset mujoco --env walker2d --names medium-v0 \\
    --hparam_bc Walker2d-v4-bc-large --hparam_hybrid Walker2d-v4-hybrid \\
    --seeds 0 1 2 --grid mix_ratio=0,0.5 bc_coeff=0.005,0.05 --total_timesteps 50000

Each (seed, grid point) is one Tune trial that runs the pipeline's own `main` (its parser, its
`run_pipeline`, its run logging) and reports every periodic evaluation to Tune, so a scheduler
(`--scheduler asha`) can stop the trials that fall behind. Every flag this script does not own
is the pipeline's and applies to every trial; `--grid flag=v1,v2` takes any pipeline flag with a
value (`names=a,b+c` gives the names `a` and `b c`).

Where things go, relative to the directory the sweep is launched from (trials chdir there:
Tune would otherwise run each one inside its own trial folder):
  sweeps/<sweep_id>/          Tune's experiment folder (unless --storage_path), sweep.json
  sweeps/<sweep_id>/bc/seed<k>/       BC checkpoints of seed k, shared by its grid points
                                      (the pipeline's BC lock serialises them)
  sweeps/<sweep_id>/models/           each trial's hybrid model (+ _best.zip)
  tb_test/..., logs/pipeline_runs.json  as for the pipeline; every entry has `sweep_id`
  sweeps/<sweep_id>/summary.md, summary.json, curves.png   per grid point, over seeds
The run log is written by one small actor on the launching machine, so on a cluster every
trial's entry lands in the launching machine's log. A trial that ended without writing its own
entry (stopped by ASHA, interrupted, its worker killed) gets one from this script.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

TRAINING_FILES = Path(__file__).resolve().parent
sys.path.insert(0, str(TRAINING_FILES))

import train_hybrid_pipeline as pipeline  # noqa: E402
from atomic_file import write_bytes_atomically  # noqa: E402
from errors import PipelineError, exit_code  # noqa: E402
from ray.tune import Callback  # noqa: E402

SWEEPS_DIR = Path("sweeps")
NAMESPACE = "hybrid_ppo_sweep"
# Set per trial by the sweep; a fixed value would make every trial overwrite the same files.
PER_TRIAL_FLAGS = ("seed", "bc_checkpoint_dir", "save_file")
# Data and W&B locations of the launching shell, which trials on a running Ray need too.
FORWARDED_ENV = ("MINARI_DATASETS_PATH", "D4RL_DATASET_DIR", "WANDB_MODE", "WANDB_DIR")
CI_REPS = 5_000  # bootstrap resamples per interval (rliable)


# ------------------------------------------------------------------------------ command line

def build_parser() -> argparse.ArgumentParser:
    p = pipeline._OneLineParser(
        prog="sweep.py", allow_abbrev=False,  # `--seed 3` must not silently mean `--seeds 3`
        description="Run the pipeline for every seed x grid point as Ray Tune trials; "
                    "summarise over seeds with rliable.",
        epilog="Every other flag is the pipeline's (train_hybrid_pipeline.py --help) and applies "
               "to every trial. See README.md, 'Sweeps'.")
    p.add_argument("--seeds", nargs="+", type=pipeline.seed_int, default=[42],
                   help="One trial per seed and grid point (default: %(default)s)")
    p.add_argument("--grid", nargs="+", default=[], metavar="FLAG=V1,V2",
                   help="Pipeline flags to sweep, e.g. mix_ratio=0,0.5 bc_coeff=0.005,0.05; "
                        "the grid is their cross product")
    p.add_argument("--sweep_id", type=pipeline.plain_name, default=None,
                   help="Name of the sweep (default: UTC time, e.g. 20260101-120000)")
    p.add_argument("--resume", type=pipeline.plain_name, default=None, metavar="SWEEP_ID",
                   help="Continue the interrupted sweep in sweeps/SWEEP_ID/ with its own command "
                        "(only --address and --num_cpus may be given with it)")
    p.add_argument("--scheduler", choices=["fifo", "asha"], default="fifo",
                   help="asha: stop trials whose evaluations fall behind (default: %(default)s)")
    p.add_argument("--address", default=None,
                   help="Ray cluster to use (default: RAY_ADDRESS, else a local Ray)")
    p.add_argument("--num_cpus", type=pipeline.positive_int, default=os.cpu_count(),
                   help="CPUs of the local Ray (default: this machine's, %(default)s)")
    p.add_argument("--storage_path", default=None,
                   help="Where Tune keeps the experiment (a shared folder or URI on a cluster; "
                        "default: sweeps/)")
    p.add_argument("--max_concurrent", type=pipeline.positive_int, default=None,
                   help="At most this many trials at once (default: as many as the CPUs allow)")
    return p


def parse_grid(items: list[str], pipeline_parser) -> dict[str, list[str]]:
    """['mix_ratio=0,0.5'] -> {'mix_ratio': ['0', '0.5']}, keys checked against the pipeline."""
    options = {a.dest: a for a in pipeline_parser._actions if a.option_strings}
    grid = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.lstrip("-")
        if not sep or not values:
            raise PipelineError(f"--grid {item}: expected FLAG=V1,V2,... (e.g. mix_ratio=0,0.5)")
        if key == "log_file":
            raise PipelineError("--grid log_file: a sweep has one run log (give --log_file)")
        if key in PER_TRIAL_FLAGS:
            raise PipelineError(f"--grid {key}: set per trial by the sweep"
                                + (" (use --seeds)" if key == "seed" else ""))
        action = options.get(key)
        if action is None or action.nargs == 0:
            raise PipelineError(f"--grid {key}: not a pipeline flag that takes a value "
                                "(see train_hybrid_pipeline.py --help)")
        if key in grid:
            raise PipelineError(f"--grid {key} is given twice")
        grid[key] = values.split(",")
    return grid


def point_argv(point: dict[str, str], pipeline_parser) -> list[str]:
    nargs = {a.dest: a.nargs for a in pipeline_parser._actions}
    out = []
    for key, value in point.items():
        out += [f"--{key}", *(value.split("+") if nargs.get(key) == "+" else [value])]
    return out


def point_label(point: dict[str, str]) -> str:
    text = "_".join(f"{k}{v}" for k, v in point.items()) or "base"
    return re.sub(r"[^A-Za-z0-9._+-]", "_", text)


def trial_argv(config: dict) -> list[str]:
    """The pipeline command of one trial (what a user would type for this seed and point)."""
    parser = pipeline.build_parser()
    point = {k: config[k] for k in config["grid_keys"]}
    seed = config["seed"]
    stem = f"{config['sweep_id']}_{point_label(point)}_seed{seed}"
    sweep_dir = Path(config["sweep_dir"])
    return [*config["base_argv"], *point_argv(point, parser), "--seed", str(seed),
            "--bc_checkpoint_dir", str(sweep_dir / "bc" / f"seed{seed}"),
            "--save_file", str(sweep_dir / "models" / f"{stem}.zip"), "--no_progress"]


def trial_entry(config: dict):
    """A trial's parsed command line and its hybrid entry, with the flags that override the
    entry (--n_envs, --vec_env) applied as the pipeline applies them."""
    from hparams import DEFAULT_HPARAM_FILE, load_hparams

    args = pipeline.build_parser().parse_args(trial_argv(config))
    _, hybrid_cfg = load_hparams(args.hparam_bc, args.hparam_hybrid,
                                 args.hparam_file or DEFAULT_HPARAM_FILE,
                                 n_envs=args.n_envs, vec_env=args.vec_env)
    return args, hybrid_cfg


def trial_cpus(config: dict) -> int:
    """CPUs one trial keeps busy: torch's threads, one process per env with subproc envs, or
    two with split envs (this process and its worker)."""
    args, hybrid_cfg = trial_entry(config)
    envs = {"subproc": hybrid_cfg.n_envs, "split": 2}.get(hybrid_cfg.vec_env, 1)
    return max(args.torch_threads, envs)


# ------------------------------------------------------------------------------ trials

def eval_metrics(ev: dict) -> dict:
    """What Tune sees of one periodic evaluation; `score` is the normalised score when the
    dataset has reference scores, else the return."""
    norm = ev["normalized_score"]
    out = {"timesteps": ev["timesteps"], "mean_reward": ev["mean_reward"],
           "score": norm if norm is not None else ev["mean_reward"]}
    if norm is not None:
        out["normalized_score"] = norm
    return out


def run_trial(config: dict) -> None:
    """One Tune trial: the pipeline's own main() for this seed and grid point."""
    import ray
    from ray import tune

    os.chdir(config["launch_dir"])  # outputs where a pipeline launched there would write them
    os.environ.update(config["forwarded_env"])
    context = tune.get_context()
    writer = ray.get_actor(config["log_writer"], namespace=NAMESPACE)
    argv = trial_argv(config)
    logged: dict = {}

    def append(entry: dict, log_file: Path) -> Path:
        logged.update(entry)
        return Path(ray.get(writer.append.remote(entry, str(log_file))))

    code = pipeline.main(argv, on_eval=lambda ev: tune.report(eval_metrics(ev)),
                         entry_fields=sweep_fields(config, context.get_trial_id(),
                                                   context.get_trial_name(), argv),
                         append=append)
    if code != 0:  # Tune marks the trial ERROR; the other trials go on
        raise RuntimeError(f"pipeline exited with code {code}: "
                           f"{logged.get('error') or logged.get('status')}")


def sweep_fields(config: dict, trial_id: str, trial_name: str, argv: list[str]) -> dict:
    return {"sweep_id": config["sweep_id"], "argv": ["train_hybrid_pipeline.py", *argv],
            "sweep": {"trial_id": trial_id, "trial_name": trial_name, "seed": config["seed"],
                      "grid_point": {k: config[k] for k in config["grid_keys"]}}}


def make_log_writer(launch_dir: str, name: str):
    """An actor on this (the launching) node that appends entries to the run log here."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    @ray.remote(num_cpus=0)
    class RunLogWriter:
        def append(self, entry: dict, log_file: str) -> str:
            from run_log import append_run

            path = Path(log_file)
            return str(append_run(entry, path if path.is_absolute() else Path(launch_dir) / path))

    node = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    return RunLogWriter.options(name=name, namespace=NAMESPACE, get_if_exists=True,
                                scheduling_strategy=node).remote()


# ------------------------------------------------------------------------------ Ray and Tune

def init_ray(address: str | None, num_cpus: int) -> None:
    """Connect to `address` (or RAY_ADDRESS), else start a local Ray with `num_cpus`. Workers
    import this project's modules from TRAINING_FILES (the same path on every node)."""
    import ray

    runtime_env = {"env_vars": {"PYTHONPATH": os.pathsep.join(
        [str(TRAINING_FILES), *filter(None, [os.environ.get("PYTHONPATH")])])}}
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, runtime_env=runtime_env)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, runtime_env=runtime_env)


class MissingEntryLogger(Callback):
    """A Tune callback (driver side) that writes a run-log entry, through the pipeline's own
    _log, for every trial that ended without writing one itself: stopped by the scheduler,
    its worker lost, or still running when the sweep was interrupted. Restored with the
    experiment on --resume (Tune pickles it into tuner.pkl)."""

    def __init__(self, sweep_id: str, log_file: Path, scheduler: str):
        self.sweep_id, self.log_file, self.scheduler = sweep_id, Path(log_file), scheduler
        self.started: dict[str, float] = {}
        self.evaluations: dict[str, list[dict]] = {}

    def on_trial_start(self, iteration, trials, trial, **info):
        self.started[trial.trial_id] = time.time()
        self.evaluations[trial.trial_id] = []

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.evaluations.setdefault(trial.trial_id, []).append(
            {k: result[k] for k in ("timesteps", "mean_reward", "normalized_score", "score")
             if k in result})

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._log_if_missing(trial, "stopped", f"stopped early by the {self.scheduler} scheduler")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._log_if_missing(trial, "failed", "the trial's Ray worker failed before the "
                                              "pipeline could log (see the trial's error.txt)")

    def on_experiment_end(self, trials, **info):
        # Trials still here neither completed nor failed: the sweep was interrupted (Tune's
        # cleanup marks them terminated in memory; its saved state keeps them to resume).
        for trial in trials:
            self._log_if_missing(trial, "interrupted",
                                 "the sweep was interrupted; --resume reruns this trial")

    def _log_if_missing(self, trial, status: str, reason: str) -> None:
        if trial.trial_id not in self.started:  # not started by this launch, or already ended
            return
        started = self.started.pop(trial.trial_id)
        entry = sweep_entries(self.log_file, self.sweep_id).get(trial.trial_id)
        if entry is not None and entry["time"] >= datetime.fromtimestamp(
                started - 5, timezone.utc).isoformat(timespec="seconds"):
            return  # the trial logged itself (an older entry is from before a --resume)
        argv = trial_argv(trial.config)
        args = pipeline.build_parser().parse_args(argv)
        entry = {"time": datetime.fromtimestamp(started, timezone.utc).isoformat(timespec="seconds"),
                 "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                 "status": status, "error": reason,
                 "evaluations": self.evaluations.pop(trial.trial_id, []),
                 **sweep_fields(trial.config, trial.trial_id, str(trial), argv)}
        pipeline._log(args, entry, started)


# ------------------------------------------------------------------------------ summary

def _score(ev: dict | None) -> float | None:
    if not ev:
        return None
    return ev["normalized_score"] if ev.get("normalized_score") is not None else ev.get("mean_reward")


def sweep_entries(log_file: Path, sweep_id: str) -> dict[str, dict]:
    """trial_id -> the last run-log entry of that trial (a resumed trial logs again)."""
    from run_log import read_runs

    out = {}
    for entry in read_runs(log_file):
        if entry.get("sweep_id") == sweep_id:
            out[entry["sweep"]["trial_id"]] = entry
    return out


def iqm_ci(values: list[float], seed: int = 0) -> list[float]:
    """[IQM, low, high]: rliable's stratified-bootstrap 95% CI over seeds."""
    import numpy as np
    from rliable import library as rly
    from rliable import metrics

    with warnings.catch_warnings():  # arch's notice about its own RandomState default
        warnings.filterwarnings("ignore", message="random_state is deprecated", category=FutureWarning)
        point, interval = rly.get_interval_estimates(
            {"x": np.asarray(values, dtype=float).reshape(-1, 1)},
            lambda x: np.array([metrics.aggregate_iqm(x)]), reps=CI_REPS,
            random_state=np.random.RandomState(seed))
    return [float(point["x"][0]), float(interval["x"][0, 0]), float(interval["x"][1, 0])]


def summarise(entries: dict[str, dict]) -> tuple[str, dict]:
    groups: dict[str, list[dict]] = {}
    for entry in entries.values():
        groups.setdefault(json.dumps(entry["sweep"]["grid_point"]), []).append(entry)
    normalised = all(e.get("final_test_eval", {}).get("normalized_score") is not None
                     for es in groups.values() for e in es if e["status"] == "ok")
    unit = "normalised score" if normalised else "return"
    md = ["IQM over seeds [95% stratified-bootstrap CI, rliable], " + unit + ". final = test "
          "evaluation of the last model; best = test evaluation of the model the run hands over "
          "(best periodic evaluation); best eval = best periodic evaluation.", "",
          "| grid point | seeds ok | final (test) | best (test) | best eval | not ok |",
          "|---|---|---|---|---|---|"]
    js: dict = {"unit": unit, "points": []}
    for key in sorted(groups):
        es = sorted(groups[key], key=lambda e: e["sweep"]["seed"])
        ok = [e for e in es if e["status"] == "ok"]
        runs = [{"seed": e["sweep"]["seed"], "status": e["status"], "error": e.get("error"),
                 "final_test": _score(e.get("final_test_eval")),
                 "best_test": _score((e.get("result") or {}).get("test_eval")),
                 "best_eval": _score(e.get("best_eval")), "save_file": e.get("hybrid_save_file")}
                for e in es]
        stats = {k: iqm_ci([r[k] for r in runs if r["status"] == "ok"]) if ok else None
                 for k in ("final_test", "best_test", "best_eval")}
        js["points"].append({"grid_point": json.loads(key), "runs": runs, **stats})
        fmt = lambda t: f"{t[0]:.1f} [{t[1]:.1f}, {t[2]:.1f}]" if t else "-"  # noqa: E731
        bad = ", ".join(f"seed {r['seed']}: {r['status']}" for r in runs if r["status"] != "ok")
        label = ", ".join(f"{k}={v}" for k, v in json.loads(key).items()) or "(no grid)"
        md.append(f"| {label} | {', '.join(str(r['seed']) for r in runs if r['status'] == 'ok') or '-'} "
                  f"| {fmt(stats['final_test'])} | {fmt(stats['best_test'])} "
                  f"| {fmt(stats['best_eval'])} | {bad or '-'} |")
    return "\n".join(md) + "\n", js


def plot_curves(entries: dict[str, dict], path: Path) -> None:
    """Periodic evaluations per grid point: mean over seeds, shaded 95% CI of the mean."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.ticker import EngFormatter

    groups: dict[str, list[list[dict]]] = {}
    for e in entries.values():
        if e.get("evaluations"):
            groups.setdefault(json.dumps(e["sweep"]["grid_point"]), []).append(e["evaluations"])
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for key in sorted(groups):
        curves = groups[key]
        steps = sorted(set.intersection(*(set(ev["timesteps"] for ev in c) for c in curves)))
        scores = np.array([[_score(next(ev for ev in c if ev["timesteps"] == s)) for s in steps]
                           for c in curves], dtype=float)
        mean = scores.mean(0)
        label = ", ".join(f"{k}={v}" for k, v in json.loads(key).items()) or "sweep"
        ax.plot(steps, mean, marker=".", label=f"{label} ({len(curves)} seeds)")
        if len(curves) > 1:
            half = 1.96 * scores.std(0, ddof=1) / np.sqrt(len(curves))
            ax.fill_between(steps, mean - half, mean + half, alpha=0.2)
    ax.xaxis.set_major_formatter(EngFormatter())
    ax.set_xlabel("online env steps")
    ax.set_ylabel("periodic evaluation score")
    ax.set_title("mean over seeds, shaded 95% CI of the mean")
    if groups:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_summary(sweep_dir: Path, log_file: Path, sweep_id: str) -> str:
    entries = sweep_entries(log_file, sweep_id)
    md, js = summarise(entries)
    md = f"# Sweep {sweep_id}\n\n{len(entries)} trials in {log_file}.\n\n" + md
    write_bytes_atomically(sweep_dir / "summary.md", md.encode("utf-8"))
    write_bytes_atomically(sweep_dir / "summary.json",
                           (json.dumps({"sweep_id": sweep_id, **js}, indent=1) + "\n").encode("utf-8"))
    plot_curves(entries, sweep_dir / "curves.png")
    return md


# ------------------------------------------------------------------------------ main

def new_sweep_record(options, argv: list[str]) -> dict:
    sweep_id = options.sweep_id or datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    if (SWEEPS_DIR / sweep_id).exists():
        raise PipelineError(f"sweeps/{sweep_id} exists; continue it with --resume {sweep_id} "
                            "or pick another --sweep_id")
    return {"sweep_id": sweep_id,
            "argv": argv + ([] if options.sweep_id else ["--sweep_id", sweep_id]),
            "storage_path": os.path.abspath(options.storage_path or SWEEPS_DIR)}


def resumed_sweep(options, rest: list[str]) -> tuple[argparse.Namespace, list[str], dict]:
    """The interrupted sweep's own command, from sweeps/<id>/sweep.json."""
    record_file = SWEEPS_DIR / options.resume / "sweep.json"
    if not record_file.is_file():
        raise PipelineError(f"--resume {options.resume}: no sweep record {record_file} "
                            "(run it from the directory the sweep was started in)")
    given = [a for a in rest] + [f"--{k}" for k in ("seeds", "grid", "sweep_id", "scheduler",
                                                    "storage_path", "max_concurrent")
                                 if getattr(options, k) != build_parser().get_default(k)]
    if given:
        raise PipelineError(f"--resume reruns the sweep's own command; drop {' '.join(given)}")
    try:
        record = json.loads(record_file.read_text())
        argv = record["argv"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PipelineError(f"--resume {options.resume}: {record_file} is unreadable ({exc})") from exc
    resumed, rest = build_parser().parse_known_args(argv)
    resumed.address, resumed.num_cpus, resumed.resume = options.address, options.num_cpus, options.resume
    return resumed, rest, record


def trial_configs(options, grid: dict[str, list[str]], constants: dict) -> list[dict]:
    from itertools import product

    return [{**constants, "seed": seed, **dict(zip(grid, values))}
            for seed in options.seeds for values in product(*grid.values())]


def check_trials(configs: list[dict]) -> int:
    """Every trial's flags and hparam entries, before Ray starts; returns the largest budget."""
    max_t = 0
    for config in configs:
        args, hybrid_cfg = trial_entry(config)
        max_t = max(max_t, args.total_timesteps or hybrid_cfg.total_timesteps)
    return max_t


def make_tuner(options, record: dict, constants: dict, grid: dict, max_t: int, log_file: Path):
    from ray import tune

    trainable = tune.with_resources(run_trial, lambda config: {"cpu": trial_cpus(config)})
    experiment = f"{record['storage_path'].rstrip('/')}/{record['sweep_id']}"
    if options.resume:
        if not tune.Tuner.can_restore(experiment):
            raise PipelineError(f"--resume {record['sweep_id']}: no Tune experiment at {experiment}")
        # Unfinished trials run again from the start (a trial keeps no checkpoint); failed ones
        # stay failed (they are in the run log).
        return tune.Tuner.restore(experiment, trainable, resume_unfinished=True,
                                  resume_errored=False, restart_errored=False), experiment
    scheduler = None
    if options.scheduler == "asha":
        scheduler = tune.schedulers.ASHAScheduler(
            time_attr="timesteps", max_t=max_t, grace_period=max(1, max_t // 4), reduction_factor=2)
    space = {**constants, "seed": tune.grid_search(options.seeds),
             **{k: tune.grid_search(v) for k, v in grid.items()}}
    tuner = tune.Tuner(
        trainable, param_space=space,
        tune_config=tune.TuneConfig(metric="score", mode="max", scheduler=scheduler,
                                    max_concurrent_trials=options.max_concurrent),
        run_config=tune.RunConfig(
            name=record["sweep_id"], storage_path=record["storage_path"], verbose=1,
            failure_config=tune.FailureConfig(max_failures=0),
            callbacks=[MissingEntryLogger(record["sweep_id"], log_file, options.scheduler)]))
    return tuner, experiment


def run(argv: list[str]) -> int:
    options, rest = build_parser().parse_known_args(argv)
    if options.resume:
        options, rest, record = resumed_sweep(options, rest)
    else:
        record = new_sweep_record(options, argv)
    for flag in PER_TRIAL_FLAGS:
        if f"--{flag}" in rest:
            raise PipelineError(f"--{flag} is set per trial by the sweep"
                                + (" (use --seeds)" if flag == "seed" else ""))
    pparser = pipeline.build_parser()
    grid = parse_grid(options.grid, pparser)
    for key in grid:
        if f"--{key}" in rest:
            raise PipelineError(f"--{key} is both a fixed flag and a --grid key")
    if not any(a.split("=")[0] == "--vec_env" for a in rest) and "vec_env" not in grid:
        # trials share the cores, where split's worker only adds contention (README: Speed)
        rest = [*rest, "--vec_env", "dummy"]
    sweep_id = record["sweep_id"]
    launch_dir = os.getcwd()
    sweep_dir = Path(launch_dir) / SWEEPS_DIR / sweep_id
    constants = {"sweep_id": sweep_id, "launch_dir": launch_dir, "sweep_dir": str(sweep_dir),
                 "base_argv": rest, "grid_keys": list(grid), "log_writer": f"run_log_{sweep_id}",
                 # not "env": Tune puts a config's "env" into trial names (an RLlib habit)
                 "forwarded_env": {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}}
    configs = trial_configs(options, grid, constants)
    max_t = check_trials(configs)  # a bad flag or hparam key costs a second, not a sweep
    log_file = Path(launch_dir) / pparser.parse_args(trial_argv(configs[0])).log_file

    from preflight import check_dir, check_log_file

    check_log_file(log_file)
    check_dir("the sweep folder", sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    if not options.resume:
        write_bytes_atomically(sweep_dir / "sweep.json",
                               (json.dumps(record, indent=1) + "\n").encode("utf-8"))

    import ray

    # Tune's own switch: trials keep the worker's cwd instead of entering their trial folder
    # (run_trial then enters the launching directory, which a worker on a cluster node needs).
    os.environ["RAY_CHDIR_TO_TRIAL_DIR"] = "0"
    started_ray = not ray.is_initialized()
    if started_ray:
        init_ray(options.address, options.num_cpus)
    try:
        log_writer = make_log_writer(launch_dir, constants["log_writer"])  # alive while held
        tuner, experiment = make_tuner(options, record, constants, grid, max_t, log_file)
        print(f"Sweep {sweep_id}: {len(configs)} trials ({len(options.seeds)} seeds x "
              f"{len(configs) // len(options.seeds)} grid points); Tune experiment {experiment}",
              flush=True)
        tuner.fit()  # trial failures are in the run log; fit() does not raise for them
        del log_writer
    finally:
        if started_ray:
            ray.shutdown()
    ended = [e for e in sweep_entries(log_file, sweep_id).values() if e["status"] != "interrupted"]
    interrupted = len(ended) < len(configs)
    md = write_summary(sweep_dir, log_file, sweep_id)
    print(md)
    print(f"Summary: {sweep_dir / 'summary.md'}, {sweep_dir / 'summary.json'}, "
          f"{sweep_dir / 'curves.png'}; run log {log_file}")
    if interrupted:
        print(f"Interrupted; continue with: python {Path(__file__).name} --resume {sweep_id}",
              file=sys.stderr)
        return pipeline.EXIT_INTERRUPTED
    failed = [e for e in sweep_entries(log_file, sweep_id).values() if e["status"] == "failed"]
    if failed:
        print(f"ERROR: {len(failed)} of {len(configs)} trials failed (see {sweep_dir / 'summary.md'})",
              file=sys.stderr)
        return pipeline.EXIT_ERROR
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        return run(sys.argv[1:] if argv is None else argv)
    except (KeyboardInterrupt, Exception) as exc:  # Tune's own Ctrl-C handling ends fit() instead
        return exit_code(exc, f"Interrupted; a sweep that printed its id continues with: "
                              f"python {Path(__file__).name} --resume <id>")


if __name__ == "__main__":
    sys.exit(main())
