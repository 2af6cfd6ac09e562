"""Exact-value tests of src/maskrcnn/box_ops.py (MindSpore functions and NumPy twins)."""

import math

import numpy as np
import pytest
from mindspore import Tensor, nn

from src.maskrcnn import box_ops

RCNN_STDS = (0.1, 0.1, 0.2, 0.2)


class _BoxOpsNet(nn.Cell):
    """Runs every box op inside one construct, so graph mode is exercised."""

    def __init__(self, stds):
        super().__init__()
        self.stds = stds

    def construct(self, a, b, ref, target, deltas, image_shape):
        return (box_ops.box_iou(a, b), box_ops.box_ioa(a, b),
                box_ops.encode_boxes(ref, target, self.stds),
                box_ops.decode_boxes(ref, deltas, self.stds),
                box_ops.clip_boxes(target, image_shape))


def _run(a, b, ref, target, deltas, image_shape, stds=RCNN_STDS):
    outs = _BoxOpsNet(stds)(*(Tensor(np.asarray(x, np.float32)) for x in (a, b, ref, target, deltas, image_shape)))
    return [o.asnumpy() for o in outs]


A = [[[0, 0, 10, 10]], [[0, 0, 4, 2]]]  # [2, 1, 4]
B = [[[5, 0, 15, 10], [0, 0, 10, 10], [20, 20, 30, 30], [2, 2, 4, 4]],
     [[0, 0, 0, 0], [2, 0, 6, 2], [0, 0, 4, 2], [-1, -1, 1, 1]]]  # [2, 4, 4]
# Hand-computed: 50/150; 1; 0; 4/100 | empty; 4/12; 1; 1/(8+4-1)
EXPECTED_IOU = [[[1 / 3, 1.0, 0.0, 0.04]], [[0.0, 4 / 12, 1.0, 1 / 11]]]
# Intersection over the area of A: 50/100, 1, 0, 4/100 | 0, 4/8, 1, 1/8
EXPECTED_IOA = [[[0.5, 1.0, 0.0, 0.04]], [[0.0, 0.5, 1.0, 0.125]]]
REF = [[[0, 0, 10, 20]], [[0, 0, 16, 16]]]
TARGET = [[[2, 4, 22, 24]], [[-5, -3, 50, 40]]]
DELTAS = [[[7.0, 2.0, math.log(2) / 0.2, 0.0]], [[0.0, 0.0, 500.0, 0.0]]]
IMAGE_SHAPE = [[30, 20, 1, 1], [35, 40, 1, 1]]  # (h, w, scale_h, scale_w)


def test_iou_ioa_encode_decode_clip_exact(mode):
    iou, ioa, deltas, decoded, clipped = _run(A, B, REF, TARGET, DELTAS, IMAGE_SHAPE)
    np.testing.assert_allclose(iou, EXPECTED_IOU, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(ioa, EXPECTED_IOA, rtol=1e-6, atol=1e-7)
    # ref centre (5, 10) size 10x20 -> target centre (12, 14) size 20x20
    np.testing.assert_allclose(deltas[0, 0], [7.0, 2.0, math.log(2) / 0.2, 0.0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(decoded[0, 0], [2, 4, 22, 24], rtol=1e-6, atol=1e-5)
    # dw*std = 100 is clamped to log(1000/16): width 16 -> 1000 around centre x = 8
    np.testing.assert_allclose(decoded[1, 0], [-492, 0, 508, 16], rtol=1e-5)
    np.testing.assert_allclose(clipped[0, 0], [2, 4, 20, 24])  # x clipped at w = 20, y inside h = 30
    np.testing.assert_allclose(clipped[1, 0], [0, 0, 40, 35])


def test_encode_decode_round_trip_random(mode):
    rng = np.random.default_rng(3)
    xy = rng.uniform(0, 100, size=(2, 6, 2))
    ref = np.concatenate([xy, xy + rng.uniform(1, 50, size=(2, 6, 2))], axis=-1).astype(np.float32)
    xy = rng.uniform(0, 100, size=(2, 6, 2))
    target = np.concatenate([xy, xy + rng.uniform(1, 50, size=(2, 6, 2))], axis=-1).astype(np.float32)
    _, _, deltas, _, _ = _run(A, B, ref, target, np.zeros_like(ref), IMAGE_SHAPE)
    _, _, _, back, _ = _run(A, B, ref, target, deltas, IMAGE_SHAPE)
    np.testing.assert_allclose(back, target, atol=2e-4)
    np.testing.assert_allclose(deltas, box_ops.np_encode_boxes(ref, target, RCNN_STDS), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(box_ops.np_decode_boxes(ref, deltas, RCNN_STDS), target, atol=2e-4)


def test_empty_boxes_give_finite_deltas(mode):
    zeros = np.zeros((2, 1, 4), np.float32)
    _, _, deltas, decoded, _ = _run(A, B, zeros, zeros, zeros, IMAGE_SHAPE, stds=(1.0, 1.0, 1.0, 1.0))
    assert np.isfinite(deltas).all() and np.isfinite(decoded).all()
    np.testing.assert_allclose(deltas, 0.0)


def test_numpy_twins_match_hand_values():
    np.testing.assert_allclose(box_ops.np_box_iou(A, B), EXPECTED_IOU, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(box_ops.np_encode_boxes(REF[0], TARGET[0], RCNN_STDS)[0],
                               [7.0, 2.0, math.log(2) / 0.2, 0.0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(box_ops.np_decode_boxes(REF[1], DELTAS[1], RCNN_STDS)[0],
                               [-492, 0, 508, 16], rtol=1e-5)


class _PairwiseNet(nn.Cell):
    def construct(self, a, b):
        return box_ops.box_iou(a, b), box_ops.box_ioa(a, b)


@pytest.mark.parametrize("a_lead", [(1,), ()])
def test_iou_ioa_broadcast_leading_dimensions_like_the_rpn_anchors(mode, a_lead):
    # The RPN pairs [1, A, 4] (or [A, 4]) anchors with [B, N, 4] ground truth: [B, A, N].
    rng = np.random.default_rng(3)
    corners = rng.uniform(0, 50, (7, 2)).astype(np.float32)
    anchors = np.concatenate([corners, corners + rng.uniform(0, 20, (7, 2)).astype(np.float32)], 1)
    gt = np.asarray(B, np.float32)  # [2, 4, 4], with an empty box
    iou, ioa = _PairwiseNet()(Tensor(anchors.reshape(a_lead + (7, 4))), Tensor(gt))
    assert iou.shape == (2, 7, 4) and ioa.shape == (2, 7, 4)
    for image in range(2):
        np.testing.assert_allclose(iou.asnumpy()[image], box_ops.np_box_iou(anchors, gt[image]), rtol=1e-5, atol=1e-6)
        expected_ioa = np.zeros((7, 4))  # from first principles
        for i, box in enumerate(anchors):
            for j, other in enumerate(gt[image]):
                w = max(0.0, min(box[2], other[2]) - max(box[0], other[0]))
                h = max(0.0, min(box[3], other[3]) - max(box[1], other[1]))
                expected_ioa[i, j] = w * h / ((box[2] - box[0]) * (box[3] - box[1]))
        np.testing.assert_allclose(ioa.asnumpy()[image], expected_ioa, rtol=1e-5, atol=1e-6)
