"""Mask head: RoI features (14x14) -> 4 conv3x3 -> deconv x2 -> per-class 28x28 logits."""

from __future__ import annotations

import mindspore.nn as nn
from mindspore.common.initializer import HeNormal, Normal, initializer

from src.maskrcnn.layers import conv_with_bias

# The per-class predictor starts near zero (logit 0, p = 0.5) as in the published Mask R-CNN;
# He init on a 1x1 conv with few outputs gives logits of several units and a diverging loss.
MASK_LOGITS_INIT_STD = 0.001


def _he(shape):
    return initializer(HeNormal(mode="fan_out", nonlinearity="relu"), shape)


class MaskHead(nn.Cell):
    """Four 3x3 conv + ReLU, a 2x2 stride-2 deconvolution + ReLU and a 1x1 class conv.

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
        self.deconv = nn.Conv2dTranspose(channels, channels, 2, stride=2, pad_mode="valid",
                                         has_bias=True, weight_init=_he([channels, channels, 2, 2]),
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
