"""Training callbacks: the per-step loss log (console, CSV, NaN guard), the checkpoints and the
clean stop on SIGINT / SIGTERM; TensorBoard event files.

They read the outputs of ``src.engine.train_step.TrainOneStepCell``: the total and the named
losses, the finite-gradient flag and the loss scale.
"""

import csv
import logging
import math
import os
import re
import signal
import time
from typing import Callable, List, Optional, Tuple

import numpy as np
from mindspore import nn
from mindspore.train.callback import Callback

from src.batch import LOSS_NAMES
from src.checkpoint.names import LAST_CHECKPOINT_NAME
from src.engine.runtime import EnvironmentFailure

logger = logging.getLogger(__name__)


def epoch_position(run_context, step_offset: int, steps_per_epoch: int) -> Tuple[int, int, int]:
    """``(global step, whole epochs done, steps into the next epoch)`` at a step-end callback.

    ``Model.train`` counts ``cur_step_num`` from 0 in every run, a resumed one too, so the global
    step is ``step_offset`` (where this run started) plus it; the third value is 0 at the last step
    of an epoch (in sink mode, at every call: one per sunk epoch).
    """
    step = step_offset + int(run_context.original_args().cur_step_num)
    epoch, step_in_epoch = divmod(step, steps_per_epoch)
    return step, epoch, step_in_epoch


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or Inf."""


class LossCallBack(Callback):
    """Per-step log of every loss component (console + CSV), step time, progress; NaN guard.

    A non-finite total loss stops training: the error is kept in ``self.error`` (the weights
    were not updated on that step and the last checkpoint on disk is the last good one).
    ``step_offset`` is the global step a resumed run starts from (``Model.train`` counts steps
    from 0 again even with ``initial_epoch``); epochs are counted from the global step, and the
    run stops after the schedule's last step. ``csv_path`` None writes no CSV (data-parallel
    ranks other than 0).

    Sink mode: on Ascend/GPU ``Model.train(dataset_sink_mode=True)`` runs a whole epoch (the sink)
    per call and calls the step callbacks once per sink, with the last step's outputs and
    ``cur_step_num`` advanced by the sink size; the row then holds that last step, and
    ``step_seconds`` the sink's time divided by its steps. (On the CPU, MindSpore 2.7 ignores
    sink mode and trains step by step.)
    """

    def __init__(self, csv_path: Optional[str], steps_per_epoch: int, total_epochs: int, log_every: int = 1,
                 lr_schedule: Optional[np.ndarray] = None, step_offset: int = 0):
        super().__init__()
        self.step_offset = step_offset
        self.csv_path = csv_path
        self.steps_per_epoch = steps_per_epoch
        self.total_epochs = total_epochs
        self.log_every = max(1, log_every)
        self.lr_schedule = lr_schedule
        self.error: Optional[NonFiniteLossError] = None
        self.history: List[dict] = []
        self._step_start = 0.0
        self._last_step_num = 0  # Model.train's cur_step_num at the previous call
        self._csv = self._writer = None
        if csv_path is None:
            return
        new_file = not os.path.exists(csv_path)
        self._csv = open(csv_path, "a", newline="", encoding="utf-8")
        self._writer = csv.writer(self._csv)
        if new_file:
            self._writer.writerow(["epoch", "step", "total", *LOSS_NAMES, "lr", "loss_scale", "step_seconds"])

    def on_train_begin(self, run_context):
        self._last_step_num = int(run_context.original_args().cur_step_num)

    def on_train_step_begin(self, run_context):
        self._step_start = time.time()

    def on_train_step_end(self, run_context):
        params = run_context.original_args()
        outputs = params.net_outputs
        values = [float(o.asnumpy()) for o in outputs[: 1 + len(LOSS_NAMES)]]
        finite_grads = bool(outputs[1 + len(LOSS_NAMES)].asnumpy())
        scale = float(outputs[2 + len(LOSS_NAMES)].asnumpy())
        step = self.step_offset + int(params.cur_step_num)
        # From the global step: a resumed run's passes may end mid-epoch (src/data_sources.py).
        epoch = (step - 1) // self.steps_per_epoch + 1
        # Steps this call covers: 1, or the sink size in sink mode.
        steps_covered = max(1, int(params.cur_step_num) - self._last_step_num)
        self._last_step_num = int(params.cur_step_num)
        seconds = (time.time() - self._step_start) / steps_covered
        lr = float(self.lr_schedule[min(step - 1, len(self.lr_schedule) - 1)]) if self.lr_schedule is not None else float("nan")
        if self._writer is not None:
            try:
                self._writer.writerow([epoch, step, *[f"{v:.6f}" for v in values], f"{lr:.6g}", scale,
                                       f"{seconds:.3f}"])
                self._csv.flush()
            except OSError as e:  # a full disk: the machine's fault, not the input's
                raise EnvironmentFailure(f"{self.csv_path}: cannot append the losses of step {step}: "
                                         f"{e.strerror or e}") from e
        record = dict(zip(("total",) + LOSS_NAMES, values), step=step, epoch=epoch, seconds=seconds,
                      steps_covered=steps_covered, lr=lr, loss_scale=scale)
        self.history.append(record)
        if not math.isfinite(values[0]):
            self.error = NonFiniteLossError(
                f"loss became {values[0]} at step {step} (epoch {epoch}); components: "
                + ", ".join(f"{n}={v:.4g}" for n, v in zip(LOSS_NAMES, values[1:]))
                + "; the weights were not updated on that step and the last checkpoint is kept")
            run_context.request_stop()
            return
        if not finite_grads:
            logger.warning("step %d: non-finite gradient, update skipped (loss scale %g)", step, scale)
        # A sink covering several steps logs when it passed a multiple of log_every.
        if step // self.log_every != (step - steps_covered) // self.log_every or step == steps_covered:
            total_steps = self.steps_per_epoch * self.total_epochs
            parts = " ".join(f"{n}={v:.4f}" for n, v in zip(LOSS_NAMES, values[1:]))
            logger.info("epoch %d/%d step %d/%d loss=%.4f %s lr=%.5f %.2fs/step", epoch, self.total_epochs,
                        step, total_steps, values[0], parts, lr, seconds)
        if step >= self.steps_per_epoch * self.total_epochs:  # a resumed run's last pass ends early
            run_context.request_stop()

    def on_train_end(self, run_context):
        if self._csv is not None:
            try:
                self._csv.close()
            except OSError as e:
                raise EnvironmentFailure(f"{self.csv_path}: cannot write the losses: {e.strerror or e}") from e


class CheckpointCallback(Callback):
    """Saves checkpoints atomically: numbered weights-only files, and ``last.ckpt`` to resume from.

    Every ``every_epochs`` epochs and at the end of training, ``<prefix>-<epoch>_<global step>.ckpt``
    receives the weights of ``weights_network`` only (what eval.py, predict.py, export.py and
    ``train.py --pre_trained`` read), then ``last.ckpt`` the whole train cell: weights, optimizer
    state (momentum) and global step, what ``train.py --resume`` needs. At most ``keep_max``
    numbered files are kept (the oldest are deleted), counting those already in the folder (a
    resumed run); ``keep_max`` 0 writes none, ``last.ckpt`` only. A run stopped mid-epoch (a
    signal) saves ``last.ckpt`` only: numbered files mark whole epochs. Nothing is saved after a
    non-finite loss (``loss_callback.error``).
    """

    def __init__(self, save_fn: Callable[[nn.Cell, str], None], weights_network: nn.Cell, directory: str,
                 prefix: str, every_epochs: int, keep_max: int, loss_callback: Optional[LossCallBack] = None,
                 step_offset: int = 0, steps_per_epoch: int = 1):
        """
        Args:
            save_fn: ``save_fn(cell, path)`` writes the parameters of ``cell`` to ``path``
                (e.g. ``src.checkpoint.io.save_checkpoint_atomic``).
            weights_network: the network whose weights the numbered checkpoints hold (the
                ``Mask_Rcnn_Resnet50`` inside the train cell).
            directory: the run folder.
            prefix: file name prefix of the numbered checkpoints.
            every_epochs: epochs between saves.
            keep_max: numbered checkpoints kept, >= 0.
            loss_callback: the run's LossCallBack; its ``error`` stops all saving.
            step_offset: global step at which this run started (``--resume``).
            steps_per_epoch: steps of a whole epoch.
        """
        super().__init__()
        self.steps_per_epoch = steps_per_epoch
        self.step_offset = step_offset
        self.save_fn = save_fn
        self.weights_network = weights_network
        self.directory = directory
        self.prefix = prefix
        self.every_epochs = every_epochs
        self.keep_max = keep_max
        self.loss_callback = loss_callback
        self.saved: List[str] = self.numbered_checkpoints(directory, prefix)
        self.last_saved_step: Optional[int] = None

    @staticmethod
    def numbered_checkpoints(directory: str, prefix: str) -> List[str]:
        """The ``<prefix>-<epoch>_<step>.ckpt`` files in ``directory``, oldest (lowest step) first."""
        pattern = re.compile(rf"^{re.escape(prefix)}-(\d+)_(\d+)\.ckpt$")
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            return []
        found = sorted((int(m.group(2)), name) for name in names for m in [pattern.match(name)] if m)
        return [os.path.join(directory, name) for _, name in found]

    def _save(self, run_context, force: bool = False):
        params = run_context.original_args()
        if self.loss_callback is not None and self.loss_callback.error is not None:
            return
        step, epoch, step_in_epoch = epoch_position(run_context, self.step_offset, self.steps_per_epoch)
        if step == self.last_saved_step or (not force and (step_in_epoch or epoch % self.every_epochs)):
            return
        written = []
        if self.keep_max > 0 and not step_in_epoch:
            path = os.path.join(self.directory, f"{self.prefix}-{epoch}_{step}.ckpt")
            self.save_fn(self.weights_network, path)
            self.saved.append(path)
            written.append(f"{path} (weights)")
        last = os.path.join(self.directory, LAST_CHECKPOINT_NAME)
        self.save_fn(params.train_network, last)
        self.last_saved_step = step
        written.append(f"{last} (weights, optimizer state, step {step})")
        logger.info("saved checkpoints %s", ", ".join(written))
        while len(self.saved) > self.keep_max:
            old = self.saved.pop(0)
            if os.path.exists(old):
                os.remove(old)

    def on_train_step_end(self, run_context):
        # At the end of every save_checkpoint_epochs-th epoch, counted from the global step (in
        # sink mode, the one call per sunk epoch).
        self._save(run_context)

    def on_train_end(self, run_context):
        self._save(run_context, force=True)


class SignalStopCallback(Callback):
    """SIGINT (Ctrl-C) and SIGTERM end training at the next step boundary.

    :meth:`install` (before ``Model.train``, so that a signal during the graph compile counts
    too) replaces the handlers of both signals; the first signal only sets :attr:`received`, and
    the next step end asks ``Model.train`` to stop, after which the CheckpointCallback saves
    ``last.ckpt`` of that step. The first signal also restores the default action of both, so a
    second one ends the process at once (no new checkpoint; every file on disk is whole, since
    checkpoints are written to a temporary file and renamed). :meth:`restore` puts the previous
    handlers back.

    MindSpore installs its own SIGINT handler while a graph runs, which sends the process a
    SIGTERM: a Ctrl-C during a step arrives here as SIGTERM, hence one treatment for both.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        super().__init__()
        self.received: Optional[str] = None
        self._previous = {}

    def install(self) -> None:
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _handle(self, signum, frame):  # pylint: disable=unused-argument
        if self.received is not None:
            return
        self.received = signal.Signals(signum).name
        for sig in self.SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        logger.warning("%s received: training stops after this step and saves last.ckpt; a second Ctrl-C or "
                       "SIGTERM stops at once, without a new checkpoint", self.received)

    def on_train_step_end(self, run_context):
        if self.received is not None:
            run_context.request_stop()


# Folder of the run directory with the TensorBoard event files (tensorboard --logdir RUN_DIR/tensorboard).
TENSORBOARD_DIR = "tensorboard"


class TensorBoardCallback(Callback):
    """TensorBoard event files of every scalar the run logs (``tensorboardX``'s writer).

    Per step, from the row ``loss_callback`` has just logged: ``loss/total`` and ``loss/<name>``
    for every loss component, ``train/lr``, ``train/loss_scale`` and ``train/step_seconds``; after
    each evaluation of ``eval_callback`` (``src.evaluation.hook.EvalCallback``, placed before this
    callback): ``eval/<metric>`` (bbox_AP, segm_AP, ...) at the global step that ended the epoch
    evaluated (``epoch * loss_callback.steps_per_epoch``; a resumed run's passes end mid-epoch).
    A resumed run writes a new event file in the same folder.

    Args:
        log_dir: folder of the event files (created).
        loss_callback: the run's LossCallBack.
        eval_callback: the run's EvalCallback, or None without evaluation.
    """

    def __init__(self, log_dir: str, loss_callback: LossCallBack, eval_callback=None):
        super().__init__()
        from tensorboardX import SummaryWriter

        self.writer = SummaryWriter(logdir=log_dir)
        self.loss_callback = loss_callback
        self.eval_callback = eval_callback
        self._logged_steps = 0
        self._logged_evals = 0

    def on_train_step_end(self, run_context):
        for record in self.loss_callback.history[self._logged_steps:]:
            step = record["step"]
            self.writer.add_scalar("loss/total", record["total"], step)
            for name in LOSS_NAMES:
                self.writer.add_scalar(f"loss/{name}", record[name], step)
            self.writer.add_scalar("train/lr", record["lr"], step)
            self.writer.add_scalar("train/loss_scale", record["loss_scale"], step)
            self.writer.add_scalar("train/step_seconds", record["seconds"], step)
        self._logged_steps = len(self.loss_callback.history)
        self._log_evaluations()

    def on_train_epoch_end(self, run_context):
        self.writer.flush()

    def _log_evaluations(self):
        """The evaluations ``eval_callback`` made since the last call (in this step's callbacks,
        before this one)."""
        records = self.eval_callback.records if self.eval_callback is not None else []
        for record in records[self._logged_evals:]:
            step = record["epoch"] * self.loss_callback.steps_per_epoch
            for name, value in record.items():
                if name != "epoch":
                    self.writer.add_scalar(f"eval/{name}", value, step)
        self._logged_evals = len(records)

    def on_train_end(self, run_context):
        self.writer.close()
