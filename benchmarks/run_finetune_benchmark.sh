#!/usr/bin/env bash
# The fine-tuning benchmark behind README "Results", in priority order, on two workers (one
# per core, one torch thread each). Resumable: finished runs are skipped on a rerun.
set -u
cd "$(dirname "$0")/.."
phase() {
  for w in 0 1; do python benchmarks/finetune.py "$@" --worker "$w/2" & done
  wait
}
phase --datasets medium-v0 --seeds 0 1 2 3 4 --variants hybrid bc_ppo
phase --datasets expert-v0 --seeds 0 1 2 3 4 --variants hybrid
phase --datasets medium-v0 --seeds 0 1 2 --variants hybrid-previous hybrid-bc_coeff_0.05
python benchmarks/analyze_finetune.py
