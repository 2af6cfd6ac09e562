"""MindSpore ops of the CPU backend that run the C kernels of ``cpu_kernels`` (``pyfunc`` Custom ops).

The network uses them where MindSpore 2.7's own CPU kernel is far slower than the arithmetic
needs (``benchmarks/profile_step.py`` at 384x640, batch 2; the kernels' own times in
``benchmarks/bench_cpu_ops.py``):

- the stem's 3x3 stride-2 max-pool: ``MaxPoolGrad`` ~150 ms per step (:class:`CpuMaxPool2d`);
- the FPN's nearest 2x upsampling: ``ResizeNearestNeighborV2`` and its gradient ~115 ms per
  step (:func:`upsample_nearest_op`);
- stride-1 3x3 convolutions: MindSpore's bundled oneDNN 2.2 runs them as im2col + GEMM on NCHW;
  :class:`Conv3x3` runs them on oneDNN 3 in its own layouts (``aot`` ops, no Python per call);
- (RoIAlign has its own SciPy ``pyfunc`` op in ``src/maskrcnn/roi_align.py``, registered with
  :func:`pyfunc_key` / :func:`stable_pyfunc` too.)

Which kernels a network gets is decided once, from the config, by ``src.maskrcnn.target.op_kernels``
("cpu" or "native"); a ``pyfunc`` or CPU ``aot`` op cannot be exported to MindIR nor run on
Ascend, so export and other devices get the native MindSpore ops.

Compile cache: MindSpore registers a ``pyfunc`` under ``id(func)`` and stores that number in the
graph, which a graph restored from the cache in a new process cannot resolve. Every op here is
registered under a key derived from what it computes instead (:func:`pyfunc_key`).
"""

import hashlib
import os

from mindspore import nn, ops
# The registry MindSpore's CPU pyfunc kernel looks functions up in (see stable_pyfunc).
from mindspore.ops.operations._pyfunc_registry import add_pyfunc

from src.maskrcnn.ops import cpu_kernels

_HERE = os.path.dirname(os.path.abspath(__file__))
# The files whose content defines what a pyfunc op computes (a change gives new keys).
_KERNEL_SOURCES = (os.path.join(_HERE, "cpu_ops.py"), cpu_kernels.__file__, cpu_kernels.SOURCE)


def pyfunc_key(role: str, params, *source_files: str) -> int:
    """A key for a ``pyfunc`` op's function that is the same in every process running this code.

    Args:
        role: what the function is, e.g. ``"roi_align.forward"``.
        params: the op's parameters (their ``repr`` goes into the key).
        source_files: files beyond this module and the C kernels whose content defines the
            arithmetic (the caller's module when it holds the function).

    Returns:
        A positive int below 2**62 (MindSpore stores the attribute as int64).
    """
    digest = hashlib.sha256()
    for path in _KERNEL_SOURCES + tuple(source_files):
        with open(path, "rb") as handle:
            digest.update(handle.read())
    text = f"maskrcnn.{role}:{params!r}:{digest.hexdigest()}"
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") >> 2


def stable_pyfunc(func, key: int, **custom_kwargs):
    """``ops.Custom(func, func_type="pyfunc", ...)`` registered under ``key`` instead of ``id(func)``.

    Registering the function in the op's constructor (every process builds the network before
    its graph runs) is what makes a cached graph runnable: the graph's ``fn_id`` attribute is
    ``key``, and this process's registry maps ``key`` to ``func``.
    """
    op = ops.Custom(func, func_type="pyfunc", **custom_kwargs)
    add_pyfunc(key, func)
    op.add_prim_attr("fn_id", key)
    return op


def _same_as_first(first, *_):
    return first


def unary_pyfunc_op(role: str, params, forward, backward, out_shape):
    """A differentiable one-input ``pyfunc`` op: ``y = forward(x)``, gradient ``backward(x, y, grad_y)``."""
    backward_op = stable_pyfunc(backward, pyfunc_key(role + ".backward", params),
                                out_shape=_same_as_first, out_dtype=_same_as_first)

    def bprop(x, out, grad_out):
        return (backward_op(x, out, grad_out),)

    return stable_pyfunc(forward, pyfunc_key(role + ".forward", params), out_shape=out_shape,
                         out_dtype=_same_as_first, bprop=bprop)


def same_padding(size: int, window: int, stride: int):
    """TF "same" padding along one axis: ``(before, after)`` for ``ceil(size / stride)`` outputs."""
    outputs = -(-size // stride)
    total = max((outputs - 1) * stride + window - size, 0)
    return total // 2, total - total // 2


class CpuMaxPool2d(nn.Cell):
    """``nn.MaxPool2d(window, stride)`` on the C kernels, for any input size.

    Args:
        window, stride: square window and stride.
        padding: ``"same"`` (TF style, as ``pad_mode="same"``) or an int ``p`` (``p`` on every
            side, as ``pad_mode="pad", padding=p``). Padding never wins the maximum.
    """

    def __init__(self, window: int, stride: int, padding="same"):
        super().__init__()
        if padding != "same" and (isinstance(padding, bool) or not isinstance(padding, int) or padding < 0):
            raise ValueError(f"CpuMaxPool2d: padding must be 'same' or an int >= 0, got {padding!r}")
        window, stride = int(window), int(stride)

        def pads(height, width):
            if padding == "same":
                return same_padding(height, window, stride) + same_padding(width, window, stride)
            return (padding,) * 4

        def out_shape(shape):
            top, bottom, left, right = pads(shape[2], shape[3])
            return (shape[0], shape[1], cpu_kernels.pooled_size(shape[2], window, stride, top, bottom),
                    cpu_kernels.pooled_size(shape[3], window, stride, left, right))

        def forward(x):
            return cpu_kernels.max_pool_forward(x, window, stride, pads(x.shape[2], x.shape[3]))

        def backward(x, y, grad_y):
            return cpu_kernels.max_pool_backward(x, y, grad_y, window, stride, pads(x.shape[2], x.shape[3]))

        self.pool = unary_pyfunc_op("max_pool", (window, stride, padding), forward, backward, out_shape)

    def construct(self, x):
        return self.pool(x)


def upsample_nearest_op(factor: int):
    """A differentiable op: ``[B, C, H, W]`` -> ``[B, C, H * factor, W * factor]`` (nearest)."""
    factor = int(factor)

    def forward(x):
        return cpu_kernels.upsample_nearest_forward(x, factor)

    def backward(x, y, grad_y):
        return cpu_kernels.upsample_nearest_backward(x, grad_y, factor)

    return unary_pyfunc_op("upsample_nearest", factor, forward, backward,
                           lambda shape: (shape[0], shape[1], shape[2] * factor, shape[3] * factor))


def conv3x3_op(library: str):
    """A differentiable ``aot`` op: ``(x [N, C, H, W], w [O, C, 3, 3])`` -> ``[N, O, H, W]``, a
    stride-1 3x3 convolution with padding 1 and no bias, from the entry points of ``library``
    (``cpu_kernels.conv3x3_library()``; ``src/maskrcnn/ops/conv3x3_onednn.c``)."""

    def entry(name):
        return f"{library}:conv3x3_{name}"

    # The backward ops take the tensor whose shape their output has as a last, unread input.
    backward_data = ops.Custom(entry("backward_data"), out_shape=lambda dy, w, x: x,
                               out_dtype=lambda dy, w, x: dy, func_type="aot")
    backward_weights = ops.Custom(entry("backward_weights"), out_shape=lambda x, dy, w: w,
                                  out_dtype=lambda x, dy, w: x, func_type="aot")

    def bprop(x, w, out, grad_out):
        return backward_data(grad_out, w, x), backward_weights(x, grad_out, w)

    return ops.Custom(entry("forward"), out_shape=lambda x, w: (x[0], w[0], x[2], x[3]),
                      out_dtype=lambda x, w: x, func_type="aot", bprop=bprop)


class Conv3x3(nn.Conv2d):
    """``nn.Conv2d(in_channels, out_channels, 3, stride=1, pad_mode="pad", padding=1)`` whose
    convolution runs on oneDNN 3 (:func:`conv3x3_op`); the same parameters (``weight``, ``bias``),
    initialisers and values as the ``nn.Conv2d`` it replaces, so checkpoints do not tell them apart.
    float32 only.

    Args:
        library: path of the built entry points (``cpu_kernels.conv3x3_library()``).
        in_channels, out_channels, has_bias, weight_init, bias_init: as ``nn.Conv2d``'s.
    """

    def __init__(self, library: str, in_channels: int, out_channels: int, has_bias: bool, weight_init,
                 bias_init="zeros"):
        super().__init__(in_channels, out_channels, 3, stride=1, pad_mode="pad", padding=1, has_bias=has_bias,
                         weight_init=weight_init, bias_init=bias_init)
        self.conv3x3 = conv3x3_op(library)

    def construct(self, x):
        out = self.conv3x3(x, self.weight)
        if self.has_bias:
            out = self.bias_add(out, self.bias)
        return out
