"""Hand-computed values of the loss functions in src/maskrcnn/losses.py."""

import math

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, nn, ops

from src.maskrcnn import losses


def _t(x, dtype=np.float32):
    return Tensor(np.asarray(x, dtype))


class _AllLosses(nn.Cell):
    """Every loss inside one construct (graph mode), with the published betas."""

    def construct(self, bce_logits, bce_targets, bce_weights, pred, target, box_weights, cls_logits, labels,
                  cls_weights, mask_logits, mask_labels, mask_targets, mask_weights):
        return (losses.sigmoid_bce_loss(bce_logits, bce_targets, bce_weights),
                losses.sigmoid_bce_loss(bce_logits, bce_targets, bce_weights, normalizer=6.0),
                losses.smooth_l1_loss(pred, target, box_weights, 1.0 / 9.0, normalizer=4.0),
                losses.smooth_l1_loss(pred, target, box_weights, 0.0, normalizer=4.0),
                losses.smooth_l1_loss(pred, target, box_weights, 1.0),
                losses.softmax_cross_entropy_loss(cls_logits, labels, cls_weights),
                losses.mask_bce_loss(mask_logits, mask_labels, mask_targets, mask_weights))


def _inputs(empty=False):
    mask_logits = np.full((3, 3, 2, 2), 100.0, np.float32)  # wrong channels: huge loss if used
    mask_logits[0, 1] = 0.0
    mask_logits[1, 2] = 2.0
    mask_targets = np.stack([[[1, 0], [0, 1]], np.ones((2, 2)), np.zeros((2, 2))]).astype(np.float32)
    pred = [[0, 0, 0, 0], [1, 1, 1, 1]]
    target = [[0.05, -0.2, 0, 0], [1e30, 1, 1, 1]]  # the unweighted row must not leak in
    weights = (lambda w: [0.0] * len(w)) if empty else (lambda w: w)
    return [_t([0, 2, -1, 3]), _t([1, 0, 0, 1]), _t(weights([1, 1, 1, 0])),
            _t(pred), _t(target), _t(weights([1, 0])),
            _t([[0, 0, 0], [1, 2, 3]]), _t([2, 0], np.int32), _t(weights([1, 1])),
            _t(mask_logits), _t([1, 2, 0], np.int32), _t(mask_targets), _t(weights([1, 1, 1]))]


def test_losses_hand_computed(mode):
    values = [float(v.asnumpy()) for v in _AllLosses()(*_inputs())]
    bce_sum = math.log(2) + math.log(1 + math.exp(2)) + math.log(1 + math.exp(-1))  # 3.1333
    assert values[0] == pytest.approx(bce_sum / 3, rel=1e-5)
    assert values[1] == pytest.approx(bce_sum / 6, rel=1e-5)
    # |d| = 0.05 < 1/9 -> 0.5 * 0.05^2 * 9; |d| = 0.2 -> 0.2 - 0.5/9
    assert values[2] == pytest.approx((0.5 * 0.05 ** 2 * 9 + 0.2 - 0.5 / 9) / 4, rel=1e-5)
    assert values[3] == pytest.approx(0.25 / 4, rel=1e-5)  # L1
    assert values[4] == pytest.approx(0.5 * 0.05 ** 2 + 0.5 * 0.2 ** 2, rel=1e-5)  # beta 1, sum(w) = 1
    ce_row1 = math.log(math.exp(1) + math.exp(2) + math.exp(3)) - 1
    assert values[5] == pytest.approx((math.log(3) + ce_row1) / 2, rel=1e-5)
    # row 0: 4 pixels at logit 0 -> log 2; row 1: logit 2, target 1 -> log(1 + e^-2); row 2 is label 0
    assert values[6] == pytest.approx((math.log(2) + math.log(1 + math.exp(-2))) / 2, rel=1e-5)


def test_all_zero_weights_give_zero_finite_losses(mode):
    values = [float(v.asnumpy()) for v in _AllLosses()(*_inputs(empty=True))]
    assert values == [0.0] * 7


def test_mask_loss_gradient_only_on_gt_channel():
    previous = ms.get_context("mode")
    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    try:
        inputs = _inputs()
        grad = ops.GradOperation()(losses.mask_bce_loss)(inputs[9], inputs[10], inputs[11], inputs[12]).asnumpy()
        nonzero = {(r, c) for r in range(3) for c in range(3) if np.abs(grad[r, c]).sum() > 0}
        assert nonzero == {(0, 1), (1, 2)}
        # d/dx of mean-pixel BCE / 2 rows at logit 0, target 1 -> (0.5 - 1) / 4 / 2
        assert grad[0, 1, 0, 0] == pytest.approx(-0.5 / 8, rel=1e-5)
    finally:
        ms.set_context(mode=previous)


def test_negative_beta_message():
    with pytest.raises(ValueError, match=r"beta must be >= 0, got -1"):
        losses.smooth_l1_loss(_t([[0, 0, 0, 0]]), _t([[0, 0, 0, 0]]), _t([1]), -1.0)
