"""BC on the bundled walker2d expert data: how close does it get to the expert, and how fast?

Trains BC exactly as the pipeline does (Walker2d-v4-bc-large, 50 epochs, batch 128, seed 42,
CPU), times it, evaluates the best checkpoint over 10 deterministic episodes and compares with
the expert's own mean episode return in the dataset. Writes benchmarks/results/bc_expert.json.

  python benchmarks/bc_expert.py
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "training_files"))

OUT = REPO / "benchmarks" / "results" / "bc_expert.json"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--names", nargs="+", default=["expert-v0"])
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--episodes", type=int, default=10)
    args = p.parse_args()

    import torch
    from stable_baselines3 import PPO

    import bc
    import checkpoints
    from evaluation import TEST_SEED_OFFSET, evaluate
    from hparams import load_hparams
    from offline_data import load_offline_data, normalized_score

    torch.set_num_threads(1)
    bc_cfg, _ = load_hparams("Walker2d-v4-bc-large", "Walker2d-v4-hybrid")
    data = load_offline_data("mujoco", "walker2d", args.names, bc_cfg.env_id)
    expert_return = float(data.episode_returns.mean())
    name = bc.run_name(args.names)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        bc.train_bc(data, bc_cfg, bc.BCSettings(args.epochs, 128, 10, 5, args.seed, "cpu"),
                    Path(tmp), name)
        seconds = time.perf_counter() - start
        best = checkpoints.find_best_checkpoint(Path(tmp), name)
        model = PPO.load(best.path, device="cpu")
        ev = evaluate(model, bc_cfg.env_id, bc_cfg.env_kwargs, args.episodes,
                      args.seed + TEST_SEED_OFFSET, data.ref_scores)
    result = {"names": args.names, "transitions": len(data), "epochs": args.epochs,
              "bc_train_seconds": round(seconds, 1), "best_epoch": best.epoch,
              "best_val_loss": best.val_loss, "bc_eval": ev,
              "expert_mean_return_in_data": expert_return,
              "expert_normalized_score": normalized_score(expert_return, data.ref_scores),
              "bc_over_expert": ev["mean_reward"] / expert_return}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
