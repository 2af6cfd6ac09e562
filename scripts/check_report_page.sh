#!/usr/bin/env bash
# Render an evaluation report page (eval.py --report DIR) in headless Chromium from Debian's
# packages: every picture must load, the console must stay silent; writes a screenshot.
# Usage: bash scripts/check_report_page.sh [REPORT_HTML] [SCREENSHOT_PNG] [WINDOW_SIZE]
#   REPORT_HTML  default: a report of a simulated detector built in a temporary folder
#                (scripts/make_demo_report.py; no network or checkpoint needed)
#   SCREENSHOT   default: report_screenshot.png beside the page
#   WINDOW_SIZE  default: 1280,2000 (width,height in pixels of the screenshot)
# Environment: CHROMIUM (the browser command, default chromium; install it with
# `sudo apt-get install -y chromium`: the script installs nothing). Relative paths are taken from
# the folder you run it in. Exit codes: 0 page ok, 1 missing pictures or console messages,
# 2 bad arguments / no browser.
set -euo pipefail
usage() { echo "Usage: bash $0 [REPORT_HTML] [SCREENSHOT_PNG] [WINDOW_SIZE]"; }
if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then usage; exit 0; fi
if [ $# -gt 3 ]; then usage >&2; exit 2; fi
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"; else PY="${PYTHON:-python3}"; fi
export GLOG_v="${GLOG_v:-3}"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

CHROMIUM="${CHROMIUM:-chromium}"
if ! command -v "$CHROMIUM" >/dev/null 2>&1; then
  echo "error: $CHROMIUM is not installed; install it with: sudo apt-get install -y chromium (or set CHROMIUM)" >&2
  exit 2
fi

WORK="$(mktemp -d)"
CHECK_PAGE=""
cleanup() { rm -rf "$WORK"; if [ -n "$CHECK_PAGE" ]; then rm -f "$CHECK_PAGE"; fi; }
trap cleanup EXIT

if [ $# -ge 1 ]; then
  PAGE="$1"
else
  "$PY" "$ROOT/scripts/make_demo_report.py" "$WORK/demo" >/dev/null 2>"$WORK/demo.log" \
    || { cat "$WORK/demo.log" >&2; exit 2; }
  PAGE="$WORK/demo/report/report.html"
fi
if [ ! -f "$PAGE" ]; then echo "error: report page not found: $PAGE" >&2; exit 2; fi
PAGE_DIR="$(cd "$(dirname "$PAGE")" && pwd)"
PAGE="$PAGE_DIR/$(basename "$PAGE")"
SHOT="${2:-$PAGE_DIR/report_screenshot.png}"
WINDOW="${3:-1280,2000}"
FLAGS=(--headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking
       --disable-component-update --disable-sync --hide-scrollbars)

# A copy of the page beside it (same relative picture paths) with a probe script appended: after
# the load event it lists the pictures that did not decode. The report itself has no script.
CHECK_PAGE="$PAGE_DIR/.page_check_$$.html"
"$PY" - "$PAGE" "$CHECK_PAGE" <<'PYEOF'
import sys
page, check = sys.argv[1], sys.argv[2]
text = open(page, encoding="utf-8").read()
probe = ('<script>window.addEventListener("load", () => {'
         'const bad = [...document.images].filter(i => !(i.complete && i.naturalWidth > 0))'
         '.map(i => i.getAttribute("src"));'
         'const p = document.createElement("pre"); p.id = "page-check";'
         'p.textContent = "IMAGES " + document.images.length + " BROKEN " + bad.length + " " + bad.join(" ");'
         'document.body.appendChild(p);'
         'if (bad.length) console.error("missing pictures: " + bad.join(" "));});</script>')
if "</body>" not in text:
    sys.exit(f"{page}: no </body> in the page")
head, _, tail = text.rpartition("</body>")
open(check, "w", encoding="utf-8").write(head + probe + "</body>" + tail)
PYEOF

timeout 180 "$CHROMIUM" "${FLAGS[@]}" --user-data-dir="$WORK/profile_dom" --enable-logging=stderr --v=0 \
  --virtual-time-budget=15000 --dump-dom "file://$CHECK_PAGE" >"$WORK/dom.html" 2>"$WORK/chromium.log" || true
RESULT="$(grep -o 'IMAGES [0-9]* BROKEN [0-9]*[^<]*' "$WORK/dom.html" || true)"
CONSOLE="$(grep ':CONSOLE' "$WORK/chromium.log" || true)"
STATUS=0
if [ -z "$RESULT" ]; then
  echo "FAIL: the page did not finish loading in chromium (log: $(tail -n 3 "$WORK/chromium.log"))" >&2
  STATUS=1
else
  read -r _ NUM_IMAGES _ NUM_BROKEN BROKEN_LIST <<<"$RESULT $(printf ' ')"
  if [ "$NUM_BROKEN" != "0" ]; then echo "FAIL: $NUM_BROKEN of $NUM_IMAGES pictures missing: $BROKEN_LIST" >&2; STATUS=1; fi
  if [ "$NUM_IMAGES" = "0" ]; then echo "FAIL: the page shows no picture" >&2; STATUS=1; fi
fi
if [ -n "$CONSOLE" ]; then echo "FAIL: console messages:"$'\n'"$CONSOLE" >&2; STATUS=1; fi

timeout 180 "$CHROMIUM" "${FLAGS[@]}" --user-data-dir="$WORK/profile_shot" --window-size="$WINDOW" \
  --virtual-time-budget=15000 --screenshot="$SHOT" "file://$PAGE" >/dev/null 2>"$WORK/shot.log" || true
if [ ! -s "$SHOT" ]; then echo "FAIL: no screenshot written to $SHOT" >&2; STATUS=1; fi
if [ "$STATUS" = "0" ]; then
  echo "page ok: $PAGE ($NUM_IMAGES pictures loaded, no console message); screenshot: $SHOT"
fi
exit "$STATUS"
