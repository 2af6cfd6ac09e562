#!/usr/bin/env bash
# Fine-tune on one device. Logs go to the run directory of the config (run_dir).
# Usage: bash scripts/run_standalone_train.sh CONFIG_PATH [PRETRAINED_CKPT] [--key value ...]
#   CONFIG_PATH e.g. FineTune/default.yaml; paths are taken from the folder you run it in.
set -euo pipefail
usage() { echo "Usage: bash $0 CONFIG_PATH [PRETRAINED_CKPT] [--key value ...]   (e.g. FineTune/default.yaml)"; }
if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then usage; exit 0; fi
if [ $# -lt 1 ] || [ "${1#--}" != "$1" ]; then usage >&2; exit 2; fi
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CONFIG="$1"
PRETRAINED="${2:-}"
if [ "${PRETRAINED#--}" != "$PRETRAINED" ]; then PRETRAINED=""; shift 1; else shift $(( $# > 2 ? 2 : $# )); fi
source "$ROOT/scripts/train_args.sh"
source "$ROOT/scripts/setup_env.sh"
set +e
"$VENV/bin/python" "$ROOT/train.py" "${TRAIN_ARGS[@]}" "$@"
status=$?
set -e
echo "train.py exited with $status"
exit $status
