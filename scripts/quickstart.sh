#!/usr/bin/env bash
# Quick start on a fresh machine, no download: set up, generate the synthetic COCO-format set,
# fine-tune Mask R-CNN from random initialisation on the CPU, evaluate it, draw pictures.
# Usage: bash scripts/quickstart.sh [--key value ...]   (config overrides for train/eval)
# Works in the repository (FineTune/synthetic, FineTune/runs/quickstart, which it replaces) whatever
# folder it is run from.
set -euo pipefail
if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
  echo "Usage: bash $0 [--key value ...]   (config overrides for train.py and eval.py, e.g. --epoch_size 2)"
  exit 0
fi
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
PY="$VENV/bin/python"
CONFIG="FineTune/default.yaml"
DATA="FineTune/synthetic"
RUN="FineTune/runs/quickstart"
START=$(date +%s)

echo "[1/5] generating the synthetic COCO-format set in $DATA"
"$PY" -m src.synthetic --out "$DATA" --train 100 --val 30 --seed 0

echo "[2/5] fine-tuning from random initialisation (config $CONFIG, run directory $RUN)"
rm -rf "$RUN"
# The steps below use last.ckpt only: no numbered (weights-only) checkpoints are kept.
"$PY" train.py --config_path "$CONFIG" --coco_root "$DATA" --run_dir "$RUN" --keep_checkpoint_max 0 "$@"

echo "[3/5] evaluating $RUN/last.ckpt on the validation split (report page in $RUN/eval/report)"
"$PY" eval.py --config_path "$CONFIG" --coco_root "$DATA" --ckpt "$RUN/last.ckpt" --out "$RUN/eval" \
  --report "$RUN/eval/report" "$@"

echo "[4/5] drawing masks, colour splash and cut-outs for 4 validation images (per-class best-F1 thresholds)"
mkdir -p "$RUN/samples"
ls "$DATA/val2017"/*.jpg | head -n 4 | xargs -I{} cp {} "$RUN/samples/"
"$PY" predict.py --config_path "$CONFIG" --ckpt "$RUN/last.ckpt" --input "$RUN/samples" --out "$RUN/pictures" \
  --score_thr auto --report_json "$RUN/eval/report/report.json"

echo "[5/5] loss curve"
"$PY" -m src.viz.loss_curve "$RUN/losses.csv" "$RUN/loss_curve.png"

END=$(date +%s)
"$PY" - "$RUN" "$((END - START))" <<'PYEOF'
import json, os, sys
run, seconds = sys.argv[1], int(sys.argv[2])
metrics = json.load(open(f"{run}/eval/metrics.json"))
print(f"quick start done in {seconds // 60} min {seconds % 60} s")
print(f"segm AP50 = {metrics['segm']['AP50']:.3f}  segm AP = {metrics['segm']['AP']:.3f}  "
      f"bbox AP50 = {metrics['bbox']['AP50']:.3f}")
print(f"pictures: {run}/pictures  loss curve: {run}/loss_curve.png  metrics: {run}/eval/metrics.json")
print(f"report: {os.path.abspath(run)}/eval/report/report.html (open it in a browser)")
PYEOF
