"""Region proposal network, stage 1: head layers, training targets and loss.

- :class:`RPNHead`: a shared 3x3 conv and 1x1 objectness / box-delta convs over P2..P6.
- :class:`RPNTargets`: anchor labels and box targets (matching, sampling, encoding).
- :func:`rpn_losses`: objectness BCE over the sampled anchors + smooth-L1 on the positives.

Proposal generation (decode + NMS of the head's outputs) is ``src/maskrcnn/proposals.py``.
Targets carry no gradient (outputs are wrapped in ``ops.stop_gradient``). Shapes: ``B`` images,
``A`` anchors, ``N`` padded GT slots (``config.max_instance_count``).
"""

from __future__ import annotations

import numpy as np
import mindspore as ms
import mindspore.nn as nn
import mindspore.ops as ops
from mindspore import Tensor
from mindspore.common.initializer import Normal, initializer

from src.maskrcnn.box_ops import box_iou, broadcast_pair, encode_boxes
from src.maskrcnn.layers import conv_with_bias
from src.maskrcnn.losses import sigmoid_bce_loss, smooth_l1_loss
from src.maskrcnn.sampling import (check_fraction, check_sampling_args, crowd_hits, gather_rows,
                                   random_pick, sampling_keys, scatter_flags)
from src.maskrcnn.target import NATIVE_KERNELS, Kernels

RPN_INIT_STD = 0.01  # normal init of all three RPN convs (weights); biases zero
# The RPN regresses anchors with unit stds (published recipe); config.box_target_stds are the
# RoI head's.
RPN_BOX_STDS = (1.0, 1.0, 1.0, 1.0)
# Smooth-L1 transition point of the RPN deltas (1/9, as in the published Faster R-CNN recipe).
RPN_SMOOTH_L1_BETA = 1.0 / 9.0


def _conv(in_channels: int, out_channels: int, kernel_size: int, kernels: Kernels = NATIVE_KERNELS) -> nn.Conv2d:
    weight = initializer(Normal(sigma=RPN_INIT_STD),
                         [out_channels, in_channels, kernel_size, kernel_size])
    return conv_with_bias(in_channels, out_channels, kernel_size, weight, kernels)


class RPNHead(nn.Cell):
    """Objectness logits and box deltas for every anchor of every FPN level.

    Args:
        in_channels: channels of the P levels (config.fpn_channels).
        num_anchors: anchors per location (len(anchor_scales) * len(anchor_ratios)).
        kernels: the target's kernels for the 3x3 conv (``layers.conv2d``).

    Inputs:
        features: (P2, ..., P6), [B, in_channels, H_l, W_l].

    Returns:
        objectness [B, A_total] logits (sigmoid), deltas [B, A_total, 4] (dx, dy, dw, dh,
        encoded as in box_ops.encode_boxes). Anchors are ordered as anchors.generate_anchors:
        level, then row-major (y, x), then the anchors of one location.
    """

    def __init__(self, in_channels: int, num_anchors: int, kernels: Kernels = NATIVE_KERNELS):
        super().__init__()
        self.num_anchors = num_anchors
        self.conv = _conv(in_channels, in_channels, 3, kernels)
        self.objectness = _conv(in_channels, num_anchors, 1)
        self.box_deltas = _conv(in_channels, num_anchors * 4, 1)
        self.relu = nn.ReLU()

    def _flatten(self, x, k: int):
        """[B, A*k, H, W] -> [B, H*W*A, k] (channel a*k + j holds value j of anchor a)."""
        b = x.shape[0]
        return ops.transpose(x, (0, 2, 3, 1)).reshape(b, -1, k)

    def construct(self, features):
        scores = ()
        deltas = ()
        for feature in features:
            hidden = self.relu(self.conv(feature))
            scores += (self._flatten(self.objectness(hidden), 1),)
            deltas += (self._flatten(self.box_deltas(hidden), 4),)
        objectness = ops.concat(scores, axis=1)
        return objectness.reshape(objectness.shape[0], -1), ops.concat(deltas, axis=1)


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
        stds: 4 floats for :func:`box_ops.encode_boxes` (``RPN_BOX_STDS``).
        seed: seed of the random sampling (``sampling.sampling_keys``).
        box_plus_one: box-coder widths ``x2 - x1 + 1`` (model-zoo numerics).

    Inputs:
        gt_boxes ``[B, N, 4]`` f32, gt_labels ``[B, N]`` i32, gt_valid ``[B, N]`` i32,
        image_shape ``[B, 4]`` f32 ``(resized_h, resized_w, scale_h, scale_w)``,
        sampling_step: the training step the sampling keys are drawn for (int32, one element;
        None = step 0): the same step, seed and inputs give the same samples.

    Outputs:
        labels ``[B, A]`` f32 (1 sampled positive, else 0), label_weights ``[B, A]`` f32 (1 if
        sampled), box_targets ``[B, A, 4]`` f32 (encoded; 0 where not positive), box_weights
        ``[B, A]`` f32 (1 if sampled positive).
    """

    def __init__(self, anchors, pos_iou_thr, neg_iou_thr, min_pos_iou, num_samples, pos_fraction,
                 stds, seed=0, box_plus_one=False):
        super().__init__()
        self.box_plus_one = bool(box_plus_one)
        check_sampling_args("RPNTargets", pos_iou_thr, neg_iou_thr, num_samples, pos_fraction, stds)
        check_fraction("RPNTargets", "min_pos_iou", min_pos_iou)
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
        self.seed = int(seed)

    def construct(self, gt_boxes, gt_labels, gt_valid, image_shape, sampling_step=None):
        gt_boxes = ops.stop_gradient(gt_boxes.astype(ms.float32))
        batch = gt_boxes.shape[0]
        inside = (self.anchor_cx < image_shape[:, 1:2]) & (self.anchor_cy < image_shape[:, 0:1])  # [B, A]

        iou = box_iou(self.anchors, gt_boxes)  # [B, A, N]
        # [B, A, N] operands made full-size first (box_ops.broadcast_pair: broadcasting is slow on the CPU).
        inside_pair, valid_pair = broadcast_pair(inside, gt_valid > 0, iou.shape)
        iou = ops.where(valid_pair & inside_pair, iou, -1.0)
        max_iou = iou.max(axis=2)  # [B, A]
        argmax_gt = ops.argmax(iou, 2).astype(ms.int32)

        # Each valid GT's best anchor(s) become positive (ties: all of them).
        gt_best = ops.broadcast_to(ops.expand_dims(iou.max(axis=1), 1), iou.shape)  # [B, A, N]
        is_best_pair = ((iou == gt_best) & (gt_best >= self.min_pos_iou) & (gt_best > 0.0) & valid_pair)
        is_best = is_best_pair.any(axis=2)
        best_gt = ops.argmax(ops.where(is_best_pair, iou, -1.0), 2).astype(ms.int32)
        matched_gt = ops.where(is_best, best_gt, argmax_gt)

        positive = (max_iou >= self.pos_iou_thr) | is_best
        negative = inside & (max_iou < self.neg_iou_thr) & ~positive
        negative = negative & ~crowd_hits(self.anchors, gt_boxes, gt_labels)

        keys = sampling_keys(self.seed, sampling_step, (batch, self.num_anchors))
        pos_index, pos_picked = random_pick(positive, keys, self.max_positives)
        num_pos = pos_picked.astype(ms.int32).sum(axis=1, keepdims=True)  # [B, 1]
        neg_index, neg_picked = random_pick(negative, keys, self.num_samples)
        slots = ops.arange(self.num_samples).astype(ms.int32).reshape(1, -1)
        neg_picked = neg_picked & (slots < self.num_samples - num_pos)

        pos_weight = scatter_flags(pos_index, pos_picked, self.num_anchors)  # [B, A]
        label_weights = pos_weight + scatter_flags(neg_index, neg_picked, self.num_anchors)

        matched_boxes = gather_rows(gt_boxes, matched_gt)  # [B, A, 4]
        box_targets = encode_boxes(self.anchors, matched_boxes, self.stds, self.box_plus_one)
        box_targets = ops.where(ops.expand_dims(pos_weight > 0.0, 2), box_targets, 0.0)
        return (ops.stop_gradient(pos_weight), ops.stop_gradient(label_weights),
                ops.stop_gradient(box_targets), ops.stop_gradient(pos_weight))


def rpn_losses(objectness, deltas, labels, label_weights, box_targets, box_weights):
    """The two RPN losses.

    Args:
        objectness: ``[B, A]`` logits; deltas: ``[B, A, 4]`` (float32, from :class:`RPNHead`).
        labels, label_weights, box_targets, box_weights: the outputs of :class:`RPNTargets`.

    Returns:
        ``(rpn_cls, rpn_reg)`` float32 scalars: BCE averaged over the sampled anchors, and
        smooth-L1 (beta ``RPN_SMOOTH_L1_BETA``) of the positives, also divided by the number
        of sampled anchors.
    """
    rpn_cls = sigmoid_bce_loss(objectness, labels, label_weights)
    rpn_reg = smooth_l1_loss(deltas, box_targets, box_weights, RPN_SMOOTH_L1_BETA, label_weights.sum())
    return rpn_cls, rpn_reg
