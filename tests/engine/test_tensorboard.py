"""src/engine/callbacks.py TensorBoardCallback: the scalars of the loss log and of the evaluations,
read back from the event files with tensorboardX's own Event protocol buffer."""

from types import SimpleNamespace

import pytest

from helpers import read_tensorboard_scalars
from src.batch import LOSS_NAMES
from src.engine.callbacks import TensorBoardCallback


def _row(step, total):
    row = {name: total / (i + 2) for i, name in enumerate(LOSS_NAMES)}
    row.update(total=total, step=step, epoch=1 + (step - 1) // 2, seconds=0.5 + step, lr=0.01 * step,
               loss_scale=1.0, steps_covered=1)
    return row


def test_steps_and_evaluations_become_scalars(tmp_path):
    """Epochs of 2 steps in a run resumed at step 1: its passes (steps 2-3, 4-5) end mid-epoch; the
    evaluation of epoch 2, made in step 4's callbacks, is logged at step 4, not at a pass end."""
    loss_cb = SimpleNamespace(history=[], steps_per_epoch=2)
    eval_cb = SimpleNamespace(records=[])
    callback = TensorBoardCallback(str(tmp_path), loss_cb, eval_cb)
    for step in (2, 3, 4, 5):
        loss_cb.history.append(_row(step, 4.0 - step / 2))
        if step == 4:  # the EvalCallback comes before this callback in the same step
            eval_cb.records.append({"epoch": 2, "bbox_AP": 0.25, "segm_AP": 0.125})
        callback.on_train_step_end(None)
        if step % 2 == 1:
            callback.on_train_epoch_end(None)
    callback.on_train_end(None)
    scalars = read_tensorboard_scalars(str(tmp_path))
    assert scalars["loss/total"] == [(2, 3.0), (3, 2.5), (4, 2.0), (5, 1.5)]
    assert [v for _, v in scalars[f"loss/{LOSS_NAMES[0]}"]] == pytest.approx([3.0 / 2, 2.5 / 2, 1.0, 1.5 / 2])
    assert scalars["train/lr"] == [(s, pytest.approx(0.01 * s)) for s in (2, 3, 4, 5)]
    assert scalars["train/step_seconds"][-1] == (5, 5.5)
    assert scalars["eval/bbox_AP"] == [(4, 0.25)] and scalars["eval/segm_AP"] == [(4, 0.125)]
    assert "eval/epoch" not in scalars
