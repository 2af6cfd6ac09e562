"""Tests of src/maskrcnn/mask_branch.py: head shape, mask targets, mask loss and its weight, inference."""

import math

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, nn, ops

from src.maskrcnn.mask_branch import (MaskHead, MaskLoss, mask_bce_loss, mask_probabilities, mask_targets,
                                      rows_to_run)


def _t(x, dtype=np.float32):
    return Tensor(np.asarray(x, dtype))


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


# ---- loss ---------------------------------------------------------------------------------

class _MaskLossCell(nn.Cell):
    """mask_bce_loss inside a construct (graph mode)."""

    def construct(self, mask_logits, mask_labels, targets, weights):
        return mask_bce_loss(mask_logits, mask_labels, targets, weights)


def _loss_inputs(empty=False):
    mask_logits = np.full((3, 3, 2, 2), 100.0, np.float32)  # wrong channels: huge loss if used
    mask_logits[0, 1] = 0.0
    mask_logits[1, 2] = 2.0
    targets = np.stack([[[1, 0], [0, 1]], np.ones((2, 2)), np.zeros((2, 2))]).astype(np.float32)
    weights = [0.0] * 3 if empty else [1, 1, 1]
    return [_t(mask_logits), _t([1, 2, 0], np.int32), _t(targets), _t(weights)]


def test_mask_loss_hand_computed(mode):
    value = float(_MaskLossCell()(*_loss_inputs()).asnumpy())
    # row 0: 4 pixels at logit 0 -> log 2; row 1: logit 2, target 1 -> log(1 + e^-2); row 2 is label 0
    assert value == pytest.approx((math.log(2) + math.log(1 + math.exp(-2))) / 2, rel=1e-5)


def test_all_zero_weights_give_zero_finite_mask_loss(mode):
    assert float(_MaskLossCell()(*_loss_inputs(empty=True)).asnumpy()) == 0.0


def test_mask_loss_gradient_only_on_gt_channel():
    previous = ms.get_context("mode")
    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    try:
        inputs = _loss_inputs()
        grad = ops.GradOperation()(mask_bce_loss)(*inputs).asnumpy()
        nonzero = {(r, c) for r in range(3) for c in range(3) if np.abs(grad[r, c]).sum() > 0}
        assert nonzero == {(0, 1), (1, 2)}
        # d/dx of mean-pixel BCE / 2 rows at logit 0, target 1 -> (0.5 - 1) / 4 / 2
        assert grad[0, 1, 0, 0] == pytest.approx(-0.5 / 8, rel=1e-5)
    finally:
        ms.set_context(mode=previous)


def test_mask_loss_cell_crops_targets_and_applies_its_weight(mode):
    # Two images; GT slot 1 of image 1 is a full 8x8 square (image 0's slot 1 is empty). Picked
    # RoI 0 belongs to image 1 and is that square (target all ones), RoI 1 is padding (weight 0,
    # label 0). Logit 3 everywhere on class 2: BCE log(1 + e^-3) per pixel.
    masks = np.zeros((2, 2, 16, 16), np.uint8)
    masks[1, 1, 4:12, 4:12] = 1
    rois = _t([[4, 4, 12, 12], [0, 0, 0, 0]])
    logits = Tensor(np.full((2, 3, 6, 6), 3.0, np.float32))
    loss = MaskLoss(mask_size=6, max_positives=2, loss_weight=2.5)
    value = float(loss(logits, Tensor(masks), rois, _t([1, 0], np.int32), _t([1, 0], np.int32), _t([2, 0], np.int32),
                       _t([1, 0])).asnumpy())
    assert value == pytest.approx(2.5 * math.log(1 + math.exp(-3.0)), rel=1e-5)


def test_mask_loss_needs_a_positive_slot_and_a_bound_within_them():
    with pytest.raises(ValueError, match="leaves no positive RoI slot"):
        MaskLoss(mask_size=28, max_positives=0)
    assert MaskLoss(mask_size=28, max_positives=32).rois_per_image is None  # the real positives only
    assert MaskLoss(mask_size=28, max_positives=32, rois_per_image=8).rois_per_image == 8
    for bad in (0, 33):
        with pytest.raises(ValueError, match=rf"MaskLoss: rois_per_image must be None or between 1 and "
                                             rf"max_positives = 32, "
                                             rf"got {bad}"):
            MaskLoss(mask_size=28, max_positives=32, rois_per_image=bad)


# ---- head and inference -------------------------------------------------------------------

def test_mask_head_doubles_the_roi_side(mode):
    head = MaskHead(in_channels=3, channels=4, num_classes=5)
    assert head(Tensor(np.ones((2, 3, 7, 7), np.float32))).shape == (2, 5, 14, 14)


def test_mask_probabilities_pick_the_detected_class_and_zero_padding(mode):
    logits = np.zeros((4, 3, 2, 2), np.float32)  # [B*K] = 2 images x 2 slots
    logits[0, 1] = 2.0
    logits[1, 2] = -1.0
    logits[2, 1] = 5.0  # slot of a padding detection
    labels = _t([[1, 2], [1, 0]], np.int32)
    valid = Tensor(np.array([[True, True], [False, False]]))
    masks = mask_probabilities(Tensor(logits), labels, valid, Tensor(np.arange(4, dtype=np.int32))).asnumpy()
    assert masks.shape == (2, 2, 2, 2)
    sigmoid = lambda x: 1.0 / (1.0 + math.exp(-x))  # noqa: E731
    np.testing.assert_allclose(masks[0, 0], sigmoid(2.0), rtol=1e-6)
    np.testing.assert_allclose(masks[0, 1], sigmoid(-1.0), rtol=1e-6)
    assert (masks[1] == 0).all()


def test_mask_probabilities_of_some_rows_fill_their_slots_only(mode):
    # The head ran on slots 1 and 2 of [B*K] = 2 x 2 (rows_to_run of valid [[F, T], [T, F]] would
    # also hold slot 0); the other slots stay zero even where the logits would be large.
    logits = np.zeros((2, 3, 2, 2), np.float32)
    logits[0, 2] = 1.5
    logits[1, 1] = -0.5
    labels = _t([[1, 2], [1, 1]], np.int32)
    valid = Tensor(np.array([[True, True], [True, True]]))
    masks = mask_probabilities(Tensor(logits), labels, valid, _t([1, 2], np.int32)).asnumpy()
    assert masks.shape == (2, 2, 2, 2)
    np.testing.assert_allclose(masks[0, 1], 1.0 / (1.0 + math.exp(-1.5)), rtol=1e-6)
    np.testing.assert_allclose(masks[1, 0], 1.0 / (1.0 + math.exp(0.5)), rtol=1e-6)
    assert not masks[0, 0].any() and not masks[1, 1].any()


def test_rows_to_run_are_the_true_entries_and_never_none(mode):
    assert rows_to_run(Tensor(np.array([[False, True], [True, False]]))).asnumpy().tolist() == [0, 1, 2]
    assert rows_to_run(Tensor(np.array([True, False, True]))).asnumpy().tolist() == [0, 2]
    assert rows_to_run(Tensor(np.zeros((2, 3), bool))).asnumpy().tolist() == [0]


def test_select_shares_the_slots_between_the_images_in_turns():
    """K = 4 per image, B = 2: 8 slots. Image 0 has 6 positives, image 1 has 1: all 7 are kept."""
    loss = MaskLoss(mask_size=28, max_positives=8, rois_per_image=4)
    weights = np.zeros((2, 10), np.float32)
    weights[0, :6] = 1.0
    weights[1, :1] = 1.0
    labels = (weights > 0).astype(np.int32) * 2
    rois = np.arange(2 * 10 * 4, dtype=np.float32).reshape(2, 10, 4)
    matched = np.tile(np.arange(10, dtype=np.int32) % 3, (2, 1))
    align_rois, rows, picked = loss.select(Tensor(rois), Tensor(matched), Tensor(labels), Tensor(weights))
    p_rois, p_image, p_matched, p_labels, p_weights = (v.asnumpy() for v in picked)
    kept = sorted((int(i), int(r[0]) // 4 % 10) for i, r, w in zip(p_image, p_rois, p_weights) if w > 0)
    assert kept == [(0, s) for s in range(6)] + [(1, 0)]
    assert p_weights.sum() == 7 and (p_labels[p_weights > 0] == 2).all()
    # RoIAlign pools every picked box in its own image's row, zero boxes elsewhere; the mask head
    # takes row image * T + i for picked slot i.
    align_rois, rows = align_rois.asnumpy(), rows.asnumpy()
    assert align_rois.shape == (2, 8, 4)
    for i, image in enumerate(p_image):
        np.testing.assert_array_equal(align_rois[image, i], p_rois[i])
        assert not align_rois[1 - image, i].any()
        assert rows[i] == image * 8 + i


def test_select_with_more_positives_than_slots_takes_each_image_first_slots_in_turn():
    loss = MaskLoss(mask_size=28, max_positives=8, rois_per_image=2)
    weights = np.ones((2, 8), np.float32)
    rois = np.arange(2 * 8 * 4, dtype=np.float32).reshape(2, 8, 4)
    _, _, picked = loss.select(Tensor(rois), Tensor(np.zeros((2, 8), np.int32)), Tensor(np.ones((2, 8), np.int32)),
                               Tensor(weights))
    p_rois, p_image = picked[0].asnumpy(), picked[1].asnumpy()
    assert sorted((int(i), int(r[0]) // 4 % 8) for i, r in zip(p_image, p_rois)) == [(0, 0), (0, 1), (1, 0), (1, 1)]


def test_a_bound_of_every_slot_passes_every_slot_through():
    loss = MaskLoss(mask_size=28, max_positives=3, rois_per_image=3)
    rois = Tensor(np.random.default_rng(0).random((2, 5, 4), dtype=np.float32))
    align_rois, rows, picked = loss.select(rois, Tensor(np.zeros((2, 5), np.int32)), Tensor(np.ones((2, 5), np.int32)),
                                           Tensor(np.ones((2, 5), np.float32)))
    assert rows is None
    np.testing.assert_array_equal(align_rois.asnumpy(), rois.asnumpy()[:, :3])
    assert picked[1].asnumpy().tolist() == [0, 0, 0, 1, 1, 1]


def _slots(positive):
    """select()'s inputs for two images of 5 sampled slots, ``positive`` [2, 5] bool; slot (b, s)
    has box x1 = 10 * b + s, GT slot s % 3, label 2 where positive (0 elsewhere)."""
    positive = np.asarray(positive, bool)
    rois = np.zeros((2, 5, 4), np.float32)
    rois[..., 0] = 10 * np.arange(2).reshape(2, 1) + np.arange(5)
    rois[..., 2:] = rois[..., :1] + 4.0
    matched = np.tile(np.arange(5, dtype=np.int32) % 3, (2, 1))
    return (Tensor(rois), Tensor(matched), Tensor(positive.astype(np.int32) * 2),
            Tensor(positive.astype(np.float32)))


def test_select_on_real_positives_keeps_exactly_them_in_image_order():
    loss = MaskLoss(mask_size=28, max_positives=4)  # slot 4 of each image is never a positive slot
    positive = [[False, True, False, True, True], [True, False, False, False, False]]
    align_rois, rows, picked = loss.select(*_slots(positive))
    p_rois, p_image, p_matched, p_labels, p_weights = (v.asnumpy() for v in picked)
    # Rows index RoIAlign's [B * P_max] output: image 0 slots 1, 3, image 1 slot 0, and row 0
    # (image 0 slot 0, not a positive: weight 0) because a convolution needs a row.
    assert rows.asnumpy().tolist() == [0, 1, 3, 4]
    assert align_rois.shape == (2, 4, 4)
    assert p_rois[:, 0].tolist() == [0, 1, 3, 10] and p_image.tolist() == [0, 0, 0, 1]
    assert p_matched.tolist() == [0, 1, 0, 0] and p_weights.tolist() == [0, 1, 1, 1]
    assert p_labels.tolist() == [0, 2, 2, 2]
    # When slot 0 is a positive nothing is added.
    rows = loss.select(*_slots([[True, False, False, True, False], [False] * 5]))[1]
    assert rows.asnumpy().tolist() == [0, 3]


class _PositivesMaskLoss(nn.Cell):
    """RoI features [B * P_max, C, S, S] -> the mask loss of a tiny head on the slots select()
    picks, and how many rows the head ran on."""

    def __init__(self, rois_per_image):
        super().__init__()
        ms.set_seed(3)
        self.head = MaskHead(in_channels=2, channels=4, num_classes=3)
        self.loss = MaskLoss(mask_size=6, max_positives=4, rois_per_image=rois_per_image)

    def construct(self, features, gt_masks, rois, matched, labels, weights):
        align_rois, rows, picked = self.loss.select(rois, matched, labels, weights)
        if rows is not None:
            features = ops.gather(features, rows, 0)
        return self.loss(self.head(features), gt_masks, *picked), ops.shape(features)[0]


def test_graph_mode_mask_loss_on_real_positives_equals_every_slot_and_runs_on_fewer_rows():
    """One compiled graph, two batches with different positive counts (a dynamic shape): the loss
    and its gradient equal the static every-slot graph's; the head ran on the positives."""
    previous = ms.get_context("mode")
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        rng = np.random.default_rng(0)
        masks = Tensor((rng.random((2, 3, 24, 24)) > 0.5).astype(np.uint8))
        features = Tensor(rng.standard_normal((8, 2, 3, 3)).astype(np.float32))
        nets = {bound: _PositivesMaskLoss(bound) for bound in (None, 4)}
        grads = {bound: ops.GradOperation(get_by_list=True)(net, net.trainable_params())
                 for bound, net in nets.items()}
        for positive, rows in (([[False, True, False, True, True], [True, False, False, False, False]], 4),
                               ([[True, True, True, True, True], [False, True, True, False, False]], 6)):
            inputs = (features, masks) + _slots(positive)
            (loss, count), (every_loss, every_count) = (nets[None](*inputs), nets[4](*inputs))
            assert (int(count), int(every_count)) == (rows, 8)
            assert float(loss.asnumpy()) > 0
            assert float(loss.asnumpy()) == pytest.approx(float(every_loss.asnumpy()), rel=1e-5)
            for ours, every in zip(grads[None](*inputs), grads[4](*inputs)):
                np.testing.assert_allclose(ours.asnumpy(), every.asnumpy(), rtol=1e-4, atol=1e-6)
    finally:
        ms.set_context(mode=previous)
