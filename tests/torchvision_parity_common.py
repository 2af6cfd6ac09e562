"""The set-up of the torchvision parity check, shared by both sides (NumPy only: no MindSpore, no torch).

``tools/make_torchvision_reference.py`` (run once, with torch + torchvision in a separate
virtual environment) and ``tests/maskrcnn/test_torchvision_parity.py`` (CI, MindSpore, no torch) import
this module, so both build the same weights, input and RoIs and summarise every stage the same
way:

* weights in torchvision's ``maskrcnn_resnet50_fpn`` names and shapes
  (``tests/data/torchvision_maskrcnn_params.txt``, COCO's 91 classes), drawn from a seeded NumPy
  generator and scaled so that activations stay of order one and detections exist, with
  trained-like BatchNorm statistics (running variances log-uniform in 1e-5..1, the conv before
  each BatchNorm scaled to match), so that the BatchNorm epsilon matters as it does for the
  published COCO file; torchvision loads them through ``maskrcnn_resnet50_fpn(weights=COCO_V1)``,
  which runs them with eps 0;
* one normalised ``IMAGE_HEIGHT x IMAGE_WIDTH`` image, torchvision's inference counts
  (1000 / 1000 / 100);
* ``fixed_rois()``: boxes of all four RoI levels for the box and mask heads;
* ``summarise()``: a few fixed random projections, the norm, the largest magnitude and a few
  sampled entries of a tensor, so the committed reference stays small.
"""

from __future__ import annotations

import os
import re
from typing import Dict, Tuple

import numpy as np

DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
PARAMS_LIST = os.path.join(DATA_DIR, "torchvision_maskrcnn_params.txt")
REFERENCE_FILE = os.path.join(DATA_DIR, "torchvision_parity_reference.npz")

# The model and input of the check (configured identically on both sides).
NUM_CLASSES = 91  # COCO_V1's class count (the builder insists on it)
# Both sides multiples of 64: torchvision shifts the anchors of each level by
# input_size // feature_size per axis, which is the level's stride only then (P6 at width 160
# would be shifted by 53, see ANCHOR_QUIRK_SIZE).
IMAGE_HEIGHT, IMAGE_WIDTH = 256, 320
# An input size that is a multiple of 32 but not of 64: only the anchors are compared there.
ANCHOR_QUIRK_SIZE = (128, 160)
# torchvision's defaults, which FineTune/torchvision.yaml uses too.
RPN_PRE_NMS_TOP_N = 1000  # per level
RPN_POST_NMS_TOP_N = 1000
RPN_NMS_THRESH = 0.7
BOX_SCORE_THRESH = 0.05
BOX_NMS_THRESH = 0.5
DETECTIONS_PER_IMG = 100
# torchvision's pasted masks (probabilities at the input size) are foreground above this.
MASK_THRESHOLD = 0.5
# Trained-like BatchNorm: running variances log-uniform between these.
RUNNING_VAR_RANGE = (1e-5, 1.0)
# torchvision's input normalisation (RGB, images in 0..1).
IMAGE_MEAN_01 = (0.485, 0.456, 0.406)
IMAGE_STD_01 = (0.229, 0.224, 0.225)

WEIGHT_SEED = 20261124
IMAGE_SEED = 7
ROI_SEED = 8
PROJECTION_SEED = 9
NUM_PROJECTIONS = 8
NUM_SAMPLES = 32
NUM_RANDOM_ROIS = 8

# Layers whose first dimension is the class count (x4 for the box deltas).
CLASS_LAYERS = {
    "roi_heads.box_predictor.cls_score.": 1,
    "roi_heads.box_predictor.bbox_pred.": 4,
    "roi_heads.mask_predictor.mask_fcn_logits.": 1,
}
# Stages summarised by projections, in pipeline order (the index seeds the projections).
SUMMARY_STAGES = ("image", "c2", "c3", "c4", "c5", "p2", "p3", "p4", "p5", "p6", "anchors",
                  "rpn_objectness", "rpn_deltas", "box_roi_features", "mask_roi_features",
                  "mask_logits", "detection_masks", "anchors_quirk_size")
# Small outputs stored whole ("pasted_masks": the final masks at the input size, > 0.5, bit-packed
# by pack_masks).
FULL_STAGES = ("proposals", "proposal_scores", "box_cls_logits", "box_deltas", "detection_boxes",
               "detection_scores", "detection_labels", "pasted_masks")

_LINE = re.compile(r"^(\S+) \(([\d, ]*)\)$")


def read_param_list(path: str = PARAMS_LIST) -> Dict[str, Tuple[int, ...]]:
    """'name (d0, d1, ...)' lines -> {name: shape} in file order ('#' lines are comments)."""
    shapes = {}
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            match = _LINE.match(line)
            if not match:
                raise ValueError(f"{path}:{number}: not a 'name (shape)' line: {line!r}")
            shapes[match.group(1)] = tuple(int(v) for v in match.group(2).split(",") if v.strip())
    return shapes


def parity_shapes(num_classes: int = NUM_CLASSES) -> Dict[str, Tuple[int, ...]]:
    """torchvision's Mask R-CNN names and shapes with the class layers resized to ``num_classes``."""
    shapes = {}
    for name, shape in read_param_list().items():
        for prefix, per_class in CLASS_LAYERS.items():
            if name.startswith(prefix):
                shape = (num_classes * per_class,) + shape[1:]
        shapes[name] = shape
    return shapes


def _weight_std(name: str, shape: Tuple[int, ...]) -> float:
    """Standard deviation of a conv / linear weight: He for layers followed by a ReLU, 1/sqrt(fan_in)
    for linear outputs (FPN, logits), smaller for box deltas so decoded boxes stay plausible."""
    if "conv5_mask" in name:  # ConvTranspose [in, out, 2, 2], stride 2: each output sees one tap
        fan_in = shape[0]
    else:
        fan_in = int(np.prod(shape[1:]))
    if "cls_logits" in name or "cls_score" in name:  # spread scores: no near-ties in rankings
        return float(3.0 * np.sqrt(1.0 / fan_in))
    if name.startswith("backbone.fpn.") or "mask_fcn_logits" in name:
        return float(np.sqrt(1.0 / fan_in))
    if "bbox_pred" in name:
        return float(0.3 * np.sqrt(1.0 / fan_in))
    return float(np.sqrt(2.0 / fan_in))


def _conv_before(bn_module: str) -> str:
    """The convolution whose output a backbone BatchNorm normalises (``...bn2`` -> ``...conv2``,
    ``...downsample.1`` -> ``...downsample.0``)."""
    if bn_module.endswith("downsample.1"):
        return bn_module[:-1] + "0"
    return re.sub(r"bn(\d)$", r"conv\1", bn_module)


def parity_weights(num_classes: int = NUM_CLASSES, seed: int = WEIGHT_SEED) -> Dict[str, np.ndarray]:
    """Seeded float32 weights in torchvision's names and shapes (file order).

    FrozenBatchNorm, trained-like: running_var log-uniform in ``RUNNING_VAR_RANGE`` per channel,
    the preceding convolution's output channel scaled by ``sqrt(running_var)`` (a channel that
    varies little has small weights, as after training) and running_mean ~ N(0, 0.1) times the
    same factor, so the normalised activations stay of order one; weight in [0.5, 1] (x0.3 on
    the last BN of each residual branch and of the shortcut, so the residual sum does not grow
    with depth), bias ~ N(0, 0.1). Conv/linear biases ~ N(0, 0.05).
    """
    rng = np.random.default_rng(seed)
    arrays = {}
    low, high = np.log10(RUNNING_VAR_RANGE[0]), np.log10(RUNNING_VAR_RANGE[1])
    for name, shape in parity_shapes(num_classes).items():
        module, param = name.rsplit(".", 1)
        is_bn = re.search(r"(\.bn\d|downsample\.1)$", module) is not None
        if is_bn and param == "running_var":
            value = 10.0 ** rng.uniform(low, high, shape)
            conv = _conv_before(module) + ".weight"
            arrays[conv] = (arrays[conv] * np.sqrt(value).reshape(-1, 1, 1, 1)).astype(np.float32)
            arrays[module + ".running_mean"] *= np.sqrt(value).astype(np.float32)
        elif is_bn and param == "running_mean":
            value = rng.normal(0.0, 0.1, shape)
        elif is_bn and param == "weight":
            value = rng.uniform(0.5, 1.0, shape)
            if module.endswith((".bn3", "downsample.1")):
                value *= 0.3
        elif param == "bias":
            value = rng.normal(0.0, 0.1 if is_bn else 0.05, shape)
        else:
            value = rng.normal(0.0, _weight_std(name, shape), shape)
        arrays[name] = np.asarray(value, np.float32)
    return arrays


def parity_image(seed: int = IMAGE_SEED) -> np.ndarray:
    """A normalised RGB image [1, 3, H, W] float32: smooth blobs plus pixel noise in 0..255,
    normalised the torchvision way ((x / 255 - mean) / std)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:IMAGE_HEIGHT, 0:IMAGE_WIDTH].astype(np.float64)
    image = np.zeros((3, IMAGE_HEIGHT, IMAGE_WIDTH))
    for _ in range(6):  # a few bright blobs give the detector something to find
        cy, cx = rng.uniform(0, IMAGE_HEIGHT), rng.uniform(0, IMAGE_WIDTH)
        radius = rng.uniform(8, 40)
        colour = rng.uniform(0, 255, 3)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * radius ** 2))
        image += colour[:, None, None] * blob
    image += rng.uniform(0, 64, image.shape)
    pixels = np.clip(np.round(image), 0, 255)
    mean = np.asarray(IMAGE_MEAN_01)[:, None, None]
    std = np.asarray(IMAGE_STD_01)[:, None, None]
    return ((pixels / 255.0 - mean) / std)[None].astype(np.float32)


def fixed_rois(seed: int = ROI_SEED) -> np.ndarray:
    """RoIs [R, 4] float32 (x1, y1, x2, y2 in input pixels) for the box and mask heads.

    All inside the image, as every RoI of the pipeline is (proposals and detections are clipped
    to it): random boxes of RoI levels 2 and 3 (each side length > 1% away from the level
    threshold 112), the whole image, and a box narrower than one P2 cell (RoIAlign then widens it
    to one cell) away from the far edges.
    """
    rng = np.random.default_rng(seed)
    boxes = []
    while len(boxes) < NUM_RANDOM_ROIS:
        x1, x2 = np.sort(rng.uniform(0, IMAGE_WIDTH, 2))
        y1, y2 = np.sort(rng.uniform(0, IMAGE_HEIGHT, 2))
        side = np.sqrt((x2 - x1) * (y2 - y1))
        if side > 4 and abs(side - 112.0) > 1.12:
            boxes.append((x1, y1, x2, y2))
    boxes += [(0.0, 0.0, float(IMAGE_WIDTH), float(IMAGE_HEIGHT)), (20.3, 30.6, 22.9, 32.1)]
    return np.asarray(boxes, np.float32)


def pack_masks(masks: np.ndarray) -> np.ndarray:
    """Binary masks [K, H, W] -> uint8 bits (``np.packbits`` of the flattened masks)."""
    return np.packbits(np.asarray(masks, bool).reshape(-1))


def unpack_masks(bits: np.ndarray, count: int) -> np.ndarray:
    """Inverse of :func:`pack_masks` for ``count`` masks of the input size: bool [K, H, W]."""
    size = count * IMAGE_HEIGHT * IMAGE_WIDTH
    return np.unpackbits(bits)[:size].astype(bool).reshape(count, IMAGE_HEIGHT, IMAGE_WIDTH)


def projection_basis(stage: str, size: int) -> Tuple[np.ndarray, np.ndarray]:
    """Fixed random directions [NUM_PROJECTIONS, size] float64 and NUM_SAMPLES entry indices of a stage."""
    rng = np.random.default_rng([PROJECTION_SEED, SUMMARY_STAGES.index(stage)])
    return rng.standard_normal((NUM_PROJECTIONS, size)), rng.integers(0, size, NUM_SAMPLES)


def summarise(stage: str, tensor: np.ndarray) -> Dict[str, np.ndarray]:
    """Small, order-sensitive summary of a tensor: shape, L2 norm, max |x|, projections, samples.

    Returns:
        {"shape": int64 [ndim], "norm": f64 [], "maxabs": f64 [], "proj": f64 [NUM_PROJECTIONS],
        "samples": f64 [NUM_SAMPLES]}.
    """
    flat = np.asarray(tensor, np.float64).reshape(-1)
    if flat.size == 0:
        raise ValueError(f"stage {stage}: empty tensor, nothing to summarise")
    basis, index = projection_basis(stage, flat.size)
    return {"shape": np.asarray(np.shape(tensor), np.int64), "norm": np.asarray(np.linalg.norm(flat)),
            "maxabs": np.asarray(np.abs(flat).max()), "proj": basis @ flat, "samples": flat[index]}


def summary_differences(reference: Dict[str, np.ndarray], tensor: np.ndarray, stage: str
                        ) -> Tuple[float, float]:
    """How far ``tensor`` is from a reference summary.

    Returns:
        (projection error / reference norm: about the relative L2 error of the whole tensor,
        largest sampled-entry error / reference max |x|).

    Raises:
        AssertionError: the shapes differ.
    """
    ours = summarise(stage, tensor)
    assert tuple(ours["shape"]) == tuple(reference["shape"]), \
        f"{stage}: shape {tuple(ours['shape'])} != torchvision {tuple(reference['shape'])}"
    norm = float(reference["norm"]) or 1.0
    maxabs = float(reference["maxabs"]) or 1.0
    proj = float(np.abs(ours["proj"] - reference["proj"]).max()) / norm
    samples = float(np.abs(ours["samples"] - reference["samples"]).max()) / maxabs
    return proj, samples


def save_reference(path: str, summaries: Dict[str, Dict[str, np.ndarray]], full: Dict[str, np.ndarray],
                   meta: str) -> None:
    """Write the reference as one .npz: 'summary/<stage>/<field>', 'full/<stage>' and 'meta' (JSON text)."""
    flat = {f"summary/{stage}/{k}": v for stage, summary in summaries.items() for k, v in summary.items()}
    flat.update({f"full/{stage}": v for stage, v in full.items()})
    flat["meta"] = np.asarray(meta)
    np.savez_compressed(path, **flat)


def load_reference(path: str = REFERENCE_FILE) -> Tuple[Dict[str, Dict[str, np.ndarray]], Dict[str, np.ndarray], str]:
    """Inverse of ``save_reference``: (summaries, full arrays, meta JSON text)."""
    summaries: Dict[str, Dict[str, np.ndarray]] = {}
    full = {}
    with np.load(path, allow_pickle=False) as data:
        for key in data.files:
            if key.startswith("summary/"):
                _, stage, field = key.split("/")
                summaries.setdefault(stage, {})[field] = data[key]
            elif key.startswith("full/"):
                full[key.split("/", 1)[1]] = data[key]
        meta = str(data["meta"])
    return summaries, full, meta
