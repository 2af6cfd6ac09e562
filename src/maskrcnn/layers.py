"""Small layer builders shared by the network stages."""

import mindspore.nn as nn

from src.maskrcnn.target import NATIVE_KERNELS, Kernels


def conv2d(in_channels: int, out_channels: int, kernel_size: int, weight_init, stride: int = 1,
           has_bias: bool = False, kernels: Kernels = NATIVE_KERNELS) -> nn.Conv2d:
    """Convolution with "same" zero padding (``kernel_size // 2`` on every side), ``weight_init``
    (an initializer or a Tensor of shape [out, in, k, k]) and, with ``has_bias``, a zero bias.

    A stride-1 3x3 convolution is the one ``kernels.conv3x3`` gives when it gives one (on the CPU:
    oneDNN 3, the same parameters and values); everything else is ``nn.Conv2d``.
    """
    padding = kernel_size // 2
    if kernel_size == 3 and stride == 1:
        conv = kernels.conv3x3(in_channels, out_channels, has_bias, weight_init)
        if conv is not None:
            return conv
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                     pad_mode="pad" if padding else "valid", padding=padding,
                     has_bias=has_bias, weight_init=weight_init, bias_init="zeros")


def conv_with_bias(in_channels: int, out_channels: int, kernel_size: int, weight_init,
                   kernels: Kernels = NATIVE_KERNELS) -> nn.Conv2d:
    """Stride-1 :func:`conv2d` with a zero-initialised bias."""
    return conv2d(in_channels, out_channels, kernel_size, weight_init, has_bias=True, kernels=kernels)
