"""Feature pyramid network: C2..C5 -> P2..P6 (P6 = stride-2 subsample of P5)."""

from __future__ import annotations

from typing import Sequence

import mindspore.nn as nn
import mindspore.ops as ops
from mindspore.common.initializer import HeUniform, initializer

from src.maskrcnn.layers import conv_with_bias
from src.maskrcnn.numerics import FPN_UPSAMPLE_MODES, check_choice
from src.maskrcnn.target import NATIVE_KERNELS, Kernels

# Kaiming-uniform with a=1 (the usual FPN initialisation) keeps the output variance of the
# un-normalised FPN convs near the input's.
_KAIMING_A = 1.0


def _conv(in_channels: int, out_channels: int, kernel_size: int, kernels: Kernels) -> nn.Conv2d:
    weight = initializer(HeUniform(negative_slope=_KAIMING_A),
                         [out_channels, in_channels, kernel_size, kernel_size])
    return conv_with_bias(in_channels, out_channels, kernel_size, weight, kernels)


class FPN(nn.Cell):
    """Top-down feature pyramid with lateral 1x1 and output 3x3 convolutions.

    Args:
        in_channels: channels of C2..C5 (ResNet50: ``resnet50.STAGE_OUT_CHANNELS``).
        out_channels: channels of every P level (config.fpn_channels).
        upsample: top-down upsampling, ``"nearest"`` or ``"bilinear_legacy"`` (bilinear with
            ``align_corners=False, half_pixel_centers=False``: output pixel ``d`` reads source
            position ``d * in / out``); see ``src/maskrcnn/numerics.py``.
        kernels: the target's kernels: an exact 2x nearest upsampling runs
            ``kernels.upsample_nearest(2)`` where it gives an op (the CPU's C kernel), else
            ``ops.interpolate``; the 3x3 output convolutions go through ``layers.conv2d``. Same
            values either way.

    Inputs:
        features: (C2, C3, C4, C5), strides 4, 8, 16, 32, [B, in_channels[i], H_i, W_i].

    Returns:
        (P2, P3, P4, P5, P6): [B, out_channels, H_i, W_i] with strides 4..64; P6 has size
        ceil(H5 / 2) x ceil(W5 / 2).
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int = 256, upsample: str = "nearest",
                 kernels: Kernels = NATIVE_KERNELS):
        super().__init__()
        self.upsample = check_choice("FPN", "upsample", upsample, FPN_UPSAMPLE_MODES)
        upsample_2x = kernels.upsample_nearest(2) if upsample == "nearest" else None
        self.cpu_upsample = upsample_2x is not None
        if self.cpu_upsample:
            self.upsample_2x = upsample_2x
        if self.upsample == "bilinear_legacy":
            self.bilinear = ops.ResizeBilinearV2(align_corners=False, half_pixel_centers=False)
        self.num_levels = len(in_channels)
        self.lateral_convs = nn.CellList([_conv(c, out_channels, 1, kernels) for c in in_channels])
        self.output_convs = nn.CellList([_conv(out_channels, out_channels, 3, kernels) for _ in in_channels])
        # kernel 1, stride 2: plain subsampling, ceil(H/2) outputs for an odd size.
        self.p6_pool = nn.MaxPool2d(kernel_size=1, stride=2, pad_mode="same")

    def _up(self, x, like):
        """Upsample ``x`` to the spatial size of ``like`` (sizes may be odd)."""
        if self.upsample == "bilinear_legacy":
            return self.bilinear(x, like.shape[2:])
        if self.cpu_upsample and like.shape[2] == 2 * x.shape[2] and like.shape[3] == 2 * x.shape[3]:
            return self.upsample_2x(x)
        return ops.interpolate(x, size=like.shape[2:], mode="nearest")

    def construct(self, features):
        c2, c3, c4, c5 = features
        l2 = self.lateral_convs[0](c2)
        l3 = self.lateral_convs[1](c3)
        l4 = self.lateral_convs[2](c4)
        l5 = self.lateral_convs[3](c5)
        # Upsampling to the exact size of the finer level.
        t4 = l4 + self._up(l5, l4)
        t3 = l3 + self._up(t4, l3)
        t2 = l2 + self._up(t3, l2)
        p2 = self.output_convs[0](t2)
        p3 = self.output_convs[1](t3)
        p4 = self.output_convs[2](t4)
        p5 = self.output_convs[3](l5)
        p6 = self.p6_pool(p5)
        return p2, p3, p4, p5, p6
