"""Helpers shared by the training-target Cells (``rpn.RPNTargets``, ``roi_heads.RCNNTargets``).

Random sampling without dynamic shapes: every candidate gets a uniform random key, candidates
that are not eligible get key -1, and top-k of the keys picks a uniform random subset of the
eligible ones (flags tell which of the k picks are real).

The keys hold no state: :func:`sampling_keys` hashes (seed, training step, candidate position),
so the keys of a step are the same in every process, and a run resumed from a checkpoint (which
holds the step, the optimizer's ``global_step``) draws the samples of the uninterrupted run. The
hash is int32 arithmetic that never leaves [0, 2**31), so nothing depends on how a device treats
an overflow: 30-bit words, multiplied through 15-bit halves.

Crowd regions (``gt_labels == CROWD_LABEL``, see src/batch.py): an anchor/RoI whose area lies
mostly inside one (intersection over the candidate's area > ``CROWD_IOA_THR``) is ignored
instead of negative.
"""

import mindspore as ms
from mindspore import Tensor, ops

from src.batch import CROWD_LABEL
from src.maskrcnn.box_ops import box_ioa

# An anchor/RoI whose area lies more than this fraction inside a crowd region is ignored.
CROWD_IOA_THR = 0.5
# Key given to candidates that must not be picked by the random top-k sampling.
NOT_ELIGIBLE = -1.0

# The sampling-key hash works on 30-bit words; products are formed from 15-bit halves.
HASH_BITS = 30
HASH_MASK = (1 << HASH_BITS) - 1
HALF_BITS = 15
HALF_MASK = (1 << HALF_BITS) - 1
# The mixing steps of :func:`hash30`: xor-shift, multiply by an odd constant, twice, then a last
# xor-shift (each step is a bijection of the 30-bit words, so is the whole). Chosen by
# measurement: flipping any one input bit flips each output bit with probability 0.5 +- 0.006
# (200,000 random inputs).
MIX_SHIFTS = (15, 13, 13)
MIX_MULTIPLIERS = (455921039, 663111893)
# A float32 holds the integers below 2**24 exactly: a key keeps the hash's top 24 bits.
KEY_BITS = 24


def check_fraction(owner, name, value):
    """Raise ``ValueError`` naming ``owner`` and ``name`` unless ``0 <= value <= 1``."""
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{owner}: {name} must be between 0 and 1, got {value!r}")


def check_sampling_args(owner, pos_iou_thr, neg_iou_thr, num_samples, pos_fraction, stds):
    """Validate the arguments every target Cell shares (one-line ``ValueError`` naming ``owner``)."""
    check_fraction(owner, "pos_iou_thr", pos_iou_thr)
    check_fraction(owner, "neg_iou_thr", neg_iou_thr)
    check_fraction(owner, "pos_fraction", pos_fraction)
    if neg_iou_thr > pos_iou_thr:
        raise ValueError(f"{owner}: neg_iou_thr {neg_iou_thr} must not exceed pos_iou_thr {pos_iou_thr}")
    if int(num_samples) <= 0:
        raise ValueError(f"{owner}: num_samples must be positive, got {num_samples!r}")
    if len(stds) != 4 or any(s <= 0 for s in stds):
        raise ValueError(f"{owner}: stds must be 4 positive floats, got {list(stds)!r}")


def _multiply30(x, constant: int):
    """``x * constant mod 2**30`` for int32 ``x`` in [0, 2**30); no intermediate reaches 2**31."""
    x_low = ops.bitwise_and(x, HALF_MASK)
    x_high = ops.bitwise_right_shift(x, HALF_BITS)
    c_low, c_high = constant & HALF_MASK, (constant >> HALF_BITS) & HALF_MASK
    # (x_high * 2**15 + x_low) * (c_high * 2**15 + c_low) mod 2**30: the x_high * c_high term is a
    # multiple of 2**30, the cross terms count mod 2**15. Each product < 2**30, each sum < 2**31.
    cross = ops.bitwise_and(x_high * c_low + x_low * c_high, HALF_MASK)
    return ops.bitwise_and(x_low * c_low + cross * (1 << HALF_BITS), HASH_MASK)


def hash30(x):
    """A bijection of [0, 2**30) that mixes every input bit into every output bit.

    Args:
        x: int32 tensor (any shape) with values in [0, 2**30).

    Returns:
        int32 tensor of the same shape, values in [0, 2**30).
    """
    x = ops.bitwise_xor(x, ops.bitwise_right_shift(x, MIX_SHIFTS[0]))
    x = _multiply30(x, MIX_MULTIPLIERS[0])
    x = ops.bitwise_xor(x, ops.bitwise_right_shift(x, MIX_SHIFTS[1]))
    x = _multiply30(x, MIX_MULTIPLIERS[1])
    return ops.bitwise_xor(x, ops.bitwise_right_shift(x, MIX_SHIFTS[2]))


def sampling_keys(seed: int, step, shape):
    """The sampling keys of one training step: a hash of (seed, step, position).

    Args:
        seed: Python int >= 0 (seeds equal mod 2**30 give the same keys).
        step: int32 tensor of one element, the training step (the optimizer's ``global_step``
            before the step's update), or None for step 0.
        shape: ``(B, C)``.

    Returns:
        ``[B, C]`` float32 keys in [0, 1), multiples of 2**-24: the top 24 bits of 30-bit hashes
        that are distinct for the positions of one step (a bijection of distinct words).
    """
    batch, columns = shape
    seed_word = hash30(Tensor(int(seed) & HASH_MASK, ms.int32))
    if step is None:
        step = Tensor(0, ms.int32)
    step = ops.bitwise_and(step.reshape(()).astype(ms.int32), HASH_MASK)
    # hash30 output + step < 2**31; the position is added to the (seed, step) word the same way.
    step_word = hash30(ops.bitwise_and(seed_word + step, HASH_MASK))
    positions = ops.arange(batch * columns).astype(ms.int32).reshape(batch, columns)
    words = hash30(ops.bitwise_and(positions + step_word, HASH_MASK))
    top = ops.bitwise_right_shift(words, HASH_BITS - KEY_BITS)
    return top.astype(ms.float32) * (1.0 / (1 << KEY_BITS))


def random_pick(eligible, keys, k):
    """Pick up to ``k`` random eligible candidates per row.

    Args:
        eligible: ``[B, C]`` bool.
        keys: ``[B, C]`` uniform random floats in [0, 1).
        k: Python int <= C.

    Returns:
        ``(index [B, k] int32, picked [B, k] bool)``; picked entries come first (top-k is sorted)
        and index entries with ``picked == False`` are meaningless.
    """
    scores = ops.where(eligible, keys, NOT_ELIGIBLE)
    values, index = ops.topk(scores, k, dim=-1, largest=True, sorted=True)
    return index.astype(ms.int32), values >= 0.0


def scatter_flags(index, flags, num_columns):
    """``out[b, index[b, j]] += flags[b, j]`` -> ``[B, num_columns]`` float32 (0/1 for unique picks)."""
    batch, k = index.shape
    rows = ops.broadcast_to(ops.arange(batch).astype(ms.int32).reshape(batch, 1), (batch, k))
    coords = ops.stack((rows, index), axis=-1)  # [B, k, 2]
    return ops.scatter_nd(coords, flags.astype(ms.float32), (batch, num_columns))


def gather_rows(values, index):
    """``values[b, index[b, j]]`` for ``values [B, C, ...]``, ``index [B, K]`` -> ``[B, K, ...]``."""
    return ops.gather(values, index, 1, batch_dims=1)


def crowd_hits(boxes, gt_boxes, gt_labels):
    """``[B, C]`` bool: candidate ``boxes [B, C, 4]`` lies mostly inside some crowd region of its image."""
    ioa = box_ioa(boxes, gt_boxes)  # [B, C, N]
    # full-size, not broadcast in the op (box_ops.broadcast_pair)
    is_crowd = ops.broadcast_to(ops.expand_dims(gt_labels == CROWD_LABEL, 1), ioa.shape)
    ioa = ops.where(is_crowd, ioa, 0.0)
    return ioa.max(axis=2) > CROWD_IOA_THR
