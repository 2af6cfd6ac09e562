"""Box geometry shared by the RPN, the target Cells, the proposal generator and the heads.

Every box is ``[x1, y1, x2, y2]`` in float pixels with continuous coordinates: a box covering
pixel columns 0..9 has ``x1 = 0, x2 = 10`` and width ``x2 - x1`` (no ``+1``).

The MindSpore functions work in graph mode (static shapes, no Python loops over boxes) and
broadcast over leading dimensions. The ``np_*`` twins compute the same in NumPy for tests,
evaluation and constant set-up.

Box deltas (means 0, per-coordinate ``stds``)::

    dx = (tcx - rcx) / rw / std0      dy = (tcy - rcy) / rh / std1
    dw = log(tw / rw) / std2          dh = log(th / rh) / std3

``plus_one=True`` switches the box coder to the model zoo's ``BoundingBoxEncode/Decode``
convention (``src/maskrcnn/numerics.py``): widths/heights are ``x2 - x1 + 1`` and a decoded box of
width ``w'`` has corners ``cx -+ 0.5 (w' - 1)``. ``clamp_below=False`` clamps the decoded
``dw, dh`` only from above (torchvision).
"""

import math

import numpy as np
from mindspore import ops

# Decoded log size ratios are clamped here so exp() cannot overflow (a 1000-pixel box from a
# 16-pixel reference is the largest meaningful jump).
DEFAULT_MAX_LOG_RATIO = math.log(1000.0 / 16.0)
# Widths/heights below this are treated as this when dividing, so degenerate (padding) boxes
# give finite deltas instead of inf/NaN.
MIN_BOX_SIDE = 1e-6


def _split(boxes):
    """The four coordinate columns of ``boxes [..., 4]``, each ``[...]``."""
    return boxes[..., 0], boxes[..., 1], boxes[..., 2], boxes[..., 3]


def box_area(boxes):
    """Area of ``boxes [..., 4]`` -> ``[...]`` (0 for inverted boxes)."""
    x1, y1, x2, y2 = _split(boxes)
    return ops.relu(x2 - x1) * ops.relu(y2 - y1)


def _pair_shape(a_shape, b_shape):
    """``[..., N, M]`` for ``a [..., N, 4]`` and ``b [..., M, 4]`` (leading dimensions broadcast)."""
    lead_a, lead_b = a_shape[:-2], b_shape[:-2]
    rank = max(len(lead_a), len(lead_b))
    lead_a = (1,) * (rank - len(lead_a)) + lead_a
    lead_b = (1,) * (rank - len(lead_b)) + lead_b
    lead = ()
    for i in range(rank):
        lead = lead + (max(lead_a[i], lead_b[i]),)
    return lead + (a_shape[-2], b_shape[-2])


def broadcast_pair(a_values, b_values, shape):
    """``a_values [..., N]`` and ``b_values [..., M]`` both broadcast to ``shape`` ``[..., N, M]``.

    MindSpore's CPU kernels are ~11x slower on an element-wise op that broadcasts an operand
    than on equal shapes, the ``broadcast_to`` included (BENCHMARKS.md, "Broadcasting
    element-wise ops"): the pairwise tensors (anchors x ground truth, [B, A, N]) are made
    full-size once and every later op runs on equal shapes.
    """
    return (ops.broadcast_to(ops.expand_dims(a_values, -1), shape),
            ops.broadcast_to(ops.expand_dims(b_values, -2), shape))


def _intersection(a, b, shape):
    """Pairwise intersection areas of ``a [..., N, 4]`` and ``b [..., M, 4]`` -> ``shape`` ``[..., N, M]``."""
    ax1, ay1, ax2, ay2 = _split(a)
    bx1, by1, bx2, by2 = _split(b)
    ax1, bx1 = broadcast_pair(ax1, bx1, shape)
    ay1, by1 = broadcast_pair(ay1, by1, shape)
    ax2, bx2 = broadcast_pair(ax2, bx2, shape)
    ay2, by2 = broadcast_pair(ay2, by2, shape)
    left = ops.maximum(ax1, bx1)
    top = ops.maximum(ay1, by1)
    right = ops.minimum(ax2, bx2)
    bottom = ops.minimum(ay2, by2)
    return ops.relu(right - left) * ops.relu(bottom - top)


def box_iou(a, b):
    """Pairwise intersection over union.

    Args:
        a: ``[..., N, 4]`` boxes ``[x1, y1, x2, y2]``.
        b: ``[..., M, 4]`` boxes; leading dimensions broadcast with ``a``'s.

    Returns:
        ``[..., N, M]`` float IoU; 0 where both boxes are empty (no division by zero).
    """
    shape = _pair_shape(a.shape, b.shape)
    inter = _intersection(a, b, shape)
    area_a, area_b = broadcast_pair(box_area(a), box_area(b), shape)
    union = area_a + area_b - inter
    return inter / ops.maximum(union, MIN_BOX_SIDE * MIN_BOX_SIDE)


def box_ioa(a, b):
    """Pairwise intersection over the area of ``a`` (used for crowd regions).

    Args:
        a: ``[..., N, 4]`` boxes (anchors or RoIs).
        b: ``[..., M, 4]`` boxes (crowd regions).

    Returns:
        ``[..., N, M]``: ``area(a ∩ b) / area(a)``, 0 for empty ``a``.
    """
    shape = _pair_shape(a.shape, b.shape)
    area_a = ops.broadcast_to(ops.expand_dims(box_area(a), -1), shape)
    return _intersection(a, b, shape) / ops.maximum(area_a, MIN_BOX_SIDE * MIN_BOX_SIDE)


def _centre_size(boxes, plus_one=False):
    """(cx, cy, w, h) of ``boxes [..., 4]``; w, h (``+ 1`` if ``plus_one``) clamped to ``MIN_BOX_SIDE``."""
    x1, y1, x2, y2 = _split(boxes)
    if plus_one:
        w = ops.maximum(x2 - x1 + 1.0, MIN_BOX_SIDE)
        h = ops.maximum(y2 - y1 + 1.0, MIN_BOX_SIDE)
    else:
        w = ops.maximum(x2 - x1, MIN_BOX_SIDE)
        h = ops.maximum(y2 - y1, MIN_BOX_SIDE)
    return x1 + 0.5 * (x2 - x1), y1 + 0.5 * (y2 - y1), w, h


def encode_boxes(ref, target, stds, plus_one=False):
    """Regression deltas that turn ``ref`` into ``target``.

    Args:
        ref: ``[..., 4]`` reference boxes (anchors or RoIs).
        target: ``[..., 4]`` boxes to reach (matched ground truth), same shape.
        stds: 4 Python floats dividing (dx, dy, dw, dh).
        plus_one: widths/heights are ``x2 - x1 + 1`` (model-zoo convention).

    Returns:
        ``[..., 4]`` deltas ``(dx, dy, dw, dh)``; finite even for empty boxes.
    """
    rcx, rcy, rw, rh = _centre_size(ref, plus_one)
    tcx, tcy, tw, th = _centre_size(target, plus_one)
    dx = (tcx - rcx) / rw / stds[0]
    dy = (tcy - rcy) / rh / stds[1]
    dw = ops.log(tw / rw) / stds[2]
    dh = ops.log(th / rh) / stds[3]
    return ops.stack((dx, dy, dw, dh), axis=-1)


def decode_boxes(ref, deltas, stds, max_log_ratio=DEFAULT_MAX_LOG_RATIO, plus_one=False,
                 clamp_below=True):
    """Apply regression deltas to reference boxes (inverse of :func:`encode_boxes`).

    Args:
        ref: ``[..., 4]`` reference boxes.
        deltas: ``[..., 4]`` deltas ``(dx, dy, dw, dh)``; broadcast with ``ref``.
        stds: 4 Python floats multiplying the deltas.
        max_log_ratio: ``dw * std2`` and ``dh * std3`` are clamped to ``±max_log_ratio``
            (to ``<= max_log_ratio`` only when ``clamp_below`` is False).
        plus_one: model-zoo convention (module docstring).
        clamp_below: also clamp from below (False: torchvision).

    Returns:
        ``[..., 4]`` boxes ``[x1, y1, x2, y2]`` (not clipped to the image).
    """
    rcx, rcy, rw, rh = _centre_size(ref, plus_one)
    dx = deltas[..., 0] * stds[0]
    dy = deltas[..., 1] * stds[1]
    if clamp_below:
        dw = ops.clamp(deltas[..., 2] * stds[2], -max_log_ratio, max_log_ratio)
        dh = ops.clamp(deltas[..., 3] * stds[3], -max_log_ratio, max_log_ratio)
    else:
        dw = ops.minimum(deltas[..., 2] * stds[2], max_log_ratio)
        dh = ops.minimum(deltas[..., 3] * stds[3], max_log_ratio)
    cx = rcx + dx * rw
    cy = rcy + dy * rh
    half_w = 0.5 * rw * ops.exp(dw)
    half_h = 0.5 * rh * ops.exp(dh)
    if plus_one:
        # Corners at centre -+ (w' - 1) / 2 (BoundingBoxDecode).
        return ops.stack((cx - half_w + 0.5, cy - half_h + 0.5, cx + half_w - 0.5, cy + half_h - 0.5),
                         axis=-1)
    return ops.stack((cx - half_w, cy - half_h, cx + half_w, cy + half_h), axis=-1)


def clip_boxes(boxes, image_shape, input_size=None):
    """Clip boxes to the un-padded image (or to the padded network input).

    Args:
        boxes: ``[B, K, 4]`` boxes in network-input pixels.
        image_shape: ``[B, 4]`` rows ``(resized_h, resized_w, scale_h, scale_w)``.
        input_size: ``(height, width)`` Python numbers: clip to this instead of the image
            (the model zoo clips to the padded input).

    Returns:
        ``[B, K, 4]`` with x in ``[0, resized_w]`` and y in ``[0, resized_h]``.
    """
    if input_size is not None:
        limits = ops.stack((ops.scalar_to_tensor(float(input_size[1]), boxes.dtype),
                            ops.scalar_to_tensor(float(input_size[0]), boxes.dtype)) * 2)
        return ops.minimum(ops.relu(boxes), limits)
    height = ops.expand_dims(image_shape[:, 0:1], -1).astype(boxes.dtype)  # [B, 1, 1]
    width = ops.expand_dims(image_shape[:, 1:2], -1).astype(boxes.dtype)
    limits = ops.concat((width, height, width, height), axis=-1)  # [B, 1, 4]
    return ops.minimum(ops.relu(boxes), limits)


# ---- NumPy twins ---------------------------------------------------------------------------

def np_box_area(boxes):
    """NumPy :func:`box_area`."""
    boxes = np.asarray(boxes, dtype=np.float64)
    return np.clip(boxes[..., 2] - boxes[..., 0], 0, None) * np.clip(boxes[..., 3] - boxes[..., 1], 0, None)


def np_box_iou(a, b):
    """NumPy :func:`box_iou`: ``a [..., N, 4]``, ``b [..., M, 4]`` -> ``[..., N, M]`` float32."""
    a = np.asarray(a, dtype=np.float64)[..., :, None, :]
    b = np.asarray(b, dtype=np.float64)[..., None, :, :]
    width = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    height = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = width * height
    union = np_box_area(a) + np_box_area(b) - inter
    return (inter / np.maximum(union, MIN_BOX_SIDE * MIN_BOX_SIDE)).astype(np.float32)


def _np_centre_size(boxes, plus_one=False):
    boxes = np.asarray(boxes, dtype=np.float64)
    extra = 1.0 if plus_one else 0.0
    w = np.maximum(boxes[..., 2] - boxes[..., 0] + extra, MIN_BOX_SIDE)
    h = np.maximum(boxes[..., 3] - boxes[..., 1] + extra, MIN_BOX_SIDE)
    cx = boxes[..., 0] + 0.5 * (boxes[..., 2] - boxes[..., 0])
    cy = boxes[..., 1] + 0.5 * (boxes[..., 3] - boxes[..., 1])
    return cx, cy, w, h


def np_encode_boxes(ref, target, stds, plus_one=False):
    """NumPy :func:`encode_boxes` -> ``[..., 4]`` float32."""
    rcx, rcy, rw, rh = _np_centre_size(ref, plus_one)
    tcx, tcy, tw, th = _np_centre_size(target, plus_one)
    deltas = np.stack(((tcx - rcx) / rw / stds[0], (tcy - rcy) / rh / stds[1],
                       np.log(tw / rw) / stds[2], np.log(th / rh) / stds[3]), axis=-1)
    return deltas.astype(np.float32)


def np_decode_boxes(ref, deltas, stds, max_log_ratio=DEFAULT_MAX_LOG_RATIO, plus_one=False,
                    clamp_below=True):
    """NumPy :func:`decode_boxes` -> ``[..., 4]`` float32."""
    rcx, rcy, rw, rh = _np_centre_size(ref, plus_one)
    deltas = np.asarray(deltas, dtype=np.float64)
    low = -max_log_ratio if clamp_below else None
    cx = rcx + deltas[..., 0] * stds[0] * rw
    cy = rcy + deltas[..., 1] * stds[1] * rh
    half_w = 0.5 * rw * np.exp(np.clip(deltas[..., 2] * stds[2], low, max_log_ratio))
    half_h = 0.5 * rh * np.exp(np.clip(deltas[..., 3] * stds[3], low, max_log_ratio))
    inset = 0.5 if plus_one else 0.0
    return np.stack((cx - half_w + inset, cy - half_h + inset, cx + half_w - inset, cy + half_h - inset),
                    axis=-1).astype(np.float32)
