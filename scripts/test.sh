#!/usr/bin/env bash
# Set up the environment and run the whole test suite.
# Usage: bash scripts/test.sh [extra pytest arguments]
set -euo pipefail
if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
  echo "Usage: bash $0 [extra pytest arguments, e.g. -k config -x]   (sets up .venv, then runs pytest tests on TEST_WORKERS=2 workers)"
  exit 0
fi
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
# Two workers (pytest-xdist), one test file each at a time: module fixtures are built once, and
# the graph compiles of two files run side by side on the two cores. Files go out in the order of
# tests/conftest.py (the slowest, marked pytest.mark.slow(seconds), first), not by test count.
exec "$VENV/bin/python" -m pytest tests -n "${TEST_WORKERS:-2}" --dist loadfile --no-loadscope-reorder "$@"
