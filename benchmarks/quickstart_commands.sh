#!/usr/bin/env bash
# Runs QUICKSTART's four BASIC USAGE commands verbatim, in order, in a fresh clone of this
# repository with empty Minari/D4RL directories, and keeps the run log as evidence.
#   bash benchmarks/quickstart_commands.sh
# Writes benchmarks/results/quickstart_runs.json (the pipeline's own log of the four runs)
# and benchmarks/results/quickstart_times.txt (wall time of each command).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d /tmp/quickstart-XXXXXX)"
git clone -q "$repo" "$work/clone"
export MINARI_DATASETS_PATH="$work/minari" D4RL_DATASET_DIR="$work/d4rl"
mkdir -p "$MINARI_DATASETS_PATH" "$D4RL_DATASET_DIR"
cd "$work/clone"
times="$repo/benchmarks/results/quickstart_times.txt"
mkdir -p "$(dirname "$times")"
echo "# QUICKSTART commands, fresh clone $(git rev-parse --short HEAD), $(date -u +%FT%TZ), $(nproc) cores" > "$times"

run() {
  local label="$1"; shift
  local start=$SECONDS
  python training_files/train_hybrid_pipeline.py "$@" < /dev/null > "$work/$label.log" 2>&1
  echo "$label: $((SECONDS - start)) s" | tee -a "$times"
}

run minimal --dataset mujoco --env walker2d --names expert-v0 \
  --hparam_bc Walker2d-v4-bc-large --hparam_hybrid Walker2d-v4-hybrid --seed 42
run full --dataset mujoco --env walker2d --names expert-v0 expert-v1 \
  --hparam_bc Walker2d-v4-bc-large --hparam_hybrid Walker2d-v4-hybrid --seed 42 \
  --num_bc_epochs 50 --bc_batch_size 128 --bc_coeff 0.005 --warm_start_steps 100 \
  --mix_ratio 0.5 --rho_bar 1.0 --c_bar 0.95 --log_std_subtract 0.0 --device auto
run skip_bc --dataset mujoco --env walker2d --names expert-v0 \
  --hparam_bc Walker2d-v4-bc-large --hparam_hybrid Walker2d-v4-hybrid --seed 42 --skip_bc
run force_bc_retrain --dataset mujoco --env walker2d --names expert-v0 \
  --hparam_bc Walker2d-v4-bc-large --hparam_hybrid Walker2d-v4-hybrid --seed 42 --force_bc_retrain

# the run log names the temp folder of this run (its Minari data): written relative to it
sed "s#$work/##g" logs/pipeline_runs.json > "$repo/benchmarks/results/quickstart_runs.json"
echo "logs in $work"
