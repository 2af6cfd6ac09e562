"""src/engine/trainer.py build_callbacks: evaluation with early stopping restored on --resume, and
TensorBoard fed by the loss log and the evaluations (built without a network or a graph)."""

import json

import numpy as np

from src.config import load_config
from src.engine.callbacks import TENSORBOARD_DIR, CheckpointCallback, LossCallBack, TensorBoardCallback
from src.engine.trainer import build_callbacks
from src.evaluation.hook import EARLY_STOP_STATE_FILE, EvalCallback

STEPS_PER_EPOCH = 5


def _build(tmp_path, start_step, **overrides):
    tmp_path.mkdir(exist_ok=True)
    config = load_config(overrides=dict({"eval_interval": 1, "early_stop_patience": 2}, **overrides))
    callbacks, loss_cb, _, _ = build_callbacks(config, None, str(tmp_path), True, STEPS_PER_EPOCH,
                                               np.full(40, 0.01, np.float32), start_step, log_every=1)
    loss_cb.on_train_end(None)  # closes losses.csv
    return callbacks, loss_cb


def test_resume_restores_the_early_stopping_state_up_to_the_checkpoint(tmp_path):
    state = {"metric": "segm_AP", "evaluations": [{"epoch": 1, "value": 0.2}, {"epoch": 2, "value": 0.1},
                                                   {"epoch": 3, "value": 0.05}]}
    (tmp_path / EARLY_STOP_STATE_FILE).write_text(json.dumps(state))
    callbacks, loss_cb = _build(tmp_path, start_step=2 * STEPS_PER_EPOCH)  # last.ckpt at the end of epoch 2
    (eval_cb,) = [c for c in callbacks if isinstance(c, EvalCallback)]
    # Epochs counted from the global step, as the loss log and the checkpoints count them.
    assert (eval_cb.step_offset, eval_cb.steps_per_epoch) == (2 * STEPS_PER_EPOCH, STEPS_PER_EPOCH)
    assert eval_cb.loss_callback is loss_cb
    assert eval_cb.evaluations == state["evaluations"][:2]
    assert eval_cb.best == {"epoch": 1, "value": 0.2} and eval_cb.evaluations_without_improvement == 1
    fresh, _ = _build(tmp_path / "fresh", start_step=0)
    assert [c for c in fresh if isinstance(c, EvalCallback)][0].evaluations == []


def test_tensorboard_follows_the_loss_log_and_the_evaluation_callback(tmp_path):
    callbacks, loss_cb = _build(tmp_path, start_step=0)
    kinds = [type(c) for c in callbacks]
    assert kinds.index(LossCallBack) < kinds.index(EvalCallback) < kinds.index(TensorBoardCallback)
    # A run killed while it evaluates resumes from the checkpoint before that evaluation.
    assert kinds.index(EvalCallback) < kinds.index(CheckpointCallback)
    (board,) = [c for c in callbacks if isinstance(c, TensorBoardCallback)]
    assert board.loss_callback is loss_cb and isinstance(board.eval_callback, EvalCallback)
    assert (tmp_path / TENSORBOARD_DIR).is_dir()
    board.on_train_end(None)
    off, _ = _build(tmp_path / "off", start_step=0, tensorboard=False)
    assert not any(isinstance(c, TensorBoardCallback) for c in off)
