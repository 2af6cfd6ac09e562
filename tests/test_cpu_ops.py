"""The C kernels of the CPU backend (src/maskrcnn/cpu_kernels.c) against MindSpore's own ops."""

import logging

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, nn, ops

from src.maskrcnn import cpu_kernels
from src.maskrcnn.cpu_ops import CpuMaxPool2d, upsample_nearest_op
from src.maskrcnn.resnet50 import stem_max_pool


class _Weighted(nn.Cell):
    """sum(op(x) * weights): its gradient is the op's gradient for the given output gradient."""

    def __init__(self, op, weights):
        super().__init__()
        self.op = op
        self.weights = weights

    def construct(self, x):
        return (self.op(x) * self.weights).sum()


class _Grad(nn.Cell):
    def __init__(self, net):
        super().__init__()
        self.net = net
        self.grad = ops.GradOperation()

    def construct(self, x):
        return self.grad(self.net)(x)


class _Upsample(nn.Cell):
    def __init__(self, size):
        super().__init__()
        self.size = size

    def construct(self, x):
        return ops.interpolate(x, size=self.size, mode="nearest")


def _forward_and_gradient(op, x, out_shape, seed):
    weights = Tensor(np.random.default_rng(seed).standard_normal(out_shape).astype(np.float32))
    return op(x).asnumpy(), _Grad(_Weighted(op, weights))(x).asnumpy()


def test_the_test_machine_builds_the_kernels():
    assert cpu_kernels.available(), "gcc (or $CC) must build src/maskrcnn/cpu_kernels.c here"


@pytest.mark.parametrize("padding, native", [("same", dict(pad_mode="same")),
                                             (1, dict(pad_mode="pad", padding=1))])
@pytest.mark.parametrize("height, width", [(24, 40), (17, 23)])
def test_max_pool_matches_nn_max_pool2d(padding, native, height, width):
    ms.set_context(mode=ms.GRAPH_MODE)
    x = Tensor(np.random.default_rng(height).standard_normal((2, 3, height, width)).astype(np.float32))
    expected = nn.MaxPool2d(kernel_size=3, stride=2, **native)
    out_shape = expected(x).shape
    want, want_grad = _forward_and_gradient(expected, x, out_shape, 1)
    got, got_grad = _forward_and_gradient(CpuMaxPool2d(3, 2, padding), x, out_shape, 1)
    assert got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(got_grad, want_grad, rtol=0, atol=1e-6)
    # Each output's gradient went to exactly one input cell.
    assert np.count_nonzero(got_grad) <= np.prod(out_shape)


def test_max_pool_ties_go_to_the_first_cell_and_nan_wins():
    x = np.zeros((1, 1, 4, 4), np.float32)
    x[0, 0, 1, 1] = np.nan
    pads = (0, 1, 0, 1)  # "same" on 4: windows rows/cols 0..2 and 2..3
    y = cpu_kernels.max_pool_forward(x, 3, 2, pads)
    assert np.isnan(y[0, 0, 0, 0]) and np.array_equal(y[0, 0, 1:, 1:], [[0.0]])
    grad = cpu_kernels.max_pool_backward(x, y, np.ones_like(y), 3, 2, pads)
    # NaN window: its cell; all-zero windows: the first cell of the window in row-major order.
    assert grad[0, 0, 1, 1] == 1.0 and grad[0, 0, 0, 2] == 1.0 and grad[0, 0, 2, 0] == 1.0
    assert grad[0, 0, 2, 2] == 1.0 and grad.sum() == 4.0


@pytest.mark.parametrize("shape", [(2, 4, 6, 10), (1, 3, 5, 7)])
def test_upsample_matches_nearest_interpolate(shape):
    ms.set_context(mode=ms.GRAPH_MODE)
    x = Tensor(np.random.default_rng(shape[2]).standard_normal(shape).astype(np.float32))
    out_shape = (shape[0], shape[1], 2 * shape[2], 2 * shape[3])
    want, want_grad = _forward_and_gradient(_Upsample(out_shape[2:]), x, out_shape, 2)
    got, got_grad = _forward_and_gradient(upsample_nearest_op(2), x, out_shape, 2)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(got_grad, want_grad, rtol=1e-6, atol=1e-6)


def test_no_compiler_means_mindspores_own_ops(monkeypatch, caplog):
    monkeypatch.setattr(cpu_kernels.shutil, "which", lambda name: None)
    with caplog.at_level(logging.WARNING, logger=cpu_kernels.__name__):
        assert cpu_kernels.library.__wrapped__() is None
    assert "no C compiler" in caplog.text
    monkeypatch.setattr(cpu_kernels, "available", lambda: False)
    assert isinstance(stem_max_pool("same", "cpu"), nn.MaxPool2d)


def test_a_failing_compiler_is_reported_and_nothing_half_built_is_left(monkeypatch, caplog, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("CC", "false")
    with caplog.at_level(logging.WARNING, logger=cpu_kernels.__name__):
        assert cpu_kernels.library.__wrapped__() is None
    assert "could not build" in caplog.text and "false" in caplog.text
    assert list((tmp_path / "maskrcnn_mindspore").iterdir()) == []


def test_stem_pool_kernel_follows_the_choice():
    assert isinstance(stem_max_pool("same", "cpu"), CpuMaxPool2d)
    assert isinstance(stem_max_pool("symmetric", "native"), nn.MaxPool2d)
