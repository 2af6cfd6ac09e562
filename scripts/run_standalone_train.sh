#!/usr/bin/env bash
# Fine-tune on one device. Logs go to the run directory of the config (run_dir).
# Usage: bash scripts/run_standalone_train.sh [CONFIG_PATH] [PRETRAINED_CKPT] [--key value ...]
set -euo pipefail
if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
  echo "Usage: bash $0 [CONFIG_PATH] [PRETRAINED_CKPT] [--key value ...]"; exit 0
fi
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CONFIG="${1:-$ROOT/FineTune/default.yaml}"
PRETRAINED="${2:-}"
shift $(( $# > 2 ? 2 : $# ))
source "$ROOT/scripts/train_args.sh"
source "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
set +e
"$VENV/bin/python" train.py "${TRAIN_ARGS[@]}" "$@"
status=$?
set -e
echo "train.py exited with $status"
exit $status
