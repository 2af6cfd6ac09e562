"""TrainOneStepCell / LossNet on a toy network with the real signature (the 6 batch inputs and the
sampling step; tests/helpers.py: ToyLosses)."""

import mindspore as ms
import numpy as np
import pytest
from mindspore import Parameter, Tensor, nn

from src.engine.train_step import LossNet, TrainOneStepCell, WithLossCell, global_grad_norm, scale_grads
from helpers import ToyLosses, toy_batch


def _step(loss_scale, dynamic=False, image_values=(1.0, 1.0, 1.0, 1.0)):
    toy = ToyLosses()
    opt = nn.Momentum(toy.trainable_params(), learning_rate=0.01, momentum=0.0)
    cell = TrainOneStepCell(WithLossCell(toy, LossNet()), opt, loss_scale=loss_scale, dynamic_loss_scale=dynamic)
    outputs = cell(*toy_batch(image_values))
    return toy, cell, outputs


@pytest.mark.parametrize("mode", [ms.GRAPH_MODE, ms.PYNATIVE_MODE])
@pytest.mark.parametrize("loss_scale", [1.0, 1024.0])
def test_one_step_is_plain_sgd_on_the_total_whatever_the_loss_scale(mode, loss_scale):
    ms.set_context(mode=mode)
    toy, _, outputs = _step(loss_scale)
    w0 = np.array([1.0, -2.0, 0.5, 3.0], np.float32)
    s = w0.sum()  # image is all ones
    # total = sum_i (i+1) * s^2/2 = 15 s^2 / 2; d total / d w_j = 15 s
    expected = w0 - 0.01 * 15 * s
    np.testing.assert_allclose(toy.w.asnumpy(), expected, rtol=1e-5)
    values = [float(o.asnumpy()) for o in outputs[:6]]
    assert values[0] == pytest.approx(15 * s * s / 2)
    assert values[1:] == pytest.approx([(i + 1) * s * s / 2 for i in range(5)])
    assert bool(outputs[6].asnumpy()) is True
    assert float(outputs[7].asnumpy()) == loss_scale


def test_non_finite_gradient_skips_the_update_and_dynamic_scale_halves():
    ms.set_context(mode=ms.GRAPH_MODE)
    toy, cell, outputs = _step(64.0, dynamic=True, image_values=(np.inf, 1.0, 1.0, 1.0))
    np.testing.assert_array_equal(toy.w.asnumpy(), np.array([1.0, -2.0, 0.5, 3.0], np.float32))
    assert bool(outputs[6].asnumpy()) is False
    assert float(cell.loss_scale.asnumpy()) == 32.0


def test_loss_net_is_the_plain_sum_of_the_five_losses():
    total = LossNet()(tuple(Tensor(np.float32(v)) for v in (1, 2, 3, 4, 5)))
    assert float(total.asnumpy()) == 1 + 2 + 3 + 4 + 5


def test_gradient_clipping_limits_the_global_norm_of_the_update():
    ms.set_context(mode=ms.GRAPH_MODE)
    toy = ToyLosses()
    opt = nn.Momentum(toy.trainable_params(), learning_rate=1.0, momentum=0.0)
    cell = TrainOneStepCell(WithLossCell(toy, LossNet()), opt, loss_scale=8.0, grad_clip_norm=0.5)
    w0 = toy.w.asnumpy().copy()
    cell(*toy_batch((1.0, 1.0, 1.0, 1.0)))
    step = w0 - toy.w.asnumpy()
    # unclipped gradient: 15 * sum(w0) in every component (norm 15*2.5*2 = 75); clipped to 0.5
    assert np.linalg.norm(step) == pytest.approx(0.5, rel=1e-4)
    np.testing.assert_allclose(step / np.linalg.norm(step), np.full(4, 0.5), rtol=1e-5)


class TwoParameterToy(nn.Cell):
    """Five equal losses w * x0 + v * x1 (one gradient each for w and v)."""

    def __init__(self):
        super().__init__()
        self.w = Parameter(Tensor(np.array([1.0], np.float32)), name="w")
        self.v = Parameter(Tensor(np.array([2.0], np.float32)), name="v")

    def construct(self, image, image_shape, box, label, instance_valid, mask, sampling_step=None):
        x = image.reshape(-1)
        base = (self.w * x[0]).sum() + (self.v * x[1]).sum()
        return tuple(base for _ in range(5))


def test_one_non_finite_gradient_among_several_skips_every_update():
    ms.set_context(mode=ms.GRAPH_MODE)
    toy = TwoParameterToy()
    opt = nn.Momentum(toy.trainable_params(), learning_rate=0.1, momentum=0.0)
    cell = TrainOneStepCell(WithLossCell(toy, LossNet()), opt, grad_clip_norm=10.0)
    outputs = cell(*toy_batch((1.0, np.nan, 1.0, 1.0)))  # d/dw is finite (5), d/dv is NaN
    assert bool(outputs[6].asnumpy()) is False
    assert toy.w.asnumpy().tolist() == [1.0] and toy.v.asnumpy().tolist() == [2.0]


def test_clipping_leaves_a_gradient_below_the_bound_unchanged():
    ms.set_context(mode=ms.GRAPH_MODE)
    toy = TwoParameterToy()
    opt = nn.Momentum(toy.trainable_params(), learning_rate=0.1, momentum=0.0)
    cell = TrainOneStepCell(WithLossCell(toy, LossNet()), opt, loss_scale=4.0, grad_clip_norm=100.0)
    cell(*toy_batch((1.0, 2.0, 1.0, 1.0)))  # gradients 5 * (1, 2): norm ~11.2 < 100
    np.testing.assert_allclose([toy.w.asnumpy()[0], toy.v.asnumpy()[0]], [1.0 - 0.5, 2.0 - 1.0], rtol=1e-6)


@pytest.mark.parametrize("mode", [ms.GRAPH_MODE, ms.PYNATIVE_MODE])
def test_global_norm_and_scaling_cover_every_gradient_of_a_long_mixed_tuple(mode):
    # 150 gradients (the model has ~200), float32 and float16, of different shapes: the norm is
    # over all of them and each scaled gradient keeps its shape and dtype.
    ms.set_context(mode=mode)
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal((i % 5 + 1, 3)).astype(np.float16 if i % 3 == 0 else np.float32)
              for i in range(150)]
    grads = tuple(Tensor(a) for a in arrays)

    def norm_and_scale(grads, factor):
        return global_grad_norm(grads), scale_grads(grads, factor)

    run = ms.jit(norm_and_scale) if mode == ms.GRAPH_MODE else norm_and_scale
    norm, scaled = run(grads, Tensor(0.5, ms.float32))
    expected = np.sqrt(sum(float((a.astype(np.float64) ** 2).sum()) for a in arrays))
    assert float(norm.asnumpy()) == pytest.approx(expected, rel=1e-5)
    assert len(scaled) == len(arrays)
    for a, g in zip(arrays, scaled):
        assert g.shape == a.shape and g.asnumpy().dtype == a.dtype
        np.testing.assert_allclose(g.asnumpy(), a * a.dtype.type(0.5), rtol=1e-3)


class StepReportingToy(nn.Cell):
    """ToyLosses' first loss, and the sampling step it was given as the last of the five losses."""

    def __init__(self):
        super().__init__()
        self.w = Parameter(Tensor(np.array([1.0], np.float32)), name="w")

    def construct(self, image, image_shape, box, label, instance_valid, mask, sampling_step=None):
        base = (self.w * image.reshape(-1)[0]).sum() ** 2 / 2
        zero = base * 0.0
        return base, zero, zero, zero, sampling_step.astype(ms.float32).reshape(())


@pytest.mark.parametrize("mode", [ms.GRAPH_MODE, ms.PYNATIVE_MODE])
def test_the_network_samples_for_the_global_step_before_the_update(mode):
    """The step a resumed run restores (global_step) is the step the sampling keys are drawn for:
    0 at the first step, and it follows the optimizer's counter, also when that was restored."""
    ms.set_context(mode=mode)
    toy = StepReportingToy()
    opt = nn.Momentum(toy.trainable_params(), learning_rate=0.01, momentum=0.0)
    cell = TrainOneStepCell(WithLossCell(toy, LossNet()), opt)
    seen = [float(cell(*toy_batch((1.0, 1.0, 1.0, 1.0)))[5].asnumpy()) for _ in range(3)]
    assert seen == [0.0, 1.0, 2.0]
    if mode == ms.GRAPH_MODE:  # train.py's mode (PyNative's AssignAdd misses a replaced Parameter's data)
        opt.global_step.set_data(Tensor(np.array([41], np.int32)))  # as a --resume from step 41 does
        assert float(cell(*toy_batch((1.0, 1.0, 1.0, 1.0)))[5].asnumpy()) == 41.0
        assert int(opt.global_step.asnumpy()[0]) == 42
