"""Box head: RoI features (7x7) -> two FC 1024 -> class logits and class-specific deltas."""

from __future__ import annotations

import math

import mindspore.nn as nn
from mindspore.common.initializer import HeUniform, Normal, initializer

CLS_INIT_STD = 0.01
DELTA_INIT_STD = 0.001
# Kaiming-uniform slope of the hidden FC layers (the common default for dense layers: weights
# uniform in +-1/sqrt(fan_in)), so the 12544-wide fc1 starts with unit-scale outputs.
FC_KAIMING_SLOPE = math.sqrt(5)


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
