#!/usr/bin/env bash
# Label Studio round trip of pre-labels on a real local server: starts `label-studio` on 127.0.0.1
# with a throw-away data folder, creates a project, imports the pre-labels (predictions), accepts
# them as annotations, exports COCO and reads it back with src/corrections.py
# (scripts/label_studio_roundtrip.py compares every instance: count, class, mask IoU >= 0.95).
# Usage: bash scripts/check_label_studio.sh PRELABEL_DIR IMAGE_DIR
#   PRELABEL_DIR  --out of: python predict.py --export labelstudio --input IMAGE_DIR ...
#   IMAGE_DIR     the images (served to the server by its local file storage)
# Environment: LABEL_STUDIO (the label-studio executable; default: the one on PATH; install it in a
# venv of its own, e.g. python3 -m venv /opt/venv-ls && /opt/venv-ls/bin/pip install label-studio),
# LABEL_STUDIO_PORT (default 18080). Exit codes: 0 every instance came back, 1 mismatch or the
# server did not start, 2 bad arguments.
set -euo pipefail
usage() { echo "Usage: bash $0 PRELABEL_DIR IMAGE_DIR   (LABEL_STUDIO=/path/to/label-studio, LABEL_STUDIO_PORT=18080)"; }
if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then usage; exit 0; fi
if [ $# -ne 2 ]; then usage >&2; exit 2; fi
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ ! -d "$1" ]; then echo "error: pre-label folder not found: $1" >&2; exit 2; fi
if [ ! -d "$2" ]; then echo "error: image folder not found: $2" >&2; exit 2; fi
PRELABELS="$(cd "$1" && pwd)"
IMAGES="$(cd "$2" && pwd)"
LS_BIN="${LABEL_STUDIO:-$(command -v label-studio || true)}"
if [ -z "$LS_BIN" ] || [ ! -x "$LS_BIN" ]; then
  echo "error: label-studio not found; set LABEL_STUDIO=/path/to/venv/bin/label-studio" >&2; exit 2
fi
if [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"; else PY="${PYTHON:-python3}"; fi
PORT="${LABEL_STUDIO_PORT:-18080}"
TOKEN="$("$PY" -c 'import secrets; print(secrets.token_hex(20))')"
WORK="$(mktemp -d)"
SERVER_PID=""
cleanup() { if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi; rm -rf "$WORK"; }
trap cleanup EXIT

# (not `label-studio --version`: it asks PyPI for the latest release and hangs offline)
echo "starting $LS_BIN on 127.0.0.1:$PORT (a minute or two) ..."
LABEL_STUDIO_BASE_DATA_DIR="$WORK/base" LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true \
LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT="$(dirname "$IMAGES")" \
  "$LS_BIN" start --no-browser --data-dir "$WORK/data" --internal-host 127.0.0.1 -p "$PORT" \
  --username roundtrip@example.com --password "$TOKEN" --user-token "$TOKEN" --enable-legacy-api-token \
  >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 1 120); do
  if curl -sf "http://127.0.0.1:$PORT/health" >/dev/null 2>&1; then break; fi
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then echo "FAIL: Label Studio exited; last lines:" >&2; tail -n 20 "$WORK/server.log" >&2; exit 1; fi
  sleep 2
done
if ! curl -sf "http://127.0.0.1:$PORT/health" >/dev/null 2>&1; then
  echo "FAIL: Label Studio did not answer on port $PORT within 240 s" >&2; tail -n 20 "$WORK/server.log" >&2; exit 1
fi
GLOG_v=3 PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" "$PY" "$ROOT/scripts/label_studio_roundtrip.py" \
  "$PRELABELS" "$IMAGES" --url "http://127.0.0.1:$PORT" --token "$TOKEN"
