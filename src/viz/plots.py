"""Plots as PNG files with matplotlib's Agg canvas (headless: no display, no pyplot state).

* :func:`loss_figure` -- the training losses of ``losses.csv`` per component, optionally on a
  log scale, with the learning rate on a second y axis;
* :func:`pr_figure` -- precision-recall curves of one class at IoU 0.5 and 0.75;
* :func:`error_breakdown_figure` -- per class, AP at IoU 0.5 and the AP lost to each error kind
  as one stacked bar (see ``src/evaluation/error_analysis.py``).

Every function returns a ``matplotlib.figure.Figure``; :func:`save_png` writes it.
"""

from __future__ import annotations

import os
from typing import Mapping, Optional, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

DPI = 100
LOSS_FIGSIZE = (9.0, 5.0)
PR_FIGSIZE = (4.2, 3.6)
# Total loss drawn thicker and in black, the components in matplotlib's default cycle.
TOTAL_COLOUR = "black"
LR_COLOUR = "tab:gray"
# Error kinds of the breakdown bar, in stacking order, with their colours.
BREAKDOWN_COLOURS = (("ap50", "tab:green"), ("localisation", "tab:orange"), ("confusion", "tab:purple"),
                     ("background", "tab:red"), ("missed", "tab:gray"))
RAW_ALPHA = 0.25


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over up to ``window`` values (same length as the input)."""
    values = np.asarray(values, dtype=np.float64)
    cumulative = np.cumsum(np.insert(values, 0, 0.0))
    counts = np.minimum(np.arange(1, len(values) + 1), window)
    ends = np.arange(1, len(values) + 1)
    return (cumulative[ends] - cumulative[ends - counts]) / counts


def _new_figure(size) -> Figure:
    figure = Figure(figsize=size, dpi=DPI)
    FigureCanvasAgg(figure)
    return figure


def loss_figure(losses: Mapping[str, np.ndarray], components: Sequence[str], smoothing: int = 10,
                log_scale: bool = False, title: str = "training loss") -> Figure:
    """Losses per step: the raw total faintly, the smoothed total and components, the LR on the right.

    Args:
        losses: columns of ``losses.csv``: ``step`` [N], ``total`` [N], each name of
            ``components`` [N] and optionally ``lr`` [N].
        components: the loss components to draw besides the total.
        smoothing: trailing moving-average window in steps (1 = raw).
        log_scale: logarithmic loss axis (non-positive values are not drawn).
        title: axes title.

    Returns:
        the figure; its first axes holds the loss lines (labelled), the second (twin) the LR.
    """
    figure = _new_figure(LOSS_FIGSIZE)
    axes = figure.add_subplot(1, 1, 1)
    steps = np.asarray(losses["step"])
    axes.plot(steps, losses["total"], color=TOTAL_COLOUR, alpha=RAW_ALPHA, linewidth=0.8, label="total (raw)")
    axes.plot(steps, moving_average(losses["total"], smoothing), color=TOTAL_COLOUR, linewidth=2.0, label="total")
    for name in components:
        axes.plot(steps, moving_average(losses[name], smoothing), linewidth=1.2, label=name)
    if log_scale:
        axes.set_yscale("log")
    axes.set_xlabel("step")
    axes.set_ylabel("loss" + (f" (moving average over {smoothing} steps)" if smoothing > 1 else ""))
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    handles, labels = axes.get_legend_handles_labels()
    if "lr" in losses and np.isfinite(losses["lr"]).any():
        lr_axes = axes.twinx()
        (lr_line,) = lr_axes.plot(steps, losses["lr"], color=LR_COLOUR, linestyle="--", linewidth=1.2,
                                  label="learning rate")
        lr_axes.set_ylabel("learning rate", color=LR_COLOUR)
        lr_axes.tick_params(axis="y", colors=LR_COLOUR)
        # plain tick labels: a "1e-2" offset text would sit under the legend
        lr_axes.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:.3g}"))
        handles.append(lr_line)
        labels.append("learning rate")
    # below the axes: the curves and the LR fill the plot area in different corners
    axes.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=4, fontsize="small",
                frameon=False)
    figure.tight_layout()
    return figure


def pr_figure(class_name: str, recall_points: np.ndarray, curves: Mapping[str, np.ndarray]) -> Figure:
    """Precision-recall curves of one class.

    Args:
        class_name: title.
        recall_points: [R] recall values (COCO's 101 points 0, .01, ..., 1).
        curves: {legend label: [R] interpolated precision} (e.g. "IoU 0.50 (AP 0.812)").

    Returns:
        the figure, axes limited to [0, 1] x [0, 1.02].
    """
    figure = _new_figure(PR_FIGSIZE)
    axes = figure.add_subplot(1, 1, 1)
    for label, precision in curves.items():
        axes.plot(recall_points, precision, linewidth=1.8, label=label)
    axes.set_xlim(0.0, 1.0)
    axes.set_ylim(0.0, 1.02)
    axes.set_xlabel("recall")
    axes.set_ylabel("precision")
    axes.set_title(class_name)
    axes.grid(True, alpha=0.3)
    axes.legend(loc="lower left", fontsize="small")
    figure.tight_layout()
    return figure


def error_breakdown_figure(rows: Mapping[str, Mapping[str, Optional[float]]]) -> Figure:
    """One stacked horizontal bar per row: AP50 then the AP lost per error kind (sums to 1).

    Args:
        rows: {row label (class name or "all classes"): {"ap50", "localisation", "confusion",
            "background", "missed"}}; rows with None values (no ground truth) are left out.
    """
    rows = {label: row for label, row in rows.items() if all(row.get(k) is not None for k, _ in BREAKDOWN_COLOURS)}
    figure = _new_figure((7.5, 0.5 + 0.45 * max(len(rows), 1)))
    axes = figure.add_subplot(1, 1, 1)
    labels = list(rows)
    positions = np.arange(len(labels))
    left = np.zeros(len(labels))
    for kind, colour in BREAKDOWN_COLOURS:
        widths = np.array([rows[label][kind] for label in labels], dtype=np.float64)
        axes.barh(positions, widths, left=left, color=colour, label="AP50" if kind == "ap50" else f"lost: {kind}")
        left += widths
    axes.set_yticks(positions)
    axes.set_yticklabels(labels)
    axes.invert_yaxis()
    axes.set_xlim(0.0, 1.0)
    axes.set_xlabel("AP at IoU 0.5 and the AP lost to each error kind")
    # legend above the bars, clear of the axis label below them
    axes.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(BREAKDOWN_COLOURS), fontsize="small",
                frameon=False)
    figure.tight_layout()
    return figure


def save_png(figure: Figure, path: str) -> str:
    """Write ``figure`` as PNG to ``path`` (folders created); returns ``path``.

    Raises:
        OSError: naming the path when it cannot be written.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    try:
        figure.savefig(path, format="png", dpi=DPI, bbox_inches="tight")
    except OSError as e:
        raise OSError(f"{path}: could not write the picture ({e})") from e
    return path
