#!/usr/bin/env bash
# The ES / G ablation of issue 7: four runs with the same recipe.
# Usage: training/run_cifar10_ablation.sh [OUT_ROOT] [extra train args]
# MODELS="..." picks the runs (default: all four, one after the other). On the
# 2-core machine the table was made with two lanes, each TF process on one thread:
#   TF_NUM_INTRAOP_THREADS=1 MODELS="es_g_resnet20 resnet20" training/run_cifar10_ablation.sh &
#   TF_NUM_INTRAOP_THREADS=1 MODELS="es_resnet20 g_resnet20" training/run_cifar10_ablation.sh &
# Interrupted runs continue from their last checkpoint when the script is run again.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/cifar10}
shift || true
for model in ${MODELS:-resnet20 es_resnet20 g_resnet20 es_g_resnet20}; do
  if [ -f "$out/$model/metrics.json" ]; then echo "$model done"; continue; fi
  resume=""
  [ -f "$out/$model/state/latest.json" ] && resume="--resume"
  LARQ_ESBNN_QUIET=1 larq-esbnn train "$model" --recipe training/resnet20_cifar10.toml \
    --output "$out/$model" $resume "$@"
done
