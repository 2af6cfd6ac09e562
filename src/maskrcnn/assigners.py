"""Training targets: match anchors / proposals to ground truth, sample them, encode boxes.

Everything here is target computation: no gradient flows through it (outputs are wrapped in
``ops.stop_gradient``). Shapes are static: ``B`` images, ``A`` anchors, ``N`` padded GT slots
(``config.max_instance_count``), ``P`` proposals, ``S`` sampled RoIs per image.

Ground truth follows the batch contract (src/batch.py): ``gt_valid == 0`` marks padding *and*
crowd regions, so such boxes never match anything; crowd regions (``gt_labels == CROWD_LABEL``)
additionally make anchors/RoIs that lie mostly inside them (intersection over the anchor's area
> ``CROWD_IOA_THR``) ignored instead of negative.

Random sampling without dynamic shapes: every candidate gets a uniform random key, candidates
that are not eligible get key -1, and top-k of the keys picks a uniform random subset of the
eligible ones (flags tell which of the k picks are real).
"""

import numpy as np
import mindspore as ms
from mindspore import Tensor, nn, ops

from src.batch import CROWD_LABEL, MASK_OUT_SIZE
from src.maskrcnn.box_ops import box_ioa, box_iou, encode_boxes

# An anchor/RoI whose area lies more than this fraction inside a crowd region is ignored.
CROWD_IOA_THR = 0.5
# Key given to candidates that must not be picked by the random top-k sampling.
NOT_ELIGIBLE = -1.0
# Mask targets: 2x2 sample points per output cell estimate how much of the cell is object.
MASK_SUBSAMPLES = 2
# Mask targets are binarised at this value (the target of a cell is "mostly on the object").
MASK_BINARY_THR = 0.5


def _check_fraction(name, value):
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"assigners: {name} must be between 0 and 1, got {value!r}")


def _check_thresholds(owner, pos_iou_thr, neg_iou_thr, num_samples, pos_fraction, stds):
    _check_fraction("pos_iou_thr", pos_iou_thr)
    _check_fraction("neg_iou_thr", neg_iou_thr)
    _check_fraction("pos_fraction", pos_fraction)
    if neg_iou_thr > pos_iou_thr:
        raise ValueError(f"{owner}: neg_iou_thr {neg_iou_thr} must not exceed pos_iou_thr {pos_iou_thr}")
    if int(num_samples) <= 0:
        raise ValueError(f"{owner}: num_samples must be positive, got {num_samples!r}")
    if len(stds) != 4 or any(s <= 0 for s in stds):
        raise ValueError(f"{owner}: stds must be 4 positive floats, got {list(stds)!r}")


def _random_pick(eligible, keys, k):
    """Pick up to ``k`` random eligible candidates per row.

    Args:
        eligible: ``[B, C]`` bool.
        keys: ``[B, C]`` uniform random floats in [0, 1).
        k: Python int <= C.

    Returns:
        ``(index [B, k] int32, picked [B, k] bool)``; picked entries come first (top-k is sorted)
        and index entries with ``picked == False`` are meaningless.
    """
    scores = ops.where(eligible, keys, NOT_ELIGIBLE)
    values, index = ops.topk(scores, k, dim=-1, largest=True, sorted=True)
    return index.astype(ms.int32), values >= 0.0


def _scatter_flags(index, flags, num_columns):
    """``out[b, index[b, j]] += flags[b, j]`` -> ``[B, num_columns]`` float32 (0/1 for unique picks)."""
    batch, k = index.shape
    rows = ops.broadcast_to(ops.arange(batch).astype(ms.int32).reshape(batch, 1), (batch, k))
    coords = ops.stack((rows, index), axis=-1)  # [B, k, 2]
    return ops.scatter_nd(coords, flags.astype(ms.float32), (batch, num_columns))


def _gather_rows(values, index):
    """``values[b, index[b, j]]`` for ``values [B, C, ...]``, ``index [B, K]`` -> ``[B, K, ...]``."""
    return ops.gather(values, index, 1, batch_dims=1)


def _crowd_hits(boxes, gt_boxes, gt_labels):
    """``[B, C]`` bool: candidate lies mostly inside some crowd region of its image."""
    is_crowd = ops.expand_dims(gt_labels == CROWD_LABEL, 1)  # [B, 1, N]
    ioa = ops.where(is_crowd, box_ioa(boxes, gt_boxes), 0.0)  # [B, C, N]
    return ioa.max(axis=2) > CROWD_IOA_THR


class RPNTargets(nn.Cell):
    """Anchor labels and box targets for the RPN loss.

    Assignment (per image): an anchor is positive if its best IoU with a valid GT is
    ``>= pos_iou_thr``, or if it is (one of) the best anchor(s) of some valid GT and that IoU is
    ``>= min_pos_iou`` (and > 0); negative if its best IoU is ``< neg_iou_thr`` (also when the image
    has no valid GT); ignored otherwise. Anchors whose centre is outside the un-padded image
    (``image_shape``) are ignored; non-positive anchors mostly inside a crowd region are ignored.
    Sampling: up to ``int(num_samples * pos_fraction)`` random positives, then random negatives
    up to ``num_samples`` in total.

    Args:
        anchors: ``[A, 4]`` NumPy anchors (:func:`anchors.generate_anchors`).
        pos_iou_thr, neg_iou_thr, min_pos_iou: IoU thresholds (0.7, 0.3, 0.3 published).
        num_samples: anchors sampled per image (256).
        pos_fraction: at most this fraction of the samples are positive (0.5).
        stds: 4 floats for :func:`box_ops.encode_boxes` ((1, 1, 1, 1) for the RPN).
        seed: seed of the random sampling (0 = nondeterministic).
        box_plus_one: box-coder widths ``x2 - x1 + 1`` (model-zoo numerics).

    Inputs:
        gt_boxes ``[B, N, 4]`` f32, gt_labels ``[B, N]`` i32, gt_valid ``[B, N]`` i32,
        image_shape ``[B, 4]`` f32 ``(resized_h, resized_w, scale_h, scale_w)``.

    Outputs:
        labels ``[B, A]`` f32 (1 sampled positive, else 0), label_weights ``[B, A]`` f32 (1 if
        sampled), box_targets ``[B, A, 4]`` f32 (encoded; 0 where not positive), box_weights
        ``[B, A]`` f32 (1 if sampled positive).
    """

    def __init__(self, anchors, pos_iou_thr, neg_iou_thr, min_pos_iou, num_samples, pos_fraction,
                 stds, seed=0, box_plus_one=False):
        super().__init__()
        self.box_plus_one = bool(box_plus_one)
        _check_thresholds("RPNTargets", pos_iou_thr, neg_iou_thr, num_samples, pos_fraction, stds)
        _check_fraction("min_pos_iou", min_pos_iou)
        anchors = np.asarray(anchors, dtype=np.float32)
        if anchors.ndim != 2 or anchors.shape[1] != 4 or anchors.shape[0] == 0:
            raise ValueError(f"RPNTargets: anchors must be a non-empty [A, 4] array, got shape {anchors.shape}")
        self.num_anchors = int(anchors.shape[0])
        self.num_samples = min(int(num_samples), self.num_anchors)
        self.max_positives = int(self.num_samples * pos_fraction)
        self.pos_iou_thr = float(pos_iou_thr)
        self.neg_iou_thr = float(neg_iou_thr)
        self.min_pos_iou = float(min_pos_iou)
        self.stds = tuple(float(s) for s in stds)
        self.anchors = Tensor(anchors[None])  # [1, A, 4], a constant (never updated)
        centres = 0.5 * (anchors[:, :2] + anchors[:, 2:])
        self.anchor_cx = Tensor(centres[None, :, 0])  # [1, A]
        self.anchor_cy = Tensor(centres[None, :, 1])
        self.uniform = ops.UniformReal(seed=seed)

    def construct(self, gt_boxes, gt_labels, gt_valid, image_shape):
        gt_boxes = ops.stop_gradient(gt_boxes.astype(ms.float32))
        batch = gt_boxes.shape[0]
        valid_gt = ops.expand_dims(gt_valid > 0, 1)  # [B, 1, N]
        inside = (self.anchor_cx < image_shape[:, 1:2]) & (self.anchor_cy < image_shape[:, 0:1])  # [B, A]

        iou = box_iou(self.anchors, gt_boxes)  # [B, A, N]
        iou = ops.where(valid_gt & ops.expand_dims(inside, 2), iou, -1.0)
        max_iou = iou.max(axis=2)  # [B, A]
        argmax_gt = ops.argmax(iou, 2).astype(ms.int32)

        # Each valid GT's best anchor(s) become positive (ties: all of them).
        gt_best = ops.expand_dims(iou.max(axis=1), 1)  # [B, 1, N]
        is_best_pair = ((iou == gt_best) & (gt_best >= self.min_pos_iou) & (gt_best > 0.0) & valid_gt)
        is_best = is_best_pair.any(axis=2)
        best_gt = ops.argmax(ops.where(is_best_pair, iou, -1.0), 2).astype(ms.int32)
        matched_gt = ops.where(is_best, best_gt, argmax_gt)

        positive = (max_iou >= self.pos_iou_thr) | is_best
        negative = inside & (max_iou < self.neg_iou_thr) & ~positive
        negative = negative & ~_crowd_hits(self.anchors, gt_boxes, gt_labels)

        keys = self.uniform((batch, self.num_anchors))
        pos_index, pos_picked = _random_pick(positive, keys, self.max_positives)
        num_pos = pos_picked.astype(ms.int32).sum(axis=1, keepdims=True)  # [B, 1]
        neg_index, neg_picked = _random_pick(negative, keys, self.num_samples)
        slots = ops.arange(self.num_samples).astype(ms.int32).reshape(1, -1)
        neg_picked = neg_picked & (slots < self.num_samples - num_pos)

        pos_weight = _scatter_flags(pos_index, pos_picked, self.num_anchors)  # [B, A]
        label_weights = pos_weight + _scatter_flags(neg_index, neg_picked, self.num_anchors)

        matched_boxes = _gather_rows(gt_boxes, matched_gt)  # [B, A, 4]
        box_targets = encode_boxes(self.anchors, matched_boxes, self.stds, self.box_plus_one)
        box_targets = ops.where(ops.expand_dims(pos_weight > 0.0, 2), box_targets, 0.0)
        return (ops.stop_gradient(pos_weight), ops.stop_gradient(label_weights),
                ops.stop_gradient(box_targets), ops.stop_gradient(pos_weight))


class RCNNTargets(nn.Cell):
    """Sample RoIs for the box and mask heads and compute their targets.

    Candidates are the proposals plus the valid GT boxes. A candidate is positive if its best
    IoU with a valid GT is ``>= pos_iou_thr``; negative if ``< neg_iou_thr`` (also when the
    image has no valid GT) and it is not mostly inside a crowd region; invalid proposals are
    never picked. Up to ``P_max = int(num_samples * pos_fraction)`` random positives are put in
    slots ``[0, P_max)`` (unused slots there are padding with weight 0), random negatives in
    slots ``[P_max, S)``. So the mask branch can run on the first ``P_max`` RoIs only.

    With ``fill_with_negatives=True`` negatives also take the unused positive slots (as in the
    published sampler, which always returns ``num_samples`` RoIs when there are enough
    negatives); then a slot in ``[0, P_max)`` is positive iff its ``box_weights`` is 1.

    Args:
        num_samples: RoIs per image ``S`` (512).
        pos_fraction: fraction of positive slots (0.25).
        pos_iou_thr, neg_iou_thr: IoU thresholds (0.5, 0.5).
        stds: 4 floats for :func:`box_ops.encode_boxes` ((0.1, 0.1, 0.2, 0.2)).
        seed: seed of the random sampling (0 = nondeterministic).
        fill_with_negatives: see above (default False, the layout of the team spec).
        box_plus_one: box-coder widths ``x2 - x1 + 1`` (model-zoo numerics).

    Inputs:
        proposals ``[B, P, 4]`` f32, proposal_valid ``[B, P]`` bool, gt_boxes ``[B, N, 4]`` f32,
        gt_labels ``[B, N]`` i32, gt_valid ``[B, N]`` i32.

    Outputs:
        rois ``[B, S, 4]`` f32, roi_labels ``[B, S]`` i32 (class of the matched GT for
        positives, 0 = background), roi_weights ``[B, S]`` f32 (1 = sampled), box_targets
        ``[B, S, 4]`` f32 (0 where not positive), box_weights ``[B, S]`` f32 (1 = positive),
        matched_gt ``[B, S]`` i32 (index into the N GT slots; 0 where not positive).
    """

    def __init__(self, num_samples, pos_fraction, pos_iou_thr, neg_iou_thr, stds, seed=0,
                 fill_with_negatives=False, box_plus_one=False):
        super().__init__()
        self.box_plus_one = bool(box_plus_one)
        _check_thresholds("RCNNTargets", pos_iou_thr, neg_iou_thr, num_samples, pos_fraction, stds)
        self.num_samples = int(num_samples)
        self.max_positives = int(self.num_samples * pos_fraction)
        self.pos_iou_thr = float(pos_iou_thr)
        self.neg_iou_thr = float(neg_iou_thr)
        self.stds = tuple(float(s) for s in stds)
        self.fill_with_negatives = bool(fill_with_negatives)
        self.uniform = ops.UniformReal(seed=seed)

    def construct(self, proposals, proposal_valid, gt_boxes, gt_labels, gt_valid):
        proposals = ops.stop_gradient(proposals.astype(ms.float32))
        gt_boxes = ops.stop_gradient(gt_boxes.astype(ms.float32))
        batch = proposals.shape[0]
        valid_gt = gt_valid > 0
        candidates = ops.concat((proposals, gt_boxes), axis=1)  # [B, C, 4]
        candidate_valid = ops.concat((proposal_valid.astype(ms.bool_), valid_gt), axis=1)
        num_candidates = candidates.shape[1]
        if num_candidates < self.num_samples:
            # top-k needs at least S candidates: pad with empty, invalid boxes.
            extra = self.num_samples - num_candidates
            candidates = ops.concat((candidates, ops.zeros((batch, extra, 4), ms.float32)), axis=1)
            candidate_valid = ops.concat((candidate_valid, ops.zeros((batch, extra), ms.bool_)), axis=1)
            num_candidates = self.num_samples

        iou = box_iou(candidates, gt_boxes)  # [B, C, N]
        iou = ops.where(ops.expand_dims(valid_gt, 1), iou, -1.0)
        max_iou = iou.max(axis=2)
        argmax_gt = ops.argmax(iou, 2).astype(ms.int32)
        positive = candidate_valid & (max_iou >= self.pos_iou_thr)
        negative = candidate_valid & (max_iou < self.neg_iou_thr) & ~positive
        negative = negative & ~_crowd_hits(candidates, gt_boxes, gt_labels)

        keys = self.uniform((batch, num_candidates))
        pos_index, pos_picked = _random_pick(positive, keys, self.max_positives)
        num_neg_slots = self.num_samples if self.fill_with_negatives else self.num_samples - self.max_positives
        slots = ops.arange(self.num_samples).astype(ms.int32).reshape(1, -1)  # [1, S]
        if self.fill_with_negatives:
            first_neg_slot = pos_picked.astype(ms.int32).sum(axis=1, keepdims=True)  # [B, 1]
        else:
            first_neg_slot = self.max_positives
        if num_neg_slots > 0:
            neg_index, neg_picked = _random_pick(negative, keys, num_neg_slots)
            rank = slots - first_neg_slot  # which negative pick goes into each slot
            rank_clipped = ops.clamp(rank, 0, num_neg_slots - 1)
            rank_clipped = ops.broadcast_to(rank_clipped, (batch, self.num_samples))
            slot_neg_index = _gather_rows(neg_index, rank_clipped)
            slot_neg = _gather_rows(neg_picked, rank_clipped) & (rank >= 0)
        else:
            slot_neg_index = ops.zeros((batch, self.num_samples), ms.int32)
            slot_neg = ops.zeros((batch, self.num_samples), ms.bool_)

        pad = self.num_samples - self.max_positives
        slot_pos_index = ops.concat((pos_index, ops.zeros((batch, pad), ms.int32)), axis=1)
        slot_pos = ops.concat((pos_picked, ops.zeros((batch, pad), ms.bool_)), axis=1)
        slot_index = ops.where(slot_pos, slot_pos_index, slot_neg_index)  # [B, S]

        rois = _gather_rows(candidates, slot_index)  # [B, S, 4]
        matched = _gather_rows(argmax_gt, slot_index)
        matched_gt = ops.where(slot_pos, matched, 0)
        roi_labels = ops.where(slot_pos, _gather_rows(gt_labels.astype(ms.int32), matched_gt), 0)
        box_targets = encode_boxes(rois, _gather_rows(gt_boxes, matched_gt), self.stds,
                                   self.box_plus_one)
        box_targets = ops.where(ops.expand_dims(slot_pos, 2), box_targets, 0.0)
        roi_weights = (slot_pos | slot_neg).astype(ms.float32)
        box_weights = slot_pos.astype(ms.float32)
        return (ops.stop_gradient(rois), ops.stop_gradient(roi_labels), ops.stop_gradient(roi_weights),
                ops.stop_gradient(box_targets), ops.stop_gradient(box_weights),
                ops.stop_gradient(matched_gt))


def mask_targets(gt_masks, rois, matched_gt, out_size=MASK_OUT_SIZE, binarize=True):
    """Crop each RoI's matched GT mask and resize it to ``out_size x out_size``.

    Each output cell is the fraction of ``MASK_SUBSAMPLES x MASK_SUBSAMPLES`` regularly spaced
    points of the cell that fall on object pixels (a sample at continuous coordinate ``(x, y)``
    reads pixel ``(floor(y), floor(x))``; samples outside the image read 0). Only those sampled
    pixels are gathered from the masks viewed as one flat array, with GT slot ``b*N + matched_gt``:
    no copy of full masks. Binarised at 0.5, a rectangle cropped by its own box is all ones, like
    rasterising the polygon in the box frame (published Mask R-CNN); a bilinear RoIAlign would
    blur the border cells of small objects below 0.5.

    Args:
        gt_masks: ``[B, N, H, W]`` uint8 (or float) instance masks aligned with the input image.
        rois: ``[B, R, 4]`` boxes in input pixels (typically the first ``P_max`` sampled RoIs).
        matched_gt: ``[B, R]`` int32 GT slot of each RoI.
        out_size: side of the target (28).
        binarize: threshold the coverage at 0.5 (default) or return it as a soft target.

    Returns:
        ``[B, R, out_size, out_size]`` float32 in {0, 1} (or [0, 1]), no gradient.

    The flat pixel index is int32, so ``B * N * H * W`` must stay below 2**31 (e.g. 2 x 100
    instances at 1344 x 800 is 2.2e8).
    """
    batch, num_gt, height, width = gt_masks.shape
    num_rois = rois.shape[1]
    samples = out_size * MASK_SUBSAMPLES
    boxes = ops.stop_gradient(rois.astype(ms.float32)).reshape(batch * num_rois, 4)
    steps = (ops.arange(samples).astype(ms.float32).reshape(1, samples) + 0.5) / samples  # [1, n]
    xs = boxes[:, 0:1] + steps * (boxes[:, 2:3] - boxes[:, 0:1])  # [BR, n] continuous coords
    ys = boxes[:, 1:2] + steps * (boxes[:, 3:4] - boxes[:, 1:2])
    inside = ops.expand_dims((ys >= 0.0) & (ys < height), 2) & ops.expand_dims((xs >= 0.0) & (xs < width), 1)
    cols = ops.clamp(ops.floor(xs), 0.0, float(width - 1)).astype(ms.int32)
    rows = ops.clamp(ops.floor(ys), 0.0, float(height - 1)).astype(ms.int32)
    first = (ops.arange(batch).astype(ms.int32) * num_gt).reshape(batch, 1)
    slot = (first + matched_gt.astype(ms.int32)).reshape(batch * num_rois, 1, 1)
    flat_index = (slot * height + ops.expand_dims(rows, 2)) * width + ops.expand_dims(cols, 1)  # [BR, n, n]
    values = ops.gather(gt_masks.reshape(-1), flat_index, 0).astype(ms.float32)
    values = ops.where(inside, values, 0.0)
    coverage = values.reshape(batch * num_rois, out_size, MASK_SUBSAMPLES, out_size, MASK_SUBSAMPLES)
    coverage = coverage.mean(axis=(2, 4)).reshape(batch, num_rois, out_size, out_size)
    if binarize:
        coverage = (coverage >= MASK_BINARY_THR).astype(ms.float32)
    return ops.stop_gradient(coverage)
