"""The training callbacks (src/engine/callbacks.py): loss log and NaN guard, checkpoints and their
rotation, on the toy network of tests/helpers.py."""

import os
from types import SimpleNamespace

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, nn

from src.batch import LOSS_NAMES
from src.engine.callbacks import CheckpointCallback, LossCallBack, NonFiniteLossError
from src.engine.train_step import LossNet, TrainOneStepCell, WithLossCell
from helpers import ToyLosses, toy_batch


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
    # Epochs of 5 steps; the callback saves at the step that ends an epoch.
    callback = CheckpointCallback(save, "weights only", str(tmp_path), "m", every_epochs=1, keep_max=2,
                                  loss_callback=loss_cb, steps_per_epoch=5)
    callback.on_train_step_end(_run_context(None, 3, 1, network="mid-epoch state")[0])
    assert saved == []  # a step inside an epoch saves nothing
    for epoch in (1, 2, 3):
        context, _ = _run_context(None, epoch * 5, epoch, network=f"state after epoch {epoch}")
        callback.on_train_step_end(context)
    assert saved == ["m-1_5.ckpt", "last.ckpt", "m-2_10.ckpt", "last.ckpt", "m-3_15.ckpt", "last.ckpt"]
    assert sorted(os.listdir(tmp_path)) == ["last.ckpt", "m-2_10.ckpt", "m-3_15.ckpt"]
    loss_cb.error = NonFiniteLossError("nan")
    context, _ = _run_context(None, 20, 4, network="state after the NaN")
    callback.on_train_step_end(context)
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
                                  step_offset=10, steps_per_epoch=5)
    for epoch in (1, 2):
        context, _ = _run_context(None, epoch * 5, epoch, network=f"state after epoch {epoch}")
        callback.on_train_step_end(context)
    callback.on_train_end(context)  # same step as the last epoch's end: not written again
    assert saved == [("last.ckpt", "state after epoch 1"), ("last.ckpt", "state after epoch 2")]
    assert os.listdir(tmp_path) == ["last.ckpt"]


def test_numbered_checkpoints_hold_weights_only_and_last_ckpt_resumes(tmp_path):
    from src.checkpoint.io import CheckpointError, read_checkpoint, save_checkpoint_atomic
    from src.checkpoint.load import load_train_state

    ms.set_context(mode=ms.GRAPH_MODE)
    toy = ToyLosses()
    opt = nn.Momentum(toy.trainable_params(), learning_rate=0.01, momentum=0.9)
    cell = TrainOneStepCell(WithLossCell(toy, LossNet()), opt, loss_scale=1.0)
    cell(*toy_batch((1.0, 1.0, 1.0, 1.0)))  # one step: non-zero momentum
    callback = CheckpointCallback(save_checkpoint_atomic, toy, str(tmp_path), "m", every_epochs=1, keep_max=5)
    context, _ = _run_context(None, 1, 1, network=cell)
    callback.on_train_step_end(context)
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
