"""Anchor boxes over the FPN levels, computed once in NumPy (they are constants of the graph).

Order (the RPN head flattens its outputs the same way, ``[B, A_l*k, H, W] -> [B, H, W, A_l, k]
-> [B, H*W*A_l, k]``, levels concatenated): levels P2..P6 one after the other; within a level
row-major over the feature map (y, then x); within one location the ratios in the given order,
and for each ratio the scales in the given order.

Anchor at feature location (y, x) of a level with stride s: centre ``((x + 0.5) s, (y + 0.5) s)``,
size ``scale * s``, ``ratio = h / w`` with ``h = size * sqrt(ratio)`` and ``w = size / sqrt(ratio)``
(so the area is ``size**2`` for every ratio). Boxes are ``[x1, y1, x2, y2]`` pixels. That is the
``"centred"`` layout; ``layout`` selects the conventions of other implementations
(``src/maskrcnn/numerics.py``), which anchor the boxes at the cell corner ``(x s, y s)``:

- ``"legacy"`` (model zoo): base box ``[0, 0, s - 1, s - 1]`` with centre ``c = (s - 1) / 2``,
  corners ``c -+ 0.5 (w - 1)`` and ``c -+ 0.5 (h - 1)`` rounded to integers;
- ``"torchvision"``: corners ``round(-+ w / 2)``, ``round(-+ h / 2)`` (half to even); given the
  input size, the cells are ``(input_w // W_l, input_h // H_l)`` pixels apart as in torchvision,
  which differs from the stride where the input is not a multiple of the stride (e.g. P6 of a
  160-pixel side: 3 cells, 53 pixels apart); the anchor sizes stay ``scale * stride``.
"""

import math
from typing import List, Sequence, Tuple

import numpy as np

from src.maskrcnn.numerics import ANCHOR_LAYOUTS, check_choice


def _check_levels(feature_shapes, strides):
    if len(feature_shapes) != len(strides):
        raise ValueError(f"anchors: {len(feature_shapes)} feature shapes but {len(strides)} strides "
                         f"(one stride per FPN level): {list(feature_shapes)} vs {list(strides)}")
    for shape in feature_shapes:
        if len(shape) != 2 or min(shape) <= 0:
            raise ValueError(f"anchors: a feature shape must be (height, width) > 0, got {shape!r}")


def cell_anchors(stride: float, scales: Sequence[float], ratios: Sequence[float],
                 layout: str = "centred") -> np.ndarray:
    """The ``len(ratios) * len(scales)`` anchors of one feature cell of a level.

    Args:
        stride, scales, ratios: as for :func:`generate_anchors`.
        layout: ``"centred"``, ``"legacy"`` or ``"torchvision"`` (module docstring).

    Returns:
        ``[k, 4]`` float64, ratio-major then scale, relative to the cell's anchor point: the cell
        centre for ``"centred"`` (``[-w/2, -h/2, w/2, h/2]``), the cell's top-left corner
        ``(x s, y s)`` for the other layouts.
    """
    check_choice("anchors", "layout", layout, ANCHOR_LAYOUTS)
    if any(r <= 0 for r in ratios) or any(s <= 0 for s in scales):
        raise ValueError(f"anchors: scales and ratios must be positive, got scales={list(scales)} "
                         f"ratios={list(ratios)}")
    rows = []
    for ratio in ratios:
        for scale in scales:
            size = scale * stride
            h = size * math.sqrt(ratio)
            w = size / math.sqrt(ratio)
            if layout == "legacy":
                centre = 0.5 * (stride - 1.0)
                rows.append(tuple(np.round((centre - 0.5 * (w - 1.0), centre - 0.5 * (h - 1.0),
                                            centre + 0.5 * (w - 1.0), centre + 0.5 * (h - 1.0)))))
            elif layout == "torchvision":
                rows.append(tuple(np.round((-0.5 * w, -0.5 * h, 0.5 * w, 0.5 * h))))
            else:
                rows.append((-0.5 * w, -0.5 * h, 0.5 * w, 0.5 * h))
    return np.asarray(rows, dtype=np.float64)


def generate_anchors(feature_shapes: Sequence[Tuple[int, int]], strides: Sequence[float],
                     scales: Sequence[float], ratios: Sequence[float],
                     layout: str = "centred", input_size=None) -> np.ndarray:
    """All anchors of one image.

    Args:
        feature_shapes: ``(height, width)`` of each level (P2..P6), e.g. ``config.feature_shapes``.
        strides: stride of each level in input pixels, e.g. ``(4, 8, 16, 32, 64)``.
        scales: anchor size in units of the level's stride, e.g. ``(8,)``.
        ratios: height / width ratios, e.g. ``(0.5, 1, 2)``.
        layout: ``"centred"`` (native), ``"legacy"`` (zoo) or ``"torchvision"``.
        input_size: ``(height, width)`` of the padded network input; used by the
            ``"torchvision"`` layout only (cell spacing, module docstring).

    Returns:
        ``[A, 4]`` float32 ``[x1, y1, x2, y2]``, ``A = sum(h*w) * len(ratios) * len(scales)``.
    """
    _check_levels(feature_shapes, strides)
    # Where a cell's anchors are attached, in cells: its centre (centred) or its corner.
    cell_offset = 0.5 if layout == "centred" else 0.0
    levels = []
    for (height, width), stride in zip(feature_shapes, strides):
        base = cell_anchors(stride, scales, ratios, layout)  # [k, 4]
        ys, xs = np.meshgrid(np.arange(height, dtype=np.float64), np.arange(width, dtype=np.float64),
                             indexing="ij")
        step_y = step_x = stride
        if layout == "torchvision" and input_size is not None:
            step_y, step_x = int(input_size[0]) // height, int(input_size[1]) // width
        cx = ((xs.reshape(-1) + cell_offset) * step_x)[:, None]  # [H*W, 1]
        cy = ((ys.reshape(-1) + cell_offset) * step_y)[:, None]
        centres = np.stack((cx, cy, cx, cy), axis=-1)  # [H*W, 1, 4]
        levels.append((centres + base[None]).reshape(-1, 4))
    return np.concatenate(levels, axis=0).astype(np.float32)


def anchors_per_level(feature_shapes: Sequence[Tuple[int, int]], strides: Sequence[float],
                      scales: Sequence[float], ratios: Sequence[float]) -> List[int]:
    """Number of anchors of each level, in the order of :func:`generate_anchors`.

    Same arguments as :func:`generate_anchors`; returns a list of Python ints.
    """
    _check_levels(feature_shapes, strides)
    per_location = len(scales) * len(ratios)
    return [int(h) * int(w) * per_location for h, w in feature_shapes]
