"""Mask branch, stage 3: head layers, training targets, loss and inference.

- :class:`MaskHead`: RoI features (14x14) -> 4 conv3x3 -> deconv x2 -> per-class 28x28 logits.
- :func:`mask_targets`: each RoI's matched GT mask cropped and resized to the head's output.
- :func:`mask_bce_loss` / :class:`MaskLoss`: per-pixel BCE on the GT class's channel of the
  positive RoIs, times the mask loss weight.
- :func:`rows_to_run`: the RoI slots the head runs on (real positives, real detections).
- :func:`mask_probabilities`: inference, the detected class's channel through a sigmoid.

The predicted side is ``M = MASK_HEAD_UPSAMPLE * roi_mask_size`` (``Config.mask_out_size``,
28 for the default 14).
"""

from __future__ import annotations

import mindspore as ms
import mindspore.nn as nn
import mindspore.ops as ops
from mindspore import Tensor
from mindspore.common.initializer import HeNormal, Normal, initializer

from src.maskrcnn.geometry import MASK_HEAD_UPSAMPLE
from src.maskrcnn.layers import conv_with_bias
from src.maskrcnn.losses import bce_with_logits, normalise

# The per-class predictor starts near zero (logit 0, p = 0.5) as in the published Mask R-CNN;
# He init on a 1x1 conv with few outputs gives logits of several units and a diverging loss.
MASK_LOGITS_INIT_STD = 0.001
# Mask targets: 2x2 sample points per output cell estimate how much of the cell is object.
MASK_SUBSAMPLES = 2
# Mask targets are binarised at this value (the target of a cell is "mostly on the object").
MASK_BINARY_THR = 0.5


def _he(shape):
    return initializer(HeNormal(mode="fan_out", nonlinearity="relu"), shape)


class MaskHead(nn.Cell):
    """Four 3x3 conv + ReLU, a stride-``MASK_HEAD_UPSAMPLE`` deconvolution + ReLU and a 1x1 class conv.

    Args:
        in_channels: channels of the RoI features (config.fpn_channels).
        channels: width of the head (config.mask_head_channels).
        num_classes: classes including background (one mask channel each).

    Inputs:
        roi_features [R, in_channels, S, S] (S = config.roi_mask_size, 14).

    Returns:
        mask_logits [R, num_classes, 2S, 2S] (sigmoid logits; 28x28 for S = 14).
    """

    def __init__(self, in_channels: int, channels: int, num_classes: int):
        super().__init__()
        self.conv1 = self._conv3x3(in_channels, channels)
        self.conv2 = self._conv3x3(channels, channels)
        self.conv3 = self._conv3x3(channels, channels)
        self.conv4 = self._conv3x3(channels, channels)
        # MindSpore's transposed-conv weight is [in, out, k, k].
        up = MASK_HEAD_UPSAMPLE
        self.deconv = nn.Conv2dTranspose(channels, channels, up, stride=up, pad_mode="valid",
                                         has_bias=True, weight_init=_he([channels, channels, up, up]),
                                         bias_init="zeros")
        self.mask_logits = nn.Conv2d(channels, num_classes, 1, pad_mode="valid", has_bias=True,
                                     weight_init=initializer(Normal(MASK_LOGITS_INIT_STD),
                                                             [num_classes, channels, 1, 1]),
                                     bias_init="zeros")
        self.relu = nn.ReLU()

    @staticmethod
    def _conv3x3(in_channels: int, out_channels: int) -> nn.Conv2d:
        return conv_with_bias(in_channels, out_channels, 3, _he([out_channels, in_channels, 3, 3]))

    def construct(self, roi_features):
        x = self.relu(self.conv1(roi_features))
        x = self.relu(self.conv2(x))
        x = self.relu(self.conv3(x))
        x = self.relu(self.conv4(x))
        x = self.relu(self.deconv(x))
        return self.mask_logits(x)


def mask_targets(gt_masks, rois, matched_gt, out_size, binarize=True):
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
        rois: ``[B, R, 4]`` boxes in input pixels (the positive RoI slots).
        matched_gt: ``[B, R]`` int32 GT slot of each RoI.
        out_size: side of the target (``Config.mask_out_size``, 28).
        binarize: threshold the coverage at 0.5 (default) or return it as a soft target.

    Returns:
        ``[B, R, out_size, out_size]`` float32 in {0, 1} (or [0, 1]), no gradient.

    The flat pixel index is int32, so ``B * N * H * W`` must stay below 2**31 (e.g. 2 x 100
    instances at 1344 x 800 is 2.2e8).
    """
    # Reshapes keep the RoI count as -1: it may be a dynamic shape (MaskLoss on real positives).
    batch, num_gt, height, width = gt_masks.shape
    samples = out_size * MASK_SUBSAMPLES
    boxes = ops.stop_gradient(rois.astype(ms.float32)).reshape(-1, 4)
    steps = (ops.arange(samples).astype(ms.float32).reshape(1, samples) + 0.5) / samples  # [1, n]
    xs = boxes[:, 0:1] + steps * (boxes[:, 2:3] - boxes[:, 0:1])  # [BR, n] continuous coords
    ys = boxes[:, 1:2] + steps * (boxes[:, 3:4] - boxes[:, 1:2])
    inside = ops.expand_dims((ys >= 0.0) & (ys < height), 2) & ops.expand_dims((xs >= 0.0) & (xs < width), 1)
    cols = ops.clamp(ops.floor(xs), 0.0, float(width - 1)).astype(ms.int32)
    rows = ops.clamp(ops.floor(ys), 0.0, float(height - 1)).astype(ms.int32)
    first = (ops.arange(batch).astype(ms.int32) * num_gt).reshape(batch, 1)
    slot = (first + matched_gt.astype(ms.int32)).reshape(-1, 1, 1)
    flat_index = (slot * height + ops.expand_dims(rows, 2)) * width + ops.expand_dims(cols, 1)  # [BR, n, n]
    values = ops.gather(gt_masks.reshape(-1), flat_index, 0).astype(ms.float32)
    values = ops.where(inside, values, 0.0)
    coverage = values.reshape(-1, out_size, MASK_SUBSAMPLES, out_size, MASK_SUBSAMPLES)
    coverage = coverage.mean(axis=(2, 4)).reshape(batch, -1, out_size, out_size)
    if binarize:
        coverage = (coverage >= MASK_BINARY_THR).astype(ms.float32)
    return ops.stop_gradient(coverage)


def mask_bce_loss(mask_logits, labels, targets, weights):
    """Per-pixel sigmoid BCE on the GT class's channel only, averaged over positive RoIs.

    Args:
        mask_logits: ``[R, C, M, M]`` per-class mask logits.
        labels: ``[R]`` int GT class of each RoI (0 = background rows never count).
        targets: ``[R, M, M]`` binary mask targets.
        weights: ``[R]`` float, 1 for positive RoIs.

    Returns:
        Scalar ``sum_r w_r * mean_pixels(bce_r) / max(sum_r w_r, 1)`` over rows with
        ``weight > 0`` and ``label > 0``.
    """
    mask_logits = mask_logits.astype(ms.float32)
    num_classes = mask_logits.shape[1]
    labels = ops.clamp(labels.astype(ms.int32), 0, num_classes - 1)
    one_hot = ops.one_hot(labels, num_classes, ops.ones((), ms.float32), ops.zeros((), ms.float32))
    chosen = (mask_logits * one_hot.reshape(-1, num_classes, 1, 1)).sum(axis=1)  # [R, M, M]
    per_row = bce_with_logits(chosen, targets.astype(ms.float32)).mean(axis=(1, 2))
    weights = ops.where(labels > 0, weights.astype(ms.float32), 0.0)
    total = ops.where(weights > 0.0, per_row * weights, 0.0).sum()
    return normalise(total, weights, None)


def rows_to_run(keep):
    """``[T]`` int32 flat indices of the True entries of ``keep`` (any shape), plus index 0 when
    it is not one of them: a convolution cannot run on zero rows. ``T`` is a dynamic shape."""
    keep = keep.reshape(-1)
    return ops.nonzero(keep | (ops.arange(keep.shape[0]) == 0)).reshape(-1).astype(ms.int32)


class MaskLoss(nn.Cell):
    """The mask loss of the positive RoI slots (``roi_heads.RCNNTargets`` puts them first), and
    which of them the mask head runs on.

    Args:
        mask_size: side ``M`` of the predicted masks and targets (``Config.mask_out_size``).
        max_positives: positive slots per image ``P_max = int(num_samples * pos_fraction)``.
        loss_weight: factor of the loss (config.mask_loss_weight).
        rois_per_image: ``K`` (config.mask_rois_per_image): the mask head runs on ``T = B * K``
            slots shared by the ``B`` images of the batch, so an image may use more than ``K``
            when another has fewer positives (``K = P_max``: every slot, ``T = B * P_max``);
            None = on the batch's real positives only, ``T`` changing from step to step (a
            dynamic shape). See :meth:`select`.

    Inputs (of ``construct``; ``T`` picked slots, from :meth:`select`):
        mask_logits ``[T, C, M, M]`` float32 (the mask head on the picked RoIs), gt_masks
        ``[B, N, H, W]``, then the picked slots' ``rois [T, 4]``, ``image [T]`` i32,
        ``matched_gt [T]`` i32, ``roi_labels [T]`` i32, ``box_weights [T]`` f32 (1 = positive).

    Outputs:
        Scalar float32 :func:`mask_bce_loss` times ``loss_weight``.
    """

    def __init__(self, mask_size: int, max_positives: int, loss_weight: float = 1.0, rois_per_image=None):
        super().__init__()
        if int(max_positives) < 1:
            raise ValueError(f"MaskLoss: max_positives must be >= 1 (rcnn_num_samples * rcnn_pos_fraction "
                             f"leaves no positive RoI slot for the mask head), got {max_positives!r}")
        if rois_per_image is not None and not 1 <= int(rois_per_image) <= int(max_positives):
            raise ValueError(f"MaskLoss: rois_per_image must be None or between 1 and max_positives = "
                             f"{max_positives}, got {rois_per_image!r}")
        self.mask_size = int(mask_size)
        self.max_positives = int(max_positives)
        self.rois_per_image = None if rois_per_image is None else int(rois_per_image)
        self.loss_weight = float(loss_weight)

    def select(self, rois, matched_gt, roi_labels, box_weights):
        """The slots the mask head trains on.

        With ``K`` None they are the real positives of the batch (``T`` of them, in image and
        slot order), plus slot 0 of image 0 when it is not one (weight 0: a convolution cannot
        run on zero rows), so no compute goes to padding and the loss is the one of every slot.
        With ``K < P_max`` the ``T = B * K`` slots go to the positives of all images, in turns:
        every image's first positive, then every image's second, and so on (sampled positives
        sit in the first slots in random order, so each image keeps a random subset). While the
        batch has at most ``T`` real positives, none is dropped, whatever their split between
        the images.

        Args:
            rois ``[B, S, 4]``, matched_gt ``[B, S]``, roi_labels ``[B, S]``, box_weights
            ``[B, S]``: stage-2 sampling's outputs (``S >= P_max``).

        Returns:
            ``(align_rois [B, R, 4], rows [T] i32 or None, picked)``: RoIAlign pools
            ``align_rois`` (``R = P_max`` unless bounded; bounded: ``R = T`` per image, each
            image's slots of other images zeroed) and the mask head takes its rows ``rows``
            (None: all ``B * P_max``); ``picked = (rois [T, 4], image [T], matched_gt [T],
            roi_labels [T], box_weights [T])`` are :meth:`construct`'s last inputs.
        """
        batch, slots = rois.shape[0], self.max_positives
        rois, matched_gt = rois[:, :slots], matched_gt[:, :slots].astype(ms.int32)
        roi_labels, box_weights = roi_labels[:, :slots].astype(ms.int32), box_weights[:, :slots]
        image = ops.broadcast_to(ops.arange(batch).astype(ms.int32).reshape(batch, 1), (batch, slots))
        every_slot = (rois.reshape(-1, 4), image.reshape(-1), matched_gt.reshape(-1), roi_labels.reshape(-1),
                      box_weights.reshape(-1))
        positive = (box_weights > 0.0) & (roi_labels > 0)
        if self.rois_per_image is None:
            rows = rows_to_run(positive)
            return rois, rows, tuple(ops.gather(value, rows, 0) for value in every_slot)
        if self.rois_per_image >= slots:
            return rois, None, every_slot
        total = batch * self.rois_per_image
        turn = ops.arange(slots).astype(ms.float32).reshape(1, slots)
        priority = ops.where(positive, float(slots) - turn, -1.0 - turn).reshape(-1)  # [B * P_max]
        priority, flat = ops.topk(priority, total)
        flat = flat.astype(ms.int32)
        picked_image = ops.gather(image.reshape(-1), flat, 0)
        picked_rois = ops.gather(rois.reshape(-1, 4), flat, 0)
        picked_weights = ops.where(priority > 0.0, ops.gather(box_weights.reshape(-1), flat, 0), 0.0)
        own = ops.arange(batch).astype(ms.int32).reshape(batch, 1) == picked_image.reshape(1, total)
        align_rois = ops.where(ops.expand_dims(own, -1), ops.expand_dims(picked_rois, 0), 0.0)  # [B, T, 4]
        rows = picked_image * total + ops.arange(total).astype(ms.int32)
        return align_rois, rows, (picked_rois, picked_image, ops.gather(matched_gt.reshape(-1), flat, 0),
                                  ops.gather(roi_labels.reshape(-1), flat, 0), picked_weights)

    def construct(self, mask_logits, gt_masks, rois, image, matched_gt, roi_labels, box_weights):
        batch, num_gt = gt_masks.shape[0], gt_masks.shape[1]
        # One "image" holding every GT mask: picked slot i reads GT slot image * N + matched_gt.
        all_masks = gt_masks.reshape((1, batch * num_gt) + gt_masks.shape[2:])
        slot = (image * num_gt + matched_gt).reshape(1, -1)
        targets = mask_targets(all_masks, ops.expand_dims(rois, 0), slot, self.mask_size)
        targets = ops.stop_gradient(targets).reshape(-1, self.mask_size, self.mask_size)
        loss = mask_bce_loss(mask_logits, roi_labels, targets, box_weights)
        return loss * self.loss_weight


def mask_probabilities(mask_logits, labels, valid, rows):
    """Inference: the mask of each detection's class as probabilities.

    Args:
        mask_logits: ``[T, C, M, M]`` float32, the mask head on the detection slots ``rows``.
        labels: ``[B, K]`` int32 detected classes; valid: ``[B, K]`` bool.
        rows: ``[T]`` int32 flat slots ``b * K + k`` the logits belong to (:func:`rows_to_run`),
            or None: every slot (``T = B * K``, static shapes).

    Returns:
        ``[B, K, M, M]`` float32 sigmoid of channel ``labels[b, k]``; all zero where not valid
        and in the slots the head did not run on.
    """
    batch, count = labels.shape
    num_classes, size = mask_logits.shape[1], mask_logits.shape[-1]
    labels, valid = labels.reshape(-1), valid.reshape(-1)
    if rows is not None:
        labels, valid = ops.gather(labels, rows, 0), ops.gather(valid, rows, 0)
    onehot = ops.one_hot(labels, num_classes, Tensor(1.0, ms.float32), Tensor(0.0, ms.float32))
    chosen = (mask_logits * onehot.reshape(-1, num_classes, 1, 1)).sum(axis=1)
    masks = ops.sigmoid(chosen) * valid.astype(ms.float32).reshape(-1, 1, 1)
    if rows is not None:
        masks = ops.scatter_nd(rows.reshape(-1, 1), masks, (batch * count, size, size))
    return masks.reshape(batch, count, size, size)
