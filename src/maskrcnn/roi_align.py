"""Multi-level RoIAlign: pool each RoI from the FPN level that matches its size.

Level of a RoI of width w and height h (input pixels): ``k = floor(4 + log2(sqrt(w*h) / 224))``
clamped to ``[2, 5]`` (P2..P5). Sampling is "aligned": a box coordinate ``x`` maps to the
feature coordinate ``x / stride - 0.5``, so pixel centres line up, and each output cell averages
``sampling_ratio x sampling_ratio`` bilinear samples.

Static shapes and one pooling call: the levels are packed side by side into one "canvas" map
per image (P2 in the bottom-right corner, the coarser levels stacked on its left), each level
with a one-cell replicate border (P2: top and left only, see :func:`canvas_layout`), and every RoI is mapped into its level's block in feature-cell units. One
ROIAlign over the canvas then costs what one level costs (pooling every RoI on every level and
masking would cost 4x), and the gradient reaches only the RoI's own level. RoIs are clipped to
their level's feature extent (``[0, W_l * stride]``), which keeps every sample inside its block;
the replicate border reproduces RoIAlign's clamping at the map edge exactly.

Conventions (``src/maskrcnn/numerics.py``): ``alignment="aligned"`` is the above;
``alignment="legacy"`` maps ``x`` to ``x / stride`` (no half-pixel shift) and widens every RoI to
at least one feature cell, which is what MindSpore's ``ROIAlign(roi_end_mode=0)`` (model zoo) and
torchvision's ``roi_align(aligned=False)`` compute. ``level_rule`` selects the level formula
(:func:`roi_levels`). In the legacy mode a RoI narrower than one cell at the far (right/bottom)
edge of its level samples beyond the map, where ROIAlign reads zeros: exact on P2, whose far edges
are the canvas edges; on P3..P5 such a RoI would read the neighbouring block, but a box thinner
than 8 pixels is only mapped to P3 or above when its other side exceeds ~1400 pixels.

MindSpore op notes (2.7.2, CPU): ``ops.ROIAlign``'s gradient kernel always uses the
``roi_end_mode=1`` convention (end + 1 cell) even when the forward uses ``roi_end_mode=0`` -- the
gradient then does not match the forward. This module therefore uses ``roi_end_mode=1`` and passes
``end - 1``, for which forward and gradient agree (tests/maskrcnn/test_roi_align.py checks both against a
NumPy reference). With roi_end_mode=1 a RoI smaller than one cell keeps its size (no 1-cell minimum).

CPU speed: MindSpore's CPU ROIAlign kernel (and above all its gradient) is slow; on the CPU backend
the pooling op is the one the target hands the Cell (``src/maskrcnn/target.py``: the SciPy op of
``src/maskrcnn/ops/roi_align_cpu.py``, same arithmetic). Ascend and GPU use the native op.
"""

import math

import mindspore as ms
from mindspore import nn, ops

from src.maskrcnn.numerics import ROI_ALIGN_MODES, ROI_LEVEL_RULES, check_choice
from src.maskrcnn.target import Kernels

# Canonical box size and level of the FPN paper's level-assignment rule.
CANONICAL_BOX_SIZE = 224.0
CANONICAL_LEVEL = 4
MIN_LEVEL = 2
MAX_LEVEL = 5
# Keeps log2 finite for empty (padding) RoIs; they land on the finest level.
_EPS = 1e-6
# The model zoo's rule is written with its finest scale (level 2 below 2 * 56 = 112 pixels).
ZOO_FINEST_SCALE = 56.0
# torchvision adds its epsilon to the level, not inside the log; empty RoIs get this size.
_TINY_SIZE = 1e-12


def roi_levels(rois, min_level=MIN_LEVEL, max_level=MAX_LEVEL, rule="sqrt_area"):
    """FPN level of each RoI.

    Args:
        rois: ``[..., 4]`` boxes in input pixels.
        min_level, max_level: clamp of the level.
        rule: ``"sqrt_area"``: ``floor(4 + log2(sqrt(w h) / 224 + 1e-6))`` (native);
            ``"sqrt_area_plus_one"``: ``2 + floor(log2(sqrt(w + 1) sqrt(h + 1) / 56 + 1e-6))``
            (model zoo); ``"torchvision"``: ``floor(4 + log2(sqrt(w h) / 224) + 1e-6)``.

    Returns:
        ``[...]`` int32 levels in ``[min_level, max_level]``.
    """
    width = ops.relu(rois[..., 2] - rois[..., 0])
    height = ops.relu(rois[..., 3] - rois[..., 1])
    if rule == "sqrt_area_plus_one":
        size = ops.sqrt(width + 1.0) * ops.sqrt(height + 1.0)
        # log(x) / log(2) with both logs in float32, as the zoo computes it: at a threshold
        # (e.g. 448 px) a float64 log(2) would give 2.9999993 instead of 3.
        log_two = ops.log(ops.full_like(size, 2.0))
        level = MIN_LEVEL + ops.floor(ops.log(size / ZOO_FINEST_SCALE + _EPS) / log_two)
    elif rule == "torchvision":
        size = ops.maximum(ops.sqrt(width * height), _TINY_SIZE)
        level = ops.floor(CANONICAL_LEVEL + ops.log2(size / CANONICAL_BOX_SIZE) + _EPS)
    else:
        size = ops.sqrt(width * height + _EPS)
        level = ops.floor(CANONICAL_LEVEL + ops.log(size / CANONICAL_BOX_SIZE + _EPS) / math.log(2.0))
    return ops.clamp(level, float(min_level), float(max_level)).astype(ms.int32)


def _replicate_border(feature):
    """``[B, C, H, W]`` -> ``[B, C, H+2, W+2]`` with the edge rows/columns repeated once."""
    feature = ops.concat((feature[:, :, :1], feature, feature[:, :, -1:]), axis=2)
    return ops.concat((feature[:, :, :, :1], feature, feature[:, :, :, -1:]), axis=3)


def _top_left_border(feature):
    """``[B, C, H, W]`` -> ``[B, C, H+1, W+1]`` with the first row/column repeated once."""
    feature = ops.concat((feature[:, :, :1], feature), axis=2)
    return ops.concat((feature[:, :, :, :1], feature), axis=3)


def _pad_to(feature, height, width):
    """Zero-pad ``[B, C, h, w]`` at the bottom/right to ``[B, C, height, width]`` (static sizes)."""
    batch, channels, h, w = feature.shape
    if w < width:
        feature = ops.concat((feature, ops.zeros((batch, channels, h, width - w), feature.dtype)), axis=3)
    if h < height:
        feature = ops.concat((feature, ops.zeros((batch, channels, height - h, width), feature.dtype)), axis=2)
    return feature


def canvas_layout(shapes):
    """Where each level's bordered block goes in the canvas.

    The coarser levels are stacked in the left column, each with a one-cell border on every
    side. The finest level sits in the bottom-right corner of the canvas with a border on its
    top and left only: its far edges are the canvas edges, where ROIAlign's own rules apply
    (a sample in the last cell is clamped to it, a sample beyond the map reads 0). That is
    exact for RoIs that reach past the map, which the legacy alignment's one-cell minimum
    produces for thin boxes at the input's right/bottom edge.

    Args:
        shapes: ``(H_l, W_l)`` per level, finest first.

    Returns:
        ``(offsets, canvas_h, canvas_w)``: ``offsets[l] = (row, col)`` of level l's block
        (its border included; the feature cell (0, 0) is at ``(row + 1, col + 1)``).
    """
    first_h, first_w = shapes[0]
    offsets = []
    row = 0
    left_w = 0
    for h, w in shapes[1:]:
        offsets.append((row, 0))
        row += h + 2
        left_w = max(left_w, w + 2)
    canvas_h = max(first_h + 1, row)
    return [(canvas_h - first_h - 1, left_w)] + offsets, canvas_h, left_w + first_w + 1


class MultiLevelRoIAlign(nn.Cell):
    """Aligned RoIAlign over P2..P5 with per-RoI level selection.

    Args:
        out_size: output side (7 for the box head, 14 for the mask head).
        sampling_ratio: bilinear samples per output cell and axis (2).
        strides: strides of the given feature levels, finest first (4, 8, 16, 32 = P2..P5).
        alignment: ``"aligned"`` (half-pixel shift, no minimum size) or ``"legacy"`` (no shift,
            RoIs at least one cell); see the module notes.
        level_rule: ``"sqrt_area"``, ``"sqrt_area_plus_one"`` or ``"torchvision"``
            (:func:`roi_levels`).
        kernels: the target's :class:`~src.maskrcnn.target.Kernels`: ``CPU_KERNELS`` pools with
            the SciPy ``pyfunc`` op (fast on the CPU, cannot go into an exported MindIR),
            ``NATIVE_KERNELS`` with ``ops.ROIAlign`` (any device, exportable).

    Inputs:
        features: tuple of ``[B, C, H_l, W_l]`` maps, one per stride (P6 must not be passed).
        rois: ``[B, R, 4]`` boxes ``[x1, y1, x2, y2]`` in input pixels.

    Outputs:
        ``[B*R, C, out_size, out_size]``, RoI ``r`` of image ``b`` at row ``b*R + r``.
    """

    def __init__(self, out_size, sampling_ratio, strides=(4, 8, 16, 32), alignment="aligned",
                 level_rule="sqrt_area", *, kernels: Kernels):
        super().__init__()
        self.alignment = check_choice("MultiLevelRoIAlign", "alignment", alignment, ROI_ALIGN_MODES)
        self.level_rule = check_choice("MultiLevelRoIAlign", "level_rule", level_rule, ROI_LEVEL_RULES)
        # Feature position of box coordinate 0 relative to cell 0's centre, in cells.
        self.sample_shift = 0.5 if alignment == "aligned" else 0.0
        if int(out_size) <= 0 or int(sampling_ratio) <= 0:
            raise ValueError(f"MultiLevelRoIAlign: out_size and sampling_ratio must be positive, "
                             f"got {out_size!r} and {sampling_ratio!r}")
        strides = tuple(int(s) for s in strides)
        if not strides or any(s <= 0 for s in strides):
            raise ValueError(f"MultiLevelRoIAlign: strides must be positive, got {strides!r}")
        for finer, coarser in zip(strides[:-1], strides[1:]):
            if coarser != 2 * finer:
                raise ValueError(f"MultiLevelRoIAlign: strides must double level by level, got {strides!r}")
        self.out_size = int(out_size)
        self.strides = strides
        self.first_level = int(round(math.log2(strides[0])))
        self.last_level = self.first_level + len(strides) - 1
        # Canvas coordinates are feature cells (scale 1); roi_end_mode=1, see the module notes.
        self.kernel = kernels.name
        self.pool = kernels.roi_align(self.out_size, int(sampling_ratio))
        if self.pool is None:
            self.pool = ops.ROIAlign(self.out_size, self.out_size, 1.0, int(sampling_ratio), 1)

    def construct(self, features, rois):
        batch, num_rois = rois.shape[0], rois.shape[1]
        dtype = features[0].dtype
        shapes = [(f.shape[2], f.shape[3]) for f in features]
        offsets, canvas_h, canvas_w = canvas_layout(shapes)
        finest = _top_left_border(features[0])
        if offsets[0][0] > 0:
            # Zero rows above the finest block so that it ends at the canvas bottom.
            top = ops.zeros((finest.shape[0], finest.shape[1], offsets[0][0],
                             finest.shape[3]), finest.dtype)
            finest = ops.concat((top, finest), axis=2)
        if len(features) > 1:
            left_w = offsets[0][1]
            blocks = [_pad_to(_replicate_border(f), f.shape[2] + 2, left_w) for f in features[1:]]
            left = _pad_to(ops.concat(blocks, axis=2), canvas_h, left_w)
            canvas = ops.concat((left, finest), axis=3)
        else:
            canvas = finest

        boxes = ops.stop_gradient(rois.astype(ms.float32)).reshape(batch * num_rois, 4)
        levels = roi_levels(boxes, self.first_level, self.last_level,
                            self.level_rule) - self.first_level  # [B*R]
        inv_stride = ops.zeros_like(boxes[:, 0])
        row0 = ops.zeros_like(inv_stride)
        col0 = ops.zeros_like(inv_stride)
        extent_h = ops.zeros_like(inv_stride)
        extent_w = ops.zeros_like(inv_stride)
        for i in range(len(self.strides)):
            on = (levels == i).astype(ms.float32)
            inv_stride = inv_stride + on / self.strides[i]
            # Inside the block whose cell (0, 0) is at offset + 1, minus the aligned shift.
            row0 = row0 + on * (offsets[i][0] + 1.0 - self.sample_shift)
            col0 = col0 + on * (offsets[i][1] + 1.0 - self.sample_shift)
            extent_h = extent_h + on * (shapes[i][0] * self.strides[i])
            extent_w = extent_w + on * (shapes[i][1] * self.strides[i])
        x1 = ops.clamp(boxes[:, 0], 0.0, None)
        y1 = ops.clamp(boxes[:, 1], 0.0, None)
        x2 = ops.minimum(ops.maximum(boxes[:, 2], x1), extent_w)
        y2 = ops.minimum(ops.maximum(boxes[:, 3], y1), extent_h)
        x1 = ops.minimum(x1, extent_w)
        y1 = ops.minimum(y1, extent_h)
        image_index = ops.broadcast_to(ops.arange(batch).astype(ms.float32).reshape(batch, 1), (batch, num_rois))
        start_x = x1 * inv_stride
        start_y = y1 * inv_stride
        end_x = x2 * inv_stride
        end_y = y2 * inv_stride
        if self.alignment == "legacy":
            end_x = ops.maximum(end_x, start_x + 1.0)
            end_y = ops.maximum(end_y, start_y + 1.0)
        # roi_end_mode=1 adds one cell to the end: pass end - 1.
        canvas_rois = ops.stack((image_index.reshape(-1),
                                 start_x + col0, start_y + row0,
                                 end_x + col0 - 1.0, end_y + row0 - 1.0), axis=1)
        return self.pool(canvas, canvas_rois.astype(dtype))
