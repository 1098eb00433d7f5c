#!/usr/bin/env bash
# The fine-tuning benchmark behind README "Results", in priority order, on two workers (one
# per core, one torch thread each). Resumable: finished runs are skipped on a rerun, so the
# same script continues where a stopped session left it.
set -u
cd "$(dirname "$0")/.."
phase() {
  for w in 0 1; do python benchmarks/finetune.py "$@" --worker "$w/2" & done
  wait
}
# 1. headline on medium data: HybridPPO against PPO-from-BC, 5 seeds
phase --datasets medium-v0 --seeds 0 1 2 3 4 --variants hybrid bc_ppo
# 2. expert data, 5 seeds
phase --datasets expert-v0 --seeds 0 1 2 3 4 --variants hybrid
# 3. ablations on medium data, 3 seeds: every new mechanism off, and less exploration noise
phase --datasets medium-v0 --seeds 0 1 2 --variants hybrid-previous hybrid-log_std_subtract_1
# 4. not run in the first session: a 10x BC term, one mechanism off at a time
phase --datasets medium-v0 --seeds 0 1 2 --variants hybrid-bc_coeff_0.05 hybrid-no_critic_only \
  hybrid-constant_lr hybrid-mean_centering
python benchmarks/analyze_finetune.py
