"""Produce the torchvision reference of tests/maskrcnn/test_torchvision_parity.py (run once, by hand).

Needs torch and torchvision, which are never requirements of this project: install them in a
separate virtual environment outside the repository, e.g.

    python3 -m venv /tmp/tv-venv
    /tmp/tv-venv/bin/pip install torch==2.14.1 torchvision==0.29.1 numpy safetensors
    /tmp/tv-venv/bin/python tools/make_torchvision_reference.py [--out tests/data/torchvision_parity_reference.npz]
                                                                [--weights_out W.safetensors]

It builds the model through torchvision's own loader path for the published COCO weights,
``maskrcnn_resnet50_fpn(weights=MaskRCNN_ResNet50_FPN_Weights.COCO_V1)`` (FrozenBatchNorm2d
ResNet50, FPN, RPN, RoI heads, 91 classes, torchvision's default inference counts and thresholds,
and ``overwrite_eps(model, 0.0)`` after loading), with one change: the download the builder asks
for (``load_state_dict_from_url`` of the COCO_V1 URL) returns the seeded NumPy weights of
``tests/torchvision_parity_common.py`` instead (loaded ``strict=True`` by the builder: every name
and shape must match torchvision's). Its transform resizes the common input to its own size
(``min_size``/``max_size`` = the input's sides), i.e. not at all. It runs the stages one by one
on the common input, checks that the stage-by-stage run gives the same detections as the
model's own forward pass, and writes a small summary of every stage (see ``summarise``), the
final detections and the forward pass's pasted masks (``> 0.5``, bit-packed), with the torch /
torchvision versions and the BatchNorm epsilon the loader left in the model.
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


def build_model(weights):
    """torchvision's ``maskrcnn_resnet50_fpn(weights=COCO_V1)`` with ``weights`` (name -> ndarray)
    in place of the download; the transform keeps the common input's size."""
    import torch
    import torchvision.models._api as weights_api
    from torchvision.models.detection import MaskRCNN_ResNet50_FPN_Weights, maskrcnn_resnet50_fpn

    coco = MaskRCNN_ResNet50_FPN_Weights.COCO_V1
    download = weights_api.load_state_dict_from_url

    def seeded_state_dict(url, *args, **kwargs):
        if url != coco.url:
            raise RuntimeError(f"unexpected download of {url}")
        return {name: torch.from_numpy(value) for name, value in weights.items()}

    weights_api.load_state_dict_from_url = seeded_state_dict
    try:
        model = maskrcnn_resnet50_fpn(weights=coco, min_size=common.IMAGE_HEIGHT, max_size=common.IMAGE_WIDTH)
    finally:
        weights_api.load_state_dict_from_url = download
    settings = (model.rpn._pre_nms_top_n["testing"], model.rpn._post_nms_top_n["testing"],
                model.roi_heads.detections_per_img, model.roi_heads.score_thresh, model.roi_heads.nms_thresh)
    expected = (common.RPN_PRE_NMS_TOP_N, common.RPN_POST_NMS_TOP_N, common.DETECTIONS_PER_IMG,
                common.BOX_SCORE_THRESH, common.BOX_NMS_THRESH)
    if settings != expected:
        raise RuntimeError(f"torchvision's defaults {settings} are not the common settings {expected}")
    return model


def loader_bn_eps(model) -> float:
    """The epsilon of the model's FrozenBatchNorm2d layers (all equal after overwrite_eps)."""
    from torchvision.ops.misc import FrozenBatchNorm2d

    eps = {float(m.eps) for m in model.modules() if isinstance(m, FrozenBatchNorm2d)}
    if len(eps) != 1:
        raise RuntimeError(f"FrozenBatchNorm2d layers with different eps: {sorted(eps)}")
    return eps.pop()


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


def forward_with_masks(model, image: np.ndarray, stages) -> np.ndarray:
    """The model's own forward pass (transform included) on the un-normalised image must give the
    stage-by-stage detections: the transform is then the identity and the decomposition exact.

    Returns:
        The forward pass's pasted masks (``paste_masks_in_image`` at the input size) above
        ``common.MASK_THRESHOLD``: bool [D, H, W].
    """
    import torch

    mean = np.asarray(common.IMAGE_MEAN_01, np.float32)[:, None, None]
    std = np.asarray(common.IMAGE_STD_01, np.float32)[:, None, None]
    image01 = torch.from_numpy(image[0] * std + mean)
    result = model([image01])[0]
    np.testing.assert_allclose(result["boxes"].numpy(), stages["detection_boxes"], rtol=0, atol=1e-3)
    np.testing.assert_array_equal(result["labels"].numpy(), stages["detection_labels"])
    return result["masks"][:, 0].numpy() > common.MASK_THRESHOLD


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
    model = build_model(weights)
    model.eval()
    image, rois = common.parity_image(), common.fixed_rois()
    with torch.no_grad():
        stages = run_stages(model, image, rois)
        masks = forward_with_masks(model, image, stages)
    stages["image"] = image
    stages["pasted_masks"] = common.pack_masks(masks)

    for stage in common.SUMMARY_STAGES + common.FULL_STAGES:
        value = stages[stage].astype(np.float32)
        logger.info("%-18s %-22s std %.4g max|x| %.4g", stage, tuple(value.shape),
                    float(np.std(value)) if value.size else 0.0, float(np.abs(value).max()) if value.size else 0.0)
    summaries = {stage: common.summarise(stage, stages[stage]) for stage in common.SUMMARY_STAGES}
    full = {stage: stages[stage] for stage in common.FULL_STAGES}
    meta = json.dumps({"torch": torch.__version__, "torchvision": torchvision.__version__,
                       "numpy": np.__version__, "script": "tools/make_torchvision_reference.py",
                       "num_proposals": int(len(stages["proposals"])),
                       "num_detections": int(len(stages["detection_boxes"])),
                       "loader": "maskrcnn_resnet50_fpn(weights=MaskRCNN_ResNet50_FPN_Weights.COCO_V1)",
                       "bn_eps": loader_bn_eps(model),
                       "mask_pixels": int(masks.sum())})
    common.save_reference(args.out, summaries, full, meta)
    logger.info("wrote %s (%d bytes): %s", args.out, os.path.getsize(args.out), meta)
    if args.weights_out:
        from safetensors.numpy import save_file

        save_file(weights, args.weights_out)
        logger.info("wrote the weights to %s", args.weights_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
