"""Throughput, measured side by side in one process (these machines are noisy).

1. Online env steps per second of HybridPPO at mix_ratio 0.5 with the hparam entry's vectorised
   rollouts (8 envs x 256 steps) and its update on two threads (critic_thread.py) against the
   former single env and one-thread update (1 x 2048, same samples per update), against the
   same without the critic thread, and against plain SB3 PPO with the same settings, in turn;
   the update's time per sample, HybridPPO's (online + offline) over PPO's (target <= 1.1x).
2. BC samples per second of bc.train_bc's inner loop against a bare torch loop (same network
   sizes, same tensors, same batch): target >= 0.9x.
Writes benchmarks/results/throughput.json.

  python benchmarks/throughput.py --dataset_name expert-v0
  python benchmarks/throughput.py --env ant --out benchmarks/results/throughput_ant.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "training_files"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

OUT = REPO / "benchmarks" / "results" / "throughput.json"
# --env: the bundled dataset the measurement loads by default (hparam keys: finetune.KEYS)
DEFAULT_DATASET = {"walker2d": "expert-v0", "ant": "simple-v0", "humanoid": "simple-v0"}


class Timers:
    def __init__(self):
        self.seconds: dict[str, float] = {}

    def wrap(self, obj, name: str):
        original = getattr(obj, name)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
        setattr(obj, name, timed)


def ppo_side_by_side(data, cfg, steps: int, repeats: int) -> dict:
    """Online steps/s of several set-ups, run in turn (A B C A B C ...), same samples per update.

    hybrid_1env: HybridPPO mix 0.5 as it ran before this work, 1 env x 2048 steps per update,
    the update in one thread; the others use the hparam entry's n_envs x n_steps (8 x 256):
    hybrid_parallel_update (the critic's half of each minibatch in its own thread:
    critic_thread.py), hybrid_serial_update (the update in one thread),
    hybrid_serial_update_2threads (that with two torch threads, --torch_threads 2), ppo (plain
    SB3 PPO with the entry's settings), hybrid_split_parallel_update (that with vec_env split:
    half the envs in a worker process, split_vec_env.py). `hybrid` in the results is the set-up
    the entry names.
    The update's cost per sample is compared between ppo and hybrid (whose updates hold online
    + offline samples).
    """
    from stable_baselines3 import PPO

    import bc
    from hybrid_ppo import HybridPPO
    from hybrid_training import make_train_env
    from normalized_policy import obs_normalizer

    one_env = cfg.model_copy(update={"n_envs": 1, "n_steps": cfg.n_steps * cfg.n_envs,
                                     "vec_env": "dummy", "parallel_update": False})
    variants = {"parallel_update": {"parallel_update": True, "vec_env": "dummy"},
                "serial_update": {"parallel_update": False, "vec_env": "dummy"},
                "split_parallel_update": {"parallel_update": True, "vec_env": "split"}}
    setups = {"hybrid_1env": (HybridPPO, one_env), "ppo": (PPO, cfg),
              **{f"hybrid_{k}": (HybridPPO, cfg.model_copy(update=v)) for k, v in variants.items()},
              "hybrid_serial_update_2threads": (HybridPPO, cfg.model_copy(
                  update=variants["serial_update"]))}
    times = {k: [] for k in setups}
    parts: dict = {}
    samples_per_update = {}
    for _ in range(repeats):
        for kind, (cls, c) in setups.items():
            common = dict(learning_rate=c.learning_rate, n_steps=c.n_steps, batch_size=c.batch_size,
                          n_epochs=c.n_epochs, gamma=c.gamma, gae_lambda=c.gae_lambda,
                          clip_range=c.clip_range, ent_coef=c.ent_coef, vf_coef=c.vf_coef,
                          max_grad_norm=c.max_grad_norm, target_kl=None)
            torch.set_num_threads(2 if kind.endswith("2threads") else 1)
            env = make_train_env(c, 0, "cpu")
            if cls is PPO:
                model = bc.build_model(c, env, "cpu", 0, model_class=PPO, **common)
            else:
                model = bc.build_model(c, env, "cpu", 0, model_class=HybridPPO, **common,
                                       mix_ratio=0.5, bc_coeff=0.005,
                                       segment_length=c.segment_length,
                                       parallel_update=c.parallel_update)
                model.set_offline_data(data)
            obs_normalizer(model.policy).set_statistics(data.observations.mean(0), data.observations.std(0))
            online = c.n_steps * c.n_envs
            samples_per_update[kind] = sum(model._sample_counts()) if cls is HybridPPO else online
            timers = Timers()
            for name in ("collect_rollouts", "train") + (("_offline_batch",) if cls is HybridPPO else ()):
                timers.wrap(model, name)
            start = time.perf_counter()
            model.learn(steps)
            times[kind].append((time.perf_counter() - start) / model.num_timesteps)
            updates = model.num_timesteps / online
            for k, v in timers.seconds.items():
                parts.setdefault(kind, {}).setdefault(f"{k}_s_per_1k_steps", []).append(
                    1000 * v / model.num_timesteps)
            parts[kind].setdefault("update_ms_per_sample", []).append(
                1000 * timers.seconds["train"] / (updates * samples_per_update[kind]))
            env.close()
    torch.set_num_threads(1)
    entry = ("hybrid_split_parallel_update" if cfg.vec_env == "split" and cfg.parallel_update
             else "hybrid_parallel_update" if cfg.parallel_update else "hybrid_serial_update")
    times["hybrid"], parts["hybrid"] = times[entry], parts[entry]
    med = {k: float(np.median(v)) for k, v in times.items()}
    return {"online_steps_per_run": steps, "repeats": repeats,
            "samples_per_update": samples_per_update, "cpus": len(os.sched_getaffinity(0)),
            "steps_per_s": {k: 1 / v for k, v in med.items()},
            "hybrid_speedup_over_1env": med["hybrid_1env"] / med["hybrid"],
            "hybrid_is": entry,
            "speedup_over_1env": {k: med["hybrid_1env"] / v for k, v in med.items()},
            "hybrid_over_ppo_time_per_online_step": med["hybrid"] / med["ppo"],
            "hybrid_over_ppo_update_time_per_sample": (
                float(np.median(parts["hybrid"]["update_ms_per_sample"]))
                / float(np.median(parts["ppo"]["update_ms_per_sample"]))),
            "parts": {kind: {k: float(np.median(v)) for k, v in d.items()} for kind, d in parts.items()}}


def bc_side_by_side(data, bc_cfg, batch_size: int, epochs: int) -> dict:
    import gymnasium as gym

    import bc
    from normalized_policy import obs_normalizer

    obs = torch.as_tensor(data.observations)
    act = torch.as_tensor(data.actions)
    env = gym.make(bc_cfg.env_id, **bc_cfg.env_kwargs)

    def project_loop():
        model = bc.build_model(bc_cfg, env, "cpu", 0)
        policy = model.policy
        obs_normalizer(policy).set_statistics(data.observations.mean(0), data.observations.std(0))
        optimizer = torch.optim.Adam(policy.parameters(), lr=bc_cfg.learning_rate)
        gen = torch.Generator().manual_seed(0)
        start = time.perf_counter()
        for _ in range(epochs):
            perm = torch.randperm(len(obs), generator=gen)
            for i in range(0, len(perm), batch_size):
                idx = perm[i:i + batch_size]
                loss = bc.gaussian_nll(policy, obs[idx], act[idx]).mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                with torch.no_grad():
                    policy.log_std.clamp_(min=bc_cfg.log_std_min)
                loss.item()
        return time.perf_counter() - start

    def bare_loop():
        sizes = [obs.shape[1], *bc_cfg.policy.net_arch.pi]
        layers = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [torch.nn.Linear(a, b), torch.nn.Tanh()]
        net = torch.nn.Sequential(*layers, torch.nn.Linear(sizes[-1], act.shape[1]))
        log_std = torch.nn.Parameter(torch.zeros(act.shape[1]))
        mean, std = obs.mean(0), obs.std(0).clamp(min=1e-3)
        optimizer = torch.optim.Adam([*net.parameters(), log_std], lr=bc_cfg.learning_rate)
        gen = torch.Generator().manual_seed(0)
        start = time.perf_counter()
        for _ in range(epochs):
            perm = torch.randperm(len(obs), generator=gen)
            for i in range(0, len(perm), batch_size):
                idx = perm[i:i + batch_size]
                mu = net(((obs[idx] - mean) / std).clamp(-10, 10))
                nll = (0.5 * ((act[idx] - mu) / log_std.exp()) ** 2 + log_std
                       + 0.5 * np.log(2 * np.pi)).sum(-1).mean()
                optimizer.zero_grad()
                nll.backward()
                optimizer.step()
                nll.item()
        return time.perf_counter() - start

    project, bare, project_2threads = [], [], []
    for _ in range(2):
        project.append(project_loop())
        bare.append(bare_loop())
        torch.set_num_threads(2)
        project_2threads.append(project_loop())
        torch.set_num_threads(1)
    samples = epochs * len(obs)
    p, b = float(np.median(project)), float(np.median(bare))
    p2 = float(np.median(project_2threads))
    return {"epochs": epochs, "batch_size": batch_size, "samples_per_epoch": len(obs),
            "project_samples_per_s": samples / p, "bare_torch_samples_per_s": samples / b,
            "project_over_bare_speed": b / p, "project_2threads_samples_per_s": samples / p2}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", choices=list(DEFAULT_DATASET), default="walker2d",
                   help="which env's hparam entries and bundled data (default: %(default)s)")
    p.add_argument("--dataset_name", default=None,
                   help="bundled dataset (default: expert-v0 for walker2d, simple-v0 otherwise)")
    p.add_argument("--ppo_steps", type=int, default=16384)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--bc_epochs", type=int, default=2)
    p.add_argument("--out", type=Path, default=OUT, help="results file (default: %(default)s)")
    args = p.parse_args()
    torch.set_num_threads(1)
    from hparams import load_hparams
    from offline_data import load_offline_data

    from finetune import KEYS  # QUICKSTART's hparam keys per --env (this script's directory)

    bc_key, hybrid_key = KEYS[args.env]
    dataset_name = args.dataset_name or DEFAULT_DATASET[args.env]
    bc_cfg, cfg = load_hparams(bc_key, hybrid_key)
    data = load_offline_data("mujoco", args.env, [dataset_name], cfg.env_id)
    result = {"machine": {"platform": platform.platform(), "processor": platform.processor(),
                          "torch_threads": 1, "torch": torch.__version__},
              "env": args.env, "hparam_hybrid": hybrid_key, "dataset": dataset_name,
              "rollouts_and_updates": ppo_side_by_side(data, cfg, args.ppo_steps, args.repeats),
              "bc_vs_bare_torch": bc_side_by_side(data, bc_cfg, 128, args.bc_epochs)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
