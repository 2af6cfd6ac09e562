#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv and install the requirements, with
# constraints.txt holding MindSpore at the measured release (requirements.txt allows a range).
# Re-running is cheap: it reinstalls only when a requirements or constraints file changed.
# Usage: bash scripts/setup_env.sh          (sourced by the other scripts)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PYTHON_BIN="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating virtual environment in $VENV"
  "$PYTHON_BIN" -m venv "$VENV"
fi
STAMP="$VENV/.requirements.sha256"
WANT="$(cat "$ROOT/requirements.txt" "$ROOT/requirements-dev.txt" "$ROOT/constraints.txt" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  echo "[setup] installing requirements (MindSpore is ~800 MB on first install)"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    -r "$ROOT/requirements.txt" -r "$ROOT/requirements-dev.txt" -c "$ROOT/constraints.txt"
  echo "$WANT" > "$STAMP"
fi
# MindSpore prints many INFO/WARNING lines on the CPU backend; keep errors only.
export GLOG_v="${GLOG_v:-3}"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
