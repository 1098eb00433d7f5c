"""Throughput, measured side by side in one process (these machines are noisy).

1. Env steps per second of HybridPPO at mix_ratio 0.5 against plain SB3 PPO with the same
   settings (hparam entry Walker2d-v4-hybrid), alternating A/B/A/B; the ratio of time per
   online step is the figure that matters (target <= 1.25). HybridPPO's time is split into
   rollout, offline V-trace preparation and the update.
2. BC samples per second of bc.train_bc's inner loop against a bare torch loop (same network
   sizes, same tensors, same batch): target >= 0.9x.
Writes benchmarks/results/throughput.json.

  python benchmarks/throughput.py --dataset_name expert-v0
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "training_files"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

OUT = REPO / "benchmarks" / "results" / "throughput.json"


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
    import gymnasium as gym
    from stable_baselines3 import PPO

    import bc
    from hybrid_ppo import HybridPPO
    from normalized_policy import obs_normalizer

    common = dict(learning_rate=cfg.learning_rate, n_steps=cfg.n_steps, batch_size=cfg.batch_size,
                  n_epochs=cfg.n_epochs, gamma=cfg.gamma, gae_lambda=cfg.gae_lambda,
                  clip_range=cfg.clip_range, ent_coef=cfg.ent_coef, vf_coef=cfg.vf_coef,
                  max_grad_norm=cfg.max_grad_norm, target_kl=None)
    times = {"ppo": [], "hybrid": []}
    parts = {}
    for _ in range(repeats):
        for kind in ("ppo", "hybrid"):
            env = gym.make(cfg.env_id, **cfg.env_kwargs)
            if kind == "ppo":
                model = bc.build_model(cfg, env, "cpu", 0, model_class=PPO, **common)
            else:
                model = bc.build_model(cfg, env, "cpu", 0, model_class=HybridPPO, **common,
                                       mix_ratio=0.5, bc_coeff=0.005,
                                       segment_length=cfg.segment_length)
                model.set_offline_data(data)
            obs_normalizer(model.policy).set_statistics(data.observations.mean(0), data.observations.std(0))
            timers = Timers()
            for name in ("collect_rollouts", "train") + (("_offline_batch",) if kind == "hybrid" else ()):
                timers.wrap(model, name)
            start = time.perf_counter()
            model.learn(steps)
            times[kind].append((time.perf_counter() - start) / steps)
            if kind == "hybrid":
                for k, v in timers.seconds.items():
                    parts.setdefault(k, []).append(v / steps)
            else:
                for k, v in timers.seconds.items():
                    parts.setdefault(f"ppo_{k}", []).append(v / steps)
    ppo, hybrid = float(np.median(times["ppo"])), float(np.median(times["hybrid"]))
    return {"steps_per_run": steps, "repeats": repeats,
            "ppo_steps_per_s": 1 / ppo, "hybrid_steps_per_s": 1 / hybrid,
            "hybrid_over_ppo_time_per_step": hybrid / ppo,
            "seconds_per_1k_steps": {k: 1000 * float(np.median(v)) for k, v in parts.items()}}


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

    project, bare = [], []
    for _ in range(2):
        project.append(project_loop())
        bare.append(bare_loop())
    samples = epochs * len(obs)
    p, b = float(np.median(project)), float(np.median(bare))
    return {"epochs": epochs, "batch_size": batch_size, "samples_per_epoch": len(obs),
            "project_samples_per_s": samples / p, "bare_torch_samples_per_s": samples / b,
            "project_over_bare_speed": b / p}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset_name", default="expert-v0")
    p.add_argument("--ppo_steps", type=int, default=8192)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--bc_epochs", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(1)
    from hparams import load_hparams
    from offline_data import load_offline_data

    bc_cfg, cfg = load_hparams("Walker2d-v4-bc-large", "Walker2d-v4-hybrid")
    data = load_offline_data("mujoco", "walker2d", [args.dataset_name], cfg.env_id)
    result = {"machine": {"platform": platform.platform(), "processor": platform.processor(),
                          "torch_threads": 1, "torch": torch.__version__},
              "dataset": args.dataset_name,
              "ppo_vs_hybrid": ppo_side_by_side(data, cfg, args.ppo_steps, args.repeats),
              "bc_vs_bare_torch": bc_side_by_side(data, bc_cfg, 128, args.bc_epochs)}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
