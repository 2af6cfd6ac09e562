"""Tests of src/maskrcnn/sampling.py: random top-k picks, flag scatter, row gather, crowd hits."""

import numpy as np
import pytest
from mindspore import Tensor

from src.batch import CROWD_LABEL
from src.maskrcnn.sampling import check_sampling_args, crowd_hits, gather_rows, random_pick, scatter_flags


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
