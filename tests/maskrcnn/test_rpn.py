"""Tests of src/maskrcnn/rpn.py: head layout, targets (thresholds, best anchor, crowd, sampling), loss."""

import math

import numpy as np
import pytest
from mindspore import Tensor, ops

from src.batch import CROWD_LABEL
from src.maskrcnn.rpn import RPN_SMOOTH_L1_BETA, RPNHead, RPNTargets, rpn_losses

RPN_STDS = (1.0, 1.0, 1.0, 1.0)


def _t(x, dtype=np.float32):
    return Tensor(np.asarray(x, dtype))


# ---- RPN ----------------------------------------------------------------------------------
# GT (image 100 x 100): g0 [0,0,10,10], g1 [30,0,40,10], g2 [70,0,80,10], a padding slot that
# coincides with anchor a3 (must never match) and a crowd region [0,80,20,100].
RPN_GT = [[0, 0, 10, 10], [30, 0, 40, 10], [70, 0, 80, 10], [50, 50, 60, 60], [0, 80, 20, 100]]
RPN_LABELS = [1, 1, 1, 0, CROWD_LABEL]
RPN_VALID = [1, 1, 1, 0, 0]
RPN_ANCHORS = [
    [0, 0, 10, 7.5],      # a0: IoU 0.75 with g0 -> positive
    [0, 0, 10, 5],        # a1: IoU 0.5 -> ignored
    [0, 0, 10, 2],        # a2: IoU 0.2 -> negative
    [50, 50, 60, 60],     # a3: only overlaps the padding slot -> negative
    [200, 200, 210, 210],  # a4: centre outside the image -> never sampled
    [30, 0, 40, 4],       # a5: IoU 0.4, g1's best anchor (>= min_pos_iou 0.3) -> positive
    [30, 0, 40, 3.5],     # a6: IoU 0.35, not best -> ignored
    [70, 0, 80, 2],       # a7: IoU 0.2, g2's best but < min_pos_iou -> negative
    [0, 85, 10, 95],      # a8: inside the crowd region -> ignored
    [15, 80, 25, 90],     # a9: half inside the crowd region (IoA 0.5, not > 0.5) -> negative
]


def _rpn_targets(anchors, num_samples, pos_fraction=0.5, image_hw=(100, 100), seed=0):
    """A function of (gt, labels, valid, sampling step) -> the RPNTargets outputs (NumPy)."""
    net = RPNTargets(np.asarray(anchors, np.float32), 0.7, 0.3, 0.3, num_samples, pos_fraction, RPN_STDS, seed=seed)

    def targets(gt, labels, valid, step=None):
        image_shape = [[image_hw[0], image_hw[1], 1.0, 1.0]] * len(gt)
        sampling_step = None if step is None else _t([step], np.int32)
        outs = net(_t(gt), _t(labels, np.int32), _t(valid, np.int32), _t(image_shape), sampling_step)
        return [o.asnumpy() for o in outs]

    return targets


def _rpn(anchors, gt, labels, valid, num_samples, pos_fraction=0.5, image_hw=(100, 100)):
    return _rpn_targets(anchors, num_samples, pos_fraction, image_hw)(gt, labels, valid)


def test_rpn_thresholds_best_anchor_crowd_and_empty_image(mode):
    empty_gt = [[0, 0, 0, 0]] * 5
    labels, weights, targets, box_weights = _rpn(
        RPN_ANCHORS, [RPN_GT, empty_gt], [RPN_LABELS, [0] * 5], [RPN_VALID, [0] * 5], num_samples=16)
    np.testing.assert_array_equal(labels[0], [1, 0, 0, 0, 0, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(weights[0], [1, 0, 1, 1, 0, 1, 0, 1, 0, 1])
    np.testing.assert_array_equal(box_weights[0], labels[0])
    # a0 -> g0: centre y 3.75 -> 5 over h 7.5; h 7.5 -> 10.  a5 -> g1: centre y 2 -> 5 over h 4.
    np.testing.assert_allclose(targets[0, 0], [0, 1.25 / 7.5, 0, math.log(10 / 7.5)], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(targets[0, 5], [0, 0.75, 0, math.log(10 / 4)], rtol=1e-5, atol=1e-6)
    assert not targets[0, [1, 2, 3, 4, 6, 7, 8, 9]].any()
    # Empty image: every anchor inside the image is a negative, nothing is positive.
    np.testing.assert_array_equal(labels[1], 0)
    np.testing.assert_array_equal(weights[1], [1, 1, 1, 1, 0, 1, 1, 1, 1, 1])
    np.testing.assert_array_equal(box_weights[1], 0)
    np.testing.assert_array_equal(targets[1], 0)


def test_rpn_sample_counts(graph_mode):
    # 20 anchors on g = [0,0,10,10], one on [40,0,50,10], 30 disjoint far ones; image 500 x 500.
    anchors = [[0, 0, 10, 10]] * 20 + [[40, 0, 50, 10]] + [[100 + 12 * i, 100, 110 + 12 * i, 110] for i in range(30)]
    gt = [[[0, 0, 10, 10]], [[40, 0, 50, 10]], [[0, 0, 0, 0]]]  # 20 / 1 / 0 positive anchors
    labels, weights, _, box_weights = _rpn(anchors, gt, [[1], [1], [0]], [[1], [1], [0]],
                                           num_samples=8, pos_fraction=0.25, image_hw=(500, 500))
    np.testing.assert_array_equal(labels.sum(axis=1), [2, 1, 0])  # at most int(8 * 0.25) positives
    np.testing.assert_array_equal(box_weights, labels)
    np.testing.assert_array_equal(weights.sum(axis=1), [8, 8, 8])  # filled with negatives
    assert set(np.unique(weights)) <= {0.0, 1.0}
    assert (weights[labels > 0] == 1).all()
    assert labels[0, 20:].sum() == 0 and labels[1, 20] == 1  # positives are the matching anchors


def test_rpn_samples_follow_the_step_and_seed(graph_mode):
    """2 of 20 equally good positives and 6 of 30 negatives: the same (seed, step) picks the same
    anchors (as a resumed run must), other steps and seeds pick others, and over steps every
    positive is picked."""
    anchors = [[0, 0, 10, 10]] * 20 + [[100 + 12 * i, 100, 110 + 12 * i, 110] for i in range(30)]
    seeded = {seed: _rpn_targets(anchors, 8, 0.25, (500, 500), seed=seed) for seed in (1, 2)}

    def picks(step, seed=1):
        labels, weights, _, _ = seeded[seed]([[[0, 0, 10, 10]]], [[1]], [[1]], step)
        return tuple(np.flatnonzero(labels[0])), tuple(np.flatnonzero(weights[0] - labels[0]))

    assert picks(5) == picks(5)
    positives, negatives = picks(5)
    assert len(positives) == 2 and len(negatives) == 6
    assert picks(6) != picks(5) and picks(5, seed=2) != picks(5)
    seen = set()
    for step in range(40):
        seen.update(picks(step)[0])
    assert seen == set(range(20))


def test_bad_anchors_message():
    with pytest.raises(ValueError, match=r"anchors must be a non-empty \[A, 4\] array"):
        RPNTargets(np.zeros((0, 4)), 0.7, 0.3, 0.3, 8, 0.5, RPN_STDS)
    with pytest.raises(ValueError, match=r"RPNTargets: min_pos_iou must be between 0 and 1, got 1.5"):
        RPNTargets(np.zeros((1, 4)), 0.7, 0.3, 1.5, 8, 0.5, RPN_STDS)


# ---- head ---------------------------------------------------------------------------------

def test_head_flattens_level_then_location_then_anchor(mode):
    """objectness[b, offset_l + (y * W + x) * A + a] is channel a of the level's conv at (y, x)."""
    head = RPNHead(in_channels=2, num_anchors=3)
    rng = np.random.default_rng(0)
    levels = [rng.standard_normal((1, 2, h, w)).astype(np.float32) for h, w in ((4, 6), (2, 3))]
    objectness, deltas = (o.asnumpy() for o in head(tuple(Tensor(f) for f in levels)))
    assert objectness.shape == (1, 3 * (24 + 6)) and deltas.shape == (1, 3 * (24 + 6), 4)
    offset = 0
    for feature in levels:
        hidden = ops.relu(head.conv(Tensor(feature)))
        scores = head.objectness(hidden).asnumpy()[0]  # [A, H, W]
        boxes = head.box_deltas(hidden).asnumpy()[0]  # [A*4, H, W]
        height, width = feature.shape[2:]
        for y, x, a in ((0, 0, 0), (1, 2, 1), (height - 1, width - 1, 2)):
            index = offset + (y * width + x) * 3 + a
            assert objectness[0, index] == pytest.approx(scores[a, y, x], abs=1e-5)
            np.testing.assert_allclose(deltas[0, index], boxes[4 * a:4 * a + 4, y, x], atol=1e-5)
        offset += height * width * 3


# ---- loss ---------------------------------------------------------------------------------

def test_rpn_losses_hand_computed(mode):
    objectness = _t([[0.0, 2.0, -1.0]])
    deltas = _t([[[0.05, 0, 0, 0], [1, 1, 1, 1], [5, 5, 5, 5]]])
    labels = _t([[1, 0, 0]])
    label_weights = _t([[1, 1, 0]])  # anchor 2 not sampled
    box_targets = _t([[[0, 0, 0, 0.5], [0, 0, 0, 0], [0, 0, 0, 0]]])
    box_weights = _t([[1, 0, 0]])
    rpn_cls, rpn_reg = (float(v.asnumpy()) for v in rpn_losses(objectness, deltas, labels, label_weights,
                                                                box_targets, box_weights))
    assert rpn_cls == pytest.approx((math.log(2) + math.log(1 + math.exp(2))) / 2, rel=1e-5)
    # |0.05| < 1/9: 0.5 * 0.05^2 * 9; |0.5| > 1/9: 0.5 - 0.5/9; divided by the 2 sampled anchors
    beta = RPN_SMOOTH_L1_BETA
    assert rpn_reg == pytest.approx((0.5 * 0.05 ** 2 / beta + 0.5 - 0.5 * beta) / 2, rel=1e-5)
