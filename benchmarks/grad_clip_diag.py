"""How the gradient clip shapes the actor's steps (docs/RESULTS.md, "How the gradient clip moves the actor").

Runs the pipeline in this process, as `finetune.py` would run a variant (its own runs
directory; the seed's BC checkpoint from `benchmarks/runs/finetune/bc/`), and wraps HybridPPO's
clip to record, for every minibatch: the actor's and the critic's gradient norms before the
clip, the joint clip's factor, and how much of Adam's step the actor keeps once clipped, the
mean over actor parameters of sqrt(v_hat) / (sqrt(v_hat) + eps). Adam's step is
lr * m_hat / (sqrt(v_hat) + eps); where the clipped gradient is far below eps (SB3 sets 1e-5),
that fraction is small and the step shrinks with the gradient, as in SGD.

  python benchmarks/grad_clip_diag.py --seed 1 --variants hybrid hybrid-separate_clip
  # -> benchmarks/results/grad_clip_diag.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "training_files"))
sys.path.insert(0, str(HERE))
import finetune  # noqa: E402
import hybrid_ppo  # noqa: E402
import train_hybrid_pipeline  # noqa: E402
from critic_learning_rate import actor_and_critic_parameters  # noqa: E402

RESULTS = HERE / "results"
PHASES = ((0, 10_000, "critic-only updates"), (10_000, 30_000, ""), (30_000, None, ""))  # None: to the end


def norm(params) -> float:
    return float(torch.sqrt(sum((p.grad.double() ** 2).sum() for p in params))) if params else 0.0


def adam_fraction(params, optimizer) -> float | None:
    """Mean over `params` of sqrt(v_hat) / (sqrt(v_hat) + eps) for the step about to be taken."""
    group = optimizer.param_groups[0]
    beta2, eps = group["betas"][1], group["eps"]
    total, count = 0.0, 0
    for p in params:
        state = optimizer.state.get(p, {})
        step = float(state.get("step", 0)) + 1
        v = state.get("exp_avg_sq", torch.zeros_like(p))
        root = ((beta2 * v + (1 - beta2) * p.grad ** 2) / (1 - beta2 ** step)).sqrt()
        total += float((root / (root + eps)).sum())
        count += root.numel()
    return total / count if count else None


def record_run(args: list[str]) -> list[dict]:
    """Run the pipeline with `args`, recording every minibatch's clip."""
    rows: list[dict] = []
    clip = hybrid_ppo.clip_gradients

    def recording_clip(policy, max_norm, mode="joint"):
        actor, critic = ([p for p in group if p.grad is not None]
                         for group in actor_and_critic_parameters(policy))
        before = {"actor": norm(actor), "critic": norm(critic)}
        clip(policy, max_norm, mode)
        rows.append({"t": model_steps[0], **before,
                     "joint_factor": min(1.0, max_norm / (np.hypot(before["actor"], before["critic"]) + 1e-6)),
                     "actor_adam_fraction": adam_fraction(actor, policy.optimizer) if actor else None})

    model_steps = [0]
    train = hybrid_ppo.HybridPPO.train

    def counting_train(self):
        model_steps[0] = self.num_timesteps
        return train(self)

    hybrid_ppo.clip_gradients, hybrid_ppo.HybridPPO.train = recording_clip, counting_train
    try:
        code = train_hybrid_pipeline.main(args)
    finally:
        hybrid_ppo.clip_gradients, hybrid_ppo.HybridPPO.train = clip, train
    if code:
        raise SystemExit(f"the pipeline exited {code}")
    return rows


def summary(variant: str, rows: list[dict]) -> list[str]:
    lines = []
    for low, high, note in PHASES:
        part = [r for r in rows if low <= r["t"] and (high is None or r["t"] < high)]
        moving = [r for r in part if r["actor_adam_fraction"] is not None]
        if not part:
            continue
        med = lambda key, rs: f"{np.median([r[key] for r in rs]):.3g}" if rs else "-"  # noqa: E731
        fraction = f"{np.mean([r['actor_adam_fraction'] for r in moving]):.3f}" if moving else "-"
        span = f"{low // 1000}-{high // 1000}k" if high is not None else f"{low // 1000}k-end"
        lines.append(f"| {variant} | {span}{f' ({note})' if note else ''} | {len(part)} | "
                     f"{med('critic', part)} | {med('actor', moving)} | {med('joint_factor', part)} | {fraction} |")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--dataset", default="medium-v0")
    p.add_argument("--timesteps", type=int, default=60_000)
    p.add_argument("--variants", nargs="+", default=["hybrid", "hybrid-separate_clip"],
                   choices=list(finetune.VARIANTS))
    p.add_argument("--out", type=Path, default=RESULTS / "grad_clip_diag.md")
    args = p.parse_args()
    runs = finetune.REPO / "benchmarks" / "runs" / "grad_clip_diag"
    lines = [f"# Gradient clip and the actor's steps: walker2d {args.dataset}, seed {args.seed}, "
             f"{args.timesteps:,} steps", "",
             "Medians over minibatches of the gradient norms before the clip; joint factor = "
             "max_grad_norm / |whole gradient| (what SB3's clip multiplies every gradient by, capped at 1); "
             "actor's Adam fraction = mean over actor parameters of sqrt(v_hat) / (sqrt(v_hat) + eps) after "
             "the variant's own clip (1: Adam's normalised step; small: eps dominates and the step "
             "shrinks with the gradient).", "",
             "| variant | env steps | minibatches | critic's gradient norm | actor's gradient norm "
             "| joint factor | actor's Adam fraction |", "|---|---|---|---|---|---|---|"]
    for variant in args.variants:
        cmd, _, _ = finetune.command(args.dataset, variant, args.seed, args.timesteps, runs,
                                     bc_runs=finetune.RUNS)
        lines += summary(variant, record_run(cmd))
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
