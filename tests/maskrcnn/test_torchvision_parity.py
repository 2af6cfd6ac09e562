"""Cross-framework regression: torchvision's Mask R-CNN and ours agree stage by stage and in the
final outputs (no torch needed).

Weights in torchvision's names and shapes come from a seeded NumPy generator with trained-like
BatchNorm statistics (``tests/torchvision_parity_common.py``), are written as ``.safetensors``,
converted by ``convert_checkpoint.py`` with its defaults and run through our model with
``FineTune/torchvision.yaml`` (numerics preset ``torchvision``). The reference was recorded once
by ``tools/make_torchvision_reference.py`` from torchvision itself, loading the same weights
through ``maskrcnn_resnet50_fpn(weights=COCO_V1)`` (which runs them with BatchNorm eps 0; versions
in the reference's metadata). Compared: C2-C5, P2-P6, anchors, RPN objectness and deltas,
proposals, RoIAlign features and box / mask head outputs on fixed RoIs, the final detections
(boxes, scores, labels) and their masks pasted into the image by the evaluation's paste.

Everything runs in PyNative mode (no graph is compiled); one 256x320 image, 91 classes,
torchvision's inference counts (1000 / 1000 / 100).
"""

import json
import os

import numpy as np
import pytest

import convert_checkpoint
import torchvision_parity_common as common
from src.config import REPO_ROOT

RECIPE = os.path.join(REPO_ROOT, "FineTune", "torchvision.yaml")
# float32 noise: all stages agreed to <= 2e-6 (relative to the tensor's norm / max |x|) when the
# reference was made; 1e-5 leaves room for other BLAS builds and thread counts.
RELATIVE_TOLERANCE = 1e-5
# Boxes: the same relative tolerance, in pixels of the input's longer side.
BOX_TOLERANCE_PX = RELATIVE_TOLERANCE * max(common.IMAGE_HEIGHT, common.IMAGE_WIDTH)
# Final detections: matched by label and IoU above this; at least this many of the 100.
MATCH_IOU = 0.999
MIN_MATCHED = 95
# Scores this close are a tie in float32 (softmax outputs of order 0.1 agree to ~1e-7).
SCORE_TIE = 1e-5
# Pasted masks: the share of the foreground pixels (union of ours and torchvision's) that agree.
MIN_MASK_AGREEMENT = 0.99
# torchvision's Mask R-CNN v1 has 307 weight tensors (tests/data/torchvision_maskrcnn_params.txt).
NUM_TENSORS = 307
# The same sample counts and thresholds as the reference (tools/make_torchvision_reference.py).
PARITY_OVERRIDES = {
    "coco_classes": ["background"] + [f"class{i}" for i in range(1, common.NUM_CLASSES)],
    "resize_to": [],  # the input is handed over already at its size
    "img_height": common.IMAGE_HEIGHT,
    "img_width": common.IMAGE_WIDTH,
    "rpn_pre_nms_top_k_test": common.RPN_PRE_NMS_TOP_N,  # the recipe's values; pinned here too
    "rpn_post_nms_top_k_test": common.RPN_POST_NMS_TOP_N,
    "rpn_nms_thr": common.RPN_NMS_THRESH,
    "test_score_thr": common.BOX_SCORE_THRESH,
    "test_nms_thr": common.BOX_NMS_THRESH,
    "test_max_per_img": common.DETECTIONS_PER_IMG,
}


@pytest.fixture(scope="module")
def reference():
    summaries, full, meta = common.load_reference()
    return summaries, full, json.loads(meta)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """The seeded torchvision weights as .safetensors, converted by convert_checkpoint.py."""
    from safetensors.numpy import save_file

    folder = tmp_path_factory.mktemp("torchvision")
    source = str(folder / "maskrcnn_parity.safetensors")
    save_file(common.parity_weights(), source)
    output = str(folder / "maskrcnn_parity.ckpt")
    assert convert_checkpoint.main(["--ckpt_file", source, "--output_file", output]) == 0
    os.remove(source)  # 176 MB
    return output


@pytest.fixture(scope="module")
def parity_config():
    from src.config import load_config

    return load_config(RECIPE, dict(PARITY_OVERRIDES))


@pytest.fixture(scope="module")
def ours(converted, parity_config):
    """Every stage of our model on the common input, as NumPy arrays (PyNative mode)."""
    import mindspore as ms
    from mindspore import Tensor

    from src.checkpoint.load import load_pretrained
    from src.maskrcnn.builder import build_model

    previous = ms.get_context("mode")
    ms.set_context(mode=ms.PYNATIVE_MODE, device_target="CPU")
    try:
        net = build_model(parity_config, pretrained_backbone=True)
        report = load_pretrained(net, converted)
        net.set_train(False)
        image = Tensor(common.parity_image())
        image_shape = Tensor(np.array([[common.IMAGE_HEIGHT, common.IMAGE_WIDTH, 1.0, 1.0]], np.float32))
        rois = Tensor(common.fixed_rois()[None])
        out = {"image": image}
        backbone = net.backbone(image)
        pyramid = net.fpn(backbone)
        out.update({f"c{i + 2}": c for i, c in enumerate(backbone)})
        out.update({f"p{i + 2}": p for i, p in enumerate(pyramid)})
        objectness, deltas = net.rpn_head(pyramid)
        out["anchors"], out["rpn_objectness"], out["rpn_deltas"] = net.anchors, objectness[0], deltas[0]
        proposals, proposal_valid = net.proposals_test(objectness, deltas, net.anchors, image_shape)
        out["proposals"] = proposals[0].asnumpy()[proposal_valid[0].asnumpy()]
        out["box_roi_features"] = net.box_roi_align(pyramid[:4], rois)
        out["box_cls_logits"], out["box_deltas"] = net.box_head(out["box_roi_features"])
        out["mask_roi_features"] = net.mask_roi_align(pyramid[:4], rois)
        out["mask_logits"] = net.mask_head(out["mask_roi_features"])
        boxes, scores, labels, valid, masks = net(image, image_shape)
        keep = valid[0].asnumpy()
        out["detection_boxes"], out["detection_scores"] = boxes[0].asnumpy()[keep], scores[0].asnumpy()[keep]
        out["detection_labels"], out["detection_masks"] = labels[0].asnumpy()[keep], masks[0].asnumpy()[keep]
    finally:
        ms.set_context(mode=previous)
    arrays = {k: v.asnumpy() if isinstance(v, Tensor) else v for k, v in out.items()}
    arrays["pasted_masks"] = _pasted(arrays, parity_config)
    return arrays, report


def _pasted(arrays, config):
    """Our final masks pasted into the (unresized) image as evaluation pastes them: bool [D, H, W]."""
    from src.evaluation.results import predictions_to_original
    from src.maskrcnn.numerics import get_numerics

    count = len(arrays["detection_boxes"])
    detections = predictions_to_original(
        arrays["detection_boxes"], arrays["detection_scores"], arrays["detection_labels"], np.ones(count, bool),
        arrays["detection_masks"], [common.IMAGE_HEIGHT, common.IMAGE_WIDTH, 1.0, 1.0], common.IMAGE_HEIGHT,
        common.IMAGE_WIDTH, common.MASK_THRESHOLD, mask_paste=get_numerics(config.numerics).mask_paste)
    return detections.masks.astype(bool)


def _relative(ours_value, reference_value):
    """max |ours - reference| / max |reference|."""
    ours_value = np.asarray(ours_value, np.float64)
    reference_value = np.asarray(reference_value, np.float64)
    assert ours_value.shape == reference_value.shape, f"shape {ours_value.shape} != {reference_value.shape}"
    return float(np.abs(ours_value - reference_value).max() / np.abs(reference_value).max())


def test_reference_is_small_and_records_its_versions(reference):
    summaries, full, meta = reference
    assert os.path.getsize(common.REFERENCE_FILE) < 300_000
    assert meta["torch"].startswith("2.") and meta["torchvision"].startswith("0.")
    assert set(summaries) == set(common.SUMMARY_STAGES) and set(full) == set(common.FULL_STAGES)
    assert meta["num_detections"] == len(full["detection_boxes"]) == common.DETECTIONS_PER_IMG
    # Made through torchvision's COCO_V1 loader, which sets the BatchNorm eps to 0.
    assert meta["loader"].startswith("maskrcnn_resnet50_fpn(weights=") and meta["bn_eps"] == 0.0


def test_conversion_records_the_torchvision_preset(converted, ours):
    from src.checkpoint.io import read_checkpoint_with_metadata
    from src.checkpoint.names import BN_EPS_KEY, NUMERICS_KEY

    params, metadata = read_checkpoint_with_metadata(converted)
    assert len(params) == NUM_TENSORS
    # The eps torchvision's COCO_V1 loader runs the weights with, recorded by default.
    assert metadata == {NUMERICS_KEY: "torchvision", "converted_from": "torchvision_maskrcnn", BN_EPS_KEY: "0.0"}
    _, report = ours
    assert len(report.loaded) == NUM_TENSORS and not report.skipped and not report.left_at_init
    assert report.numerics == "torchvision" and report.bn_eps == 0.0


@pytest.mark.parametrize("stage", [s for s in common.SUMMARY_STAGES if s != "anchors_quirk_size"])
def test_stage_matches_torchvision(stage, ours, reference):
    arrays, _ = ours
    summaries, _, _ = reference
    projection_error, sample_error = common.summary_differences(summaries[stage], arrays[stage], stage)
    assert projection_error <= RELATIVE_TOLERANCE and sample_error <= RELATIVE_TOLERANCE, \
        f"{stage}: relative difference to torchvision {projection_error:.3g} (projections), " \
        f"{sample_error:.3g} (sampled entries)"


def test_proposals_match_torchvision(ours, reference):
    """The same proposals in the same order (by objectness), except that two with tied scores
    may come in either order."""
    arrays, _ = ours
    _, full, _ = reference
    expected, scores = full["proposals"], full["proposal_scores"]
    assert arrays["proposals"].shape == expected.shape  # same number kept after NMS
    for row in np.where(np.abs(arrays["proposals"] - expected).max(axis=1) > BOX_TOLERANCE_PX)[0]:
        tied = np.where(np.abs(scores - scores[row]) <= SCORE_TIE)[0]
        assert len(tied) > 1, f"proposal {row} (score {scores[row]:.7f}) differs from torchvision's, not at a tie"
        gaps = np.abs(expected[tied] - arrays["proposals"][row]).max(axis=1)
        assert gaps.min() <= BOX_TOLERANCE_PX, f"proposal {row} is none of torchvision's at its tied score"


@pytest.mark.parametrize("output", ["box_cls_logits", "box_deltas"])
def test_box_head_on_fixed_rois_matches_torchvision(output, ours, reference):
    arrays, _ = ours
    _, full, _ = reference
    assert _relative(arrays[output], full[output]) <= RELATIVE_TOLERANCE


def _box_iou(a, b):
    """IoU of the boxes a [4] and b [4]."""
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _matches(arrays, full):
    """Pairs (ours, torchvision) of final detections with the same label and IoU > MATCH_IOU, each
    torchvision detection matched at most once, in torchvision's (score) order."""
    pairs, taken = [], set()
    for j, (box, label) in enumerate(zip(full["detection_boxes"], full["detection_labels"])):
        for i, (our_box, our_label) in enumerate(zip(arrays["detection_boxes"], arrays["detection_labels"])):
            if i not in taken and our_label == label and _box_iou(our_box, box) > MATCH_IOU:
                pairs.append((i, j))
                taken.add(i)
                break
    return pairs


def test_final_detections_match_torchvision(ours, reference):
    """>= 95 of torchvision's 100 final detections found with the same label and IoU > 0.999; any
    other is at a tied score (its score within float32 noise of another detection's)."""
    arrays, _ = ours
    _, full, _ = reference
    assert len(arrays["detection_boxes"]) == len(full["detection_boxes"]) == common.DETECTIONS_PER_IMG
    pairs = _matches(arrays, full)
    assert len(pairs) >= MIN_MATCHED, f"only {len(pairs)} of {common.DETECTIONS_PER_IMG} detections matched"
    matched = {j for _, j in pairs}
    scores = full["detection_scores"]
    for j in set(range(len(scores))) - matched:
        gaps = np.abs(np.delete(scores, j) - scores[j])
        assert gaps.min() <= SCORE_TIE, f"torchvision detection {j} (score {scores[j]:.6f}) unmatched, not at a tie"
    ours_index, theirs = (np.asarray(v) for v in zip(*pairs))
    np.testing.assert_allclose(arrays["detection_scores"][ours_index], scores[theirs], rtol=0, atol=SCORE_TIE)
    np.testing.assert_allclose(arrays["detection_boxes"][ours_index], full["detection_boxes"][theirs],
                               rtol=0, atol=BOX_TOLERANCE_PX)


def test_pasted_masks_match_torchvision(ours, reference):
    """The evaluation's paste (torchvision's paste_masks_in_image under the preset) gives
    torchvision's pasted masks pixel for pixel on >= 99% of each matched detection's pixels."""
    arrays, _ = ours
    _, full, meta = reference
    theirs = common.unpack_masks(full["pasted_masks"], meta["num_detections"])
    assert int(theirs.sum()) == meta["mask_pixels"]
    pairs = _matches(arrays, full)
    ours_masks = arrays["pasted_masks"][[i for i, _ in pairs]]
    their_masks = theirs[[j for _, j in pairs]]
    union = (ours_masks | their_masks).sum()
    disagree = (ours_masks != their_masks).sum()
    assert union > 0 and disagree <= (1.0 - MIN_MASK_AGREEMENT) * union, \
        f"{disagree} of {union} foreground pixels differ"


def test_anchors_when_the_input_is_not_a_multiple_of_64(parity_config, reference):
    from src.config import FPN_STRIDES
    from src.maskrcnn.anchors import generate_anchors
    from src.maskrcnn.numerics import get_numerics

    height, width = common.ANCHOR_QUIRK_SIZE
    config = parity_config.replace(img_height=height, img_width=width)
    anchors = generate_anchors(config.feature_shapes, FPN_STRIDES, config.anchor_scales, config.anchor_ratios,
                               layout=get_numerics(config.numerics).anchor_layout,
                               input_size=(height, width))
    summaries, _, _ = reference
    projection_error, sample_error = common.summary_differences(summaries["anchors_quirk_size"], anchors,
                                                                "anchors_quirk_size")
    assert projection_error <= RELATIVE_TOLERANCE and sample_error <= RELATIVE_TOLERANCE
