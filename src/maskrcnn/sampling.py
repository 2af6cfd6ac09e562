"""Helpers shared by the training-target Cells (``rpn.RPNTargets``, ``roi_heads.RCNNTargets``).

Random sampling without dynamic shapes: every candidate gets a uniform random key, candidates
that are not eligible get key -1, and top-k of the keys picks a uniform random subset of the
eligible ones (flags tell which of the k picks are real).

Crowd regions (``gt_labels == CROWD_LABEL``, see src/batch.py): an anchor/RoI whose area lies
mostly inside one (intersection over the candidate's area > ``CROWD_IOA_THR``) is ignored
instead of negative.
"""

import mindspore as ms
from mindspore import ops

from src.batch import CROWD_LABEL
from src.maskrcnn.box_ops import box_ioa

# An anchor/RoI whose area lies more than this fraction inside a crowd region is ignored.
CROWD_IOA_THR = 0.5
# Key given to candidates that must not be picked by the random top-k sampling.
NOT_ELIGIBLE = -1.0


def check_fraction(owner, name, value):
    """Raise ``ValueError`` naming ``owner`` and ``name`` unless ``0 <= value <= 1``."""
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{owner}: {name} must be between 0 and 1, got {value!r}")


def check_sampling_args(owner, pos_iou_thr, neg_iou_thr, num_samples, pos_fraction, stds):
    """Validate the arguments every target Cell shares (one-line ``ValueError`` naming ``owner``)."""
    check_fraction(owner, "pos_iou_thr", pos_iou_thr)
    check_fraction(owner, "neg_iou_thr", neg_iou_thr)
    check_fraction(owner, "pos_fraction", pos_fraction)
    if neg_iou_thr > pos_iou_thr:
        raise ValueError(f"{owner}: neg_iou_thr {neg_iou_thr} must not exceed pos_iou_thr {pos_iou_thr}")
    if int(num_samples) <= 0:
        raise ValueError(f"{owner}: num_samples must be positive, got {num_samples!r}")
    if len(stds) != 4 or any(s <= 0 for s in stds):
        raise ValueError(f"{owner}: stds must be 4 positive floats, got {list(stds)!r}")


def random_pick(eligible, keys, k):
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


def scatter_flags(index, flags, num_columns):
    """``out[b, index[b, j]] += flags[b, j]`` -> ``[B, num_columns]`` float32 (0/1 for unique picks)."""
    batch, k = index.shape
    rows = ops.broadcast_to(ops.arange(batch).astype(ms.int32).reshape(batch, 1), (batch, k))
    coords = ops.stack((rows, index), axis=-1)  # [B, k, 2]
    return ops.scatter_nd(coords, flags.astype(ms.float32), (batch, num_columns))


def gather_rows(values, index):
    """``values[b, index[b, j]]`` for ``values [B, C, ...]``, ``index [B, K]`` -> ``[B, K, ...]``."""
    return ops.gather(values, index, 1, batch_dims=1)


def crowd_hits(boxes, gt_boxes, gt_labels):
    """``[B, C]`` bool: candidate ``boxes [B, C, 4]`` lies mostly inside some crowd region of its image."""
    ioa = box_ioa(boxes, gt_boxes)  # [B, C, N]
    # full-size, not broadcast in the op (box_ops.broadcast_pair)
    is_crowd = ops.broadcast_to(ops.expand_dims(gt_labels == CROWD_LABEL, 1), ioa.shape)
    ioa = ops.where(is_crowd, ioa, 0.0)
    return ioa.max(axis=2) > CROWD_IOA_THR
