"""Mask R-CNN (ResNet50 + FPN): the top Cell only wires the stages together.

Training (``net.set_train(True)``)::

    net(image, image_shape, box, label, instance_valid, mask[, sampling_step])
        -> (rpn_cls, rpn_reg, rcnn_cls, rcnn_reg, rcnn_mask)   # src.batch.LOSS_NAMES order

``sampling_step`` (int32, one element; the train step passes the optimizer's ``global_step``)
selects the random keys of the anchor and RoI sampling (``sampling.sampling_keys``); without it
they are those of step 0.

Inference (``net.set_train(False)``)::

    net(image, image_shape) -> (boxes [B,K,4] f32, scores [B,K] f32, labels [B,K] i32,
                                valid [B,K] bool, masks [B,K,M,M] f32)

with ``K = config.test_max_per_img`` and ``M = config.mask_out_size`` (28). Shapes and dtypes
of the inputs are those of ``src/batch.py``; boxes are ``[x1, y1, x2, y2]`` in network-input
pixels. ``src/maskrcnn/builder.py`` builds the stages from a Config.
"""

from __future__ import annotations

import mindspore.common.dtype as mstype
import mindspore.nn as nn
import mindspore.ops as ops
from mindspore import Tensor

from src.maskrcnn.mask_branch import mask_probabilities, rows_to_run
from src.maskrcnn.numerics import MASK_BOXES, check_choice
from src.maskrcnn.roi_heads import box_head_losses
from src.maskrcnn.rpn import rpn_losses


class Mask_Rcnn_Resnet50(nn.Cell):  # pylint: disable=invalid-name  (the name users know)
    """Mask R-CNN with a ResNet50 + FPN backbone, wired from its stage Cells.

    Args:
        backbone: ``resnet50.ResNet50``; fpn: ``fpn.FPN``; rpn_head: ``rpn.RPNHead``;
        box_head: ``roi_heads.BoxHead``; mask_head: ``mask_branch.MaskHead`` (the layers with
            parameters; their attribute names prefix the parameter names).
        anchors: ``[A, 4]`` NumPy anchors of the RPN (a constant of the graph).
        rpn_targets: ``rpn.RPNTargets``.
        proposals_train, proposals_test: ``proposals.ProposalGenerator`` of training / inference.
        rcnn_targets: ``roi_heads.RCNNTargets``.
        box_roi_align, mask_roi_align: ``roi_align.MultiLevelRoIAlign`` of the two heads.
        box_postprocess: ``roi_heads.BoxPostProcessor``.
        mask_loss: ``mask_branch.MaskLoss`` (also says how many RoI slots the mask head runs on).
        numerics: the ``numerics.Numerics`` preset the stages were built with (recorded only).
        mask_box: ``"detection"`` (each detection's mask pooled on its own box) or
            ``"argmax_class"`` (on its proposal decoded with that proposal's arg-max class: the
            model zoo; ``box_postprocess`` must then return the sources), see :meth:`_mask_rois`.
        compute_float16: the image enters the backbone in float16 (the heads were set to float16
            by the builder); head outputs are cast back to float32.
        static_mask_rows: inference computes the masks of all ``K`` detection slots (static
            shapes); False: of the real detections only (``rows_to_run``, a dynamic shape).
            Training's rows are ``mask_loss``'s (``src/maskrcnn/target.py: mask_rows`` decides both).
    """

    def __init__(self, backbone, fpn, rpn_head, box_head, mask_head, anchors, rpn_targets,
                 proposals_train, proposals_test, rcnn_targets, box_roi_align, mask_roi_align,
                 box_postprocess, mask_loss, numerics, compute_float16=False, mask_box="detection",
                 static_mask_rows=False):
        super().__init__()
        self.mask_box = check_choice("Mask_Rcnn_Resnet50", "mask_box", mask_box, MASK_BOXES)
        self.backbone = backbone
        self.fpn = fpn
        self.rpn_head = rpn_head
        self.box_head = box_head
        self.mask_head = mask_head
        self.anchors = Tensor(anchors, mstype.float32)
        self.rpn_targets = rpn_targets
        self.proposals_train = proposals_train
        self.proposals_test = proposals_test
        self.rcnn_targets = rcnn_targets
        self.box_roi_align = box_roi_align
        self.mask_roi_align = mask_roi_align
        self.box_postprocess = box_postprocess
        self.mask_loss = mask_loss
        self.numerics = numerics
        self.compute_float16 = bool(compute_float16)
        self.static_mask_rows = bool(static_mask_rows)
        self.num_classes = box_head.num_classes

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
        cls_logits, box_deltas = self.box_head(self.box_roi_align(pyramid[:4], rois))
        box_deltas = box_deltas.astype(mstype.float32).reshape(-1, self.num_classes, 4)
        return cls_logits.astype(mstype.float32), box_deltas

    def _mask_logits(self, pyramid, rois, rows=None):
        """rois [B,R,4] -> mask logits [B*R, C, M, M] float32 (only RoI feature rows ``rows`` [T]
        when given: [T, C, M, M])."""
        features = self.mask_roi_align(pyramid[:4], rois)
        if rows is not None:
            features = ops.gather(features, rows, 0)
        return self.mask_head(features).astype(mstype.float32)

    def construct(self, image, image_shape, box=None, label=None, instance_valid=None, mask=None,
                  sampling_step=None):
        if self.training:
            return self._losses(image, image_shape, box, label, instance_valid, mask, sampling_step)
        return self._detect(image, image_shape)

    def _losses(self, image, image_shape, gt_boxes, gt_labels, gt_valid, gt_masks, sampling_step):
        """The five losses (scalars, float32) in LOSS_NAMES order."""
        pyramid, objectness, rpn_deltas = self._features(image)
        labels, label_weights, anchor_targets, anchor_weights = self.rpn_targets(
            gt_boxes, gt_labels, gt_valid, image_shape, sampling_step)
        rpn_cls, rpn_reg = rpn_losses(objectness, rpn_deltas, labels, label_weights, anchor_targets,
                                      anchor_weights)

        proposals, proposal_valid = self.proposals_train(
            ops.stop_gradient(objectness), ops.stop_gradient(rpn_deltas), self.anchors, image_shape)
        rois, roi_labels, roi_weights, box_targets, box_weights, matched_gt = self.rcnn_targets(
            ops.stop_gradient(proposals), proposal_valid, gt_boxes, gt_labels, gt_valid, sampling_step)
        rois = ops.stop_gradient(rois)
        cls_logits, box_deltas = self._box_head(pyramid, rois)
        rcnn_cls, rcnn_reg = box_head_losses(cls_logits, box_deltas, roi_labels, roi_weights,
                                             box_targets, box_weights)

        # The mask branch runs on the positive slots MaskLoss.select picks (a bound shared by the batch).
        align_rois, rows, picked = self.mask_loss.select(rois, matched_gt, roi_labels, box_weights)
        rcnn_mask = self.mask_loss(self._mask_logits(pyramid, align_rois, rows), gt_masks, *picked)
        return rpn_cls, rpn_reg, rcnn_cls, rcnn_reg, rcnn_mask

    def _detect(self, image, image_shape):
        """Detections per image, padded to test_max_per_img (see the module docstring)."""
        pyramid, objectness, rpn_deltas = self._features(image)
        proposals, proposal_valid = self.proposals_test(objectness, rpn_deltas, self.anchors, image_shape)
        cls_logits, box_deltas = self._box_head(pyramid, proposals)
        detections = self.box_postprocess(proposals, proposal_valid, cls_logits, box_deltas, image_shape)
        boxes, scores, labels, valid = detections[:4]
        mask_rois = self._mask_rois(detections, proposals, cls_logits, box_deltas, image_shape)
        # Dynamic rows: the mask head runs on the real detections only.
        rows = None if self.static_mask_rows else rows_to_run(valid)
        masks = mask_probabilities(self._mask_logits(pyramid, ops.stop_gradient(mask_rois), rows), labels, valid, rows)
        return boxes, scores, labels, valid, masks

    def _mask_rois(self, detections, proposals, cls_logits, box_deltas, image_shape):
        """The boxes ``[B, K, 4]`` the detections' masks are pooled on.

        ``mask_box="detection"``: the detections' own boxes. ``"argmax_class"`` (model zoo):
        each detection's proposal decoded with the deltas of that proposal's arg-max class over
        all classes, background included (the arg-max of the logits is the softmax's), clipped
        like the detections; the mask channel read is still the detection's label.
        """
        if self.mask_box == "detection":
            return detections[0]
        argmax_class = ops.argmax(cls_logits, 1).astype(mstype.int32)
        decoded = self.box_postprocess.decode_class(proposals, box_deltas, argmax_class, image_shape)
        return ops.gather(decoded, detections[4], 1, batch_dims=1)
