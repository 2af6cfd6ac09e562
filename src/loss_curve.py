"""Draw the training loss curves from a run's ``losses.csv`` into a PNG (OpenCV, no matplotlib).

    python -m src.loss_curve RUN_DIR/losses.csv RUN_DIR/loss_curve.png
"""

import argparse
import csv
import logging
import sys
from typing import Dict, List, Optional, Sequence

import cv2
import numpy as np

from src.batch import LOSS_NAMES

logger = logging.getLogger(__name__)

CANVAS_HEIGHT, CANVAS_WIDTH = 480, 800
MARGIN = 50
# One BGR colour per curve: total first, then the components in LOSS_NAMES order.
CURVE_COLOURS = ((0, 0, 0), (40, 40, 220), (40, 160, 40), (200, 90, 20), (160, 40, 160), (20, 160, 200))
SMOOTHING_WINDOW = 10


def read_losses(csv_path: str) -> Dict[str, np.ndarray]:
    """Columns ``step``, ``total`` and each loss of LOSS_NAMES as float arrays."""
    try:
        with open(csv_path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except FileNotFoundError as e:
        raise ValueError(f"{csv_path}: loss log not found") from e
    names = ("step", "total") + LOSS_NAMES
    if not rows or any(name not in rows[0] for name in names):
        raise ValueError(f"{csv_path}: not a losses.csv written by train.py (need columns {', '.join(names)})")
    return {name: np.array([float(row[name]) for row in rows]) for name in names}


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over up to ``window`` values (same length as the input)."""
    cumulative = np.cumsum(np.insert(values, 0, 0.0))
    counts = np.minimum(np.arange(1, len(values) + 1), window)
    ends = np.arange(1, len(values) + 1)
    return (cumulative[ends] - cumulative[ends - counts]) / counts


def draw_loss_curves(losses: Dict[str, np.ndarray], title: str = "training loss") -> np.ndarray:
    """A BGR image with one smoothed curve per loss; y axis from 0 to the largest value."""
    canvas = np.full((CANVAS_HEIGHT, CANVAS_WIDTH, 3), 255, np.uint8)
    steps = losses["step"]
    curves = [(name, moving_average(losses[name], SMOOTHING_WINDOW)) for name in ("total",) + LOSS_NAMES]
    finite = np.concatenate([c[np.isfinite(c)] for _, c in curves])
    y_max = float(finite.max()) if finite.size else 1.0
    y_max = y_max if y_max > 0 else 1.0
    x_lo, x_hi = float(steps.min()), float(max(steps.max(), steps.min() + 1))
    plot_w, plot_h = CANVAS_WIDTH - 2 * MARGIN - 110, CANVAS_HEIGHT - 2 * MARGIN

    def to_pixel(x, y):
        px = MARGIN + (x - x_lo) / (x_hi - x_lo) * plot_w
        py = MARGIN + plot_h - y / y_max * plot_h
        return np.stack([px, py], axis=-1).round().astype(np.int32)

    cv2.rectangle(canvas, (MARGIN, MARGIN), (MARGIN + plot_w, MARGIN + plot_h), (180, 180, 180), 1)
    for (name, values), colour in zip(curves, CURVE_COLOURS):
        keep = np.isfinite(values)
        points = to_pixel(steps[keep], values[keep])
        if len(points) > 1:
            cv2.polylines(canvas, [points.reshape(-1, 1, 2)], False, colour, 2 if name == "total" else 1, cv2.LINE_AA)
    for i, ((name, values), colour) in enumerate(zip(curves, CURVE_COLOURS)):
        y = MARGIN + 18 * i + 10
        cv2.line(canvas, (CANVAS_WIDTH - 150, y), (CANVAS_WIDTH - 125, y), colour, 2)
        cv2.putText(canvas, name, (CANVAS_WIDTH - 120, y + 5), cv2.FONT_HERSHEY_SIMPLEX, 0.45, colour, 1, cv2.LINE_AA)
    cv2.putText(canvas, title, (MARGIN, MARGIN - 18), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(canvas, f"{y_max:.3g}", (4, MARGIN + 5), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1)
    cv2.putText(canvas, "0", (MARGIN - 15, MARGIN + plot_h), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1)
    cv2.putText(canvas, f"step {int(x_lo)}..{int(x_hi)}", (MARGIN, CANVAS_HEIGHT - 15),
                cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1)
    return canvas


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Plot losses.csv from train.py into a PNG.")
    parser.add_argument("csv_path")
    parser.add_argument("png_path")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        losses = read_losses(args.csv_path)
    except ValueError as e:
        logger.error("%s", e)
        return 2
    if not cv2.imwrite(args.png_path, draw_loss_curves(losses)):
        logger.error("%s: could not write the picture", args.png_path)
        return 2
    first, last = moving_average(losses["total"], SMOOTHING_WINDOW)[[0, -1]]
    logger.info("wrote %s (%d steps, smoothed total loss %.3f -> %.3f)", args.png_path, len(losses["step"]), first, last)
    return 0


if __name__ == "__main__":
    sys.exit(main())
