"""RoI heads, stage 2 (boxes): head layers, RoI sampling and targets, loss, post-processing.

- :class:`BoxHead`: RoI features (7x7) -> two FC 1024 -> class logits and class-specific deltas.
- :class:`RCNNTargets`: sample RoIs among the proposals + GT boxes and compute their targets.
- :func:`box_head_losses`: softmax cross entropy over the sampled RoIs + class-specific
  smooth-L1 on the positives.
- :class:`BoxPostProcessor`: inference, per-class boxes -> score threshold -> per-class NMS ->
  the best ``max_per_image`` detections per image.

Targets carry no gradient. Shapes: ``B`` images, ``N`` padded GT slots, ``P`` proposals,
``S`` sampled RoIs per image, ``C`` classes including background.
"""

from __future__ import annotations

import math

import mindspore as ms
import mindspore.nn as nn
import mindspore.ops as ops
from mindspore import Tensor
from mindspore.common.initializer import HeUniform, Normal, initializer

from src.maskrcnn.box_ops import box_iou, clip_boxes, decode_boxes, encode_boxes
from src.maskrcnn.losses import smooth_l1_loss, softmax_cross_entropy_loss
from src.maskrcnn.numerics import CANDIDATE_CAPS, check_choice
from src.maskrcnn.sampling import check_sampling_args, crowd_hits, gather_rows, random_pick, sampling_keys

CLS_INIT_STD = 0.01
DELTA_INIT_STD = 0.001
# Kaiming-uniform slope of the hidden FC layers (the common default for dense layers: weights
# uniform in +-1/sqrt(fan_in)), so the 12544-wide fc1 starts with unit-scale outputs.
FC_KAIMING_SLOPE = math.sqrt(5)
# Smooth-L1 transition point of the RoI-head deltas.
RCNN_SMOOTH_L1_BETA = 1.0
# Inference, candidate_cap="fixed" (native): (RoI, class) candidates kept by score before the
# per-class NMS. NMSWithMask on Ascend handles at most a few thousand boxes; 1000 is plenty for
# test_max_per_img <= 100 on this project's data sets, but not exact (see candidate_bound).
TEST_PRE_NMS_CANDIDATES = 1000
# candidate_bound: a softmax's scores sum to 1 up to float32 rounding; this slack covers it.
SOFTMAX_SUM_SLACK = 1e-3
# Score given to a candidate that is not a detection (below threshold, padding, suppressed).
INVALID_SCORE = -1.0


def candidate_bound(num_proposals: int, num_classes: int, score_thr: float) -> int:
    """How many (proposal, foreground class) pairs can score above ``score_thr`` at most.

    The class scores of a proposal are one softmax: they sum to 1, so at most
    ``floor((1 + SOFTMAX_SUM_SLACK) / score_thr)`` of them exceed the threshold (20 at 0.05).
    A candidate list this long holds every candidate, so the final NMS sees all of them, as
    torchvision's (and the model zoo's) does, with a static shape.

    Args:
        num_proposals: proposals per image ``P``; num_classes: ``C`` with background;
        score_thr: class-score threshold (``config.test_score_thr``).

    Returns:
        ``P * min(C - 1, floor((1 + slack) / score_thr))`` (``P * (C - 1)`` when ``score_thr <= 0``).
    """
    per_proposal = int(num_classes) - 1
    if score_thr > 0:
        per_proposal = min(per_proposal, int(math.floor((1.0 + SOFTMAX_SUM_SLACK) / float(score_thr))))
    return int(num_proposals) * per_proposal


def _dense(in_channels: int, out_channels: int, weight_init) -> nn.Dense:
    return nn.Dense(in_channels, out_channels,
                    weight_init=initializer(weight_init, [out_channels, in_channels]),
                    bias_init="zeros")


class BoxHead(nn.Cell):
    """Two-FC box head.

    Args:
        in_channels: channels of the RoI features (config.fpn_channels).
        roi_size: side of the RoIAlign output (config.roi_box_size, 7).
        hidden: width of fc1/fc2 (config.box_head_channels, 1024).
        num_classes: classes including background.

    Inputs:
        roi_features [R, in_channels, roi_size, roi_size].

    Returns:
        cls_logits [R, num_classes] (softmax logits, 0 = background),
        box_deltas [R, 4 * num_classes] (deltas of class c at columns 4c..4c+3).
    """

    def __init__(self, in_channels: int, roi_size: int, hidden: int, num_classes: int):
        super().__init__()
        self.num_classes = int(num_classes)
        flat = in_channels * roi_size * roi_size
        self.fc1 = _dense(flat, hidden, HeUniform(negative_slope=FC_KAIMING_SLOPE))
        self.fc2 = _dense(hidden, hidden, HeUniform(negative_slope=FC_KAIMING_SLOPE))
        self.cls_score = _dense(hidden, num_classes, Normal(sigma=CLS_INIT_STD))
        self.box_deltas = _dense(hidden, 4 * num_classes, Normal(sigma=DELTA_INIT_STD))
        self.relu = nn.ReLU()

    def construct(self, roi_features):
        x = roi_features.reshape(roi_features.shape[0], -1)
        x = self.relu(self.fc1(x))
        x = self.relu(self.fc2(x))
        return self.cls_score(x), self.box_deltas(x)


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
        seed: seed of the random sampling (``sampling.sampling_keys``).
        fill_with_negatives: see above (default False, the layout of the team spec).
        box_plus_one: box-coder widths ``x2 - x1 + 1`` (model-zoo numerics).

    Inputs:
        proposals ``[B, P, 4]`` f32, proposal_valid ``[B, P]`` bool, gt_boxes ``[B, N, 4]`` f32,
        gt_labels ``[B, N]`` i32, gt_valid ``[B, N]`` i32, sampling_step: the training step the
        sampling keys are drawn for (int32, one element; None = step 0).

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
        check_sampling_args("RCNNTargets", pos_iou_thr, neg_iou_thr, num_samples, pos_fraction, stds)
        self.num_samples = int(num_samples)
        self.max_positives = int(self.num_samples * pos_fraction)
        self.pos_iou_thr = float(pos_iou_thr)
        self.neg_iou_thr = float(neg_iou_thr)
        self.stds = tuple(float(s) for s in stds)
        self.fill_with_negatives = bool(fill_with_negatives)
        self.seed = int(seed)

    def construct(self, proposals, proposal_valid, gt_boxes, gt_labels, gt_valid, sampling_step=None):
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
        negative = negative & ~crowd_hits(candidates, gt_boxes, gt_labels)

        keys = sampling_keys(self.seed, sampling_step, (batch, num_candidates))
        pos_index, pos_picked = random_pick(positive, keys, self.max_positives)
        num_neg_slots = self.num_samples if self.fill_with_negatives else self.num_samples - self.max_positives
        slots = ops.arange(self.num_samples).astype(ms.int32).reshape(1, -1)  # [1, S]
        if self.fill_with_negatives:
            first_neg_slot = pos_picked.astype(ms.int32).sum(axis=1, keepdims=True)  # [B, 1]
        else:
            first_neg_slot = self.max_positives
        if num_neg_slots > 0:
            neg_index, neg_picked = random_pick(negative, keys, num_neg_slots)
            rank = slots - first_neg_slot  # which negative pick goes into each slot
            rank_clipped = ops.clamp(rank, 0, num_neg_slots - 1)
            rank_clipped = ops.broadcast_to(rank_clipped, (batch, self.num_samples))
            slot_neg_index = gather_rows(neg_index, rank_clipped)
            slot_neg = gather_rows(neg_picked, rank_clipped) & (rank >= 0)
        else:
            slot_neg_index = ops.zeros((batch, self.num_samples), ms.int32)
            slot_neg = ops.zeros((batch, self.num_samples), ms.bool_)

        pad = self.num_samples - self.max_positives
        slot_pos_index = ops.concat((pos_index, ops.zeros((batch, pad), ms.int32)), axis=1)
        slot_pos = ops.concat((pos_picked, ops.zeros((batch, pad), ms.bool_)), axis=1)
        slot_index = ops.where(slot_pos, slot_pos_index, slot_neg_index)  # [B, S]

        rois = gather_rows(candidates, slot_index)  # [B, S, 4]
        matched = gather_rows(argmax_gt, slot_index)
        matched_gt = ops.where(slot_pos, matched, 0)
        roi_labels = ops.where(slot_pos, gather_rows(gt_labels.astype(ms.int32), matched_gt), 0)
        box_targets = encode_boxes(rois, gather_rows(gt_boxes, matched_gt), self.stds,
                                   self.box_plus_one)
        box_targets = ops.where(ops.expand_dims(slot_pos, 2), box_targets, 0.0)
        roi_weights = (slot_pos | slot_neg).astype(ms.float32)
        box_weights = slot_pos.astype(ms.float32)
        return (ops.stop_gradient(rois), ops.stop_gradient(roi_labels), ops.stop_gradient(roi_weights),
                ops.stop_gradient(box_targets), ops.stop_gradient(box_weights),
                ops.stop_gradient(matched_gt))


def box_head_losses(cls_logits, box_deltas, roi_labels, roi_weights, box_targets, box_weights):
    """The two box-head losses.

    Args:
        cls_logits: ``[B*S, C]`` float32; box_deltas: ``[B*S, C, 4]`` float32 (:class:`BoxHead`).
        roi_labels, roi_weights, box_targets, box_weights: ``[B, S(, 4)]`` from :class:`RCNNTargets`.

    Returns:
        ``(rcnn_cls, rcnn_reg)`` float32 scalars: cross entropy averaged over the sampled RoIs,
        and smooth-L1 (beta ``RCNN_SMOOTH_L1_BETA``) of each positive's target-class deltas, also
        divided by the number of sampled RoIs.
    """
    num_classes = box_deltas.shape[1]
    flat_labels = roi_labels.reshape(-1)
    flat_weights = roi_weights.reshape(-1)
    rcnn_cls = softmax_cross_entropy_loss(cls_logits, flat_labels, flat_weights)
    # Deltas of each RoI's target class (background rows have weight 0 anyway).
    onehot = ops.one_hot(flat_labels, num_classes, Tensor(1.0, ms.float32), Tensor(0.0, ms.float32))
    class_deltas = (box_deltas * ops.expand_dims(onehot, -1)).sum(axis=1)
    rcnn_reg = smooth_l1_loss(class_deltas, box_targets.reshape(-1, 4), box_weights.reshape(-1),
                              RCNN_SMOOTH_L1_BETA, flat_weights.sum())
    return rcnn_cls, rcnn_reg


class BoxPostProcessor(nn.Cell):
    """Inference: the detections of each image, padded to ``max_per_image``.

    Every (proposal, foreground class) pair is a candidate: its class-specific box is decoded
    and clipped; pairs of invalid proposals, with a score ``<= score_thr`` or (when
    ``min_detection_size > 0``) a side below it are dropped; the best ``N`` by score go through
    one NMS per class: ``N = min(P * (C - 1), TEST_PRE_NMS_CANDIDATES)`` with
    ``candidate_cap="fixed"``, every candidate (``N = candidate_bound(...)``) with ``"exact"``.

    Args:
        num_classes: classes including background ``C``.
        num_proposals: proposals per image ``P``.
        stds: 4 floats of the box coder (config.box_target_stds).
        score_thr, nms_thr: class-score threshold and per-class NMS IoU threshold.
        max_per_image: detections per image ``K`` (config.test_max_per_img).
        max_coordinate: largest box coordinate (the larger input side): classes are shifted
            ``max_coordinate + 1`` apart so that one NMS never suppresses across classes.
        box_plus_one, clamp_below: box-coder conventions (``src/maskrcnn/numerics.py``).
        clip_to_input: ``(H, W)`` to clip boxes to the padded input, None to clip to the image.
        min_detection_size: smallest kept box side in pixels (0 = no filter).
        candidate_cap: ``"fixed"`` or ``"exact"`` (see above; ``src/maskrcnn/numerics.py``).
        return_sources: also return each detection's proposal index (for the zoo's mask box).

    Inputs:
        proposals ``[B, P, 4]`` f32, proposal_valid ``[B, P]`` bool, cls_logits ``[B*P, C]`` f32,
        box_deltas ``[B*P, C, 4]`` f32, image_shape ``[B, 4]`` f32.

    Outputs:
        boxes ``[B, K, 4]`` f32, scores ``[B, K]`` f32, labels ``[B, K]`` i32, valid ``[B, K]``
        bool; padding rows are all zero (and not valid). With ``return_sources`` also
        ``sources [B, K]`` i32, the proposal each detection was decoded from (0 for padding).
    """

    def __init__(self, num_classes, num_proposals, stds, score_thr, nms_thr, max_per_image,
                 max_coordinate, box_plus_one=False, clamp_below=None, clip_to_input=None,
                 min_detection_size=0.0, candidate_cap="fixed", return_sources=False):
        super().__init__()
        check_choice("BoxPostProcessor", "candidate_cap", candidate_cap, CANDIDATE_CAPS)
        self.return_sources = bool(return_sources)
        self.num_classes = int(num_classes)
        self.stds = tuple(float(s) for s in stds)
        self.score_thr = float(score_thr)
        self.max_per_image = int(max_per_image)
        self.box_plus_one = bool(box_plus_one)
        self.clamp_below = clamp_below
        self.clip_to_input = clip_to_input
        self.min_detection_size = float(min_detection_size)
        self.class_offset = float(max_coordinate + 1)
        self.half_extent = 0.5 * float(max_coordinate)
        if candidate_cap == "exact":
            self.num_candidates = candidate_bound(num_proposals, self.num_classes, self.score_thr)
        else:
            self.num_candidates = min(int(num_proposals) * (self.num_classes - 1), TEST_PRE_NMS_CANDIDATES)
        # top-k needs at least K entries: pad with invalid candidates when there are fewer.
        self.candidate_pad = max(0, self.max_per_image - self.num_candidates)
        self.nms = ops.NMSWithMask(float(nms_thr))

    def construct(self, proposals, proposal_valid, cls_logits, box_deltas, image_shape):
        batch, num_props = proposals.shape[0], proposals.shape[1]
        fg = self.num_classes - 1
        scores = ops.softmax(cls_logits, axis=-1)[:, 1:].reshape(batch, num_props * fg)
        # Class-specific boxes of every (proposal, foreground class) pair: [B, P*fg, 4].
        deltas = box_deltas[:, 1:, :].reshape(batch, num_props, fg, 4)
        ref = ops.broadcast_to(ops.expand_dims(proposals, 2), (batch, num_props, fg, 4))
        boxes = decode_boxes(ref, deltas, self.stds, plus_one=self.box_plus_one,
                             clamp_below=self.clamp_below).reshape(batch, num_props * fg, 4)
        boxes = clip_boxes(boxes, image_shape, self.clip_to_input)
        pair_valid = ops.broadcast_to(ops.expand_dims(proposal_valid, 2),
                                      (batch, num_props, fg)).reshape(batch, num_props * fg)
        pair_valid = ops.logical_and(pair_valid, scores > self.score_thr)
        if self.min_detection_size > 0:
            # torchvision drops detections with a side below min_detection_size before NMS.
            big_enough = ((boxes[..., 2] - boxes[..., 0]) >= self.min_detection_size) & \
                         ((boxes[..., 3] - boxes[..., 1]) >= self.min_detection_size)
            pair_valid = ops.logical_and(pair_valid, big_enough)
        scores = ops.where(pair_valid, scores, ops.full_like(scores, INVALID_SCORE))
        # Column j of a proposal row is foreground class j + 1.
        class_ids = ops.tile(ops.arange(1, fg + 1, dtype=ms.int32), (num_props,))
        class_ids = ops.broadcast_to(ops.expand_dims(class_ids, 0), (batch, num_props * fg))

        top_scores, top_index = ops.topk(scores, self.num_candidates, dim=-1)
        top_index = top_index.astype(ms.int32)
        top_boxes = ops.gather(boxes, top_index, 1, batch_dims=1)  # [B, N, 4]
        top_labels = ops.gather(class_ids, top_index, 1, batch_dims=1)  # [B, N]
        if self.candidate_pad > 0:
            pad = self.candidate_pad
            pad_scores = ops.full((batch, pad), INVALID_SCORE, dtype=ms.float32)
            top_scores = ops.concat((top_scores, pad_scores), 1)
            top_boxes = ops.concat((top_boxes, ops.zeros((batch, pad, 4), ms.float32)), 1)
            top_labels = ops.concat((top_labels, ops.zeros((batch, pad), ms.int32)), 1)
            top_index = ops.concat((top_index, ops.zeros((batch, pad), ms.int32)), 1)

        out_boxes = ()
        out_scores = ()
        out_labels = ()
        out_sources = ()
        for b in range(batch):
            kept_boxes, kept_scores, kept_labels, kept_rows = self.class_nms(top_boxes[b], top_scores[b],
                                                                             top_labels[b])
            out_boxes += (kept_boxes,)
            out_scores += (kept_scores,)
            out_labels += (kept_labels,)
            if self.return_sources:
                # candidate row -> (proposal, class) pair -> proposal
                out_sources += (ops.gather(top_index[b], kept_rows, 0) // fg,)
        det_boxes = ops.stack(out_boxes)
        det_scores = ops.stack(out_scores)
        det_labels = ops.stack(out_labels)
        # Real detections have a softmax score >= 0; everything else carries INVALID_SCORE.
        valid = det_scores >= 0.0
        det_scores = ops.where(valid, det_scores, ops.zeros_like(det_scores))
        det_boxes = det_boxes * ops.expand_dims(valid.astype(ms.float32), -1)
        det_labels = ops.where(valid, det_labels, ops.zeros_like(det_labels))
        if self.return_sources:
            sources = ops.where(valid, ops.stack(out_sources), ops.zeros_like(det_labels))
            return det_boxes, det_scores, det_labels, valid, sources
        return det_boxes, det_scores, det_labels, valid

    def decode_class(self, proposals, box_deltas, class_index, image_shape):
        """Each proposal decoded (and clipped) like the detections, with the deltas of class
        ``class_index``.

        Args:
            proposals ``[B, P, 4]``; box_deltas ``[B*P, C, 4]``; class_index ``[B*P]`` int32;
            image_shape ``[B, 4]``.

        Returns:
            ``[B, P, 4]`` f32 boxes.
        """
        onehot = ops.one_hot(class_index, self.num_classes, Tensor(1.0, ms.float32), Tensor(0.0, ms.float32))
        deltas = (box_deltas * ops.expand_dims(onehot, -1)).sum(axis=1).reshape(proposals.shape)
        boxes = decode_boxes(proposals, deltas, self.stds, plus_one=self.box_plus_one, clamp_below=self.clamp_below)
        return clip_boxes(boxes, image_shape, self.clip_to_input)

    def class_nms(self, boxes, scores, labels):
        """Per-class NMS of one image's candidates, sorted by score (descending).

        Args:
            boxes: [N, 4] clipped boxes; scores: [N] (INVALID_SCORE for non-candidates);
            labels: [N] int32 class ids.

        Returns:
            The best ``max_per_image`` kept detections: boxes [K, 4], scores [K]
            (INVALID_SCORE for padding), labels [K] int32, and (with ``return_sources``, else
            None) the candidate row [K] int32 each came from.
        """
        # Shift every class into its own region so one NMS never suppresses across classes;
        # NMSWithMask returns its (sorted) input boxes, the shift also carries the label
        # through the sort, recovered below (exact: |x1 - half_extent| < offset / 2).
        shift = ops.expand_dims(labels.astype(ms.float32) * self.class_offset, -1)
        packed = ops.concat((boxes + shift, ops.expand_dims(scores, -1)), axis=-1)
        sorted_packed, _, keep = self.nms(packed)
        nms_scores = sorted_packed[:, 4]
        nms_labels = ops.round((sorted_packed[:, 0] - self.half_extent) / self.class_offset)
        nms_boxes = sorted_packed[:, :4] - ops.expand_dims(nms_labels * self.class_offset, -1)
        nms_scores = ops.where(keep, nms_scores, ops.full_like(nms_scores, INVALID_SCORE))
        top_scores, top_index = ops.topk(nms_scores, self.max_per_image)
        top_boxes = ops.gather(nms_boxes, top_index, 0)
        top_labels = ops.gather(nms_labels, top_index, 0).astype(ms.int32)
        rows = None
        if self.return_sources:
            # NMSWithMask returns its input sorted, with no index into it: find each kept
            # detection's candidate row as the first row with the same shifted box and score.
            kept = ops.gather(sorted_packed, top_index, 0)  # [K, 5]
            same = ops.equal(ops.expand_dims(packed, 0), ops.expand_dims(kept, 1)).all(axis=-1)  # [K, N]
            rows = ops.argmax(same.astype(ms.float32), dim=1).astype(ms.int32)
        return top_boxes, top_scores, top_labels, rows
