"""Training progress on the console: a tqdm bar per epoch with steps/s, the loss and the ETA.

The bar is shown when stdout is a terminal and ``--log_every`` was not given; otherwise (logs
piped to a file, CI, ``--log_every N``) training prints a log line every N steps as before.
The per-step ``losses.csv`` is written either way (``src.engine.callbacks.LossCallBack``).
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import time
from typing import Optional, TextIO, Tuple

from mindspore.train.callback import Callback
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

# Log lines per step when there is no bar and --log_every was not given.
DEFAULT_LOG_EVERY = 1
# Bar width when the terminal does not report its size.
FALLBACK_COLUMNS, FALLBACK_ROWS = 100, 24


def console_mode(log_every: Optional[int], steps_per_epoch: int,
                 stream: Optional[TextIO] = None) -> Tuple[bool, int]:
    """Whether to show the bar, and every how many steps to log a line.

    Args:
        log_every: the ``--log_every`` value, None when not given.
        steps_per_epoch: with a bar, one log line per epoch still goes to train.log.
        stream: where the bar would be drawn (default: ``sys.stdout`` at the call, not at import:
            a caller may have replaced it since).

    Returns:
        (show the bar, log every N steps).
    """
    stream = stream if stream is not None else sys.stdout
    is_terminal = bool(getattr(stream, "isatty", lambda: False)())
    if log_every is None and is_terminal:
        return True, max(1, steps_per_epoch)
    return False, log_every or DEFAULT_LOG_EVERY


class ProgressBarCallback(Callback):
    """One tqdm bar per epoch: steps done, steps/s, the epoch's ETA, the loss and the run's ETA.

    Args:
        steps_per_epoch: steps in one epoch.
        total_epochs: epochs of the run.
        loss_callback: the run's ``LossCallBack`` (its ``history`` holds the step's losses).
        stream: where to draw (default stdout).
    """

    def __init__(self, steps_per_epoch: int, total_epochs: int, loss_callback, stream: Optional[TextIO] = None):
        super().__init__()
        self.steps_per_epoch = int(steps_per_epoch)
        self.total_epochs = int(total_epochs)
        self.loss_callback = loss_callback
        self.stream = stream if stream is not None else sys.stdout
        self.bar: Optional[tqdm] = None
        self._epoch = 0
        self._started: Optional[float] = None
        self._steps_done = 0

    def on_train_epoch_begin(self, run_context) -> None:
        self._epoch = int(run_context.original_args().cur_epoch_num)
        if self._started is None:
            self._started = time.monotonic()
        # a pseudo-terminal can report 0 columns (e.g. under `script`); tqdm would then draw nothing
        dynamic = shutil.get_terminal_size((0, 0)).columns > 0
        self.bar = tqdm(total=self.steps_per_epoch, desc=f"epoch {self._epoch}/{self.total_epochs}", unit="step",
                        file=self.stream, dynamic_ncols=dynamic, ncols=None if dynamic else FALLBACK_COLUMNS,
                        nrows=None if dynamic else FALLBACK_ROWS,
                        leave=True)

    def on_train_step_end(self, run_context) -> None:
        if self.bar is None:
            return
        # Sink mode (Ascend/GPU) calls once per sink: advance by the steps the call covered.
        steps = 1
        if self.loss_callback is not None and self.loss_callback.history:
            steps = self.loss_callback.history[-1].get("steps_covered", 1)
        self.bar.update(steps)
        postfix = {}
        if self.loss_callback is not None and self.loss_callback.history:
            postfix["loss"] = f"{self.loss_callback.history[-1]['total']:.4f}"
        self._steps_done += steps
        elapsed = time.monotonic() - self._started
        if elapsed > 0:
            rate = self._steps_done / elapsed  # over the whole run so far, steadier than the bar's
            remaining = (self.total_epochs - self._epoch) * self.steps_per_epoch + (self.bar.total - self.bar.n)
            postfix["run ETA"] = tqdm.format_interval(remaining / rate)
        self.bar.set_postfix(postfix, refresh=False)

    def on_train_epoch_end(self, run_context) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def on_train_end(self, run_context) -> None:
        self.on_train_epoch_end(run_context)


def redirect_logging(show_bar: bool):
    """Context in which log lines are written above the bar instead of through it."""
    return logging_redirect_tqdm() if show_bar else contextlib.nullcontext()
