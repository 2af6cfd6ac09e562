"""Learning-rate schedule: linear warm-up, then step or cosine decay.

The schedule is a per-step NumPy array sized from the real dataset (steps per epoch) and the
epoch count, so that a small fine-tuning set decays on time (the model zoo hard-coded the
58633 steps of full COCO).
"""

import math
from typing import Sequence

import numpy as np

# The optimizer holds the schedule as a [length] parameter that the training graph indexes by
# the global step, so the length shapes the compiled graph. It is padded (with the last rate,
# never read) to the next power of two, at least GRAPH_LR_MIN_LENGTH: a resumed run with a few
# more epochs, or another data size of the same order, runs the graph already compiled and
# cached instead of compiling again.
GRAPH_LR_MIN_LENGTH = 1024


def warmup_lr(step: int, base_lr: float, warmup_steps: int, warmup_ratio: float) -> float:
    """Linear ramp from ``base_lr * warmup_ratio`` at step 0 to ``base_lr`` at ``warmup_steps``."""
    progress = step / warmup_steps
    return base_lr * (warmup_ratio + (1.0 - warmup_ratio) * progress)


def step_decay_lr(step: int, base_lr: float, total_steps: int, step_ratios: Sequence[float],
                  gamma: float) -> float:
    """``base_lr`` multiplied by ``gamma`` once for every milestone (fraction of total) passed."""
    passed = sum(1 for ratio in step_ratios if step >= int(ratio * total_steps))
    return base_lr * gamma ** passed


def cosine_lr(step: int, base_lr: float, warmup_steps: int, total_steps: int) -> float:
    """Half-cosine from ``base_lr`` after warm-up to 0 at ``total_steps``."""
    span = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / span, 1.0)
    return 0.5 * base_lr * (1.0 + math.cos(math.pi * progress))


def build_lr_schedule(config, steps_per_epoch: int) -> np.ndarray:
    """Per-step learning rates for the whole run, float32 ``[epoch_size * steps_per_epoch]``.

    Warm-up is shortened to at most a third of the run so that tiny runs still train at the
    base rate for most of their steps.
    """
    if steps_per_epoch <= 0:
        raise ValueError(f"steps_per_epoch must be positive, got {steps_per_epoch}")
    total = steps_per_epoch * config.epoch_size
    warmup = min(config.warmup_steps, total // 3)
    rates = []
    for step in range(total):
        if step < warmup:
            rate = warmup_lr(step, config.base_lr, warmup, config.warmup_ratio)
        elif config.lr_schedule == "cosine":
            rate = cosine_lr(step, config.base_lr, warmup, total)
        else:
            rate = step_decay_lr(step, config.base_lr, total, config.lr_step_ratios,
                                 config.lr_step_gamma)
        rates.append(rate)
    return np.asarray(rates, dtype=np.float32)


def graph_lr_length(total_steps: int) -> int:
    """Length of the schedule parameter the graph holds for a run of ``total_steps``."""
    length = GRAPH_LR_MIN_LENGTH
    while length < total_steps:
        length *= 2
    return length


def padded_for_graph(rates: np.ndarray) -> np.ndarray:
    """``rates`` followed by copies of its last rate up to :func:`graph_lr_length` (the optimizer's
    parameter; steps past the run never read them)."""
    padding = graph_lr_length(len(rates)) - len(rates)
    return np.concatenate([rates, np.full(padding, rates[-1], dtype=rates.dtype)])
