"""Tests of the matplotlib loss plot (src/viz/plots.py via src/viz/loss_curve.py)."""

import cv2
import numpy as np
import pytest

from src.batch import LOSS_NAMES
from src.viz.loss_curve import main, moving_average, read_losses
from src.viz.plots import loss_figure


def test_moving_average_exact():
    np.testing.assert_allclose(moving_average(np.array([2.0, 4.0, 6.0, 8.0]), 2), [2.0, 3.0, 5.0, 7.0])


def _write_csv(path, totals, lrs=None, steps=None):
    header = ["epoch", "step", "total", *LOSS_NAMES, "lr", "loss_scale", "step_seconds"]
    lines = [",".join(header)]
    steps = steps if steps is not None else range(1, len(totals) + 1)
    lrs = lrs if lrs is not None else [0.01] * len(totals)
    for step, total, lr in zip(steps, totals, lrs):
        components = [str(total * (i + 1) / 15) for i in range(len(LOSS_NAMES))]
        lines.append(",".join(["1", str(step), str(total)] + components + [str(lr), "1", "0.5"]))
    path.write_text("\n".join(lines) + "\n")


def test_plot_has_every_component_and_the_lr_on_a_second_axis(tmp_path):
    csv_path, png_path = tmp_path / "losses.csv", tmp_path / "curve.png"
    totals = np.linspace(5.0, 1.0, 40)
    lrs = np.concatenate([np.linspace(0.001, 0.02, 10), np.full(30, 0.02)])
    _write_csv(csv_path, totals, lrs)
    losses = read_losses(str(csv_path))
    figure = loss_figure(losses, LOSS_NAMES, smoothing=1)
    loss_axes, lr_axes = figure.axes
    lines = {line.get_label(): line for line in loss_axes.get_lines()}
    assert set(lines) == {"total (raw)", "total", *LOSS_NAMES}
    np.testing.assert_allclose(lines["total"].get_ydata(), totals)
    np.testing.assert_allclose(lines[LOSS_NAMES[-1]].get_ydata(), totals * len(LOSS_NAMES) / 15)
    (lr_line,) = lr_axes.get_lines()
    np.testing.assert_allclose(lr_line.get_ydata(), lrs)
    assert loss_axes.get_yscale() == "linear"
    assert loss_figure(losses, LOSS_NAMES, log_scale=True).axes[0].get_yscale() == "log"

    assert main([str(csv_path), str(png_path), "--log_scale"]) == 0
    image = cv2.imread(str(png_path))
    assert image is not None and image.shape[0] > 300 and image.shape[1] > 600
    # something besides white was drawn in every quarter of the picture
    height, width = image.shape[:2]
    for quarter in (image[: height // 2, : width // 2], image[height // 2:, width // 2:]):
        assert (quarter < 200).any()


def test_resumed_run_rows_count_once(tmp_path):
    """A resumed run appends steps 3..4 again: the later rows win, steps stay unique and sorted."""
    csv_path = tmp_path / "losses.csv"
    _write_csv(csv_path, [4.0, 3.0, 2.0, 1.5, 2.5, 1.0], steps=[1, 2, 3, 4, 3, 4])
    losses = read_losses(str(csv_path))
    np.testing.assert_array_equal(losses["step"], [1, 2, 3, 4])
    np.testing.assert_allclose(losses["total"], [4.0, 3.0, 2.5, 1.0])


def test_bad_csv_is_a_clear_error(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="not a losses.csv written by train.py"):
        read_losses(str(path))
    assert main([str(path), str(tmp_path / "o.png")]) == 2
    _write_csv(path, [1.0, 2.0])
    path.write_text(path.read_text().replace("2.0,", "oops,", 1))
    with pytest.raises(ValueError, match="line 3: not a number"):
        read_losses(str(path))
