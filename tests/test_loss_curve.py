import cv2
import numpy as np
import pytest

from src.batch import LOSS_NAMES
from src.loss_curve import CANVAS_HEIGHT, CANVAS_WIDTH, CURVE_COLOURS, MARGIN, main, moving_average, read_losses


def test_moving_average_exact():
    np.testing.assert_allclose(moving_average(np.array([2.0, 4.0, 6.0, 8.0]), 2), [2.0, 3.0, 5.0, 7.0])


def _write_csv(path, totals):
    header = ["epoch", "step", "total", *LOSS_NAMES, "lr", "loss_scale", "step_seconds"]
    lines = [",".join(header)]
    for step, total in enumerate(totals, start=1):
        lines.append(",".join(["1", str(step), str(total)] + [str(total / 5)] * 5 + ["0.01", "1", "0.5"]))
    path.write_text("\n".join(lines) + "\n")


def test_plot_draws_the_total_curve_falling(tmp_path):
    csv_path, png_path = tmp_path / "losses.csv", tmp_path / "curve.png"
    _write_csv(csv_path, np.linspace(5.0, 1.0, 40))
    assert main([str(csv_path), str(png_path)]) == 0
    image = cv2.imread(str(png_path))
    # Inside the plot frame only (labels outside it are black too).
    plot_right = CANVAS_WIDTH - MARGIN - 110
    black = np.all(image == CURVE_COLOURS[0], axis=-1)[MARGIN - 3:CANVAS_HEIGHT - MARGIN + 3, MARGIN + 1:plot_right]
    # The total curve (black) starts high (small y) on the left and ends low on the right.
    columns = np.where(black.any(axis=0))[0]
    left_rows = np.where(black[:, columns.min() + 2])[0]
    right_rows = np.where(black[:, columns.max() - 2])[0]
    assert left_rows.mean() < right_rows.mean() - 100


def test_bad_csv_is_a_clear_error(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="not a losses.csv written by train.py"):
        read_losses(str(path))
    assert main([str(path), str(tmp_path / "o.png")]) == 2
