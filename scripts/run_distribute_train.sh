#!/usr/bin/env bash
# Data-parallel fine-tuning with msrun: one train.py process (rank) per device, each on its own
# shard of the training set, gradients averaged over the ranks (see src/engine/distributed.py for the
# learning-rate rule). Rank 0 alone writes the run directory; every rank's console goes to
# RUN_DIR/msrun_logs/worker_<rank>.log. When a rank fails, msrun stops the others and this script
# prints the last lines of the failing rank's log.
# Usage: bash scripts/run_distribute_train.sh DEVICE_NUM [CONFIG_PATH] [PRETRAINED_CKPT] [--key value ...]
# Environment: MS_MASTER_PORT (scheduler port, default: a free one), MSRUN_CLUSTER_TIMEOUT (s, default 300),
# RANK_TABLE_FILE (Ascend: an HCCL rank table, e.g. hccl_8p.json, passed to msrun --rank_table_file).
set -euo pipefail
if [ $# -lt 1 ] || ! [[ "$1" =~ ^[0-9]+$ ]]; then
  echo "Usage: bash $0 DEVICE_NUM [CONFIG_PATH] [PRETRAINED_CKPT] [--key value ...]" >&2; exit 2
fi
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEVICE_NUM="$1"
CONFIG="${2:-$ROOT/FineTune/default.yaml}"
PRETRAINED="${3:-}"
shift $(( $# > 3 ? 3 : $# ))
source "$ROOT/scripts/train_args.sh"
source "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
# msrun starts each rank as `python train.py ...`: the venv's python must come first on PATH.
export PATH="$VENV/bin:$PATH"
RUN_DIR="$(python -m src.engine.distributed run-dir --config_path "$CONFIG" "$@")"
LOG_DIR="$RUN_DIR/msrun_logs"
rm -rf "$LOG_DIR"
mkdir -p "$LOG_DIR"
PORT="${MS_MASTER_PORT:-$(python -m src.engine.distributed free-port)}"
set +e
msrun --worker_num="$DEVICE_NUM" --local_worker_num="$DEVICE_NUM" --master_port="$PORT" \
  --cluster_time_out="${MSRUN_CLUSTER_TIMEOUT:-300}" --log_dir="$LOG_DIR" --join=True \
  ${RANK_TABLE_FILE:+--rank_table_file="$RANK_TABLE_FILE"} \
  train.py "${TRAIN_ARGS[@]}" "$@"
status=$?
set -e
if [ "$status" -ne 0 ]; then
  # The failing rank is the one whose log holds a traceback or an error line; the others were
  # stopped by msrun.
  for log in "$LOG_DIR"/worker_*.log; do
    [ -f "$log" ] || continue
    if grep -qE "Traceback|ERROR train|Error:" "$log"; then
      rank="${log##*worker_}"; rank="${rank%.log}"
      echo "rank $rank failed; last lines of $log (MindSpore INFO/WARNING lines left out):" >&2
      grep -vE '^\[(INFO|WARNING|DEBUG)\]|^[[:space:]]*$' "$log" | tail -n 20 >&2
    fi
  done
fi
echo "msrun exited with $status (logs in $LOG_DIR)"
exit $status
