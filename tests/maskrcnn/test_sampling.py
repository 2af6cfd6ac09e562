"""Tests of src/maskrcnn/sampling.py: sampling keys, random top-k picks, flag scatter, row gather,
crowd hits."""

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, nn

from src.batch import CROWD_LABEL
from src.maskrcnn.sampling import (HASH_BITS, check_sampling_args, crowd_hits, gather_rows, hash30, random_pick,
                                   sampling_keys, scatter_flags)


def test_random_pick_takes_eligible_by_key_then_flags_the_rest(mode):
    eligible = Tensor(np.array([[True, False, True, True], [False, False, True, False]]))
    keys = Tensor(np.array([[0.1, 0.9, 0.7, 0.4], [0.5, 0.6, 0.2, 0.8]], np.float32))
    index, picked = (o.asnumpy() for o in random_pick(eligible, keys, 3))
    np.testing.assert_array_equal(index[0], [2, 3, 0])  # eligible, by descending key
    np.testing.assert_array_equal(picked, [[True, True, True], [True, False, False]])
    assert index[1, 0] == 2 and index.dtype == np.int32


def test_scatter_flags_and_gather_rows(mode):
    index = Tensor(np.array([[2, 0], [1, 1]], np.int32))
    flags = Tensor(np.array([[True, False], [True, False]]))
    np.testing.assert_array_equal(scatter_flags(index, flags, 3).asnumpy(), [[0, 0, 1], [0, 1, 0]])
    values = Tensor(np.arange(12, dtype=np.float32).reshape(2, 3, 2))
    np.testing.assert_array_equal(gather_rows(values, index).asnumpy(), [[[4, 5], [0, 1]], [[8, 9], [8, 9]]])


def test_crowd_hits_need_more_than_half_inside(mode):
    gt = Tensor(np.array([[[0, 0, 20, 20], [50, 50, 60, 60]]], np.float32))
    labels = Tensor(np.array([[CROWD_LABEL, 1]], np.int32))
    boxes = Tensor(np.array([[[0, 0, 10, 10], [10, 0, 30, 20], [50, 50, 60, 60]]], np.float32))
    # inside the crowd; exactly half inside (IoA 0.5, not > 0.5); inside a non-crowd GT
    np.testing.assert_array_equal(crowd_hits(boxes, gt, labels).asnumpy(), [[True, False, False]])


def test_bad_sampling_arguments_name_the_owner():
    with pytest.raises(ValueError, match=r"Owner: pos_fraction must be between 0 and 1, got 2"):
        check_sampling_args("Owner", 0.5, 0.5, 8, 2, (1, 1, 1, 1))
    with pytest.raises(ValueError, match=r"Owner: num_samples must be positive, got 0"):
        check_sampling_args("Owner", 0.5, 0.5, 0, 0.5, (1, 1, 1, 1))


# ---- sampling keys ------------------------------------------------------------------------

class _Picks(nn.Cell):
    """The keys of one step and the ``k`` picks among the ``eligible`` candidates of row 0."""

    def __init__(self, seed, shape, k):
        super().__init__()
        self.seed, self.shape, self.k = seed, shape, k

    def construct(self, step, eligible):
        keys = sampling_keys(self.seed, step, self.shape)
        index, picked = random_pick(eligible, keys, self.k)
        return keys, index, picked


def _step(value):
    return Tensor(np.array([value], np.int32))


def test_hash30_is_a_bijection_on_30_bit_words_and_never_overflows(mode):
    # All 2**16 low words, and words at the top of the range, where a product would overflow
    # int32 if the multiplication were not split.
    low = np.arange(1 << 16, dtype=np.int32)
    high = ((1 << HASH_BITS) - 1 - np.arange(1 << 16)).astype(np.int32)
    words = np.concatenate([low, high])
    hashed = hash30(Tensor(words)).asnumpy()
    assert hashed.dtype == np.int32 and hashed.min() >= 0 and hashed.max() < 1 << HASH_BITS
    assert len(np.unique(hashed)) == len(words)  # distinct inputs, distinct outputs
    # Neighbouring inputs land far apart: about half the 30 bits differ.
    flipped_bits = [bin(v).count("1") for v in (hashed[:-1] ^ hashed[1:])[: 1 << 12]]
    assert 14 < np.mean(flipped_bits) < 16


def test_the_same_step_and_seed_give_the_same_keys_and_picks(graph_mode):
    eligible = Tensor(np.arange(2 * 1000).reshape(2, 1000) % 3 == 0)
    cell = _Picks(7, (2, 1000), 50)
    first = [o.asnumpy() for o in cell(_step(12), eligible)]
    again = [o.asnumpy() for o in _Picks(7, (2, 1000), 50)(_step(12), eligible)]  # another cell, as a new process
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    keys = first[0]
    assert keys.dtype == np.float32 and keys.shape == (2, 1000) and keys.min() >= 0.0 and keys.max() < 1.0


def test_other_steps_seeds_and_images_give_other_keys_and_picks(graph_mode):
    eligible = Tensor(np.arange(2 * 1000).reshape(2, 1000) % 3 == 0)
    base_keys, base_index, _ = (o.asnumpy() for o in _Picks(7, (2, 1000), 50)(_step(12), eligible))
    for seed, step in ((7, 13), (7, 0), (8, 12), (0, 12)):
        keys, index, picked = (o.asnumpy() for o in _Picks(seed, (2, 1000), 50)(_step(step), eligible))
        assert picked.all()
        assert np.mean(keys == base_keys) < 0.01, (seed, step)
        # two random 50-subsets of 334 eligible candidates share ~7.5 on average
        assert len(set(index[0]) & set(base_index[0])) < 25, (seed, step)
    assert np.mean(base_keys[0] == base_keys[1]) < 0.01  # the images of a batch differ too
    # No step given: the keys of step 0.
    no_step = _Picks(7, (2, 1000), 50)(None, eligible)[0].asnumpy()
    np.testing.assert_array_equal(no_step, _Picks(7, (2, 1000), 50)(_step(0), eligible)[0].asnumpy())


def test_keys_are_uniform_and_every_eligible_candidate_is_picked_as_often(graph_mode):
    """Over 300 steps: the keys fill [0, 1) evenly, neighbours (positions, steps) are
    uncorrelated, and top-k of the keys picks each eligible candidate with probability k / n."""
    columns, k, steps = 2000, 100, 300
    eligible_row = np.arange(columns) % 4 != 1  # 1500 eligible, 500 never
    eligible = Tensor(np.stack([eligible_row, eligible_row]))
    cell = _Picks(1, (2, columns), k)
    keys, counts = [], np.zeros(columns)
    for step in range(steps):
        step_keys, index, picked = (o.asnumpy() for o in cell(_step(step), eligible))
        assert picked.all() and len(set(index[0])) == k and eligible_row[index[0]].all()
        counts[index[0]] += 1
        keys.append(step_keys)
    keys = np.stack(keys)  # [steps, 2, columns]
    # Chi-square over 50 bins (49 degrees of freedom: mean 49, sd 9.9).
    histogram = np.histogram(keys, bins=50, range=(0.0, 1.0))[0]
    expected = keys.size / 50
    assert ((histogram - expected) ** 2 / expected).sum() < 90
    flat = keys.reshape(steps, -1)
    assert abs(np.corrcoef(flat[:, :-1].ravel(), flat[:, 1:].ravel())[0, 1]) < 0.01
    assert abs(np.corrcoef(flat[:-1].ravel(), flat[1:].ravel())[0, 1]) < 0.01
    # Picks: counts of the 1500 eligible candidates; sampling without replacement makes the
    # chi-square about (n - 1) * (1 - k / n) = 1399 (sd ~53) for uniform picks.
    n = eligible_row.sum()
    picks = counts[eligible_row]
    expected = steps * k / n  # 20
    chi_square = ((picks - expected) ** 2 / expected).sum()
    assert 1200 < chi_square < 1600, chi_square
    assert picks.min() > 0 and counts[~eligible_row].sum() == 0
