#!/usr/bin/env bash
# The fine-tuning benchmark behind README "Results", in priority order, on two workers (one
# per core, one torch thread each). Resumable: finished runs are skipped on a rerun, so the
# same script continues where a stopped session left it.
set -u
cd "$(dirname "$0")/.."
bench() { python benchmarks/finetune.py "$@"; }
# 1. headline on medium data: HybridPPO against PPO-from-BC, 5 seeds
bench --datasets medium-v0 --seeds 0 1 2 3 4 --variants hybrid bc_ppo --worker 0/2 &
bench --datasets medium-v0 --seeds 0 1 2 3 4 --variants hybrid bc_ppo --worker 1/2 &
wait
# 2. expert data, and the ablation with every new mechanism off, 3 seeds each
bench --datasets expert-v0 --seeds 0 1 2 --variants hybrid &
bench --datasets medium-v0 --seeds 0 1 2 --variants hybrid-previous &
wait
# 3. not run yet (next session): expert seeds 3-4, the BC-strength and one-at-a-time ablations
bench --datasets expert-v0 --seeds 0 1 2 3 4 --variants hybrid &
bench --datasets medium-v0 --seeds 0 1 2 --variants hybrid-bc_coeff_0.05 hybrid-no_critic_only \
  hybrid-constant_lr hybrid-mean_centering &
wait
python benchmarks/analyze_finetune.py
