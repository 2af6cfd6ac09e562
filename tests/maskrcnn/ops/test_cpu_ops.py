"""The C kernels of the CPU backend (src/maskrcnn/ops/cpu_kernels.c, conv3x3_onednn.c) against MindSpore's own ops."""

import logging

import mindspore as ms
import numpy as np
import pytest
from mindspore import ParameterTuple, Tensor, nn, ops

from src.maskrcnn.ops import cpu_kernels
from src.maskrcnn.ops.cpu_ops import Conv3x3, CpuMaxPool2d, upsample_nearest_op
from src.maskrcnn.layers import conv2d
from src.maskrcnn.resnet50 import ResNet50, stem_max_pool
from src.maskrcnn.target import CPU_KERNELS, NATIVE_KERNELS, Kernels


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
    assert cpu_kernels.available(), "gcc (or $CC) must build src/maskrcnn/ops/cpu_kernels.c here"


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
    assert isinstance(stem_max_pool("same", CPU_KERNELS), nn.MaxPool2d)


def test_a_failing_compiler_is_reported_and_nothing_half_built_is_left(monkeypatch, caplog, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("CC", "false")
    with caplog.at_level(logging.WARNING, logger=cpu_kernels.__name__):
        assert cpu_kernels.library.__wrapped__() is None
    assert "could not build" in caplog.text and "false" in caplog.text
    assert list((tmp_path / "maskrcnn_mindspore").iterdir()) == []


def test_stem_pool_kernel_follows_the_choice():
    assert isinstance(stem_max_pool("same", CPU_KERNELS), CpuMaxPool2d)
    assert isinstance(stem_max_pool("symmetric", NATIVE_KERNELS), nn.MaxPool2d)


class _AllGrads(nn.Cell):
    """Gradients of a net in its input and in its parameters."""

    def __init__(self, net):
        super().__init__()
        self.net = net
        self.params = ParameterTuple(net.trainable_params())
        self.grad = ops.GradOperation(get_all=True, get_by_list=True)

    def construct(self, x):
        return self.grad(self.net, self.params)(x)


def _conv_outputs(conv, x, seed):
    """(output, input gradient, parameter gradients) of ``conv`` for a fixed output gradient."""
    out = conv(x).asnumpy()
    weights = Tensor(np.random.default_rng(seed).standard_normal(out.shape).astype(np.float32))
    (grad_x,), grad_params = _AllGrads(_Weighted(conv, weights))(x)
    return out, grad_x.asnumpy(), [g.asnumpy() for g in grad_params]


def test_the_test_machine_builds_the_onednn_convolution():
    assert cpu_kernels.onednn_prefix() is not None, "requirements.txt installs the onednn wheels"
    assert cpu_kernels.conv3x3_library() is not None


@pytest.mark.parametrize("shape, out_channels, has_bias", [((2, 8, 12, 20), 16, False), ((3, 5, 7, 9), 4, True),
                                                            ((1, 64, 24, 40), 64, True)])
def test_onednn_conv3x3_matches_nn_conv2d(shape, out_channels, has_bias):
    """Same parameters, same output and gradients (input, weight, bias) as MindSpore's kernel,
    odd sizes and channel counts that are not a multiple of oneDNN's 8-channel blocks included."""
    rng = np.random.default_rng(3)
    weight = Tensor((rng.standard_normal((out_channels, shape[1], 3, 3)) * 0.1).astype(np.float32))
    x_values = rng.standard_normal(shape).astype(np.float32)
    x = Tensor(x_values.copy())
    ours = conv2d(shape[1], out_channels, 3, weight, has_bias=has_bias, kernels=CPU_KERNELS)
    theirs = conv2d(shape[1], out_channels, 3, weight, has_bias=has_bias, kernels=NATIVE_KERNELS)
    assert isinstance(ours, Conv3x3) and not isinstance(theirs, Conv3x3)
    if has_bias:
        bias = rng.standard_normal(out_channels).astype(np.float32)
        ours.bias.set_data(Tensor(bias))
        theirs.bias.set_data(Tensor(bias))
    got, want = _conv_outputs(ours, x, 4), _conv_outputs(theirs, x, 4)
    # The aot ops write only their outputs (MindSpore puts them after all the inputs).
    np.testing.assert_array_equal(x.asnumpy(), x_values)
    np.testing.assert_array_equal(ours.weight.asnumpy(), weight.asnumpy())
    scale = np.abs(want[0]).max()
    np.testing.assert_allclose(got[0], want[0], rtol=0, atol=1e-5 * scale)
    np.testing.assert_allclose(got[1], want[1], rtol=0, atol=1e-5 * np.abs(want[1]).max())
    assert len(got[2]) == len(want[2]) == (2 if has_bias else 1)
    for mine, reference in zip(got[2], want[2]):
        np.testing.assert_allclose(mine, reference, rtol=0, atol=1e-5 * np.abs(reference).max())


def test_conv2d_uses_onednn_only_for_stride_1_3x3_on_the_cpu_kernels(monkeypatch):
    weight = "normal"
    assert isinstance(conv2d(4, 4, 3, weight, kernels=CPU_KERNELS), Conv3x3)
    assert not isinstance(conv2d(4, 4, 3, weight, stride=2, kernels=CPU_KERNELS), Conv3x3)
    assert not isinstance(conv2d(4, 4, 1, weight, kernels=CPU_KERNELS), Conv3x3)
    assert not isinstance(conv2d(4, 4, 3, weight, kernels=NATIVE_KERNELS), Conv3x3)
    monkeypatch.setattr(cpu_kernels, "conv3x3_library", lambda: None)
    fallback = conv2d(4, 4, 3, weight, kernels=CPU_KERNELS)
    assert type(fallback) is nn.Conv2d and fallback.padding == 1 and fallback.pad_mode == "pad"


def test_without_onednn_the_library_is_none_after_a_warning(monkeypatch, caplog):
    monkeypatch.setattr(cpu_kernels, "onednn_prefix", lambda: None)
    with caplog.at_level(logging.WARNING, logger=cpu_kernels.__name__):
        assert cpu_kernels.conv3x3_library.__wrapped__() is None
    assert "onednn-cpu-gomp" in caplog.text


def test_a_backbone_on_onednn_has_the_same_parameters_as_on_mindspores_kernels():
    """Checkpoints cannot tell the two apart: same names, shapes and initial values for a seed."""
    def parameters(kernel):
        ms.set_seed(5)
        net = ResNet50(0, "batch", "same", Kernels(kernel))
        assert any(isinstance(cell, Conv3x3) for _, cell in net.cells_and_names()) == (kernel == "cpu")
        return {p.name: p.asnumpy() for p in net.get_parameters()}

    ours, theirs = parameters("cpu"), parameters("native")
    assert ours.keys() == theirs.keys()
    for name, value in theirs.items():
        np.testing.assert_array_equal(ours[name], value, err_msg=name)
