"""Produce the torchvision reference of tests/maskrcnn/test_torchvision_parity.py (run once, by hand).

Needs torch and torchvision, which are never requirements of this project: install them in a
separate virtual environment outside the repository, e.g.

    python3 -m venv /tmp/tv-venv
    /tmp/tv-venv/bin/pip install torch==2.14.1 torchvision==0.29.1 numpy safetensors
    /tmp/tv-venv/bin/python tools/make_torchvision_reference.py [--out tests/data/torchvision_parity_reference.npz]
                                                                [--weights_out W.safetensors]

It builds torchvision's own ``maskrcnn_resnet50_fpn`` (v1: FrozenBatchNorm2d ResNet50, FPN, RPN,
RoI heads) with the class count, sample counts and thresholds of
``tests/torchvision_parity_common.py``, loads the seeded NumPy weights defined there
(``strict=True``: every name and shape must match torchvision's), runs the stages one by one
on the common input, checks that the stage-by-stage run gives the same detections as the
model's own forward pass, and writes a small summary of every stage (see ``summarise``) with
the torch / torchvision versions.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Optional, Sequence

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO_ROOT, "tests"))

import torchvision_parity_common as common  # noqa: E402  (tests/ is put on the path above)

logger = logging.getLogger("make_torchvision_reference")


def build_model():
    """torchvision's Mask R-CNN ResNet50-FPN v1, configured like the test's config."""
    from torchvision.models import resnet50
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.models.detection.mask_rcnn import MaskRCNN
    from torchvision.ops.misc import FrozenBatchNorm2d

    # FrozenBatchNorm2d, as in torchvision's pretrained models; 3 trainable layers (irrelevant here).
    backbone = _resnet_fpn_extractor(resnet50(weights=None, norm_layer=FrozenBatchNorm2d), 3)
    return MaskRCNN(backbone, num_classes=common.NUM_CLASSES,
                    # the transform resizes to min/max size: with the input's own size it is the identity
                    min_size=common.IMAGE_HEIGHT, max_size=common.IMAGE_WIDTH,
                    image_mean=list(common.IMAGE_MEAN_01), image_std=list(common.IMAGE_STD_01),
                    rpn_pre_nms_top_n_test=common.RPN_PRE_NMS_TOP_N,
                    rpn_post_nms_top_n_test=common.RPN_POST_NMS_TOP_N,
                    rpn_nms_thresh=common.RPN_NMS_THRESH,
                    box_score_thresh=common.BOX_SCORE_THRESH, box_nms_thresh=common.BOX_NMS_THRESH,
                    box_detections_per_img=common.DETECTIONS_PER_IMG)


def run_stages(model, image: np.ndarray, rois: np.ndarray):
    """Every stage of ``model`` on the normalised ``image`` [1,3,H,W]; returns {stage: ndarray}."""
    import torch
    from torchvision.models.detection.image_list import ImageList
    from torchvision.models.detection.rpn import concat_box_prediction_layers

    out = {}
    x = torch.from_numpy(image)
    image_sizes = [(common.IMAGE_HEIGHT, common.IMAGE_WIDTH)]
    images = ImageList(x, image_sizes)
    body = model.backbone.body(x)
    for i, c in enumerate(body.values()):
        out[f"c{i + 2}"] = c
    features = model.backbone.fpn(body)
    for i, p in enumerate(features.values()):
        out[f"p{i + 2}"] = p
    feature_list = list(features.values())

    rpn = model.rpn
    objectness, deltas = rpn.head(feature_list)
    anchors = rpn.anchor_generator(images, feature_list)
    num_anchors_per_level = [o[0].numel() for o in objectness]
    objectness, deltas = concat_box_prediction_layers(objectness, deltas)  # [A, 1], [A, 4]
    out["anchors"] = anchors[0]
    out["rpn_objectness"] = objectness.reshape(-1)
    out["rpn_deltas"] = deltas
    decoded = rpn.box_coder.decode(deltas, anchors).view(1, -1, 4)
    boxes, scores = rpn.filter_proposals(decoded, objectness, images.image_sizes, num_anchors_per_level)
    out["proposals"], out["proposal_scores"] = boxes[0], scores[0]
    same_boxes = rpn(images, features)[0][0]
    assert torch.equal(same_boxes, boxes[0]), "stage-by-stage RPN differs from model.rpn"

    heads = model.roi_heads
    roi_list = [torch.from_numpy(rois)]
    box_features = heads.box_roi_pool(features, roi_list, image_sizes)
    out["box_roi_features"] = box_features
    out["box_cls_logits"], out["box_deltas"] = heads.box_predictor(heads.box_head(box_features))
    mask_features = heads.mask_roi_pool(features, roi_list, image_sizes)
    out["mask_roi_features"] = mask_features
    out["mask_logits"] = heads.mask_predictor(heads.mask_head(mask_features))

    # The anchors at an input size that is not a multiple of 64 (only the feature sizes matter).
    quirk_h, quirk_w = common.ANCHOR_QUIRK_SIZE
    quirk_images = ImageList(torch.zeros(1, 3, quirk_h, quirk_w), [common.ANCHOR_QUIRK_SIZE])
    quirk_features = [torch.zeros(1, 1, -(-quirk_h // s), -(-quirk_w // s)) for s in (4, 8, 16, 32, 64)]
    out["anchors_quirk_size"] = rpn.anchor_generator(quirk_images, quirk_features)[0]

    detections, _ = heads(features, boxes, image_sizes)
    det = detections[0]
    out["detection_boxes"], out["detection_scores"] = det["boxes"], det["scores"]
    out["detection_labels"] = det["labels"].to(torch.int32)
    out["detection_masks"] = det["masks"][:, 0]  # probabilities of the detected class, [D, 28, 28]
    return {k: v.detach().numpy() for k, v in out.items()}


def check_against_forward(model, image: np.ndarray, stages) -> None:
    """The model's own forward pass (transform included) on the un-normalised image must give the
    stage-by-stage detections: the transform is then the identity and the decomposition exact."""
    import torch

    mean = np.asarray(common.IMAGE_MEAN_01, np.float32)[:, None, None]
    std = np.asarray(common.IMAGE_STD_01, np.float32)[:, None, None]
    image01 = torch.from_numpy(image[0] * std + mean)
    result = model([image01])[0]
    np.testing.assert_allclose(result["boxes"].numpy(), stages["detection_boxes"], rtol=0, atol=1e-3)
    np.testing.assert_array_equal(result["labels"].numpy(), stages["detection_labels"])


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=common.REFERENCE_FILE, help="reference .npz to write")
    parser.add_argument("--weights_out", default="",
                        help="also write the weights as .safetensors (to try convert_checkpoint.py by hand)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    import torch
    import torchvision

    torch.set_num_threads(1)  # deterministic summation order
    weights = common.parity_weights()
    model = build_model()
    model.load_state_dict({n: torch.from_numpy(v) for n, v in weights.items()}, strict=True)
    model.eval()
    image, rois = common.parity_image(), common.fixed_rois()
    with torch.no_grad():
        stages = run_stages(model, image, rois)
        check_against_forward(model, image, stages)
    stages["image"] = image

    for stage in common.SUMMARY_STAGES + common.FULL_STAGES:
        value = stages[stage]
        logger.info("%-18s %-22s std %.4g max|x| %.4g", stage, tuple(value.shape),
                    float(np.std(value)) if value.size else 0.0, float(np.abs(value).max()) if value.size else 0.0)
    summaries = {stage: common.summarise(stage, stages[stage]) for stage in common.SUMMARY_STAGES}
    full = {stage: stages[stage] for stage in common.FULL_STAGES}
    meta = json.dumps({"torch": torch.__version__, "torchvision": torchvision.__version__,
                       "numpy": np.__version__, "script": "tools/make_torchvision_reference.py",
                       "num_proposals": int(len(stages["proposals"])),
                       "num_detections": int(len(stages["detection_boxes"]))})
    common.save_reference(args.out, summaries, full, meta)
    logger.info("wrote %s (%d bytes): %s", args.out, os.path.getsize(args.out), meta)
    if args.weights_out:
        from safetensors.numpy import save_file

        save_file(weights, args.weights_out)
        logger.info("wrote the weights to %s", args.weights_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
