"""src/maskrcnn/fpn.py: the pyramid's wiring (lateral 1x1, top-down sums, output 3x3, P6) against a
NumPy computation, and its sizes for odd feature maps. (Each preset's upsampling rule:
test_numerics.py.)"""

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor

from src.maskrcnn.fpn import FPN
from src.maskrcnn.target import CPU_KERNELS, NATIVE_KERNELS

# C2..C5 of a 40x56 input (strides 4..32, sizes rounded up as the backbone's are).
SHAPES = ((10, 14), (5, 7), (3, 4), (2, 2))
IN_CHANNELS = (3, 4, 5, 6)
OUT = 2


def _np_nearest(x, out_h, out_w):
    """Nearest upsampling of ``[C, H, W]`` to an exact size: source row ``floor(d * in / out)``."""
    rows = np.floor(np.arange(out_h) * x.shape[1] / out_h).astype(int)
    cols = np.floor(np.arange(out_w) * x.shape[2] / out_w).astype(int)
    return x[:, rows][:, :, cols]


def _np_conv(x, weight, bias):
    """'same' convolution of ``[C, H, W]`` with ``weight [O, C, k, k]`` (k odd), zero padding."""
    k = weight.shape[-1]
    pad = k // 2
    padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad)))
    height, width = x.shape[1:]
    out = np.zeros((weight.shape[0], height, width), np.float64)
    for dy in range(k):
        for dx in range(k):
            window = padded[:, dy:dy + height, dx:dx + width]
            out += np.einsum("oc,chw->ohw", weight[:, :, dy, dx], window)
    return out + bias[:, None, None]


@pytest.mark.parametrize("kernels", [NATIVE_KERNELS, CPU_KERNELS], ids=["native", "cpu"])
def test_pyramid_matches_numpy_on_odd_sizes(kernels):
    ms.set_context(mode=ms.PYNATIVE_MODE)
    ms.set_seed(3)
    fpn = FPN(IN_CHANNELS, out_channels=OUT, upsample="nearest", kernels=kernels)
    rng = np.random.default_rng(0)
    features = [rng.standard_normal((1, c, h, w)).astype(np.float32) for c, (h, w) in zip(IN_CHANNELS, SHAPES)]
    outputs = [o.asnumpy()[0] for o in fpn(tuple(Tensor(f) for f in features))]

    params = {p.name: p.asnumpy().astype(np.float64) for p in fpn.get_parameters()}
    lateral = [_np_conv(f[0].astype(np.float64), params[f"lateral_convs.{i}.weight"], params[f"lateral_convs.{i}.bias"])
               for i, f in enumerate(features)]
    top_down = [None, None, None, lateral[3]]
    for i in (2, 1, 0):
        top_down[i] = lateral[i] + _np_nearest(top_down[i + 1], *SHAPES[i])
    expected = [_np_conv(t, params[f"output_convs.{i}.weight"], params[f"output_convs.{i}.bias"])
                for i, t in enumerate(top_down)]
    expected.append(expected[3][:, ::2, ::2])  # P6: every other cell of P5

    assert [o.shape for o in outputs] == [(OUT, h, w) for h, w in SHAPES] + [(OUT, 1, 1)]
    for level, (got, want) in enumerate(zip(outputs, expected), start=2):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=f"P{level}")


def test_p6_has_ceil_half_the_size_of_p5():
    ms.set_context(mode=ms.PYNATIVE_MODE)
    fpn = FPN((1, 1, 1, 1), out_channels=1)
    features = tuple(Tensor(np.ones((1, 1, h, w), np.float32)) for h, w in ((20, 28), (10, 14), (5, 7), (3, 5)))
    assert fpn(features)[4].shape == (1, 1, 2, 3)
