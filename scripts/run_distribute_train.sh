#!/usr/bin/env bash
# Data-parallel fine-tuning with msrun: one train.py process (rank) per device, each on its own
# shard of the training set, gradients averaged over the ranks (see src/engine/distributed.py for the
# learning-rate rule). Rank 0 alone writes the run directory. When a rank fails, msrun stops the
# others and this script prints the last lines of the failing rank's log.
#
# One server: DEVICE_NUM ranks on this machine; every rank's console goes to
# RUN_DIR/msrun_logs/worker_<rank>.log.
# Several servers: run the second form once on every server, with the same total --worker_num, the
# same --master_addr (an address of the node_rank-0 server, which runs msrun's scheduler) and
# --master_port, this server's --local_worker_num and --node_rank (0, 1, ...); this server's ranks
# log to RUN_DIR/msrun_logs/node_<node_rank>/worker_<rank>.log.
# Environment: MS_MASTER_PORT (one server: scheduler port, default a free one), MSRUN_CLUSTER_TIMEOUT
# (s, default 300), RANK_TABLE_FILE (Ascend: an HCCL rank table, passed to msrun --rank_table_file).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NODE_OPTIONS=(--worker_num --local_worker_num --master_addr --master_port --node_rank)

usage() {
  cat <<EOF
Usage: bash scripts/run_distribute_train.sh DEVICE_NUM [CONFIG_PATH] [PRETRAINED_CKPT] [--key value ...]
       bash scripts/run_distribute_train.sh --worker_num N --local_worker_num L --master_addr ADDR \\
            --master_port PORT --node_rank R [CONFIG_PATH] [PRETRAINED_CKPT] [--key value ...]
  first form: DEVICE_NUM ranks on this server.
  second form: one node of a job over several servers; run it on each server: N ranks in all, L on
  this one; ADDR:PORT is msrun's scheduler on the server with node_rank 0; R = 0, 1, ... per server.
  CONFIG_PATH defaults to FineTune/default.yaml; --key value pairs override the recipe.
EOF
}
fail() { echo "error: $*" >&2; exit 2; }
is_count() { [[ "$1" =~ ^[0-9]+$ ]] && [ "$((10#$1))" -ge 1 ]; }

case "${1:-}" in
  -h|--help) usage; exit 0 ;;
  "") usage >&2; exit 2 ;;
esac

declare -A NODE=()
if [[ "$1" == --* ]]; then
  # Second form: the five msrun options, as --name value or --name=value, in any order.
  while [ $# -gt 0 ] && [[ " ${NODE_OPTIONS[*]} " == *" ${1%%=*} "* ]]; do
    name="${1%%=*}"
    if [[ "$1" == *=* ]]; then value="${1#*=}"; shift
    elif [ $# -ge 2 ]; then value="$2"; shift 2
    else usage >&2; exit 2
    fi
    NODE[$name]="$value"
  done
  for name in "${NODE_OPTIONS[@]}"; do
    if [ -z "${NODE[$name]:-}" ]; then echo "missing $name" >&2; usage >&2; exit 2; fi
  done
  WORKER_NUM="${NODE[--worker_num]}"; LOCAL_WORKER_NUM="${NODE[--local_worker_num]}"
  MASTER_ADDR="${NODE[--master_addr]}"; PORT="${NODE[--master_port]}"; NODE_RANK="${NODE[--node_rank]}"
  is_count "$WORKER_NUM" || fail "--worker_num must be a positive integer, got '$WORKER_NUM'"
  is_count "$LOCAL_WORKER_NUM" || fail "--local_worker_num must be a positive integer, got '$LOCAL_WORKER_NUM'"
  [ "$LOCAL_WORKER_NUM" -le "$WORKER_NUM" ] \
    || fail "--local_worker_num $LOCAL_WORKER_NUM is more than --worker_num $WORKER_NUM"
  { [[ "$PORT" =~ ^[0-9]+$ ]] && [ "$PORT" -ge 1 ] && [ "$PORT" -le 65535 ]; } \
    || fail "--master_port must be a TCP port (1-65535), got '$PORT'"
  [[ "$NODE_RANK" =~ ^[0-9]+$ ]] || fail "--node_rank must be 0, 1, ..., got '$NODE_RANK'"
  # msrun numbers this node's ranks from node_rank * local_worker_num.
  [ "$((NODE_RANK * LOCAL_WORKER_NUM))" -lt "$WORKER_NUM" ] \
    || fail "--node_rank $NODE_RANK with --local_worker_num $LOCAL_WORKER_NUM gives ranks from" \
            "$((NODE_RANK * LOCAL_WORKER_NUM)), beyond --worker_num $WORKER_NUM"
  LOG_SUBDIR="node_$NODE_RANK"
  NODE_ARGS=(--master_addr="$MASTER_ADDR" --node_rank="$NODE_RANK")
elif [[ "$1" =~ ^[0-9]+$ ]] && [ "$1" -ge 1 ]; then
  WORKER_NUM="$1"; LOCAL_WORKER_NUM="$1"; PORT="${MS_MASTER_PORT:-}"; NODE_RANK=0
  LOG_SUBDIR=""
  NODE_ARGS=()  # msrun's defaults: the scheduler on this machine
  shift
else
  usage >&2; exit 2
fi
# CONFIG_PATH and PRETRAINED_CKPT are the positional arguments before the first --key.
CONFIG="$ROOT/FineTune/default.yaml"
PRETRAINED=""
if [ $# -gt 0 ] && [[ "$1" != --* ]]; then CONFIG="$1"; shift; fi
if [ $# -gt 0 ] && [[ "$1" != --* ]]; then PRETRAINED="$1"; shift; fi
source "$ROOT/scripts/train_args.sh"
source "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
# msrun starts each rank as `python train.py ...`: the venv's python must come first on PATH.
export PATH="$VENV/bin:$PATH"
# This node's rank for msrun's scheduler process too (msrun tells only the workers): on a host that
# holds the master address, msrun starts a scheduler for every node, and only node 0's may serve.
export MSRUN_NODE_RANK="$NODE_RANK"
RUN_DIR="$(python -m src.engine.distributed run-dir --config_path "$CONFIG" "$@")"
LOG_DIR="$RUN_DIR/msrun_logs${LOG_SUBDIR:+/$LOG_SUBDIR}"
rm -rf "$LOG_DIR"
mkdir -p "$LOG_DIR"
PORT="${PORT:-$(python -m src.engine.distributed free-port)}"
set +e
msrun --worker_num="$WORKER_NUM" --local_worker_num="$LOCAL_WORKER_NUM" --master_port="$PORT" ${NODE_ARGS[@]+"${NODE_ARGS[@]}"} \
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
