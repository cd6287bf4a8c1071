#!/usr/bin/env bash
# Start the CIFAR-10 campaign's lanes in the background, from a frozen copy of the code.
#
#   training/cifar10_campaign/lanes.sh [COMMIT]
#
# COMMIT (default HEAD) is checked out as a git worktree under the cache folder with
# its own virtualenv, so edits to the working tree cannot reach a running job. Each
# lane of LANES (default "resnet20_fp es_resnet20") is "MODEL[,MODEL...][:THREADS[:NICE]]"
# (NICE: the lane's scheduler-autogroup nice value, 0-19, lower runs first):
# its models train one after the other, each with
#   larq-esbnn train MODEL --recipe <its campaign recipe> --output RUNS/MODEL --resume
# which continues RUNS/MODEL from its last checkpoint, or, when that folder is gone,
# from the snapshot (snapshots/MODEL) at its position of the schedule. After every epoch
# the lane refreshes that snapshot in THIS checkout (not the frozen copy), so a machine
# lost mid-session costs at most one epoch: commit the snapshot folders before stopping.
# A model whose run already ended (RUNS/MODEL/weights.h5) is skipped. Logs: RUNS/MODEL.log.
# Environment: LANES, DATA (CIFAR-10 folder), LARQ_ESBNN_CACHE.
set -euo pipefail
repo=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
commit=$(git -C "$repo" rev-parse --short "${1:-HEAD}")
cache=${LARQ_ESBNN_CACHE:-$HOME/.cache/larq_esbnn}
tree=$cache/worktrees/$commit
runs=$cache/runs/campaign
data=$(realpath "${DATA:-$repo/../shared/datasets/cifar10}")
[ -d "$data" ] || { echo "lanes.sh: no CIFAR-10 folder at $data (set DATA)" >&2; exit 2; }
mkdir -p "$runs" "$cache/worktrees"
[ -d "$tree" ] || git -C "$repo" worktree add --detach "$tree" "$commit"
if [ ! -x "$tree/.venv/bin/larq-esbnn" ]; then
    python3 -m venv "$tree/.venv" && "$tree/.venv/bin/pip" install -q -e "$tree"
fi
for lane in ${LANES:-resnet20_fp es_resnet20}; do
    IFS=: read -r models threads niceness <<< "$lane"
    script=""
    for model in ${models//,/ }; do
        recipe=binary.toml
        [ "$model" = resnet20_fp ] && recipe=resnet20_fp.toml
        script+="[ -e '$runs/$model/weights.h5' ] || '$tree/.venv/bin/larq-esbnn' train $model "
        script+="--recipe '$tree/training/cifar10_campaign/$recipe' --data '$data' "
        script+="--output '$runs/$model' --resume --snapshot-dir '$repo/training/cifar10_campaign/snapshots/$model' "
        script+=">> '$runs/$model.log' 2>&1; "
    done
    cd "$tree"
    LARQ_ESBNN_QUIET=1 TF_NUM_INTRAOP_THREADS=${threads:-1} TF_NUM_INTEROP_THREADS=1 \
        setsid nohup bash -c "$script" > /dev/null 2>&1 < /dev/null &
    # setsid starts a new scheduler autogroup: its nice value, not the processes' own,
    # decides how the CPU is shared with the other sessions' processes
    echo "${niceness:-0}" > "/proc/$!/autogroup" 2>/dev/null || renice -n "${niceness:-0}" -p $! > /dev/null
    echo "lane $models: ${threads:-1} thread(s), nice ${niceness:-0}, code $commit, runs in $runs"
done
