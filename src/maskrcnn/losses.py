"""Loss maths as small pure functions on tensors (graph-mode safe, no state).

Each returns a float32 scalar: the weighted sum of per-element losses divided by
``max(normaliser, 1)``, where the normaliser is the sum of the weights unless given. Weights are
0/1 sampling flags; an element with weight 0 contributes exactly 0 (elements are selected, not
multiplied, so a non-finite value in an unsampled element cannot leak in as NaN).

Published settings: RPN = :func:`sigmoid_bce_loss` over sampled anchors + :func:`smooth_l1_loss`
(beta 1/9, or 0 = L1) on positives normalised by the number of sampled anchors; RCNN =
:func:`softmax_cross_entropy_loss` over sampled RoIs + class-specific :func:`smooth_l1_loss`
(beta 1) on positives normalised by the number of sampled RoIs. The mask loss is
``src.maskrcnn.mask_branch.mask_bce_loss``.
"""

import mindspore as ms
from mindspore import ops


def normalise(total, weights, normalizer):
    """``total / max(normalizer, 1)``; ``normalizer`` None means ``sum(weights)``."""
    if normalizer is None:
        normalizer = weights.astype(ms.float32).sum()
    return total / ops.maximum(ops.cast(normalizer, ms.float32), 1.0)


def bce_with_logits(logits, targets):
    """Element-wise ``-t log σ(x) - (1-t) log(1-σ(x))`` (fused op: stable, exact gradient at 0)."""
    return ops.binary_cross_entropy_with_logits(logits, targets, None, None, reduction="none")


def sigmoid_bce_loss(logits, targets, weights, normalizer=None):
    """Binary cross entropy with logits.

    Args:
        logits: ``[...]`` float.
        targets: ``[...]`` float in [0, 1], same shape.
        weights: ``[...]`` float, 1 for elements in the loss.
        normalizer: optional scalar; default ``sum(weights)``.

    Returns:
        Scalar ``sum(w * bce) / max(normalizer, 1)``.
    """
    logits = logits.astype(ms.float32)
    weights = weights.astype(ms.float32)
    per_element = bce_with_logits(logits, targets.astype(ms.float32))
    total = ops.where(weights > 0.0, per_element * weights, 0.0).sum()
    return normalise(total, weights, normalizer)


def smooth_l1_loss(pred, target, weights, beta, normalizer=None):
    """Smooth L1 (Huber with ``beta``; ``beta == 0`` gives L1) summed over the last axis of 4.

    Args:
        pred: ``[..., 4]`` predicted deltas.
        target: ``[..., 4]`` target deltas.
        weights: ``[...]`` per-box weights (1 for positives), broadcast over the last axis.
        beta: Python float >= 0; ``0.5 d^2 / beta`` below ``beta``, ``d - 0.5 beta`` above.
        normalizer: optional scalar, e.g. the number of sampled anchors/RoIs; default ``sum(weights)``.

    Returns:
        Scalar ``sum(w * loss) / max(normalizer, 1)``.
    """
    if beta < 0:
        raise ValueError(f"smooth_l1_loss: beta must be >= 0, got {beta!r}")
    diff = ops.abs(pred.astype(ms.float32) - target.astype(ms.float32))
    if beta > 0:
        per_element = ops.where(diff < beta, 0.5 * diff * diff / beta, diff - 0.5 * beta)
    else:
        per_element = diff
    weights = weights.astype(ms.float32)
    box_weights = ops.expand_dims(weights, -1)
    total = ops.where(box_weights > 0.0, per_element * box_weights, 0.0).sum()
    return normalise(total, weights, normalizer)


def softmax_cross_entropy_loss(logits, labels, weights, normalizer=None):
    """Softmax cross entropy over classes.

    Args:
        logits: ``[R, C]`` class scores.
        labels: ``[R]`` int class index in ``[0, C)`` (0 = background).
        weights: ``[R]`` float, 1 for sampled RoIs.
        normalizer: optional scalar; default ``sum(weights)``.

    Returns:
        Scalar ``sum(w * ce) / max(normalizer, 1)``.
    """
    logits = logits.astype(ms.float32)
    num_classes = logits.shape[-1]
    labels = ops.clamp(labels.astype(ms.int32), 0, num_classes - 1)
    log_prob = ops.log_softmax(logits, axis=-1)
    one_hot = ops.one_hot(labels, num_classes, ops.ones((), ms.float32), ops.zeros((), ms.float32))
    per_row = -(log_prob * one_hot).sum(axis=-1)
    weights = weights.astype(ms.float32)
    total = ops.where(weights > 0.0, per_row * weights, 0.0).sum()
    return normalise(total, weights, normalizer)
