#!/usr/bin/env bash
# The ES / G ablation of issue 13: six runs with one recipe (training/resnet20_cifar10.toml),
# the four variants with seed 0 and second seeds of resnet20 and es_resnet20.
# Usage: training/run_cifar10_ablation.sh [OUT_ROOT] [extra train args]
# RUNS="..." picks the runs; a name ending in _seedN trains that model with --seed N.
# Needs the teacher's weights registered as resnet20_fp.cifar10 (training/resnet20_fp_cifar10.toml).
# On the 2-core machine the six runs went in two lanes of one TF thread each:
#   export TF_NUM_INTRAOP_THREADS=1 TF_NUM_INTEROP_THREADS=1
#   RUNS="resnet20 es_g_resnet20 resnet20_seed1" training/run_cifar10_ablation.sh OUT &
#   RUNS="es_resnet20 g_resnet20 es_resnet20_seed1" training/run_cifar10_ablation.sh OUT &
# Interrupted runs continue from their last checkpoint when the script is run again.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/cifar10}
shift || true
for run in ${RUNS:-resnet20 es_resnet20 g_resnet20 es_g_resnet20 resnet20_seed1 es_resnet20_seed1}; do
  if [ -f "$out/$run/metrics.json" ]; then echo "$run done"; continue; fi
  model=${run%_seed*}
  seed=0
  [ "$model" != "$run" ] && seed=${run##*_seed}
  resume=""
  [ -f "$out/$run/state/latest.json" ] && resume="--resume"
  LARQ_ESBNN_QUIET=1 larq-esbnn train "$model" --recipe training/resnet20_cifar10.toml --seed "$seed" \
    --output "$out/$run" $resume "$@"
done
