#!/usr/bin/env bash
# Evaluate a checkpoint on the val split: COCO bbox + segm mAP, per-class AP, metrics JSON.
# Usage: bash scripts/run_eval.sh CKPT [CONFIG_PATH] [--out DIR] [--data_path ROOT] [--key value ...]
# Paths are taken from the folder you run it in.
set -euo pipefail
usage() { echo "Usage: bash $0 CKPT [CONFIG_PATH] [--out DIR] [--data_path ROOT] [--ann_file FILE] [--key value ...]"; }
if [ $# -lt 1 ] || [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
  if [ $# -lt 1 ]; then usage >&2; exit 2; fi
  usage
  exit 0
fi
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CKPT="$1"; shift
CONFIG="$ROOT/FineTune/default.yaml"
if [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; then CONFIG="$1"; shift; fi
if [ ! -f "$CKPT" ]; then echo "error: checkpoint not found: $CKPT" >&2; exit 2; fi
if [ ! -f "$CONFIG" ]; then echo "error: config file not found: $CONFIG" >&2; exit 2; fi
if [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"; else PY="${PYTHON:-python3}"; fi
export GLOG_v="${GLOG_v:-3}"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
set +e
"$PY" "$ROOT/eval.py" --ckpt "$CKPT" --config_path "$CONFIG" "$@"
status=$?
set -e
if [ $status -ne 0 ]; then echo "eval.py exited with $status" >&2; fi
exit $status
