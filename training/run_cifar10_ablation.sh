#!/usr/bin/env bash
# The ES / G ablation of issue 7: four runs with the same recipe, one after the other
# (the machine has 2 cores). Usage: training/run_cifar10_ablation.sh [OUT_ROOT]
# Add --resume to continue interrupted runs.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/cifar10}
shift || true
for model in resnet20 es_resnet20 g_resnet20 es_g_resnet20; do
  if [ -f "$out/$model/metrics.json" ]; then echo "$model done"; continue; fi
  resume=""
  [ -f "$out/$model/state/latest.json" ] && resume="--resume"
  LARQ_ESBNN_QUIET=1 larq-esbnn train "$model" --recipe training/resnet20_cifar10.toml \
    --output "$out/$model" $resume "$@"
done
