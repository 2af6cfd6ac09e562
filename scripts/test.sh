#!/usr/bin/env bash
# Set up the environment and run the whole test suite.
# Usage: bash scripts/test.sh [extra pytest arguments]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
exec "$VENV/bin/python" -m pytest tests "$@"
