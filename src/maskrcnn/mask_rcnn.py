"""Mask R-CNN (ResNet50 + FPN): the top Cell only wires the stages together.

Training (``net.set_train(True)``)::

    net(image, image_shape, box, label, valid_num, mask)
        -> (rpn_cls, rpn_reg, rcnn_cls, rcnn_reg, rcnn_mask)   # src.batch.LOSS_NAMES order

Inference (``net.set_train(False)``)::

    net(image, image_shape) -> (boxes [B,K,4] f32, scores [B,K] f32, labels [B,K] i32,
                                valid [B,K] bool, masks [B,K,M,M] f32)

with ``K = config.test_max_per_img`` and ``M = 2 * config.roi_mask_size`` (28). Shapes and
dtypes of the inputs are those of ``src/batch.py``; boxes are ``[x1, y1, x2, y2]`` in
network-input pixels.
"""

from __future__ import annotations

import mindspore.common.dtype as mstype
import mindspore.nn as nn
import mindspore.ops as ops
from mindspore import Tensor

from src.config import FPN_STRIDES
from src.maskrcnn.anchors import anchors_per_level, generate_anchors
from src.maskrcnn.assigners import RCNNTargets, RPNTargets, mask_targets
from src.maskrcnn.box_head import BoxHead
from src.maskrcnn.box_ops import clip_boxes, decode_boxes
from src.maskrcnn.fpn import FPN
from src.maskrcnn.losses import (mask_bce_loss, sigmoid_bce_loss, smooth_l1_loss,
                                 softmax_cross_entropy_loss)
from src.maskrcnn.mask_head import MaskHead
from src.maskrcnn.numerics import get_numerics
from src.maskrcnn.proposals import ProposalGenerator
from src.maskrcnn.resnet50 import FEATURE_STRIDES, ResNet50
from src.maskrcnn.roi_align import MultiLevelRoIAlign
from src.maskrcnn.rpn import RPNHead

# Smooth-L1 transition points: RPN deltas (1/9, as in the published Faster R-CNN recipe) and
# RoI-head deltas (1.0).
RPN_SMOOTH_L1_BETA = 1.0 / 9.0
RCNN_SMOOTH_L1_BETA = 1.0
# The RPN regresses anchors with unit stds (published recipe); config.box_target_stds are the
# RoI head's.
RPN_BOX_STDS = (1.0, 1.0, 1.0, 1.0)
# Inference: (RoI, class) candidates kept by score before the per-class NMS. NMSWithMask on
# Ascend handles at most a few thousand boxes; 1000 is plenty for test_max_per_img <= 100.
TEST_PRE_NMS_CANDIDATES = 1000
# Score given to a candidate that is not a detection (below threshold, padding, suppressed).
INVALID_SCORE = -1.0


class Mask_Rcnn_Resnet50(nn.Cell):  # pylint: disable=invalid-name  (the name users know)
    """Mask R-CNN with a ResNet50 + FPN backbone.

    Args:
        config: ``src.config.Config``.
        pretrained_backbone: True when a pretrained ResNet50 will be loaded: frozen BatchNorm
            (moving statistics, not trained) and the stem + ``config.frozen_backbone_stages``
            stages frozen. False (random init): trainable BatchNorm with batch statistics.
        roi_align_kernel: ``MultiLevelRoIAlign`` kernel ("sparse", "native"; None = by device);
            ``src.precision.roi_align_kernel`` decides it (export needs "native").

    ``config.numerics`` names the preset of numerical conventions (``src/maskrcnn/numerics.py``);
    each stage gets its part as constructor arguments.
    """

    def __init__(self, config, pretrained_backbone: bool = False, roi_align_kernel=None):
        super().__init__()
        num_classes = config.num_classes
        channels = config.fpn_channels
        stds = tuple(float(s) for s in config.box_target_stds)
        self.num_classes = num_classes
        self.stds = stds
        self.test_score_thr = float(config.test_score_thr)
        self.test_max_per_img = int(config.test_max_per_img)
        self.num_mask_rois = int(config.rcnn_num_samples * config.rcnn_pos_fraction)
        if self.num_mask_rois < 1:
            raise ValueError(f"Mask_Rcnn_Resnet50: rcnn_num_samples * rcnn_pos_fraction = "
                             f"{config.rcnn_num_samples} * {config.rcnn_pos_fraction} leaves no "
                             f"positive RoI slot for the mask head")
        self.mask_size = 2 * int(config.roi_mask_size)
        self.mask_loss_weight = float(config.mask_loss_weight)
        # Class offset for a single NMS over all classes: boxes of different classes never overlap.
        self.class_offset = float(max(config.img_height, config.img_width) + 1)
        self.half_extent = 0.5 * float(max(config.img_height, config.img_width))
        numerics = get_numerics(config.numerics)
        self.numerics = numerics
        self.box_plus_one = numerics.box_plus_one
        self.clamp_below = numerics.clamp_log_ratio_below
        # The model zoo clips decoded boxes to the padded input, the others to the image.
        self.clip_to_input = ((config.img_height, config.img_width) if numerics.clip_to == "input"
                              else None)
        self.min_detection_size = float(numerics.min_detection_size)

        if pretrained_backbone:
            self.backbone = ResNet50(config.frozen_backbone_stages, norm="frozen",
                                     stem_pool=numerics.stem_pool)
        else:
            self.backbone = ResNet50(0, norm="batch", stem_pool=numerics.stem_pool)
        self.fpn = FPN(out_channels=channels, upsample=numerics.fpn_upsample)
        self.rpn_head = RPNHead(channels, config.num_anchors_per_location)
        self.box_head = BoxHead(channels, config.roi_box_size, config.box_head_channels, num_classes)
        self.mask_head = MaskHead(channels, config.mask_head_channels, num_classes)

        feature_shapes = config.feature_shapes
        anchors = generate_anchors(feature_shapes, FPN_STRIDES, config.anchor_scales,
                                   config.anchor_ratios, layout=numerics.anchor_layout,
                                   input_size=(config.img_height, config.img_width))
        level_counts = anchors_per_level(feature_shapes, FPN_STRIDES, config.anchor_scales,
                                         config.anchor_ratios)
        # A constant of the graph (never updated).
        self.anchors = Tensor(anchors, mstype.float32)
        self.rpn_targets = RPNTargets(anchors, config.rpn_pos_iou_thr, config.rpn_neg_iou_thr,
                                      config.rpn_min_pos_iou, config.rpn_num_samples,
                                      config.rpn_pos_fraction, RPN_BOX_STDS,
                                      seed=config.seed, box_plus_one=numerics.box_plus_one)
        proposal_numerics = dict(box_plus_one=numerics.box_plus_one,
                                 clamp_below=numerics.clamp_log_ratio_below,
                                 clip_to_input=self.clip_to_input,
                                 filter_small=numerics.filter_small_proposals)
        self.proposals_train = ProposalGenerator(level_counts, config.rpn_pre_nms_top_k_train,
                                                 config.rpn_post_nms_top_k_train, config.rpn_nms_thr,
                                                 config.rpn_min_box_size, RPN_BOX_STDS,
                                                 **proposal_numerics)
        self.proposals_test = ProposalGenerator(level_counts, config.rpn_pre_nms_top_k_test,
                                                config.rpn_post_nms_top_k_test, config.rpn_nms_thr,
                                                config.rpn_min_box_size, RPN_BOX_STDS,
                                                **proposal_numerics)
        self.rcnn_targets = RCNNTargets(config.rcnn_num_samples, config.rcnn_pos_fraction,
                                        config.rcnn_pos_iou_thr, config.rcnn_neg_iou_thr, stds,
                                        seed=config.seed + 1, box_plus_one=numerics.box_plus_one,
                                        fill_with_negatives=config.rcnn_fill_with_negatives)
        self.box_roi_align = MultiLevelRoIAlign(config.roi_box_size, config.roi_sampling_ratio,
                                                FEATURE_STRIDES, alignment=numerics.roi_align,
                                                level_rule=numerics.roi_level, kernel=roi_align_kernel)
        self.mask_roi_align = MultiLevelRoIAlign(config.roi_mask_size, config.roi_sampling_ratio,
                                                 FEATURE_STRIDES, alignment=numerics.roi_align,
                                                 level_rule=numerics.roi_level, kernel=roi_align_kernel)

        # Inference: candidates over (RoI, class) pairs before NMS.
        num_pairs = config.rpn_post_nms_top_k_test * (num_classes - 1)
        self.test_candidates = min(num_pairs, TEST_PRE_NMS_CANDIDATES)
        # top-k needs at least K entries: pad with invalid candidates when there are fewer.
        self.test_candidate_pad = max(0, self.test_max_per_img - self.test_candidates)
        self.nms = ops.NMSWithMask(float(config.test_nms_thr))

        self.compute_float16 = bool(config.compute_float16)
        if self.compute_float16:
            for cell in (self.backbone, self.fpn, self.rpn_head, self.box_head, self.mask_head):
                cell.to_float(mstype.float16)

    # ---- shared ---------------------------------------------------------------------------
    def _features(self, image):
        """image [B,3,H,W] -> (P2..P6) float32 and the RPN outputs [B,A], [B,A,4] float32."""
        if self.compute_float16:
            image = image.astype(mstype.float16)
        c2, c3, c4, c5 = self.backbone(image)
        pyramid = self.fpn((c2, c3, c4, c5))
        objectness, deltas = self.rpn_head(pyramid)
        pyramid = tuple(p.astype(mstype.float32) for p in pyramid)
        return pyramid, objectness.astype(mstype.float32), deltas.astype(mstype.float32)

    def _box_head(self, pyramid, rois):
        """rois [B,R,4] -> class logits [B*R,C], deltas [B*R,C,4] (float32)."""
        roi_features = self.box_roi_align(pyramid[:4], rois)
        cls_logits, box_deltas = self.box_head(roi_features)
        cls_logits = cls_logits.astype(mstype.float32)
        box_deltas = box_deltas.astype(mstype.float32).reshape(-1, self.num_classes, 4)
        return cls_logits, box_deltas

    def _mask_logits(self, pyramid, rois):
        """rois [B,R,4] -> mask logits [B*R, C, M, M] float32."""
        roi_features = self.mask_roi_align(pyramid[:4], rois)
        return self.mask_head(roi_features).astype(mstype.float32)

    def construct(self, image, image_shape, box=None, label=None, valid_num=None, mask=None):
        if self.training:
            return self._losses(image, image_shape, box, label, valid_num, mask)
        return self._detect(image, image_shape)

    # ---- training -------------------------------------------------------------------------
    def _losses(self, image, image_shape, gt_boxes, gt_labels, gt_valid, gt_masks):
        """The five losses (scalars, float32) in LOSS_NAMES order."""
        pyramid, objectness, rpn_deltas = self._features(image)

        labels, label_weights, box_targets, box_weights = self.rpn_targets(
            gt_boxes, gt_labels, gt_valid, image_shape)
        rpn_cls = sigmoid_bce_loss(objectness, labels, label_weights)
        rpn_reg = smooth_l1_loss(rpn_deltas, box_targets, box_weights, RPN_SMOOTH_L1_BETA,
                                 label_weights.sum())

        proposals, proposal_valid = self.proposals_train(
            ops.stop_gradient(objectness), ops.stop_gradient(rpn_deltas), self.anchors, image_shape)
        rois, roi_labels, roi_weights, roi_box_targets, roi_box_weights, matched_gt = \
            self.rcnn_targets(ops.stop_gradient(proposals), proposal_valid, gt_boxes, gt_labels,
                              gt_valid)
        rois = ops.stop_gradient(rois)

        cls_logits, box_deltas = self._box_head(pyramid, rois)
        flat_labels = roi_labels.reshape(-1)
        flat_weights = roi_weights.reshape(-1)
        rcnn_cls = softmax_cross_entropy_loss(cls_logits, flat_labels, flat_weights)
        # Deltas of each RoI's target class (background rows have weight 0 anyway).
        onehot = ops.one_hot(flat_labels, self.num_classes, Tensor(1.0, mstype.float32),
                             Tensor(0.0, mstype.float32))
        class_deltas = (box_deltas * ops.expand_dims(onehot, -1)).sum(axis=1)
        rcnn_reg = smooth_l1_loss(class_deltas, roi_box_targets.reshape(-1, 4),
                                  roi_box_weights.reshape(-1), RCNN_SMOOTH_L1_BETA,
                                  flat_weights.sum())

        # Mask branch on the positive slots only (RCNNTargets puts positives first).
        count = self.num_mask_rois
        pos_rois = rois[:, :count]
        pos_labels = roi_labels[:, :count].reshape(-1)
        pos_weights = roi_box_weights[:, :count].reshape(-1)
        targets = mask_targets(gt_masks, pos_rois, matched_gt[:, :count], self.mask_size)
        targets = ops.stop_gradient(targets).reshape(-1, self.mask_size, self.mask_size)
        mask_logits = self._mask_logits(pyramid, pos_rois)
        rcnn_mask = mask_bce_loss(mask_logits, pos_labels, targets, pos_weights) * \
            self.mask_loss_weight
        return rpn_cls, rpn_reg, rcnn_cls, rcnn_reg, rcnn_mask

    # ---- inference ------------------------------------------------------------------------
    def _detect(self, image, image_shape):
        """Detections per image, padded to test_max_per_img (see the module docstring)."""
        pyramid, objectness, rpn_deltas = self._features(image)
        proposals, proposal_valid = self.proposals_test(objectness, rpn_deltas, self.anchors,
                                                        image_shape)
        batch, num_props = proposals.shape[0], proposals.shape[1]
        fg = self.num_classes - 1
        cls_logits, box_deltas = self._box_head(pyramid, proposals)
        scores = ops.softmax(cls_logits, axis=-1)[:, 1:].reshape(batch, num_props * fg)
        # Class-specific boxes of every (proposal, foreground class) pair: [B, P*fg, 4].
        deltas = box_deltas[:, 1:, :].reshape(batch, num_props, fg, 4)
        ref = ops.broadcast_to(ops.expand_dims(proposals, 2), (batch, num_props, fg, 4))
        boxes = decode_boxes(ref, deltas, self.stds, plus_one=self.box_plus_one,
                             clamp_below=self.clamp_below).reshape(batch, num_props * fg, 4)
        boxes = clip_boxes(boxes, image_shape, self.clip_to_input)
        pair_valid = ops.broadcast_to(ops.expand_dims(proposal_valid, 2),
                                      (batch, num_props, fg)).reshape(batch, num_props * fg)
        pair_valid = ops.logical_and(pair_valid, scores > self.test_score_thr)
        if self.min_detection_size > 0:
            # torchvision drops detections with a side below min_detection_size before NMS.
            big_enough = ((boxes[..., 2] - boxes[..., 0]) >= self.min_detection_size) & \
                         ((boxes[..., 3] - boxes[..., 1]) >= self.min_detection_size)
            pair_valid = ops.logical_and(pair_valid, big_enough)
        scores = ops.where(pair_valid, scores, ops.full_like(scores, INVALID_SCORE))
        # Column j of a proposal row is foreground class j + 1.
        class_ids = ops.tile(ops.arange(1, fg + 1, dtype=mstype.int32), (num_props,))
        class_ids = ops.broadcast_to(ops.expand_dims(class_ids, 0), (batch, num_props * fg))

        top_scores, top_index = ops.topk(scores, self.test_candidates, dim=-1)
        top_index = top_index.astype(mstype.int32)
        top_boxes = ops.gather(boxes, top_index, 1, batch_dims=1)  # [B, N, 4]
        top_labels = ops.gather(class_ids, top_index, 1, batch_dims=1)  # [B, N]
        if self.test_candidate_pad > 0:
            pad = self.test_candidate_pad
            pad_scores = ops.full((batch, pad), INVALID_SCORE, dtype=mstype.float32)
            top_scores = ops.concat((top_scores, pad_scores), 1)
            top_boxes = ops.concat((top_boxes, ops.zeros((batch, pad, 4), mstype.float32)), 1)
            top_labels = ops.concat((top_labels, ops.zeros((batch, pad), mstype.int32)), 1)

        out_boxes = ()
        out_scores = ()
        out_labels = ()
        for b in range(batch):
            kept_boxes, kept_scores, kept_labels = self._class_nms(top_boxes[b], top_scores[b],
                                                                   top_labels[b])
            out_boxes += (kept_boxes,)
            out_scores += (kept_scores,)
            out_labels += (kept_labels,)
        det_boxes = ops.stack(out_boxes)
        det_scores = ops.stack(out_scores)
        det_labels = ops.stack(out_labels)
        # Real detections have a softmax score >= 0; everything else carries INVALID_SCORE.
        valid = det_scores >= 0.0
        det_scores = ops.where(valid, det_scores, ops.zeros_like(det_scores))
        det_boxes = det_boxes * ops.expand_dims(valid.astype(mstype.float32), -1)
        det_labels = ops.where(valid, det_labels, ops.zeros_like(det_labels))

        mask_logits = self._mask_logits(pyramid, ops.stop_gradient(det_boxes))
        onehot = ops.one_hot(det_labels.reshape(-1), self.num_classes, Tensor(1.0, mstype.float32),
                             Tensor(0.0, mstype.float32))
        chosen = (mask_logits * onehot.reshape(-1, self.num_classes, 1, 1)).sum(axis=1)
        masks = ops.sigmoid(chosen).reshape(batch, self.test_max_per_img, self.mask_size,
                                            self.mask_size)
        masks = masks * valid.astype(mstype.float32).reshape(batch, self.test_max_per_img, 1, 1)
        return det_boxes, det_scores, det_labels, valid, masks

    def _class_nms(self, boxes, scores, labels):
        """Per-class NMS of one image's candidates, sorted by score (descending).

        Args:
            boxes: [N, 4] clipped boxes; scores: [N] (INVALID_SCORE for non-candidates);
            labels: [N] int32 class ids.

        Returns:
            The best ``test_max_per_img`` kept detections: boxes [K, 4], scores [K]
            (INVALID_SCORE for padding), labels [K] int32.
        """
        # Shift every class into its own region so one NMS never suppresses across classes;
        # NMSWithMask returns its (sorted) input boxes, the shift also carries the label
        # through the sort, recovered below (exact: |x1 - half_extent| < offset / 2).
        shift = ops.expand_dims(labels.astype(mstype.float32) * self.class_offset, -1)
        packed = ops.concat((boxes + shift, ops.expand_dims(scores, -1)), axis=-1)
        nms_boxes, _, keep = self.nms(packed)
        nms_scores = nms_boxes[:, 4]
        nms_labels = ops.round((nms_boxes[:, 0] - self.half_extent) / self.class_offset)
        nms_boxes = nms_boxes[:, :4] - ops.expand_dims(nms_labels * self.class_offset, -1)
        nms_scores = ops.where(keep, nms_scores, ops.full_like(nms_scores, INVALID_SCORE))
        top_scores, top_index = ops.topk(nms_scores, self.test_max_per_img)
        top_boxes = ops.gather(nms_boxes, top_index, 0)
        top_labels = ops.gather(nms_labels, top_index, 0).astype(mstype.int32)
        return top_boxes, top_scores, top_labels


def build_model(config, pretrained_backbone: bool = False, for_export: bool = False) -> Mask_Rcnn_Resnet50:
    """The Mask R-CNN of ``config`` (see :class:`Mask_Rcnn_Resnet50`).

    ``for_export``: only graph-exportable kernels (see ``src.precision.roi_align_kernel``).
    """
    from src.precision import roi_align_kernel

    return Mask_Rcnn_Resnet50(config, pretrained_backbone=pretrained_backbone,
                              roi_align_kernel=roi_align_kernel(config, for_export))
