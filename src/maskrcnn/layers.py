"""Small layer builders shared by the network stages."""

import mindspore.nn as nn

from src.maskrcnn import cpu_kernels
from src.maskrcnn.cpu_ops import Conv3x3


def conv2d(in_channels: int, out_channels: int, kernel_size: int, weight_init, stride: int = 1,
           has_bias: bool = False, kernel: str = "native") -> nn.Conv2d:
    """Convolution with "same" zero padding (``kernel_size // 2`` on every side), ``weight_init``
    (an initializer or a Tensor of shape [out, in, k, k]) and, with ``has_bias``, a zero bias.

    ``kernel="cpu"`` gives stride-1 3x3 convolutions on oneDNN 3 (``cpu_ops.Conv3x3``) when its
    library can be built, the same parameters and values; everything else is ``nn.Conv2d``.
    """
    padding = kernel_size // 2
    if kernel == "cpu" and kernel_size == 3 and stride == 1:
        library = cpu_kernels.conv3x3_library()
        if library is not None:
            return Conv3x3(library, in_channels, out_channels, has_bias, weight_init)
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                     pad_mode="pad" if padding else "valid", padding=padding,
                     has_bias=has_bias, weight_init=weight_init, bias_init="zeros")


def conv_with_bias(in_channels: int, out_channels: int, kernel_size: int, weight_init,
                   kernel: str = "native") -> nn.Conv2d:
    """Stride-1 :func:`conv2d` with a zero-initialised bias."""
    return conv2d(in_channels, out_channels, kernel_size, weight_init, has_bias=True, kernel=kernel)
