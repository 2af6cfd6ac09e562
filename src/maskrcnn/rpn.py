"""RPN head: a shared 3x3 conv and 1x1 objectness / box-delta convs over P2..P6."""

from __future__ import annotations

import mindspore.nn as nn
import mindspore.ops as ops
from mindspore.common.initializer import Normal, initializer

from src.maskrcnn.layers import conv_with_bias

RPN_INIT_STD = 0.01  # normal init of all three RPN convs (weights); biases zero


def _conv(in_channels: int, out_channels: int, kernel_size: int) -> nn.Conv2d:
    weight = initializer(Normal(sigma=RPN_INIT_STD),
                         [out_channels, in_channels, kernel_size, kernel_size])
    return conv_with_bias(in_channels, out_channels, kernel_size, weight)


class RPNHead(nn.Cell):
    """Objectness logits and box deltas for every anchor of every FPN level.

    Args:
        in_channels: channels of the P levels (config.fpn_channels).
        num_anchors: anchors per location (len(anchor_scales) * len(anchor_ratios)).

    Inputs:
        features: (P2, ..., P6), [B, in_channels, H_l, W_l].

    Returns:
        objectness [B, A_total] logits (sigmoid), deltas [B, A_total, 4] (dx, dy, dw, dh,
        encoded as in box_ops.encode_boxes). Anchors are ordered as anchors.generate_anchors:
        level, then row-major (y, x), then the anchors of one location.
    """

    def __init__(self, in_channels: int, num_anchors: int):
        super().__init__()
        self.num_anchors = num_anchors
        self.conv = _conv(in_channels, in_channels, 3)
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
