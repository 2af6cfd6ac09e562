"""Tests of src/maskrcnn/roi_heads.py: RoI sampling and targets, box loss, box post-processing."""

import math

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor

from src.batch import CROWD_LABEL
from src.maskrcnn.box_ops import np_encode_boxes
from src.maskrcnn.roi_heads import (INVALID_SCORE, BoxHead, BoxPostProcessor, RCNNTargets,
                                    box_head_losses)

RCNN_STDS = (0.1, 0.1, 0.2, 0.2)


def _t(x, dtype=np.float32):
    return Tensor(np.asarray(x, dtype))


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


def test_rcnn_samples_follow_the_step(graph_mode):
    """8 of 40 negatives (no GT): the same step picks the same RoIs, another step others."""
    proposals = np.array([[[100 + 12 * i, 100, 110 + 12 * i, 110] for i in range(40)]], np.float32)
    net = RCNNTargets(8, 0.25, 0.5, 0.5, RCNN_STDS, seed=3, fill_with_negatives=True)

    def rois(step):
        outs = net(_t(proposals), Tensor(np.ones((1, 40), np.bool_)), _t([[[0, 0, 0, 0]]]), _t([[0]], np.int32),
                   _t([[0]], np.int32), _t([step], np.int32))
        return sorted(map(tuple, outs[0].asnumpy()[0].tolist()))

    assert rois(4) == rois(4)
    assert len(set(rois(4))) == 8
    assert rois(5) != rois(4)


def test_bad_thresholds_message():
    with pytest.raises(ValueError, match=r"neg_iou_thr 0.8 must not exceed pos_iou_thr 0.5"):
        RCNNTargets(8, 0.25, 0.5, 0.8, RCNN_STDS)
    with pytest.raises(ValueError, match=r"RCNNTargets: stds must be 4 positive floats"):
        RCNNTargets(8, 0.25, 0.5, 0.5, (0.1, 0.1, 0.2))


# ---- head and loss ------------------------------------------------------------------------

def test_box_head_output_shapes(mode):
    head = BoxHead(in_channels=2, roi_size=3, hidden=8, num_classes=4)
    cls_logits, deltas = head(Tensor(np.ones((5, 2, 3, 3), np.float32)))
    assert cls_logits.shape == (5, 4) and deltas.shape == (5, 16) and head.num_classes == 4


def test_box_head_losses_hand_computed(mode):
    # 2 images x 2 slots: (0,0) positive class 2, (0,1) negative, (1,0) unsampled, (1,1) negative.
    cls_logits = np.zeros((4, 3), np.float32)
    cls_logits[0] = [0, 0, math.log(2.0)]  # p(class 2) = 2 / 4
    deltas = np.full((4, 3, 4), 7.0, np.float32)  # wrong classes: large loss if used
    deltas[0, 2] = [0.5, 0, 0, 2.0]
    labels = _t([[2, 0], [0, 0]], np.int32)
    roi_weights = _t([[1, 1], [0, 1]])
    targets = np.zeros((2, 2, 4), np.float32)
    targets[0, 0] = [0, 0, 0, 0.5]
    box_weights = _t([[1, 0], [0, 0]])
    rcnn_cls, rcnn_reg = (float(v.asnumpy()) for v in box_head_losses(
        Tensor(cls_logits), Tensor(deltas), labels, roi_weights, Tensor(targets), box_weights))
    assert rcnn_cls == pytest.approx((math.log(2.0) + 2 * math.log(3.0)) / 3, rel=1e-5)
    # beta 1: 0.5 * 0.5^2 + (1.5 - 0.5), over the 3 sampled RoIs
    assert rcnn_reg == pytest.approx((0.125 + 1.0) / 3, rel=1e-5)


# ---- post-processing ----------------------------------------------------------------------

def _post(max_per_image=70, score_thr=0.0, min_detection_size=0.0):
    return BoxPostProcessor(num_classes=3, num_proposals=2, stds=RCNN_STDS, score_thr=score_thr, nms_thr=0.5,
                            max_per_image=max_per_image, max_coordinate=128,
                            min_detection_size=min_detection_size)


def test_class_nms_suppresses_within_a_class_only_and_keeps_labels():
    """Exact result of the per-class NMS on hand-made candidates (sorted, padded)."""
    previous = ms.get_context("mode")
    ms.set_context(mode=ms.PYNATIVE_MODE, device_target="CPU")
    try:
        k = 70
        candidates = [  # box, score, label
            ((10, 10, 50, 50), 0.9, 1),
            ((12, 10, 52, 50), 0.8, 1),  # IoU 0.905 with the first, same class: suppressed
            ((12, 10, 52, 50), 0.7, 2),  # same box, other class: kept
            ((60, 60, 128, 128), 0.3, 2),  # touches the right/bottom edge of the input
            ((0, 0, 20, 20), 0.2, 1),  # IoU 0.05 with the first: kept
        ]
        boxes = np.zeros((k, 4), np.float32)
        scores = np.full((k,), -1.0, np.float32)  # padding candidates
        labels = np.zeros((k,), np.int32)
        for i, (b, sc, lab) in enumerate(candidates):
            boxes[i], scores[i], labels[i] = b, sc, lab
        out_boxes, out_scores, out_labels = (
            o.asnumpy() for o in _post(k).class_nms(Tensor(boxes), Tensor(scores), Tensor(labels))[:3])
        assert out_boxes.shape == (k, 4) and out_scores.shape == (k,) and out_labels.shape == (k,)
        np.testing.assert_allclose(out_scores[:4], [0.9, 0.7, 0.3, 0.2], rtol=1e-6)
        assert (out_scores[4:] == -1.0).all()
        np.testing.assert_array_equal(out_labels[:4], [1, 2, 2, 1])
        np.testing.assert_allclose(out_boxes[:4], [boxes[0], boxes[2], boxes[3], boxes[4]], atol=1e-4)
    finally:
        ms.set_context(mode=previous)


def test_post_processing_scores_boxes_threshold_and_padding(mode):
    # One image, 2 proposals (the second invalid), 3 classes; zero deltas decode to the proposal.
    proposals = _t([[[10, 20, 50, 60], [0, 0, 30, 30]]])
    proposal_valid = Tensor(np.array([[True, False]]))
    cls_logits = np.zeros((2, 3), np.float32)
    cls_logits[0] = [0, math.log(3.0), 0]  # softmax (0.2, 0.6, 0.2)
    deltas = np.zeros((2, 3, 4), np.float32)
    image_shape = _t([[100, 100, 1, 1]])
    boxes, scores, labels, valid = (o.asnumpy() for o in _post(max_per_image=3, score_thr=0.3)(
        proposals, proposal_valid, Tensor(cls_logits), Tensor(deltas), image_shape))
    assert boxes.shape == (1, 3, 4) and labels.dtype == np.int32 and valid.dtype == np.bool_
    # Only (proposal 0, class 1) passes the 0.3 threshold; class 2 (0.2) and proposal 1 do not.
    np.testing.assert_array_equal(valid[0], [True, False, False])
    np.testing.assert_allclose(scores[0], [0.6, 0, 0], rtol=1e-5)
    np.testing.assert_array_equal(labels[0], [1, 0, 0])
    np.testing.assert_allclose(boxes[0, 0], [10, 20, 50, 60], atol=1e-4)
    assert (boxes[0, 1:] == 0).all()
    assert INVALID_SCORE < 0
