"""Tests of the training progress bar (src/engine/progress.py) with stand-in run contexts (no network)."""

import io
import re
from types import SimpleNamespace

from src.engine.progress import ProgressBarCallback, console_mode


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_console_mode_bar_only_on_a_terminal_without_log_every():
    assert console_mode(None, 48, _Terminal()) == (True, 48)  # one log line per epoch for train.log
    assert console_mode(10, 48, _Terminal()) == (False, 10)
    assert console_mode(None, 48, io.StringIO()) == (False, 1)  # piped: a line per step, no bar
    assert console_mode(5, 48, io.StringIO()) == (False, 5)


def test_bar_counts_steps_and_shows_rate_loss_and_eta():
    stream = _Terminal()
    losses = SimpleNamespace(history=[])
    bar = ProgressBarCallback(steps_per_epoch=3, total_epochs=2, loss_callback=losses, stream=stream)
    for epoch in (1, 2):
        context = SimpleNamespace(original_args=lambda epoch=epoch: SimpleNamespace(cur_epoch_num=epoch))
        bar.on_train_epoch_begin(context)
        for step in range(3):
            losses.history.append({"total": 2.0 / (1 + step + 3 * epoch)})
            bar.on_train_step_end(context)
        assert bar.bar.n == 3
        bar.on_train_epoch_end(context)
    text = stream.getvalue()
    final_lines = [line for line in re.split(r"[\r\n]", text) if "3/3" in line]
    assert any(line.startswith("epoch 1/2") for line in final_lines)
    last = [line for line in final_lines if line.startswith("epoch 2/2")][-1]
    assert "step/s" in last or "s/step" in last
    assert f"loss={2.0 / 9:.4f}" in last
    assert "run ETA=00:00" in last  # nothing left after the last step of the last epoch
