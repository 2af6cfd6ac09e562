"""Cross-framework regression: torchvision's Mask R-CNN and ours agree stage by stage (no torch needed).

Weights in torchvision's names and shapes come from a seeded NumPy generator
(``tests/torchvision_parity_common.py``), are written as ``.safetensors``, converted by
``convert_checkpoint.py`` and run through our model with the ``torchvision`` numerics preset
(``FineTune/torchvision.yaml``). Every stage is compared with the summaries that
``tools/make_torchvision_reference.py`` recorded once from torchvision itself (versions in the
reference's metadata): C2-C5, P2-P6, anchors, RPN objectness and deltas, proposals, RoIAlign
features and box / mask head outputs on fixed RoIs, and the final detections with their masks.

Everything runs in PyNative mode (no graph is compiled); one 128x192 image.
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
# torchvision's Mask R-CNN v1 has 307 weight tensors (tests/data/torchvision_maskrcnn_params.txt).
NUM_TENSORS = 307
# The same sample counts and thresholds as the reference (tools/make_torchvision_reference.py).
PARITY_OVERRIDES = {
    "coco_classes": ["background"] + [f"class{i}" for i in range(1, common.NUM_CLASSES)],
    "img_height": common.IMAGE_HEIGHT,
    "img_width": common.IMAGE_WIDTH,
    "rpn_pre_nms_top_k_test": common.RPN_PRE_NMS_TOP_N,
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
    return arrays, report


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
    assert meta["num_detections"] == len(full["detection_boxes"]) > 0


def test_conversion_records_the_torchvision_preset(converted, ours):
    from src.checkpoint.io import read_checkpoint_with_metadata
    from src.checkpoint.names import NUMERICS_KEY

    params, metadata = read_checkpoint_with_metadata(converted)
    assert len(params) == NUM_TENSORS
    assert metadata == {NUMERICS_KEY: "torchvision", "converted_from": "torchvision_maskrcnn"}
    _, report = ours
    assert len(report.loaded) == NUM_TENSORS and not report.skipped and not report.left_at_init
    assert report.numerics == "torchvision"


@pytest.mark.parametrize("stage", [s for s in common.SUMMARY_STAGES if s != "anchors_quirk_size"])
def test_stage_matches_torchvision(stage, ours, reference):
    arrays, _ = ours
    summaries, _, _ = reference
    projection_error, sample_error = common.summary_differences(summaries[stage], arrays[stage], stage)
    assert projection_error <= RELATIVE_TOLERANCE and sample_error <= RELATIVE_TOLERANCE, \
        f"{stage}: relative difference to torchvision {projection_error:.3g} (projections), " \
        f"{sample_error:.3g} (sampled entries)"


def test_proposals_match_torchvision(ours, reference):
    arrays, _ = ours
    _, full, _ = reference
    expected = full["proposals"]
    assert arrays["proposals"].shape == expected.shape  # same number kept after NMS
    # Same boxes in the same order (by objectness).
    np.testing.assert_allclose(arrays["proposals"], expected, rtol=0, atol=BOX_TOLERANCE_PX)


@pytest.mark.parametrize("output", ["box_cls_logits", "box_deltas"])
def test_box_head_on_fixed_rois_matches_torchvision(output, ours, reference):
    arrays, _ = ours
    _, full, _ = reference
    assert _relative(arrays[output], full[output]) <= RELATIVE_TOLERANCE


def test_final_detections_match_torchvision(ours, reference):
    arrays, _ = ours
    _, full, _ = reference
    assert len(arrays["detection_boxes"]) == len(full["detection_boxes"])
    np.testing.assert_array_equal(arrays["detection_labels"], full["detection_labels"])
    np.testing.assert_allclose(arrays["detection_boxes"], full["detection_boxes"], rtol=0, atol=BOX_TOLERANCE_PX)
    assert _relative(arrays["detection_scores"], full["detection_scores"]) <= RELATIVE_TOLERANCE


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
