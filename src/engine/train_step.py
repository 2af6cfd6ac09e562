"""The training step: LossNet, WithLossCell, TrainOneStepCell (loss scaling, overflow check, clip).

``WithLossCell`` returns ``(total, rpn_cls, rpn_reg, rcnn_cls, rcnn_reg, rcnn_mask)`` so that the
callbacks (``src/engine/callbacks.py``) can log each component; only ``total`` receives a
gradient. ``TrainOneStepCell`` scales the loss (static or dynamic), unscales the gradients, skips
the update when a gradient is not finite, and returns the losses, a finite flag and the loss
scale in use.
"""

import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops

from src.batch import LOSS_NAMES

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
    """Network + LossNet: training batch (and the sampling step, see ``Mask_Rcnn_Resnet50``) in,
    ``(total, *components)`` out."""

    def __init__(self, net: nn.Cell, loss_net: nn.Cell):
        super().__init__(auto_prefix=False)
        self.net = net
        self.loss_net = loss_net

    def construct(self, image, image_shape, box, label, instance_valid, mask, sampling_step=None):
        losses = self.net(image, image_shape, box, label, instance_valid, mask, sampling_step)
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

    The network draws its sampling keys for the optimizer's ``global_step`` as it was before the
    step (0 at the first step), the step count a checkpoint holds: a resumed run samples what the
    uninterrupted run sampled. (A skipped step does not advance it; the next step draws its keys
    again, as it reads its learning rate again.)

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
        # A copy, read before the optimizer advances the Parameter in place later in this step.
        sampling_step = self.optimizer.global_step * 1
        outputs = self.network(image, image_shape, box, label, instance_valid, mask, sampling_step)
        scale = self.loss_scale * 1.0
        sens = (ops.fill(outputs[0].dtype, outputs[0].shape, 1.0) * scale.astype(outputs[0].dtype),)
        for component in outputs[1:]:
            sens = sens + (ops.zeros_like(component),)
        grads = self.grad(self.network, self.weights)(image, image_shape, box, label, instance_valid, mask,
                                                      sampling_step, sens)
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
