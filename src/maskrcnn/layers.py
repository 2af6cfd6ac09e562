"""Small layer builders shared by the network stages."""

import mindspore.nn as nn


def conv_with_bias(in_channels: int, out_channels: int, kernel_size: int, weight_init) -> nn.Conv2d:
    """Stride-1 convolution with "same" zero padding, a zero-initialised bias and ``weight_init``
    (an initializer or a Tensor of shape [out, in, k, k])."""
    padding = kernel_size // 2
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride=1,
                     pad_mode="pad" if padding else "valid", padding=padding,
                     has_bias=True, weight_init=weight_init, bias_init="zeros")
