"""TrainOneStepCell / LossNet / callbacks on a toy network with the real 6-input signature."""

import os
from types import SimpleNamespace

import mindspore as ms
import numpy as np
import pytest
from mindspore import Parameter, Tensor, nn, ops

from src.batch import LOSS_NAMES
from src.engine.callbacks import CheckpointCallback, LossCallBack, NonFiniteLossError
from src.engine.train_step import LossNet, TrainOneStepCell, WithLossCell, global_grad_norm, scale_grads


class ToyLosses(nn.Cell):
    """Five losses from one parameter vector w: loss_i = (i + 1) * sum(w * image[:4])^2 / 2."""

    def __init__(self):
        super().__init__()
        self.w = Parameter(Tensor(np.array([1.0, -2.0, 0.5, 3.0], np.float32)), name="w")

    def construct(self, image, image_shape, box, label, instance_valid, mask):
        x = image.reshape(-1)[:4]
        base = (self.w * x).sum() ** 2 / 2
        return tuple(base * (i + 1) for i in range(5))


def _batch(image_values):
    image = Tensor(np.array(image_values, np.float32).reshape(1, 1, 2, 2))
    zeros = Tensor(np.zeros((1, 4), np.float32))
    return image, zeros, Tensor(np.zeros((1, 1, 4), np.float32)), Tensor(np.zeros((1, 1), np.int32)), \
        Tensor(np.zeros((1, 1), np.int32)), Tensor(np.zeros((1, 1, 2, 2), np.uint8))


def _step(loss_scale, dynamic=False, image_values=(1.0, 1.0, 1.0, 1.0)):
    toy = ToyLosses()
    opt = nn.Momentum(toy.trainable_params(), learning_rate=0.01, momentum=0.0)
    cell = TrainOneStepCell(WithLossCell(toy, LossNet()), opt, loss_scale=loss_scale, dynamic_loss_scale=dynamic)
    outputs = cell(*_batch(image_values))
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


def _run_context(outputs, step, epoch=1, network=None):
    params = SimpleNamespace(net_outputs=outputs, cur_step_num=step, cur_epoch_num=epoch, train_network=network)
    stopped = []
    return SimpleNamespace(original_args=lambda: params, request_stop=lambda: stopped.append(True)), stopped


def _outputs(total, finite=True):
    values = [total] + [0.5] * len(LOSS_NAMES)
    return tuple(Tensor(np.float32(v)) for v in values) + (Tensor(np.bool_(finite)), Tensor(np.float32(1.0)))


def test_loss_callback_writes_csv_and_stops_on_nan_naming_the_step(tmp_path):
    csv_path = tmp_path / "losses.csv"
    callback = LossCallBack(str(csv_path), steps_per_epoch=10, total_epochs=1, lr_schedule=np.full(10, 0.01))
    for step, total in ((1, 2.5), (2, 2.0)):
        context, stopped = _run_context(_outputs(total), step)
        callback.on_train_step_begin(context)
        callback.on_train_step_end(context)
        assert not stopped
    context, stopped = _run_context(_outputs(float("nan")), 3)
    callback.on_train_step_end(context)
    callback.on_train_end(context)
    assert stopped == [True]
    assert isinstance(callback.error, NonFiniteLossError)
    assert "loss became nan at step 3" in str(callback.error)
    rows = csv_path.read_text().strip().splitlines()
    assert rows[0].split(",")[:8] == ["epoch", "step", "total", *LOSS_NAMES]
    assert len(rows) == 4 and rows[1].split(",")[2] == "2.500000"


def test_checkpoint_callback_keeps_max_and_saves_nothing_after_nan(tmp_path):
    saved = []

    def save(network, path):
        saved.append(os.path.basename(path))
        with open(path, "w") as handle:
            handle.write(network)  # which state went into the file

    loss_cb = SimpleNamespace(error=None)
    callback = CheckpointCallback(save, "weights only", str(tmp_path), "m", every_epochs=1, keep_max=2,
                                  loss_callback=loss_cb)
    for epoch in (1, 2, 3):
        context, _ = _run_context(None, epoch * 5, epoch, network=f"state after epoch {epoch}")
        callback.on_train_epoch_end(context)
    assert saved == ["m-1_5.ckpt", "last.ckpt", "m-2_10.ckpt", "last.ckpt", "m-3_15.ckpt", "last.ckpt"]
    assert sorted(os.listdir(tmp_path)) == ["last.ckpt", "m-2_10.ckpt", "m-3_15.ckpt"]
    loss_cb.error = NonFiniteLossError("nan")
    context, _ = _run_context(None, 20, 4, network="state after the NaN")
    callback.on_train_epoch_end(context)
    callback.on_train_end(context)
    # Nothing written after the NaN: last.ckpt still holds the last finite state.
    assert len(saved) == 6
    assert sorted(os.listdir(tmp_path)) == ["last.ckpt", "m-2_10.ckpt", "m-3_15.ckpt"]
    assert (tmp_path / "last.ckpt").read_text() == "state after epoch 3"
    # The numbered files hold the network's weights, last.ckpt the whole train cell.
    assert (tmp_path / "m-3_15.ckpt").read_text() == "weights only"


def test_checkpoint_callback_with_keep_max_0_writes_last_ckpt_only(tmp_path):
    saved = []

    def save(network, path):
        saved.append((os.path.basename(path), network))
        with open(path, "w") as handle:
            handle.write(network)

    callback = CheckpointCallback(save, "weights only", str(tmp_path), "m", every_epochs=1, keep_max=0,
                                  step_offset=10)
    for epoch in (1, 2):
        context, _ = _run_context(None, epoch * 5, epoch, network=f"state after epoch {epoch}")
        callback.on_train_epoch_end(context)
    callback.on_train_end(context)  # same step as the last epoch end: not written again
    assert saved == [("last.ckpt", "state after epoch 1"), ("last.ckpt", "state after epoch 2")]
    assert os.listdir(tmp_path) == ["last.ckpt"]


def test_numbered_checkpoints_hold_weights_only_and_last_ckpt_resumes(tmp_path):
    from src.checkpoint.io import CheckpointError, read_checkpoint, save_checkpoint_atomic
    from src.checkpoint.load import load_train_state

    ms.set_context(mode=ms.GRAPH_MODE)
    toy = ToyLosses()
    opt = nn.Momentum(toy.trainable_params(), learning_rate=0.01, momentum=0.9)
    cell = TrainOneStepCell(WithLossCell(toy, LossNet()), opt, loss_scale=1.0)
    cell(*_batch((1.0, 1.0, 1.0, 1.0)))  # one step: non-zero momentum
    callback = CheckpointCallback(save_checkpoint_atomic, toy, str(tmp_path), "m", every_epochs=1, keep_max=5)
    context, _ = _run_context(None, 1, 1, network=cell)
    callback.on_train_epoch_end(context)
    numbered, last = str(tmp_path / "m-1_1.ckpt"), str(tmp_path / "last.ckpt")
    assert sorted(os.listdir(tmp_path)) == ["last.ckpt", "m-1_1.ckpt"]
    assert list(read_checkpoint(numbered)) == ["w"]
    last_params = read_checkpoint(last)
    assert {"w", "moments.w", "global_step"} <= set(last_params)
    assert np.any(last_params["moments.w"].asnumpy() != 0)
    np.testing.assert_array_equal(read_checkpoint(numbered)["w"].asnumpy(), toy.w.asnumpy())
    assert os.path.getsize(numbered) < os.path.getsize(last)

    fresh = ToyLosses()
    fresh_cell = TrainOneStepCell(WithLossCell(fresh, LossNet()),
                                  nn.Momentum(fresh.trainable_params(), learning_rate=0.01, momentum=0.9))
    assert load_train_state(fresh_cell, last) == 1
    np.testing.assert_array_equal(fresh.w.asnumpy(), toy.w.asnumpy())
    with pytest.raises(CheckpointError) as info:
        load_train_state(fresh_cell, numbered)
    assert str(info.value).startswith(f"{numbered}: holds weights only")
    assert f"resume from the run's last.ckpt ({last})" in str(info.value) and "--pre_trained" in str(info.value)


def test_gradient_clipping_limits_the_global_norm_of_the_update():
    ms.set_context(mode=ms.GRAPH_MODE)
    toy = ToyLosses()
    opt = nn.Momentum(toy.trainable_params(), learning_rate=1.0, momentum=0.0)
    cell = TrainOneStepCell(WithLossCell(toy, LossNet()), opt, loss_scale=8.0, grad_clip_norm=0.5)
    w0 = toy.w.asnumpy().copy()
    cell(*_batch((1.0, 1.0, 1.0, 1.0)))
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

    def construct(self, image, image_shape, box, label, instance_valid, mask):
        x = image.reshape(-1)
        base = (self.w * x[0]).sum() + (self.v * x[1]).sum()
        return tuple(base for _ in range(5))


def test_one_non_finite_gradient_among_several_skips_every_update():
    ms.set_context(mode=ms.GRAPH_MODE)
    toy = TwoParameterToy()
    opt = nn.Momentum(toy.trainable_params(), learning_rate=0.1, momentum=0.0)
    cell = TrainOneStepCell(WithLossCell(toy, LossNet()), opt, grad_clip_norm=10.0)
    outputs = cell(*_batch((1.0, np.nan, 1.0, 1.0)))  # d/dw is finite (5), d/dv is NaN
    assert bool(outputs[6].asnumpy()) is False
    assert toy.w.asnumpy().tolist() == [1.0] and toy.v.asnumpy().tolist() == [2.0]


def test_clipping_leaves_a_gradient_below_the_bound_unchanged():
    ms.set_context(mode=ms.GRAPH_MODE)
    toy = TwoParameterToy()
    opt = nn.Momentum(toy.trainable_params(), learning_rate=0.1, momentum=0.0)
    cell = TrainOneStepCell(WithLossCell(toy, LossNet()), opt, loss_scale=4.0, grad_clip_norm=100.0)
    cell(*_batch((1.0, 2.0, 1.0, 1.0)))  # gradients 5 * (1, 2): norm ~11.2 < 100
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
