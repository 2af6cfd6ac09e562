"""Plot the training losses of a run's ``losses.csv`` into a PNG (matplotlib, see src/viz/plots.py).

    python -m src.viz.loss_curve RUN_DIR/losses.csv RUN_DIR/loss_curve.png [--log_scale] [--smoothing N]

One smoothed line per loss component and the total (also raw, faintly), the learning rate on a
second y axis. Rows of a step that appears twice (a resumed run appended to the file) count once,
the last one wins.
"""

import argparse
import csv
import logging
import sys
from typing import Dict, Optional, Sequence

import numpy as np

from src.batch import LOSS_NAMES
from src.viz.plots import loss_figure, moving_average, save_png
from src.engine.runtime import EXIT_BAD_INPUT, EXIT_OK

logger = logging.getLogger(__name__)

SMOOTHING_WINDOW = 10
REQUIRED_COLUMNS = ("step", "total") + LOSS_NAMES
OPTIONAL_COLUMNS = ("lr",)

__all__ = ["read_losses", "moving_average", "main", "SMOOTHING_WINDOW"]


def read_losses(csv_path: str) -> Dict[str, np.ndarray]:
    """Columns ``step``, ``total``, each loss of LOSS_NAMES and (if present) ``lr`` as float arrays.

    Returns:
        {column: [N] float64} sorted by step, one row per step (the last of duplicates).

    Raises:
        ValueError: missing file, missing columns, or a cell that is not a number (names row and column).
    """
    try:
        with open(csv_path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except FileNotFoundError as e:
        raise ValueError(f"{csv_path}: loss log not found") from e
    if not rows or any(name not in rows[0] for name in REQUIRED_COLUMNS):
        raise ValueError(f"{csv_path}: not a losses.csv written by train.py (need columns "
                         f"{', '.join(REQUIRED_COLUMNS)})")
    names = REQUIRED_COLUMNS + tuple(n for n in OPTIONAL_COLUMNS if n in rows[0])
    by_step = {}
    for line, row in enumerate(rows, start=2):
        try:
            values = {name: float(row[name]) for name in names}
        except (TypeError, ValueError) as e:
            raise ValueError(f"{csv_path}: line {line}: not a number in {row}") from e
        by_step[values["step"]] = values
    steps = sorted(by_step)
    return {name: np.array([by_step[s][name] for s in steps]) for name in names}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Plot losses.csv from train.py into a PNG.")
    parser.add_argument("csv_path")
    parser.add_argument("png_path")
    parser.add_argument("--log_scale", action="store_true", help="logarithmic loss axis")
    parser.add_argument("--smoothing", type=int, default=SMOOTHING_WINDOW,
                        help=f"moving-average window in steps (default {SMOOTHING_WINDOW}; 1 = raw)")
    args = parser.parse_args(argv)
    if args.smoothing < 1:
        parser.error(f"--smoothing must be >= 1, got {args.smoothing}")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        losses = read_losses(args.csv_path)
        save_png(loss_figure(losses, LOSS_NAMES, args.smoothing, args.log_scale), args.png_path)
    except (ValueError, OSError) as e:
        logger.error("%s", e)
        return EXIT_BAD_INPUT
    first, last = moving_average(losses["total"], args.smoothing)[[0, -1]]
    logger.info("wrote %s (%d steps, smoothed total loss %.3f -> %.3f)", args.png_path, len(losses["step"]), first, last)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
