"""Inference in two graphs, so the mask head runs on the detections there are, not on padding.

``Mask_Rcnn_Resnet50`` in inference mode (``net(image, image_shape)``) is one static graph: it
pads the detections of each image to ``K = test_max_per_img`` and runs the mask head on all ``K``
slots, even when an image has three detections. The mask head is the costliest part of
inference (~1 GFLOP per slot: 50 slots cost about twice the ResNet50 + FPN of a 256x256
image). :class:`Detector` splits inference at the detections:

1. the box graph (``Mask_Rcnn_Resnet50.detect_boxes``): P2..P5 and the detections, sorted by
   score with the valid ones first;
2. the mask graph on the first ``S`` slots only, where ``S`` is the most valid detections of an
   image in the batch rounded up to the next step of :data:`MASK_SLOT_STEPS` (at most ``K``);
   none at all when nothing was detected.

Each ``S`` compiles its own small graph once (the mask head alone: seconds), so a run compiles
at most ``len(MASK_SLOT_STEPS) + 1`` of them. The outputs are those of ``net(image, image_shape)``:
the masks of the slots beyond ``S`` are not valid and are zero in both. The exported model
(``export.py``) keeps the one-graph form.
"""

from __future__ import annotations

import numpy as np
from mindspore import Tensor, nn, ops

from src.maskrcnn.mask_branch import mask_probabilities

# Mask slots per image the mask graph is compiled for (then K itself).
MASK_SLOT_STEPS = (4, 8, 16, 32, 64)


def mask_slot_count(detections: int, max_per_image: int) -> int:
    """Mask slots per image for a batch whose fullest image has ``detections`` valid detections."""
    if detections <= 0:
        return 0
    for step in MASK_SLOT_STEPS:
        if detections <= step:
            return min(step, max_per_image)
    return max_per_image


class _BoxGraph(nn.Cell):
    def __init__(self, net):
        super().__init__(auto_prefix=False)
        self.net = net

    def construct(self, image, image_shape):
        pyramid, boxes, scores, labels, valid = self.net.detect_boxes(image, image_shape)
        return pyramid[0], pyramid[1], pyramid[2], pyramid[3], boxes, scores, labels, valid


class _MaskGraph(nn.Cell):
    def __init__(self, net):
        super().__init__(auto_prefix=False)
        self.net = net

    def construct(self, p2, p3, p4, p5, boxes, labels, valid):
        logits = self.net.mask_logits((p2, p3, p4, p5), ops.stop_gradient(boxes))
        return mask_probabilities(logits, labels, valid)


class Detector:
    """``Mask_Rcnn_Resnet50`` inference as box graph + mask graph (see the module docstring).

    Args:
        net: ``Mask_Rcnn_Resnet50`` (weights loaded); it is switched to inference mode on each call.

    Call ``detector(image [B,3,H,W], image_shape [B,4])`` -> (boxes [B,K,4], scores [B,K],
    labels [B,K], valid [B,K], masks [B,K,M,M]) Tensors, as ``net(image, image_shape)``.
    """

    def __init__(self, net):
        self.net = net
        self.max_per_image = net.box_postprocess.max_per_image
        self._boxes = _BoxGraph(net)
        self._masks = _MaskGraph(net)

    def __call__(self, image, image_shape):
        self._boxes.set_train(False)
        p2, p3, p4, p5, boxes, scores, labels, valid = self._boxes(image, image_shape)
        valid_np = valid.asnumpy()
        slots = mask_slot_count(int(valid_np.sum(axis=1).max()), self.max_per_image)
        batch = valid_np.shape[0]
        size = self.net.mask_loss.mask_size
        masks = np.zeros((batch, self.max_per_image, size, size), np.float32)
        if slots:
            self._masks.set_train(False)
            masks[:, :slots] = self._masks(p2, p3, p4, p5, Tensor(boxes.asnumpy()[:, :slots]),
                                           Tensor(labels.asnumpy()[:, :slots]), Tensor(valid_np[:, :slots])).asnumpy()
        return boxes, scores, labels, valid, Tensor(masks)


def as_predictor(net):
    """``Detector(net)`` for a ``Mask_Rcnn_Resnet50``; anything else (a ``Detector``, the
    exported model, a stand-in) is returned as it is, switched to inference if it is a Cell."""
    if hasattr(net, "detect_boxes"):
        return Detector(net)
    if hasattr(net, "set_train"):
        net.set_train(False)
    return net
