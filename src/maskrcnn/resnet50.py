"""ResNet50 backbone (bottleneck v1, stride on the 3x3 conv) returning C2..C5.

Parameter names are exactly those of the MindSpore model-zoo ResNet50 ImageNet classifier
(``conv1.weight``, ``bn1.gamma``, ``layer1.0.conv1.weight``,
``layer1.0.down_sample_layer.0.weight``, ...) without its classifier ``end_point.*``, so a zoo
checkpoint loads after the ``backbone.`` prefix is added (see ``src/checkpoint/names.py``).
"""

from __future__ import annotations

from typing import Tuple

import mindspore.nn as nn
from mindspore.common.initializer import HeNormal, initializer

from src.maskrcnn.layers import conv2d
from src.maskrcnn.numerics import DEFAULT_BN_EPS, STEM_POOL_MODES, check_choice
from src.maskrcnn.target import NATIVE_KERNELS, Kernels

# Output channels of the four bottleneck stages and their block counts (ResNet50).
STAGE_OUT_CHANNELS: Tuple[int, ...] = (256, 512, 1024, 2048)
STAGE_BLOCKS: Tuple[int, ...] = (3, 4, 6, 3)
STAGE_STRIDES: Tuple[int, ...] = (1, 2, 2, 2)
STEM_CHANNELS = 64
BOTTLENECK_EXPANSION = 4
NORM_MODES = ("batch", "frozen")
BN_EPS = DEFAULT_BN_EPS  # the numerics presets' bn_eps may differ (torchvision's COCO loader: 0)
# MindSpore's BatchNorm refuses eps 0 (it wants (0, 1]); eps 0 (torchvision's COCO weights) runs
# as this stand-in instead: in float32, var + 1e-20 == var for every variance above ~2e-13, so
# the result is eps 0's (a channel of variance exactly 0 gets a finite scale instead of inf).
ZERO_EPS_STAND_IN = 1e-20
BN_MOMENTUM = 0.9  # MindSpore convention: moving = momentum * moving + (1 - momentum) * batch


def _conv(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
          kernels: Kernels = NATIVE_KERNELS) -> nn.Conv2d:
    """Bias-free conv with "same"-style explicit padding and He (fan_in) normal init.

    fan_in keeps the activation variance (and the weight norm) at the scale BatchNorm expects;
    the gradient of a conv followed by BatchNorm scales with 1 / |w|, and fan_out init made the
    7x7 stem's gradient ~5x larger (training from scratch diverged at lr 0.01).
    """
    weight = initializer(HeNormal(mode="fan_in", nonlinearity="relu"),
                         [out_channels, in_channels, kernel_size, kernel_size])
    return conv2d(in_channels, out_channels, kernel_size, weight, stride=stride, kernels=kernels)


def _norm(channels: int, norm: str, zero_gamma: bool = False, eps: float = BN_EPS) -> nn.BatchNorm2d:
    """BatchNorm2d: batch statistics in training ("batch") or always moving stats ("frozen").

    ``zero_gamma`` (random init only) starts the norm's scale at 0: used on the last norm of each
    residual branch so every block starts as the identity, which keeps a from-scratch ResNet50's
    early gradients small. A frozen norm always gets its values from a checkpoint. ``eps`` is
    the numerics preset's ``bn_eps`` (0 runs as ``ZERO_EPS_STAND_IN``).
    """
    eps = float(eps) if eps > 0 else ZERO_EPS_STAND_IN
    if norm == "frozen":
        bn = nn.BatchNorm2d(channels, eps=eps, momentum=BN_MOMENTUM, use_batch_statistics=False)
        bn.gamma.requires_grad = False
        bn.beta.requires_grad = False
        return bn
    return nn.BatchNorm2d(channels, eps=eps, momentum=BN_MOMENTUM,
                          gamma_init="zeros" if zero_gamma else "ones")


def norm_eps(cell: nn.BatchNorm2d) -> float:
    """The epsilon a BatchNorm of this module stands for (``ZERO_EPS_STAND_IN`` -> 0)."""
    return 0.0 if cell.eps <= ZERO_EPS_STAND_IN else float(cell.eps)


def stem_max_pool(stem_pool: str = "same", kernels: Kernels = NATIVE_KERNELS) -> nn.Cell:
    """The stem's 3x3 stride-2 max-pool.

    Args:
        stem_pool: ``"same"``: TF-style padding (on an even size 0 before, 1 after; window i covers
            rows 2i..2i+2); ``"symmetric"``: padding 1 on every side (window i covers rows
            2i-1..2i+1), as torchvision's ``MaxPool2d(3, 2, padding=1)``.
        kernels: the target's kernels: the CPU's C max-pool where ``kernels.max_pool`` gives
            one, else ``nn.MaxPool2d``. Same values either way.

    Returns:
        A Cell mapping ``[B, C, H, W]`` to ``[B, C, ceil(H/2), ceil(W/2)]`` (even H, W).
    """
    check_choice("ResNet50", "stem_pool", stem_pool, STEM_POOL_MODES)
    pool = kernels.max_pool(3, 2, 1 if stem_pool == "symmetric" else "same")
    if pool is not None:
        return pool
    if stem_pool == "symmetric":
        return nn.MaxPool2d(kernel_size=3, stride=2, pad_mode="pad", padding=1)
    return nn.MaxPool2d(kernel_size=3, stride=2, pad_mode="same")


class Bottleneck(nn.Cell):
    """1x1 reduce -> 3x3 (carries the stride) -> 1x1 expand, plus identity/projection shortcut.

    Args:
        in_channels: input channels.
        out_channels: output channels (4x the bottleneck width).
        stride: spatial stride of the block (on the 3x3 conv and the projection).
        norm: "batch" or "frozen".
        kernels: the target's kernels for the 3x3 conv (``layers.conv2d``).
        bn_eps: BatchNorm epsilon.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, norm: str,
                 kernels: Kernels = NATIVE_KERNELS, bn_eps: float = BN_EPS):
        super().__init__()
        width = out_channels // BOTTLENECK_EXPANSION
        self.conv1 = _conv(in_channels, width, 1)
        self.bn1 = _norm(width, norm, eps=bn_eps)
        self.conv2 = _conv(width, width, 3, stride, kernels)
        self.bn2 = _norm(width, norm, eps=bn_eps)
        self.conv3 = _conv(width, out_channels, 1)
        self.bn3 = _norm(out_channels, norm, zero_gamma=True, eps=bn_eps)
        self.relu = nn.ReLU()
        self.has_projection = stride != 1 or in_channels != out_channels
        if self.has_projection:
            self.down_sample_layer = nn.SequentialCell(
                [_conv(in_channels, out_channels, 1, stride), _norm(out_channels, norm, eps=bn_eps)])

    def construct(self, x):
        """x [B, C_in, H, W] -> [B, C_out, H/stride, W/stride]."""
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.has_projection:
            identity = self.down_sample_layer(x)
        return self.relu(out + identity)


class ResNet50(nn.Cell):
    """ResNet50 feature extractor.

    Args:
        frozen_stages: number of bottleneck stages (0..4) frozen after the stem; when > 0 the
            stem (``conv1``/``bn1``) is frozen too. Frozen parameters get ``requires_grad=False``.
        norm: "batch" (trainable BatchNorm, batch statistics in training; for random init) or
            "frozen" (moving statistics, gamma/beta not trained; for a pretrained backbone).
        stem_pool: padding of the stem's 3x3/2 max-pool: ``"same"`` (TF style, 0 before and 1
            after on even sizes) or ``"symmetric"`` (1 on every side, torchvision); see
            ``src/maskrcnn/numerics.py``.
        kernels: the target's kernels for the stem max-pool (:func:`stem_max_pool`) and the 3x3
            convolutions (``layers.conv2d``).
        bn_eps: epsilon of every BatchNorm (the numerics preset's ``bn_eps``, 1e-5 by default).

    Inputs:
        image [B, 3, H, W] float, H and W multiples of 32.

    Returns:
        (C2, C3, C4, C5): [B, 256, H/4, W/4], [B, 512, H/8, W/8], [B, 1024, H/16, W/16],
        [B, 2048, H/32, W/32].
    """

    def __init__(self, frozen_stages: int = 0, norm: str = "batch", stem_pool: str = "same",
                 kernels: Kernels = NATIVE_KERNELS, bn_eps: float = BN_EPS):
        super().__init__()
        check_choice("ResNet50", "stem_pool", stem_pool, STEM_POOL_MODES)
        if norm not in NORM_MODES:
            raise ValueError(f"ResNet50: norm must be one of {NORM_MODES}, got {norm!r}")
        if not 0 <= frozen_stages <= len(STAGE_BLOCKS):
            raise ValueError(f"ResNet50: frozen_stages must be in 0..{len(STAGE_BLOCKS)}, "
                             f"got {frozen_stages}")
        self.conv1 = _conv(3, STEM_CHANNELS, 7, stride=2)
        self.bn1 = _norm(STEM_CHANNELS, norm, eps=bn_eps)
        self.relu = nn.ReLU()
        self.stem_pool = stem_pool
        self.maxpool = stem_max_pool(stem_pool, kernels)
        in_channels = STEM_CHANNELS
        stages = []
        for out_channels, blocks, stride in zip(STAGE_OUT_CHANNELS, STAGE_BLOCKS, STAGE_STRIDES):
            cells = []
            for i in range(blocks):
                cells.append(Bottleneck(in_channels, out_channels, stride if i == 0 else 1, norm, kernels,
                                        bn_eps))
                in_channels = out_channels
            stages.append(nn.SequentialCell(cells))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.frozen_stages = frozen_stages
        self._freeze(frozen_stages)

    def _freeze(self, frozen_stages: int) -> None:
        """requires_grad=False for the stem and the first ``frozen_stages`` stages."""
        if frozen_stages <= 0:
            return
        frozen = [self.conv1, self.bn1] + [self.layer1, self.layer2, self.layer3,
                                           self.layer4][:frozen_stages]
        for cell in frozen:
            for param in cell.get_parameters():
                param.requires_grad = False

    def construct(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return c2, c3, c4, c5

