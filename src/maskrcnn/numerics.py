"""Numerical conventions of the network, one named preset per source of pretrained weights.

Mask R-CNN implementations share the layer structure but differ in small conventions (where an
anchor is centred, whether a box is ``x2 - x1`` or ``x2 - x1 + 1`` wide, how the FPN upsamples,
...). Weights trained under one set of conventions lose accuracy under another, so the set is a
configuration choice: the config key ``numerics`` names one preset below, and
``src/maskrcnn/builder.py`` passes each field to the stage Cell that needs it as an explicit
constructor argument (no stage reads the config itself).

Presets (``config.numerics``):

- ``native``: this project's conventions (the default; exact for the ImageNet-backbone path).
- ``zoo``: the MindSpore model-zoo Mask R-CNN (``official/cv/MaskRCNN/maskrcnn_resnet50``), for
  checkpoints converted with ``convert_checkpoint.py --mode maskrcnn``.
- ``torchvision``: torchvision's ``maskrcnn_resnet50_fpn`` (and its ImageNet ``resnet50``).

Every field, its values and which Cell argument it becomes:

``fpn_upsample`` -> ``FPN(upsample=...)``
    ``"nearest"``: nearest-neighbour top-down upsampling (native, torchvision).
    ``"bilinear_legacy"``: bilinear with ``align_corners=False, half_pixel_centers=False``, i.e.
    output pixel ``d`` reads source position ``d * in / out`` (no half-pixel shift), the
    neighbour above the last row/column clamped (zoo).
``stem_pool`` -> ``ResNet50(stem_pool=...)``
    ``"same"``: 3x3/2 max-pool with TF "same" padding (0 before, 1 after on even sizes) (native,
    zoo). ``"symmetric"``: padding 1 on every side (torchvision); on even sizes the windows
    start one pixel earlier.
``anchor_layout`` -> ``generate_anchors(layout=...)``
    ``"centred"``: centre ``((x + 0.5) s, (y + 0.5) s)``, exact sizes (native).
    ``"legacy"``: base box ``[0, 0, s-1, s-1]`` with centre ``(s - 1) / 2``, corners
    ``centre -+ 0.5 (size - 1)`` rounded to integers, shifted by ``(x s, y s)`` (zoo).
    ``"torchvision"``: corners ``round(-+size/2)`` (half to even) around ``(x s, y s)``.
``box_plus_one`` -> ``encode_boxes/decode_boxes(plus_one=...)`` via ``ProposalGenerator``,
    ``RPNTargets``, ``RCNNTargets`` and the detection decode.
    False: width ``x2 - x1``. True: width ``x2 - x1 + 1`` and decoded corners
    ``centre -+ 0.5 (w' - 1)`` (the zoo's ``BoundingBoxEncode/Decode``).
``clamp_log_ratio_below`` -> ``decode_boxes(clamp_below=...)``
    True: decoded ``dw, dh`` clamped to ``[-log(1000/16), log(1000/16)]`` (native, zoo).
    False: clamped only from above (torchvision).
``roi_align`` -> ``MultiLevelRoIAlign(alignment=...)``
    ``"aligned"``: box coordinate ``x`` samples feature position ``x / stride - 0.5``, no
    minimum size (native). ``"legacy"``: position ``x / stride`` and every RoI at least one
    feature cell wide and high: MindSpore ``ROIAlign(roi_end_mode=0)`` (zoo, checked against
    the op) and torchvision ``roi_align(aligned=False)`` behave identically.
``roi_level`` -> ``MultiLevelRoIAlign(level_rule=...)`` (all map to P2..P5)
    ``"sqrt_area"``: ``floor(4 + log2(sqrt(w h) / 224 + 1e-6))`` (native).
    ``"sqrt_area_plus_one"``: ``floor(log2(sqrt(w + 1) sqrt(h + 1) / 56 + 1e-6)) + 2`` (zoo).
    ``"torchvision"``: ``floor(4 + log2(sqrt(w h) / 224) + 1e-6)``.
``clip_to`` -> ``ProposalGenerator(clip_to=...)`` and the detection decode
    ``"image"``: decoded boxes clipped to the resized, un-padded image (native, torchvision).
    ``"input"``: clipped to the padded network input ``(img_height, img_width)`` (zoo: its
    ``BoundingBoxDecode(max_shape=...)``).
``filter_small_proposals`` -> ``ProposalGenerator(filter_small=...)``
    True: proposals with a side ``<= config.rpn_min_box_size`` are dropped before NMS (native,
    torchvision, whose recipe sets 0.001). False: no size filter (zoo).
``min_detection_size`` -> ``BoxPostProcessor(min_detection_size=...)`` (inference)
    Final detections with a side below this many pixels are removed before NMS (torchvision
    0.01; 0 = no filter).
``bn_eps`` -> ``ResNet50(bn_eps=...)`` (config key ``bn_eps`` overrides it)
    The backbone BatchNorm epsilon. 1e-5 (native, zoo; torchvision's ImageNet ``resnet50`` and
    every torchvision model built from it). 0.0 (torchvision): ``maskrcnn_resnet50_fpn(weights=
    COCO_V1)`` sets every FrozenBatchNorm2d eps to 0 (``overwrite_eps``), the eps its published
    COCO figures were measured with. A torchvision Mask R-CNN fine-tuned from an ImageNet
    backbone keeps 1e-5: ``convert_checkpoint.py --bn_eps 1e-5`` records that, and the config
    then needs ``bn_eps: 1e-5``.
``candidate_cap`` -> ``BoxPostProcessor(candidate_cap=...)`` (inference)
    ``"fixed"``: at most ``roi_heads.TEST_PRE_NMS_CANDIDATES`` (proposal, class) candidates, the
    best by score, enter the final NMS (native). ``"exact"``: as many as can exist above the
    score threshold (``roi_heads.candidate_bound``: a softmax gives at most
    ``floor(1 / test_score_thr)`` classes a score above it, so ``P * min(C - 1, that)`` holds every
    one), i.e. no cap, as torchvision (every candidate above the threshold) and the zoo (NMS per
    class over every proposal) do; still a static shape.
``mask_box`` -> ``Mask_Rcnn_Resnet50(mask_box=...)`` (inference)
    ``"detection"``: each detection's mask is pooled on its own final box (native, torchvision).
    ``"argmax_class"``: on its proposal decoded with the deltas of that proposal's arg-max class
    (background included), clipped like the detections; the channel of the detection's label is
    read from there (zoo).
``mask_paste`` -> ``src.evaluation.results.paste_masks(convention=...)`` (evaluation, prediction)
    ``"native"``: the 28x28 mask stretched over the float box, sampled at the centres of the
    pixels inside it, foreground where ``>= mask_thr``. ``"torchvision"``: its
    ``paste_masks_in_image``: the mask padded by one zero cell, the box grown by 30/28 about its
    centre and truncated to integers, the 30x30 mask resized (bilinear, half-pixel) to
    ``x2 - x1 + 1`` by ``y2 - y1 + 1`` pixels from ``(x1, y1)``, foreground where ``> mask_thr``.
    ``"zoo"``: the box truncated to integers, the 28x28 mask resized (bilinear, half-pixel, as
    OpenCV) to ``x2 - x1 + 1`` by ``y2 - y1 + 1`` pixels from ``(x1, y1)``, foreground where
    ``> mask_thr``.
``box_plus_one`` also sets the COCO ``bbox`` width written by evaluation: ``x2 - x1 + 1`` (zoo)
    or ``x2 - x1``.

Final boxes are clipped as ``clip_to`` says: to the image, or under ``zoo`` to the padded input,
which the zoo recipe makes 768x1280, the size the zoo hard-codes; the zoo recipe also keeps the
zoo's 128 detections per image (``FineTune/zoo.yaml``).

The same in all three (checked, so not switches): box-coder stds (1, 1, 1, 1) for the RPN and
(0.1, 0.1, 0.2, 0.2) = weights (10, 10, 5, 5) for the heads; ``log(1000/16)`` as the clamp;
RoIAlign sampling ratio 2; RPN NMS run per level, then the best proposals over all levels; P6 as
a stride-2 subsample of P5; input normalisation (torchvision's 0..1 mean/std
times 255 equals this project's ``img_mean``/``img_std`` in 0..255 RGB, and the zoo uses the same
RGB values).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict

FPN_UPSAMPLE_MODES = ("nearest", "bilinear_legacy")
STEM_POOL_MODES = ("same", "symmetric")
ANCHOR_LAYOUTS = ("centred", "legacy", "torchvision")
ROI_ALIGN_MODES = ("aligned", "legacy")
ROI_LEVEL_RULES = ("sqrt_area", "sqrt_area_plus_one", "torchvision")
CLIP_TARGETS = ("image", "input")
CANDIDATE_CAPS = ("fixed", "exact")
MASK_BOXES = ("detection", "argmax_class")
MASK_PASTES = ("native", "torchvision", "zoo")
# The BatchNorm epsilon of MindSpore's and torch's BatchNorm layers (and of this project).
DEFAULT_BN_EPS = 1e-5


def check_choice(owner: str, name: str, value, allowed) -> str:
    """Return ``value`` if it is one of ``allowed``, else raise a ValueError naming both."""
    if value not in allowed:
        raise ValueError(f"{owner}: {name} must be one of {allowed}, got {value!r}")
    return value


@dataclass(frozen=True)
class Numerics:
    """One complete set of numerical conventions (see the module docstring for each field)."""

    name: str
    fpn_upsample: str
    stem_pool: str
    anchor_layout: str
    box_plus_one: bool
    clamp_log_ratio_below: bool
    roi_align: str
    roi_level: str
    clip_to: str
    filter_small_proposals: bool
    min_detection_size: float
    bn_eps: float
    candidate_cap: str
    mask_box: str
    mask_paste: str

    def __post_init__(self):
        owner = f"numerics preset '{self.name}'"
        check_choice(owner, "fpn_upsample", self.fpn_upsample, FPN_UPSAMPLE_MODES)
        check_choice(owner, "stem_pool", self.stem_pool, STEM_POOL_MODES)
        check_choice(owner, "anchor_layout", self.anchor_layout, ANCHOR_LAYOUTS)
        check_choice(owner, "roi_align", self.roi_align, ROI_ALIGN_MODES)
        check_choice(owner, "roi_level", self.roi_level, ROI_LEVEL_RULES)
        check_choice(owner, "clip_to", self.clip_to, CLIP_TARGETS)
        check_choice(owner, "candidate_cap", self.candidate_cap, CANDIDATE_CAPS)
        check_choice(owner, "mask_box", self.mask_box, MASK_BOXES)
        check_choice(owner, "mask_paste", self.mask_paste, MASK_PASTES)
        if self.bn_eps < 0:
            raise ValueError(f"{owner}: bn_eps must not be negative, got {self.bn_eps!r}")
        if self.min_detection_size < 0:
            raise ValueError(f"{owner}: min_detection_size must not be negative, "
                             f"got {self.min_detection_size!r}")

    def to_dict(self) -> Dict[str, object]:
        return asdict(self)


NATIVE = Numerics(name="native", fpn_upsample="nearest", stem_pool="same", anchor_layout="centred",
                  box_plus_one=False, clamp_log_ratio_below=True, roi_align="aligned",
                  roi_level="sqrt_area", clip_to="image", filter_small_proposals=True,
                  min_detection_size=0.0, bn_eps=DEFAULT_BN_EPS, candidate_cap="fixed",
                  mask_box="detection", mask_paste="native")
ZOO = Numerics(name="zoo", fpn_upsample="bilinear_legacy", stem_pool="same", anchor_layout="legacy",
               box_plus_one=True, clamp_log_ratio_below=True, roi_align="legacy",
               roi_level="sqrt_area_plus_one", clip_to="input", filter_small_proposals=False,
               min_detection_size=0.0, bn_eps=DEFAULT_BN_EPS, candidate_cap="exact",
               mask_box="argmax_class", mask_paste="zoo")
# torchvision removes final detections with a side below 1e-2 pixels (box_ops.remove_small_boxes).
TORCHVISION_MIN_DETECTION_SIZE = 1e-2
# maskrcnn_resnet50_fpn(weights=COCO_V1) calls overwrite_eps(model, 0.0) after loading.
TORCHVISION_COCO_BN_EPS = 0.0
TORCHVISION = Numerics(name="torchvision", fpn_upsample="nearest", stem_pool="symmetric",
                       anchor_layout="torchvision", box_plus_one=False, clamp_log_ratio_below=False,
                       roi_align="legacy", roi_level="torchvision", clip_to="image",
                       filter_small_proposals=True,
                       min_detection_size=TORCHVISION_MIN_DETECTION_SIZE,
                       bn_eps=TORCHVISION_COCO_BN_EPS, candidate_cap="exact", mask_box="detection",
                       mask_paste="torchvision")

PRESETS: Dict[str, Numerics] = {preset.name: preset for preset in (NATIVE, ZOO, TORCHVISION)}
PRESET_NAMES = tuple(PRESETS)
DEFAULT_PRESET = "native"


def get_numerics(name: str) -> Numerics:
    """The preset called ``name`` (``config.numerics``).

    Raises:
        ValueError: naming the unknown value and the valid ones.
    """
    try:
        return PRESETS[name]
    except KeyError as e:
        raise ValueError(f"numerics: unknown preset {name!r}; valid presets: {PRESET_NAMES}") from e


def backbone_bn_eps(config) -> float:
    """The backbone BatchNorm epsilon of ``config``: ``config.bn_eps`` when set, else the preset's."""
    if getattr(config, "bn_eps", None) is not None:
        return float(config.bn_eps)
    return get_numerics(config.numerics).bn_eps
