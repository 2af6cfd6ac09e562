"""dataset_sink_mode: callbacks that count sinks right.

On Ascend/GPU a sink runs a whole epoch and the step callbacks are called once per sink with
``cur_step_num`` advanced by the sink size: the loss callback and the progress bar are checked
with stand-in run contexts that do exactly that. On the CPU, MindSpore 2.7's ``Model.train``
trains a sink-mode run step by step; that it gives the losses of step-by-step training is checked
by the uncached reference run of tests/engine/test_runtime.py (one training-graph compile instead
of two here), and the device recipe trains with sink mode on in tests/test_device_check.py.
"""

import csv
import io
import time
from types import SimpleNamespace

import numpy as np
import pytest
from mindspore import Tensor

from src.batch import LOSS_NAMES
from src.engine.callbacks import LossCallBack
from src.engine.progress import ProgressBarCallback


def _context(step, epoch=1, total=2.0):
    outputs = tuple(Tensor(np.float32(v)) for v in [total] + [0.5] * len(LOSS_NAMES))
    outputs += (Tensor(np.bool_(True)), Tensor(np.float32(1.0)))
    params = SimpleNamespace(net_outputs=outputs, cur_step_num=step, cur_epoch_num=epoch)
    return SimpleNamespace(original_args=lambda: params, request_stop=lambda: None)


def test_a_sink_of_four_steps_logs_its_last_step_and_the_time_per_step(tmp_path):
    csv_path = tmp_path / "losses.csv"
    callback = LossCallBack(str(csv_path), steps_per_epoch=4, total_epochs=2, log_every=4,
                            lr_schedule=np.arange(1, 9) / 100.0)
    callback.on_train_begin(_context(0))
    for epoch in (1, 2):
        context = _context(4 * epoch, epoch, total=3.0 - epoch)
        callback.on_train_step_begin(context)
        time.sleep(0.2)  # the sink's four steps
        callback.on_train_step_end(context)
    callback.on_train_end(_context(8, 2))
    with open(csv_path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [(int(r["epoch"]), int(r["step"])) for r in rows] == [(1, 4), (2, 8)]
    assert [float(r["total"]) for r in rows] == [2.0, 1.0]
    assert [float(r["lr"]) for r in rows] == [0.04, 0.08]  # the lr of the sink's last step
    # Per step, not per sink: 0.2 s over 4 steps.
    assert all(0.04 <= float(r["step_seconds"]) < 0.15 for r in rows)
    assert [h["steps_covered"] for h in callback.history] == [4, 4]


def test_the_progress_bar_advances_by_the_sink_size():
    stream = io.StringIO()
    losses = LossCallBack(None, steps_per_epoch=4, total_epochs=1)
    bar = ProgressBarCallback(steps_per_epoch=4, total_epochs=1, loss_callback=losses, stream=stream)
    context = _context(4)
    losses.on_train_begin(_context(0))
    bar.on_train_epoch_begin(context)
    losses.on_train_step_begin(context)
    losses.on_train_step_end(context)
    bar.on_train_step_end(context)
    assert bar.bar.n == 4
    bar.on_train_epoch_end(context)


@pytest.mark.parametrize("log_every,logged", [(1, [4, 8]), (4, [4, 8]), (8, [4, 8]), (16, [4])])
def test_a_sink_logs_when_it_passes_a_multiple_of_log_every(log_every, logged, caplog):
    callback = LossCallBack(None, steps_per_epoch=4, total_epochs=2, log_every=log_every)
    callback.on_train_begin(_context(0))
    with caplog.at_level("INFO", logger="src.engine.callbacks"):
        for epoch in (1, 2):
            context = _context(4 * epoch, epoch)
            callback.on_train_step_begin(context)
            callback.on_train_step_end(context)
    steps = [int(r.getMessage().split(" step ")[1].split("/")[0]) for r in caplog.records if " step " in r.getMessage()]
    assert steps == logged
