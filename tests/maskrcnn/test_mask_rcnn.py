"""Mask_Rcnn_Resnet50 (built by build_model) end to end at a tiny size in graph mode: losses, steps,
inference, names. The stages alone: test_rpn.py, test_roi_heads.py, test_mask_branch.py.

One network is built per module and shared, so only three graphs are compiled (training
forward, inference, the optimizer step). Tests that update parameters run last.
"""

import os
import re

import numpy as np
import pytest

import mindspore as ms
from mindspore import Tensor, nn, ops

from src.batch import CROWD_LABEL, LOSS_NAMES
from src.config import load_config
from src.maskrcnn.builder import build_model

pytestmark = pytest.mark.slow(40)

IMG = 128
NUM_GT = 4
CLASSES = ["background", "book", "disc"]
TEST_PROPOSALS = 32
# More output slots than (proposal, class) pairs (32 * 2 = 64): at least 6 rows must be padding,
# which exercises the candidate padding and the invalid-row outputs.
TEST_MAX_PER_IMG = 70
# Optimizer steps of the training test (from-scratch training diverged within ~15 steps before
# the backbone init was fixed; the RPN loss visibly drops within 10).
TRAIN_STEPS = 16


def _tiny_config():
    return load_config().replace(
        img_height=IMG, img_width=IMG, coco_classes=CLASSES, max_instance_count=NUM_GT,
        fpn_channels=32, box_head_channels=64, mask_head_channels=16,
        rpn_num_samples=64, rpn_pre_nms_top_k_train=200, rpn_post_nms_top_k_train=64,
        rpn_pre_nms_top_k_test=100, rpn_post_nms_top_k_test=TEST_PROPOSALS,
        rcnn_num_samples=32, test_max_per_img=TEST_MAX_PER_IMG, test_score_thr=0.0, batch_size=2,
        device_target="CPU")


@pytest.fixture(scope="module")
def config():
    return _tiny_config()


@pytest.fixture(scope="module")
def net(config):
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_seed(0)
    return build_model(config)


def _batch(with_objects=True):
    """A batch of 2 images of IMG x IMG (second image resized to 96 x 128 inside the input)."""
    rng = np.random.default_rng(0)
    image = rng.standard_normal((2, 3, IMG, IMG)).astype(np.float32)
    image_shape = np.array([[IMG, IMG, 1.0, 1.0], [96, IMG, 1.0, 1.0]], np.float32)
    box = np.zeros((2, NUM_GT, 4), np.float32)
    label = np.zeros((2, NUM_GT), np.int32)
    valid = np.zeros((2, NUM_GT), np.int32)
    mask = np.zeros((2, NUM_GT, IMG, IMG), np.uint8)
    if with_objects:
        # image 0: two objects; image 1: one object and one crowd region (valid 0).
        objects = [(0, 0, (10, 20, 60, 90), 1), (0, 1, (70, 30, 120, 80), 2),
                   (1, 0, (5, 5, 50, 40), 1), (1, 1, (60, 50, 100, 90), CROWD_LABEL)]
        for b, i, (x1, y1, x2, y2), lab in objects:
            box[b, i] = (x1, y1, x2, y2)
            label[b, i] = lab
            valid[b, i] = 1 if lab > 0 else 0
            mask[b, i, y1 + 5:y2 - 5, x1 + 5:x2 - 5] = 1
            # a visible object so the image is not pure noise
            image[b, :, y1:y2, x1:x2] += 2.0
    return tuple(Tensor(a) for a in (image, image_shape, box, label, valid, mask))


def _losses(net, batch):
    net.set_train(True)
    outputs = net(*batch)
    assert len(outputs) == len(LOSS_NAMES)
    values = {}
    for name, value in zip(LOSS_NAMES, outputs):
        array = value.asnumpy()
        assert array.shape == (), f"{name} is not a scalar: {array.shape}"
        assert array.dtype == np.float32
        values[name] = float(array)
    return values


# ---- parameter names (no compile) --------------------------------------------------------

def _expected_params(config, zoo_lists_dir):
    c = config.fpn_channels
    a = config.num_anchors_per_location
    k = config.num_classes
    fc = config.box_head_channels
    m = config.mask_head_channels
    roi = config.roi_box_size
    expected = {}
    with open(os.path.join(zoo_lists_dir, "zoo_resnet50_params.txt"), encoding="utf-8") as handle:
        for line in handle:
            match = re.match(r"^(\S+) \(([\d, ]*)\)$", line.strip())
            if match and not match.group(1).startswith("end_point."):
                shape = tuple(int(v) for v in match.group(2).split(",") if v.strip())
                expected["backbone." + match.group(1)] = shape
    for i, cin in enumerate((256, 512, 1024, 2048)):
        expected[f"fpn.lateral_convs.{i}.weight"] = (c, cin, 1, 1)
        expected[f"fpn.lateral_convs.{i}.bias"] = (c,)
        expected[f"fpn.output_convs.{i}.weight"] = (c, c, 3, 3)
        expected[f"fpn.output_convs.{i}.bias"] = (c,)
    expected.update({
        "rpn_head.conv.weight": (c, c, 3, 3), "rpn_head.conv.bias": (c,),
        "rpn_head.objectness.weight": (a, c, 1, 1), "rpn_head.objectness.bias": (a,),
        "rpn_head.box_deltas.weight": (4 * a, c, 1, 1), "rpn_head.box_deltas.bias": (4 * a,),
        "box_head.fc1.weight": (fc, c * roi * roi), "box_head.fc1.bias": (fc,),
        "box_head.fc2.weight": (fc, fc), "box_head.fc2.bias": (fc,),
        "box_head.cls_score.weight": (k, fc), "box_head.cls_score.bias": (k,),
        "box_head.box_deltas.weight": (4 * k, fc), "box_head.box_deltas.bias": (4 * k,),
        "mask_head.deconv.weight": (m, m, 2, 2), "mask_head.deconv.bias": (m,),
        "mask_head.mask_logits.weight": (k, m, 1, 1), "mask_head.mask_logits.bias": (k,),
    })
    for i in range(1, 5):
        expected[f"mask_head.conv{i}.weight"] = (m, c if i == 1 else m, 3, 3)
        expected[f"mask_head.conv{i}.bias"] = (m,)
    return expected


def test_parameter_names_and_shapes_match_spec(net, config, zoo_lists_dir):
    ours = {p.name: tuple(p.shape) for p in net.get_parameters()}
    expected = _expected_params(config, zoo_lists_dir)
    assert sorted(set(ours) - set(expected)) == []
    assert sorted(set(expected) - set(ours)) == []
    assert ours == expected


def test_random_init_trains_all_but_moving_stats(net):
    trainable = {p.name for p in net.trainable_params()}
    everything = {p.name for p in net.get_parameters()}
    assert trainable == {n for n in everything if "moving_" not in n}


def test_pretrained_backbone_freezes_stem_first_stages_and_norm(config):
    frozen = build_model(config.replace(frozen_backbone_stages=2), pretrained_backbone=True)
    trainable = {p.name for p in frozen.trainable_params()}
    assert not any(n.startswith(("backbone.conv1.", "backbone.bn1.", "backbone.layer1.",
                                 "backbone.layer2.")) for n in trainable)
    assert not any(n.startswith("backbone.") and n.endswith((".gamma", ".beta")) for n in trainable)
    assert "backbone.layer3.0.conv2.weight" in trainable
    assert "box_head.cls_score.weight" in trainable


def test_bad_sampling_config_is_rejected(config):
    with pytest.raises(ValueError, match="leaves no positive RoI slot"):
        build_model(config.replace(rcnn_num_samples=3, rcnn_pos_fraction=0.25))


# ---- graph-mode forward passes -----------------------------------------------------------

def test_training_forward_returns_five_finite_losses(net):
    values = _losses(net, _batch())
    assert all(np.isfinite(v) for v in values.values()), values
    # With objects every loss has something to learn from.
    for name in LOSS_NAMES:
        assert values[name] > 0, values
    # Random init: the heads start near chance level (sigmoid 0.5 -> ln 2, softmax -> ln 3).
    assert values["rpn_cls"] == pytest.approx(np.log(2), abs=0.1)
    assert values["rcnn_cls"] == pytest.approx(np.log(len(CLASSES)), abs=0.2)


def test_all_padding_ground_truth_gives_zero_box_and_mask_losses(net):
    values = _losses(net, _batch(with_objects=False))
    assert all(np.isfinite(v) for v in values.values()), values
    assert values["rpn_reg"] == 0.0
    assert values["rcnn_reg"] == 0.0
    assert values["rcnn_mask"] == 0.0
    assert values["rpn_cls"] > 0.0
    assert values["rcnn_cls"] > 0.0


def test_inference_outputs_documented_shapes_and_dtypes(net, config):
    net.set_train(False)
    image, image_shape = _batch()[:2]
    boxes, scores, labels, valid, masks = (o.asnumpy() for o in net(image, image_shape))
    k = config.test_max_per_img
    assert boxes.shape == (2, k, 4) and boxes.dtype == np.float32
    assert scores.shape == (2, k) and scores.dtype == np.float32
    assert labels.shape == (2, k) and labels.dtype == np.int32
    assert valid.shape == (2, k) and valid.dtype == np.bool_
    assert masks.shape == (2, k, config.mask_out_size, config.mask_out_size) and masks.dtype == np.float32
    assert config.mask_out_size == 28
    # score_thr 0: a random-init head still scores every class above 0, so detections exist;
    # there are fewer candidates than slots, so padding rows exist too.
    assert valid.any(axis=1).all()
    assert (valid.sum(axis=1) <= TEST_PROPOSALS * (len(CLASSES) - 1)).all()
    assert np.isfinite(boxes).all() and np.isfinite(scores).all() and np.isfinite(masks).all()
    assert ((masks >= 0) & (masks <= 1)).all()
    for b, (height, width) in enumerate([(IMG, IMG), (96, IMG)]):
        v = valid[b]
        assert ((labels[b][v] >= 1) & (labels[b][v] < len(CLASSES))).all()
        assert (scores[b][v] > 0).all() and (scores[b][v] <= 1).all()
        # sorted by score, padding after the detections
        assert (np.diff(scores[b][v]) <= 0).all()
        assert (v == (np.arange(k) < v.sum())).all()
        assert (boxes[b][v][:, [0, 2]] >= 0).all() and (boxes[b][v][:, [0, 2]] <= width).all()
        assert (boxes[b][v][:, [1, 3]] >= 0).all() and (boxes[b][v][:, [1, 3]] <= height).all()
        assert (scores[b][~v] == 0).all() and (labels[b][~v] == 0).all()
        assert (boxes[b][~v] == 0).all() and (masks[b][~v] == 0).all()


class _SumOfLosses(nn.Cell):
    def __init__(self, network):
        super().__init__(auto_prefix=False)
        self.network = network

    def construct(self, *batch):
        losses = self.network(*batch)
        return losses[0] + losses[1] + losses[2] + losses[3] + losses[4]


def test_momentum_steps_keep_losses_finite_change_parameters_and_learn(net):
    """Random init, no warm-up, lr 0.02: finite, every part moves, RPN and RoI heads learn the batch.

    No weight decay: decay alone moves every decayed weight, so a head cut off from its loss's
    gradient would still "move"; without it a parameter changes only through its gradient.
    """
    batch = _batch()
    watched = ["backbone.conv1.weight", "backbone.layer4.2.bn3.gamma", "fpn.output_convs.0.weight",
               "rpn_head.objectness.weight", "box_head.cls_score.weight",
               "box_head.box_deltas.weight", "mask_head.mask_logits.weight"]
    params = {p.name: p for p in net.get_parameters()}
    before = {name: params[name].asnumpy().copy() for name in watched}
    start = _losses(net, batch)
    optimizer = nn.Momentum(net.trainable_params(), learning_rate=0.02, momentum=0.9, weight_decay=0.0)
    step = nn.TrainOneStepCell(_SumOfLosses(net), optimizer)
    step.set_train(True)
    totals = [float(step(*batch).asnumpy()) for _ in range(TRAIN_STEPS)]
    assert all(np.isfinite(t) for t in totals), totals
    for name in watched:
        after = params[name].asnumpy()
        assert np.isfinite(after).all(), name
        assert not np.array_equal(before[name], after), f"{name} did not change"
    end = _losses(net, batch)
    assert all(np.isfinite(v) for v in end.values()), end
    assert end["rpn_cls"] < 0.9 * start["rpn_cls"], (start, end)
    assert end["rcnn_cls"] < 0.9 * start["rcnn_cls"], (start, end)
    assert end["rcnn_mask"] < 0.9 * start["rcnn_mask"], (start, end)
    assert sum(end.values()) < sum(start.values()), (start, end)


# ---- the mask head's RoI bound (config mask_rois_per_image), PyNative ---------------------
# One net (PyNative: construct is plain Python, so the bound is read at every call and the
# mask head's inputs can be recorded); test_builder.py checks that the config key reaches it.

P_MAX = 16  # rcnn_num_samples 64 x rcnn_pos_fraction 0.25


class _Recorder(nn.Cell):
    """Passes its inputs to ``cell`` and keeps the last ones."""

    def __init__(self, cell):
        super().__init__(auto_prefix=False)
        self.cell = cell
        self.inputs = None

    def construct(self, *inputs):
        self.inputs = inputs
        return self.cell(*inputs)

    def select(self, *inputs):
        return self.cell.select(*inputs)


@pytest.fixture(scope="module")
def recording_net():
    """The tiny net with P_max = 16; mask head and mask loss recorded. (Its calls without a
    sampling step all sample with the keys of step 0: the same RoIs at every call.)"""
    previous = ms.get_context("mode")
    ms.set_context(mode=ms.PYNATIVE_MODE)
    try:
        ms.set_seed(0)
        net = build_model(_tiny_config().replace(rcnn_num_samples=4 * P_MAX))
        # Logits of unit scale (not ~0.001): every RoI's mask loss then differs clearly.
        predictor = net.mask_head.mask_logits.weight
        predictor.set_data(Tensor(predictor.asnumpy() * 1000.0))
        net.mask_head = _Recorder(net.mask_head)
        net.mask_loss = _Recorder(net.mask_loss)
        net.set_train(True)
        yield net
    finally:
        ms.set_context(mode=previous)


def _run_with_bound(net, bound):
    """The five losses with the mask head on ``B * bound`` positive slots shared by the batch."""
    net.mask_loss.rois_per_image = net.mask_loss.cell.rois_per_image = bound
    previous = ms.get_context("mode")
    ms.set_context(mode=ms.PYNATIVE_MODE)
    try:
        return [float(v.asnumpy()) for v in net(*_batch())]
    finally:
        ms.set_context(mode=previous)


@pytest.fixture(scope="module")
def unbounded(recording_net):
    """(losses, real positives per image, mask-loss inputs) of the batch with every slot."""
    losses = _run_with_bound(recording_net, P_MAX)
    inputs = recording_net.mask_loss.inputs
    assert recording_net.mask_head.inputs[0].shape[0] == 2 * P_MAX
    weights = inputs[6].asnumpy().reshape(2, P_MAX)
    return losses, (weights > 0).sum(axis=1), inputs


def test_a_shared_bound_above_the_real_positives_changes_no_loss(recording_net, unbounded):
    full, positives, _ = unbounded
    # B * K slots for the whole batch: K = half the batch's positives (rounded up) drops none.
    bound = int(-(-positives.sum() // 2))
    assert 1 <= bound < P_MAX, positives
    losses = _run_with_bound(recording_net, bound)
    np.testing.assert_allclose(losses, full, rtol=1e-6)
    assert losses[4] > 0
    assert recording_net.mask_head.inputs[0].shape[0] == 2 * bound


def test_dynamic_training_rows_give_the_losses_of_static_rows_on_fewer_rows(recording_net, unbounded):
    # unbounded: every positive slot, the static rows of mask_rows static (test_builder.py);
    # None: the dynamic rows (ops.nonzero) of mask_rows dynamic, the CPU's default.
    full, positives, inputs = unbounded
    assert positives.sum() < 2 * P_MAX, positives  # padding slots exist, so rows are saved
    losses = _run_with_bound(recording_net, None)
    np.testing.assert_allclose(losses, full, rtol=1e-6)
    first_is_positive = bool(inputs[6].asnumpy()[0] > 0)
    assert recording_net.mask_head.inputs[0].shape[0] == positives.sum() + (0 if first_is_positive else 1)


def test_static_and_dynamic_detection_rows_give_the_same_detections(recording_net):
    """Inference (config mask_rows): masks of all K slots (static) or of the real detections
    only (dynamic, ops.nonzero): the same five outputs on the same weights and image."""
    previous = ms.get_context("mode")
    ms.set_context(mode=ms.PYNATIVE_MODE)
    recording_net.set_train(False)
    outputs, head_rows = {}, {}
    try:
        for static in (True, False):
            recording_net.static_mask_rows = static
            outputs[static] = [o.asnumpy() for o in recording_net(*_batch()[:2])]
            head_rows[static] = recording_net.mask_head.inputs[0].shape[0]
    finally:
        recording_net.static_mask_rows = False
        recording_net.set_train(True)
        ms.set_context(mode=previous)
    valid = outputs[True][3]
    assert head_rows[True] == 2 * TEST_MAX_PER_IMG
    assert 0 < head_rows[False] == valid.sum() + (0 if valid.reshape(-1)[0] else 1) < head_rows[True]
    for name, static, dynamic in zip(("boxes", "scores", "labels", "valid", "masks"), outputs[True],
                                     outputs[False]):
        np.testing.assert_allclose(static, dynamic, rtol=1e-5, atol=1e-6, err_msg=name)
    assert outputs[True][4][valid].max() > 0  # the real detections have masks


def test_the_mask_head_runs_on_bound_rows_per_image(recording_net, unbounded):
    _run_with_bound(recording_net, 3)
    assert recording_net.mask_head.inputs[0].shape[0] == 2 * 3  # B * K RoI feature rows
    assert recording_net.mask_loss.inputs[2].shape == (2 * 3, 4)


def test_a_bound_below_the_real_positives_takes_turns_between_the_images(recording_net, unbounded):
    full, positives, inputs = unbounded
    assert positives.min() >= 1 and positives.max() > 1, positives
    losses = _run_with_bound(recording_net, 1)
    np.testing.assert_allclose(losses[:4], full[:4], rtol=1e-6)  # the box/RPN losses keep every RoI
    # Expected: the unbounded mask loss restricted to slot 0 of each image (flat rows 0 and P_MAX).
    first = Tensor(np.array([0, P_MAX], np.int32))
    expected = recording_net.mask_loss.cell(*(ops.gather(v, first, 0) if i != 1 else v for i, v in enumerate(inputs)))
    assert losses[4] == pytest.approx(float(expected.asnumpy()), rel=1e-5)
    assert abs(losses[4] - full[4]) > 1e-3 * full[4]  # the dropped positives did count before
