"""Tests of src/maskrcnn/assigners.py: thresholds, best-anchor rule, crowd, sampling, masks."""

import math

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor

from src.batch import CROWD_LABEL
from src.maskrcnn.assigners import RCNNTargets, RPNTargets, mask_targets
from src.maskrcnn.box_ops import np_encode_boxes

RPN_STDS = (1.0, 1.0, 1.0, 1.0)
RCNN_STDS = (0.1, 0.1, 0.2, 0.2)


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


def _rpn(anchors, gt, labels, valid, num_samples, pos_fraction=0.5, image_hw=(100, 100)):
    net = RPNTargets(np.asarray(anchors, np.float32), 0.7, 0.3, 0.3, num_samples, pos_fraction, RPN_STDS)
    batch = len(gt)
    image_shape = [[image_hw[0], image_hw[1], 1.0, 1.0]] * batch
    outs = net(_t(gt), _t(labels, np.int32), _t(valid, np.int32), _t(image_shape))
    return [o.asnumpy() for o in outs]


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


# ---- RCNN ---------------------------------------------------------------------------------
RCNN_GT = [[0, 0, 10, 10], [20, 20, 40, 40], [0, 0, 0, 0], [60, 60, 100, 100]]
RCNN_LABELS = [1, 2, 0, CROWD_LABEL]
RCNN_VALID = [1, 1, 0, 0]
PROPOSALS = [
    [0, 0, 10, 7.5],   # p0: IoU 0.75 with g0 -> positive
    [0, 0, 10, 5],     # p1: IoU 0.5 exactly -> positive (>= 0.5)
    [0, 0, 10, 4.9],   # p2: IoU 0.49 -> negative
    [70, 70, 80, 80],  # p3: inside the crowd region -> ignored
    [20, 20, 40, 30],  # p4: IoU 0.5 with g1 -> positive
    [0, 0, 10, 10],    # p5: flagged invalid -> never picked
]
PROPOSAL_VALID = [True, True, True, True, True, False]
POSITIVES = {(0, 0, 10, 7.5): 0, (0, 0, 10, 5): 0, (20, 20, 40, 30): 1, (0, 0, 10, 10): 0, (20, 20, 40, 40): 1}


def _rcnn(fill, proposals, proposal_valid, gt, labels, valid):
    net = RCNNTargets(8, 0.5, 0.5, 0.5, RCNN_STDS, fill_with_negatives=fill)
    outs = net(_t(proposals), Tensor(np.asarray(proposal_valid, np.bool_)), _t(gt), _t(labels, np.int32),
               _t(valid, np.int32))
    return [o.asnumpy() for o in outs]


@pytest.mark.parametrize("fill", [False, True], ids=["spec-layout", "fill-negatives"])
def test_rcnn_targets_thresholds_layout_and_empty_image(mode, fill):
    empty = [[0, 0, 0, 0]] * 4
    rois, roi_labels, roi_weights, targets, box_weights, matched = _rcnn(
        fill, [PROPOSALS, PROPOSALS], [PROPOSAL_VALID, [True, True, True, False, False, False]],
        [RCNN_GT, empty], [RCNN_LABELS, [0] * 4], [RCNN_VALID, [0] * 4])
    # Image 0: 5 positive candidates (p0, p1, p4, g0, g1), at most P_max = 4 taken, first.
    np.testing.assert_array_equal(box_weights[0], [1, 1, 1, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(roi_weights[0], [1, 1, 1, 1, 1, 0, 0, 0])
    picked = [tuple(float(v) for v in roi) for roi in rois[0, :4]]
    assert len(set(picked)) == 4 and set(picked) <= set(POSITIVES)
    gt = np.asarray(RCNN_GT, np.float32)
    for slot, roi in enumerate(picked):
        assert matched[0, slot] == POSITIVES[roi]
        assert roi_labels[0, slot] == RCNN_LABELS[POSITIVES[roi]]
        np.testing.assert_allclose(targets[0, slot], np_encode_boxes(roi, gt[POSITIVES[roi]], RCNN_STDS),
                                   rtol=1e-5, atol=1e-5)
    # The only negative is p2 (IoU 0.49); p3 (crowd) and p5 (invalid) never appear.
    np.testing.assert_allclose(rois[0, 4], PROPOSALS[2])
    np.testing.assert_array_equal(roi_labels[0, 4:], 0)
    np.testing.assert_array_equal(targets[0, 4:], 0)
    # Image 1: no valid GT -> the 3 valid proposals are negatives, nothing positive.
    np.testing.assert_array_equal(box_weights[1], 0)
    np.testing.assert_array_equal(roi_labels[1], 0)
    np.testing.assert_array_equal(targets[1], 0)
    expected = [1, 1, 1, 0, 0, 0, 0, 0] if fill else [0, 0, 0, 0, 1, 1, 1, 0]
    np.testing.assert_array_equal(roi_weights[1], expected)
    negatives = rois[1][np.asarray(expected, bool)]
    assert sorted(map(tuple, negatives.tolist())) == sorted(map(tuple, np.asarray(PROPOSALS[:3], np.float32).tolist()))


def test_rcnn_sample_counts_many_candidates(graph_mode):
    rng = np.random.default_rng(0)
    # 30 proposals equal to the GT (positive), 40 far away (negative): S = 8, P_max = 2.
    far = np.concatenate([rng.uniform(100, 200, (40, 2)), rng.uniform(100, 200, (40, 2)) + 10], axis=1)
    far[:, 2:] = far[:, :2] + 10
    proposals = np.concatenate([np.tile([[0, 0, 10, 10]], (30, 1)), far]).astype(np.float32)
    net = RCNNTargets(8, 0.25, 0.5, 0.5, RCNN_STDS)
    outs = net(_t(proposals[None]), Tensor(np.ones((1, 70), np.bool_)), _t([[[0, 0, 10, 10]]]),
               _t([[1]], np.int32), _t([[1]], np.int32))
    _, roi_labels, roi_weights, _, box_weights, _ = [o.asnumpy() for o in outs]
    np.testing.assert_array_equal(box_weights[0], [1, 1, 0, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(roi_weights[0], 1)
    np.testing.assert_array_equal(roi_labels[0], [1, 1, 0, 0, 0, 0, 0, 0])


def test_bad_thresholds_message():
    with pytest.raises(ValueError, match=r"neg_iou_thr 0.8 must not exceed pos_iou_thr 0.5"):
        RCNNTargets(8, 0.25, 0.5, 0.8, RCNN_STDS)
    with pytest.raises(ValueError, match=r"anchors must be a non-empty \[A, 4\] array"):
        RPNTargets(np.zeros((0, 4)), 0.7, 0.3, 0.3, 8, 0.5, RPN_STDS)


# ---- mask targets -------------------------------------------------------------------------

def _rect(h, w, x1, y1, x2, y2):
    mask = np.zeros((h, w), np.uint8)
    mask[y1:y2, x1:x2] = 1
    return mask


def test_mask_targets_crop_own_box_and_half_box(mode):
    masks = np.stack([
        np.stack([_rect(16, 16, 0, 0, 8, 8), _rect(16, 16, 6, 4, 14, 12)]),
        np.stack([np.zeros((16, 16), np.uint8), np.ones((16, 16), np.uint8)]),
    ])  # [2, 2, 16, 16]
    rois = [[[6, 4, 14, 12], [0, 0, 16, 8]], [[6, 4, 14, 12], [6, 4, 14, 12]]]
    matched = [[1, 0], [1, 0]]
    out = mask_targets(Tensor(masks), _t(rois), _t(matched, np.int32), out_size=28).asnumpy()
    assert out.shape == (2, 2, 28, 28)
    np.testing.assert_array_equal(out[0, 0], 1.0)  # a rectangle cropped by its own box
    half = np.zeros((28, 28), np.float32)
    half[:, :14] = 1.0  # box twice as wide as the object: left half is the object
    np.testing.assert_array_equal(out[0, 1], half)
    np.testing.assert_array_equal(out[1, 0], 1.0)  # image 1, GT slot 1 (all ones)
    np.testing.assert_array_equal(out[1, 1], 0.0)  # image 1, GT slot 0 (empty)
