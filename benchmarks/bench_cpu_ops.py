"""CPU backend speed of the two kernels that dominate Mask R-CNN: convolution and MatMul.

    python benchmarks/bench_cpu_ops.py

Prints one JSON line per case: the design's 3x3 64->64 convolution on 2x64x48x80 (the case
that runs ~100x slower on MindSpore 2.9/2.10 from PyPI on AVX-512 machines), a ResNet-sized
3x3 256->256 convolution, its forward+backward, a 2048^3 MatMul (the practical peak), and an
element-wise Maximum on the RPN's anchors x ground-truth shape at 384x640 ([2, 61380, 16]) with
one operand broadcast ([2, 1, 16]) and with equal shapes (the operand made full-size first with
``broadcast_to``, as ``box_ops.broadcast_pair`` does), and the forward + backward of the stem's
3x3/2 max-pool ([2, 64, 192, 320]) and of the FPN's 2x nearest upsampling ([2, 256, 48, 80]) with
MindSpore's kernels and with the project's C kernels (``src/maskrcnn/ops/cpu_ops.py``).
"""

import time

import numpy as np

from common import emit

REPEATS = 5


def _time(fn, repeats=REPEATS):
    fn()  # compile / warm up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def main():
    import mindspore as ms
    from mindspore import Tensor, nn, ops

    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    version = ms.__version__
    rng = np.random.default_rng(0)

    for name, (n, c, h, w) in (("conv3x3_64_2x48x80", (2, 64, 48, 80)), ("conv3x3_256_2x96x160", (2, 256, 96, 160))):
        conv = nn.Conv2d(c, c, 3, pad_mode="same")
        x = Tensor(rng.standard_normal((n, c, h, w), dtype=np.float32))
        seconds = _time(lambda: conv(x).asnumpy())
        flops = 2.0 * n * c * h * w * c * 9
        emit({"bench": "cpu_ops", "case": name, "mindspore": version, "seconds": round(seconds, 5),
              "gflops": round(flops / seconds / 1e9, 1)})

    class ConvSum(nn.Cell):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(256, 256, 3, pad_mode="same")

        def construct(self, inp):
            return self.conv(inp).sum()

    class ConvGrad(nn.Cell):
        def __init__(self, net):
            super().__init__()
            self.net = net
            self.weights = ms.ParameterTuple(net.trainable_params())
            self.grad = ops.GradOperation(get_all=True, get_by_list=True)

        def construct(self, inp):
            return self.grad(self.net, self.weights)(inp)

    conv_grad = ConvGrad(ConvSum())
    x = Tensor(rng.standard_normal((2, 256, 96, 160), dtype=np.float32))
    seconds = _time(lambda: conv_grad(x)[1][0].asnumpy())
    flops = 3 * 2.0 * 2 * 256 * 96 * 160 * 256 * 9  # forward + input grad + weight grad
    emit({"bench": "cpu_ops", "case": "conv3x3_256_fwd_bwd", "mindspore": version, "seconds": round(seconds, 4),
          "gflops": round(flops / seconds / 1e9, 1)})

    a = Tensor(rng.standard_normal((2048, 2048), dtype=np.float32))
    matmul = ops.MatMul()
    seconds = _time(lambda: matmul(a, a).asnumpy())
    emit({"bench": "cpu_ops", "case": "matmul_2048", "mindspore": version, "seconds": round(seconds, 4),
          "gflops": round(2.0 * 2048 ** 3 / seconds / 1e9, 1)})

    pairs, row = (2, 61380, 16), (2, 1, 16)
    full = Tensor(rng.standard_normal(pairs, dtype=np.float32))
    small = Tensor(rng.standard_normal(row, dtype=np.float32))

    @ms.jit
    def broadcast_max(x, y):
        return ops.maximum(x, y)

    @ms.jit
    def full_size_max(x, y):
        return ops.maximum(x, ops.broadcast_to(y, x.shape))

    for case, fn in (("maximum_broadcast_operand", broadcast_max), ("maximum_broadcast_to_first", full_size_max)):
        seconds = _time(lambda: fn(full, small).asnumpy())
        emit({"bench": "cpu_ops", "case": case, "shape": list(pairs), "operand": list(row), "mindspore": version,
              "seconds": round(seconds, 5)})

    _pool_and_upsample_cases(version, rng)


def _pool_and_upsample_cases(version, rng):
    """The stem max-pool and the FPN's 2x nearest upsampling at 384x640, forward + backward:
    MindSpore's kernels against the C kernels in pyfunc ops (``src/maskrcnn/ops/cpu_ops.py``)."""
    import mindspore as ms
    from mindspore import Tensor, nn, ops

    from src.maskrcnn.ops.cpu_ops import CpuMaxPool2d, upsample_nearest_op

    class Weighted(nn.Cell):
        def __init__(self, op, weights):
            super().__init__()
            self.op, self.weights = op, weights

        def construct(self, x):
            return (self.op(x) * self.weights).sum()

    class Nearest2x(nn.Cell):
        def construct(self, x):
            return ops.interpolate(x, size=(2 * x.shape[2], 2 * x.shape[3]), mode="nearest")

    stem, top_down = (2, 64, 192, 320), (2, 256, 48, 80)
    cases = (("stem_max_pool_native", nn.MaxPool2d(3, 2, pad_mode="same"), stem),
             ("stem_max_pool_cpu_kernel", CpuMaxPool2d(3, 2, "same"), stem),
             ("upsample_nearest_2x_native", Nearest2x(), top_down),
             ("upsample_nearest_2x_cpu_kernel", upsample_nearest_op(2), top_down))
    for case, op, shape in cases:
        x = Tensor(rng.standard_normal(shape, dtype=np.float32))
        weights = Tensor(rng.standard_normal(op(x).shape, dtype=np.float32))
        grad = ms.jit(ops.grad(Weighted(op, weights)))
        seconds = _time(lambda: grad(x)[0, 0, 0, :2].asnumpy())
        emit({"bench": "cpu_ops", "case": case, "shape": list(shape), "fwd_bwd": True, "mindspore": version,
              "seconds": round(seconds, 4)})


if __name__ == "__main__":
    main()
