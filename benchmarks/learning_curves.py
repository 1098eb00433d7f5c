"""Learning curves on bundled walker2d data: does hybrid fine-tuning beat the alternatives?

Variants, each from the same offline dataset and seed:
  bc           (a) the best BC checkpoint alone (evaluated, no online steps)
  ppo_scratch  (b) plain SB3 PPO from a fresh policy (same net, same frozen obs statistics)
  bc_ppo       (c) HybridPPO from BC with mix_ratio 0 (no offline data in the updates; same
                   warm-up), i.e. "PPO initialised from BC"
  hybrid       (d) HybridPPO from BC with QUICKSTART's defaults
Every run appends one JSON line to benchmarks/results/learning_curves.jsonl when it
finishes; a rerun skips finished runs, so the script resumes where it stopped. Use
--worker i/n to split the pending runs over several processes (one core each).

  python benchmarks/learning_curves.py --dataset_names medium-v0 --seeds 0 1 2 \
      --variants bc ppo_scratch bc_ppo hybrid --worker 0/2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "training_files"))

import torch  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "learning_curves.jsonl"
RUNS = REPO / "benchmarks" / "runs"
VARIANTS = ("bc", "ppo_scratch", "bc_ppo", "hybrid")
QUICKSTART_DEFAULTS = dict(mix_ratio=0.5, rho_bar=1.0, c_bar=0.95, bc_coeff=0.005,
                           warm_start_steps=100, log_std_subtract=0.0)


def finished(path: Path = RESULTS) -> set[tuple]:
    if not path.exists():
        return set()
    done = set()
    for line in path.read_text().splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a crash: that run simply reruns
        done.add((r["dataset"], r["variant"], r["seed"], r["timesteps"]))
    return done


def append_result(record: dict, path: Path = RESULTS) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fh.write(json.dumps(record) + "\n")
        fh.flush()


def best_bc(data, bc_cfg, name: str, seed: int, epochs: int):
    """Train (or reuse) BC for this dataset and seed; returns the best checkpoint."""
    import bc
    import checkpoints

    ckpt_dir = RUNS / "bc" / f"seed{seed}" / "mujoco" / "walker2d"
    if not checkpoints.has_checkpoint(ckpt_dir, name):
        bc.train_bc(data, bc_cfg, bc.BCSettings(epochs, 128, 10, 5, seed, "cpu"), ckpt_dir, name)
    return checkpoints.find_best_checkpoint(ckpt_dir, name)


def run_one(dataset_name: str, variant: str, seed: int, timesteps: int, bc_epochs: int) -> dict:
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.logger import configure
    from stable_baselines3.common.utils import set_random_seed

    import bc
    from evaluation import PeriodicEval, evaluate, make_eval_env
    from hparams import load_hparams
    from hybrid_training import HybridSettings, train_hybrid
    from normalized_policy import obs_normalizer
    from offline_data import load_offline_data

    bc_cfg, cfg = load_hparams("Walker2d-v4-bc-large", "Walker2d-v4-hybrid")
    data = load_offline_data("mujoco", "walker2d", [dataset_name], cfg.env_id)
    best = best_bc(data, bc_cfg, dataset_name, seed, bc_epochs)
    started = time.time()
    tag = f"{dataset_name}_{variant}_seed{seed}"
    record = {"dataset": dataset_name, "variant": variant, "seed": seed, "timesteps": timesteps,
              "bc_checkpoint": best.path.name, "bc_val_loss": best.val_loss}
    if variant == "bc":
        model = PPO.load(best.path, device="cpu")
        ev = evaluate(model, make_eval_env(cfg.env_id, cfg.env_kwargs, seed + 10_000), 10,
                      data.ref_scores)
        record["curve"] = [dict(ev, timesteps=0)]
    elif variant == "ppo_scratch":
        set_random_seed(seed)
        env = make_vec_env(cfg.env_id, n_envs=cfg.n_envs, seed=seed, env_kwargs=cfg.env_kwargs)
        model = bc.build_model(cfg, env, "cpu", seed, learning_rate=cfg.learning_rate,
                               n_steps=cfg.n_steps, batch_size=cfg.batch_size,
                               n_epochs=cfg.n_epochs, gamma=cfg.gamma, gae_lambda=cfg.gae_lambda,
                               clip_range=cfg.clip_range, ent_coef=cfg.ent_coef,
                               vf_coef=cfg.vf_coef, max_grad_norm=cfg.max_grad_norm,
                               target_kl=cfg.target_kl)
        train_split = data.observations
        obs_normalizer(model.policy).set_statistics(train_split.mean(0), train_split.std(0))
        tb = RUNS / "tb" / tag
        model.set_logger(configure(str(tb), ["csv", "tensorboard"]))
        evaluator = PeriodicEval(make_eval_env(cfg.env_id, cfg.env_kwargs, seed + 10_000),
                                 cfg.eval_freq, cfg.eval_episodes, data.ref_scores)
        model.learn(timesteps, callback=evaluator)
        record["curve"] = evaluator.history
    else:
        settings = dict(QUICKSTART_DEFAULTS)
        if variant == "bc_ppo":
            settings["mix_ratio"] = 0.0
        result = train_hybrid(data, best.path, cfg, HybridSettings(
            **settings, seed=seed, device="cpu", total_timesteps=timesteps,
            save_file=RUNS / "models" / f"{tag}.zip", tb_dir=RUNS / "tb" / tag), progress=False)
        record["curve"] = result.evaluations
        record["warmup"] = result.warmup
    record["wall_time_s"] = round(time.time() - started, 1)
    return record


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset_names", nargs="+", default=["medium-v0"])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--timesteps", type=int, default=200_000)
    p.add_argument("--bc_epochs", type=int, default=50)
    p.add_argument("--worker", default="0/1", help="i/n: run every n-th pending run, from i")
    args = p.parse_args()
    torch.set_num_threads(1)
    index, count = (int(x) for x in args.worker.split("/"))
    done = finished()
    pending = [(d, v, s) for d in args.dataset_names for s in args.seeds for v in args.variants
               if (d, v, s, args.timesteps) not in done]
    # Split by (dataset, seed) so two workers never train the same BC checkpoint at once.
    groups = sorted({(d, s) for d, _, s in pending}, key=lambda g: (args.dataset_names.index(g[0]), g[1]))
    my_groups = set(groups[index::count])
    mine = [run for run in pending if (run[0], run[2]) in my_groups]
    print(f"{len(pending)} runs pending, this worker takes {len(mine)}", flush=True)
    for dataset_name, variant, seed in mine:
        print(f"-> {dataset_name} {variant} seed {seed}", flush=True)
        record = run_one(dataset_name, variant, seed, args.timesteps, args.bc_epochs)
        append_result(record)
        last = record["curve"][-1]
        print(f"   done in {record.get('wall_time_s')} s: final normalised "
              f"{last['normalized_score']:.1f}", flush=True)


if __name__ == "__main__":
    main()
