"""Training wrappers: LossNet, WithLossCell, TrainOneStepCell and the training callbacks.

``WithLossCell`` returns ``(total, rpn_cls, rpn_reg, rcnn_cls, rcnn_reg, rcnn_mask)`` so that the
callbacks can log each component; only ``total`` receives a gradient. ``TrainOneStepCell``
scales the loss (static or dynamic), unscales the gradients, skips the update when a gradient is
not finite, and returns the losses, a finite flag and the loss scale in use.
"""

import csv
import logging
import math
import os
import time
from typing import Callable, List, Optional

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn, ops
from mindspore.train.callback import Callback

from src.batch import LOSS_NAMES
from src.checkpoint.names import LAST_CHECKPOINT_NAME

logger = logging.getLogger(__name__)

# Dynamic loss scaling: halve on overflow, double after this many finite steps in a row.
LOSS_SCALE_GROWTH_INTERVAL = 1000
LOSS_SCALE_FACTOR = 2.0
MIN_LOSS_SCALE = 1.0


class LossNet(nn.Cell):
    """Sum of the five named losses (see ``src.batch.LOSS_NAMES``); each loss carries its own
    weight where it is computed (e.g. ``config.mask_loss_weight`` in the mask branch)."""

    def construct(self, losses):
        total = losses[0]
        for i in range(1, len(LOSS_NAMES)):
            total = total + losses[i]
        return total


class WithLossCell(nn.Cell):
    """Network + LossNet: training batch in, ``(total, *components)`` out."""

    def __init__(self, net: nn.Cell, loss_net: nn.Cell):
        super().__init__(auto_prefix=False)
        self.net = net
        self.loss_net = loss_net

    def construct(self, image, image_shape, box, label, instance_valid, mask):
        losses = self.net(image, image_shape, box, label, instance_valid, mask)
        total = self.loss_net(losses)
        return (total,) + tuple(losses)


# Per-gradient graph functions, mapped over the gradient tuple with HyperMap. (A Python loop or
# comprehension over ~200 gradients builds a list one append at a time, each append a copy of
# the list: the training graph had 5x the nodes and compiled in 48 s instead of 29 s;
# BENCHMARKS.md, "The gradient loops that cost 40% of the compile".)
_square_sum = ops.MultitypeFuncGraph("square_sum")
_scale_grad = ops.MultitypeFuncGraph("scale_grad")
_map = ops.HyperMap()


@_square_sum.register("Tensor")
def _square_sum_tensor(grad):
    # The sum of squares as a [1, n] x [n, 1] product: the CPU's matrix product is ~5x faster
    # here than square + ReduceSum (25 vs 118 ms over the 44M gradients of the model).
    flat = grad.astype(ms.float32).reshape(1, -1)
    return ops.matmul(flat, flat.reshape(-1, 1)).reshape(())


@_scale_grad.register("Tensor", "Tensor")
def _scale_grad_tensor(factor, grad):
    return grad * factor.astype(grad.dtype)


def global_grad_norm(grads) -> Tensor:
    """L2 norm of all gradients together (float32 scalar).

    It doubles as the overflow check: a NaN or Inf in any gradient makes it NaN or Inf. (So does
    a sum of squares beyond float32's range, i.e. some gradient above ~1e19: that step is
    skipped too.) With clipping on, the norm is needed anyway; it replaced a per-gradient
    ``isfinite().all()`` (BENCHMARKS.md, profile).
    """
    return ops.sqrt(ops.addn(_map(_square_sum, grads)))


def scale_grads(grads, factor: Tensor):
    """Every gradient times the scalar ``factor`` (cast to the gradient's dtype)."""
    return _map(ops.partial(_scale_grad, factor), grads)


class TrainOneStepCell(nn.Cell):
    """One optimisation step with loss scaling.

    The loss is multiplied by the loss scale before back-propagation (``sens``), gradients are
    divided by it again, and the optimizer only steps when every gradient is finite, so a
    NaN/Inf step never reaches the weights. With ``dynamic_loss_scale`` the scale halves on a
    non-finite step and doubles after ``LOSS_SCALE_GROWTH_INTERVAL`` finite steps. With
    ``grad_clip_norm`` > 0 the unscaled gradients are clipped to that global L2 norm (training
    from random initialisation with batch statistics over 2 images needs it to stay stable).

    Returns ``(total, *components, finite (bool scalar), loss_scale (f32 scalar))``.
    """

    def __init__(self, network: nn.Cell, optimizer: nn.Optimizer, loss_scale: float = 1.0,
                 dynamic_loss_scale: bool = False, grad_clip_norm: float = 0.0):
        super().__init__(auto_prefix=False)
        self.grad_clip_norm = float(grad_clip_norm)
        self.network = network
        self.network.set_grad()
        self.optimizer = optimizer
        self.weights = optimizer.parameters
        self.grad = ops.GradOperation(get_by_list=True, sens_param=True)
        self.dynamic = dynamic_loss_scale
        # Parameters (not Tensor attributes) so that the state is explicit and checkpointed.
        self.loss_scale = Parameter(Tensor(loss_scale, ms.float32), name="loss_scale", requires_grad=False)
        self.good_steps = Parameter(Tensor(0, ms.int32), name="loss_scale_good_steps", requires_grad=False)
        self.reducer = nn.Identity()
        parallel_mode = ms.get_auto_parallel_context("parallel_mode")
        if parallel_mode in (ms.ParallelMode.DATA_PARALLEL, ms.ParallelMode.HYBRID_PARALLEL):
            self.reducer = nn.DistributedGradReducer(self.weights, ms.get_auto_parallel_context("gradients_mean"),
                                                     ms.get_auto_parallel_context("device_num"))

    def _update_scale(self, finite):
        if not self.dynamic:
            return finite
        if finite:
            good = self.good_steps + 1
            grow = good >= LOSS_SCALE_GROWTH_INTERVAL
            new_scale = ops.select(grow, self.loss_scale * LOSS_SCALE_FACTOR, self.loss_scale)
            ops.assign(self.loss_scale, new_scale)
            ops.assign(self.good_steps, ops.select(grow, ops.zeros_like(good), good))
        else:
            ops.assign(self.loss_scale, ops.maximum(self.loss_scale / LOSS_SCALE_FACTOR, MIN_LOSS_SCALE))
            ops.assign(self.good_steps, ops.zeros_like(self.good_steps))
        return finite

    def construct(self, image, image_shape, box, label, instance_valid, mask):
        outputs = self.network(image, image_shape, box, label, instance_valid, mask)
        scale = self.loss_scale * 1.0
        sens = (ops.fill(outputs[0].dtype, outputs[0].shape, 1.0) * scale.astype(outputs[0].dtype),)
        for component in outputs[1:]:
            sens = sens + (ops.zeros_like(component),)
        grads = self.grad(self.network, self.weights)(image, image_shape, box, label, instance_valid, mask, sens)
        grads = self.reducer(grads)
        # Unscaling and clipping are one factor per gradient: 1 / scale, times
        # clip / max(norm, clip) when clipping (norm = the unscaled global norm).
        norm = global_grad_norm(grads) / scale
        finite = ops.isfinite(norm)
        factor = 1.0 / scale
        if self.grad_clip_norm > 0:
            factor = factor * (self.grad_clip_norm / ops.maximum(norm, self.grad_clip_norm))
        grads = scale_grads(grads, factor)
        if finite:
            self.optimizer(grads)
        self._update_scale(finite)
        return outputs + (finite, scale)


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or Inf."""


class LossCallBack(Callback):
    """Per-step log of every loss component (console + CSV), step time, progress; NaN guard.

    A non-finite total loss stops training: the error is kept in ``self.error`` (the weights
    were not updated on that step and the last checkpoint on disk is the last good one).
    ``step_offset`` is the global step a resumed run starts from (``Model.train`` counts steps
    from 0 again even with ``initial_epoch``). ``csv_path`` None writes no CSV (data-parallel
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
        epoch = int(params.cur_epoch_num)
        # Steps this call covers: 1, or the sink size in sink mode.
        steps_covered = max(1, int(params.cur_step_num) - self._last_step_num)
        self._last_step_num = int(params.cur_step_num)
        seconds = (time.time() - self._step_start) / steps_covered
        lr = float(self.lr_schedule[min(step - 1, len(self.lr_schedule) - 1)]) if self.lr_schedule is not None else float("nan")
        if self._writer is not None:
            self._writer.writerow([epoch, step, *[f"{v:.6f}" for v in values], f"{lr:.6g}", scale, f"{seconds:.3f}"])
            self._csv.flush()
        record = dict(zip(("total",) + LOSS_NAMES, values), step=step, epoch=epoch, seconds=seconds,
                      steps_covered=steps_covered)
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

    def on_train_end(self, run_context):
        if self._csv is not None:
            self._csv.close()


class CheckpointCallback(Callback):
    """Saves checkpoints atomically: numbered weights-only files, and ``last.ckpt`` to resume from.

    Every ``every_epochs`` epochs and at the end of training, ``<prefix>-<epoch>_<global step>.ckpt``
    receives the weights of ``weights_network`` only (what eval.py, predict.py, export.py and
    ``train.py --pre_trained`` read), then ``last.ckpt`` the whole train cell: weights, optimizer
    state (momentum) and global step, what ``train.py --resume`` needs. At most ``keep_max``
    numbered files are kept (the oldest are deleted); ``keep_max`` 0 writes none, ``last.ckpt``
    only. Nothing is saved after a non-finite loss (``loss_callback.error``).
    """

    def __init__(self, save_fn: Callable[[nn.Cell, str], None], weights_network: nn.Cell, directory: str,
                 prefix: str, every_epochs: int, keep_max: int, loss_callback: Optional[LossCallBack] = None,
                 step_offset: int = 0):
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
        """
        super().__init__()
        self.step_offset = step_offset
        self.save_fn = save_fn
        self.weights_network = weights_network
        self.directory = directory
        self.prefix = prefix
        self.every_epochs = every_epochs
        self.keep_max = keep_max
        self.loss_callback = loss_callback
        self.saved: List[str] = []
        self.last_saved_step: Optional[int] = None

    def _save(self, run_context, force: bool = False):
        params = run_context.original_args()
        epoch = int(params.cur_epoch_num)
        if self.loss_callback is not None and self.loss_callback.error is not None:
            return
        if not force and epoch % self.every_epochs:
            return
        step = self.step_offset + int(params.cur_step_num)
        if step == self.last_saved_step:
            return
        written = []
        if self.keep_max > 0:
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

    def on_train_epoch_end(self, run_context):
        self._save(run_context)

    def on_train_end(self, run_context):
        self._save(run_context, force=True)
