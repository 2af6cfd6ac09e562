#!/usr/bin/env bash
# Data-parallel fine-tuning with msrun (one process per device; gradients averaged).
# Usage: bash scripts/run_distribute_train.sh DEVICE_NUM [CONFIG_PATH] [PRETRAINED_CKPT] [--key value ...]
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
LOG_DIR="$ROOT/FineTune/runs/msrun_logs"
mkdir -p "$LOG_DIR"
set +e
"$VENV/bin/msrun" --worker_num="$DEVICE_NUM" --local_worker_num="$DEVICE_NUM" --master_port=8118 \
  --log_dir="$LOG_DIR" --join=True train.py "${TRAIN_ARGS[@]}" "$@"
status=$?
set -e
echo "msrun exited with $status (logs in $LOG_DIR)"
exit $status
