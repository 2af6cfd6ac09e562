"""Hand-computed values of the loss functions in src/maskrcnn/losses.py (the mask loss: test_mask_branch.py)."""

import math

import numpy as np
import pytest
from mindspore import Tensor, nn

from src.maskrcnn import losses


def _t(x, dtype=np.float32):
    return Tensor(np.asarray(x, dtype))


class _AllLosses(nn.Cell):
    """Every loss inside one construct (graph mode), with the published betas."""

    def construct(self, bce_logits, bce_targets, bce_weights, pred, target, box_weights, cls_logits, labels,
                  cls_weights):
        return (losses.sigmoid_bce_loss(bce_logits, bce_targets, bce_weights),
                losses.sigmoid_bce_loss(bce_logits, bce_targets, bce_weights, normalizer=6.0),
                losses.smooth_l1_loss(pred, target, box_weights, 1.0 / 9.0, normalizer=4.0),
                losses.smooth_l1_loss(pred, target, box_weights, 0.0, normalizer=4.0),
                losses.smooth_l1_loss(pred, target, box_weights, 1.0),
                losses.softmax_cross_entropy_loss(cls_logits, labels, cls_weights))


def _inputs(empty=False):
    pred = [[0, 0, 0, 0], [1, 1, 1, 1]]
    target = [[0.05, -0.2, 0, 0], [1e30, 1, 1, 1]]  # the unweighted row must not leak in
    weights = (lambda w: [0.0] * len(w)) if empty else (lambda w: w)
    return [_t([0, 2, -1, 3]), _t([1, 0, 0, 1]), _t(weights([1, 1, 1, 0])),
            _t(pred), _t(target), _t(weights([1, 0])),
            _t([[0, 0, 0], [1, 2, 3]]), _t([2, 0], np.int32), _t(weights([1, 1]))]


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


def test_all_zero_weights_give_zero_finite_losses(mode):
    values = [float(v.asnumpy()) for v in _AllLosses()(*_inputs(empty=True))]
    assert values == [0.0] * 6


def test_negative_beta_message():
    with pytest.raises(ValueError, match=r"beta must be >= 0, got -1"):
        losses.smooth_l1_loss(_t([[0, 0, 0, 0]]), _t([[0, 0, 0, 0]]), _t([1]), -1.0)
