"""Tests of src/maskrcnn/proposals.py: top-k, decode, clip, size filter, per-level NMS, padding."""

import numpy as np
import pytest
from mindspore import Tensor

from src.maskrcnn.proposals import ProposalGenerator

RPN_STDS = (1.0, 1.0, 1.0, 1.0)
ANCHORS = np.array([
    # level 0 (5 anchors)
    [0, 0, 10, 10],       # a0
    [1, 0, 11, 10],       # a1: IoU 90/110 = 0.82 with a0 -> the lower-scored one is suppressed
    [20, 20, 30, 30],     # a2: disjoint
    [40, 40, 40, 50],     # a3: zero width -> always dropped
    [30, 0, 40, 10],      # a4: disjoint
    # level 1 (2 anchors)
    [0, 0, 10, 10],       # b0: duplicate of a0 on another level -> not suppressed by it
    [100, 100, 140, 140],  # b1: outside the 64 x 64 image -> clipped to nothing -> dropped
], np.float32)
LOGITS = np.array([[3, 2, 1, 5, -1, 0, 4],
                   [2, 3, -5, -2, -1, 1, 0]], np.float32)
IMAGE_SHAPE = np.array([[64, 64, 1, 1], [64, 64, 1, 1]], np.float32)


def test_topk_nms_levels_apart_and_padding(mode):
    deltas = np.zeros((2, 7, 4), np.float32)
    deltas[1, 4] = [0.1, 0, 0, 0]  # image 1, a4: shifted right by 0.1 * width 10
    net = ProposalGenerator([5, 2], pre_nms_top_k=4, post_nms_top_k=5, nms_thr=0.7, min_size=0.0, stds=RPN_STDS)
    proposals, valid = net(Tensor(LOGITS), Tensor(deltas), Tensor(ANCHORS), Tensor(IMAGE_SHAPE))
    proposals, valid = proposals.asnumpy(), valid.asnumpy()
    assert proposals.shape == (2, 5, 4) and valid.dtype == np.bool_
    # Image 0: level-0 top-4 = a3 (dropped), a0, a1 (suppressed by a0), a2; a4 not in the top-4.
    # Level 1: b1 dropped, b0 kept although it equals a0. Sorted by score: a0, a2, b0.
    np.testing.assert_array_equal(valid[0], [True, True, True, False, False])
    np.testing.assert_allclose(proposals[0, :3], [[0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 10, 10]])
    # Image 1: level-0 top-4 = a1, a0 (suppressed by a1), a4 (decoded 1 px right), a3 (dropped).
    np.testing.assert_array_equal(valid[1], [True, True, True, False, False])
    np.testing.assert_allclose(proposals[1, :3], [[1, 0, 11, 10], [0, 0, 10, 10], [31, 0, 41, 10]], atol=1e-5)
    np.testing.assert_array_equal(proposals[:, 3:], 0)


def test_more_slots_than_candidates_and_min_size(mode):
    # 7 candidates at most, 9 slots; min_size 10 drops every box (all are at most 10 wide).
    net = ProposalGenerator([5, 2], pre_nms_top_k=10, post_nms_top_k=9, nms_thr=0.7, min_size=10.0, stds=RPN_STDS)
    proposals, valid = net(Tensor(LOGITS), Tensor(np.zeros((2, 7, 4), np.float32)), Tensor(ANCHORS),
                           Tensor(IMAGE_SHAPE))
    assert proposals.shape == (2, 9, 4)
    assert not valid.asnumpy().any()
    np.testing.assert_array_equal(proposals.asnumpy(), 0)


def test_bad_arguments_message():
    with pytest.raises(ValueError, match=r"nms_thr must be in \(0, 1\], got 1.5"):
        ProposalGenerator([5], 4, 5, 1.5, 0.0, RPN_STDS)
    with pytest.raises(ValueError, match=r"level_anchor_counts must be positive"):
        ProposalGenerator([5, 0], 4, 5, 0.7, 0.0, RPN_STDS)
