"""One typed, frozen configuration for data, network and training.

A recipe is a YAML file in ``FineTune/``; command-line overrides in the model-zoo style
(``--config_path FILE --key value``) are applied on top. Every key is a field of
:class:`Config` below and is documented there. Unknown keys and values of the wrong type are
errors that name the key. Derived values (class count, anchor counts, feature-map sizes) are
properties computed from the fields, never typed by hand.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import yaml

from src.maskrcnn.geometry import FPN_STRIDES, INPUT_SIZE_MULTIPLE, MASK_HEAD_UPSAMPLE
from src.maskrcnn.numerics import PRESET_NAMES as NUMERICS_PRESETS
from src.maskrcnn.target import DEVICE_TARGETS, MASK_ROWS_CHOICES

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG_PATH = os.path.join(REPO_ROOT, "FineTune", "default.yaml")

# Layout of a COCO 2017 download, the default of the data keys: images in <root>/<split>/,
# annotations in <root>/<COCO_INSTANCE_SET with the split name>.
COCO_SPLITS = ("train2017", "val2017")
COCO_INSTANCE_SET = "annotations/instances_{}.json"
LR_SCHEDULES = ("step", "cosine")
# Data parallel over N ranks: "linear" trains at N * base_lr, "none" at base_lr (src/engine/distributed.py).
LR_SCALING_RULES = ("linear", "none")
# The metrics of each evaluation in training (eval_metrics.jsonl, src/evaluation/hook.py), any of
# which early_stop_metric can follow.
TRAINING_EVAL_METRICS = tuple(f"{iou}_{name}" for iou in ("bbox", "segm") for name in ("AP", "AP50", "AP75"))


class ConfigError(ValueError):
    """A configuration key is unknown, has the wrong type or an invalid value."""


class _YamlLoader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-4`` / ``1e6`` as floats (YAML 1.1 wants ``1.0e-4``)."""


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def _load_yaml(text_or_stream):
    return yaml.load(text_or_stream, Loader=_YamlLoader)  # noqa: S506 - a SafeLoader subclass


@dataclass(frozen=True)
class Config:
    """All settings of one run. Box coordinates are pixels, ``[x1, y1, x2, y2]``."""

    # ---- data -----------------------------------------------------------------------------
    coco_root: str = "FineTune/synthetic"  # folder with <split>/ images and annotations/
    train_data_type: str = COCO_SPLITS[0]  # image sub-folder and annotation suffix of the train split
    val_data_type: str = COCO_SPLITS[1]  # same for the validation split
    instance_set: str = COCO_INSTANCE_SET  # annotation file, {} = split name
    # Data in any layout (e.g. a CVAT / Label Studio COCO export as it comes): an annotation file
    # and an image folder (the file's file_name values are relative to it) per split; set both
    # keys of a split to use them instead of coco_root/<split>. Paths written in a config file
    # are relative to that file's folder; given on the command line (--train_ann_file FILE),
    # relative to the folder the command runs in.
    train_ann_file: Optional[str] = None  # training annotation file (COCO JSON), any layout; with train_image_dir
    train_image_dir: Optional[str] = None  # folder the training file's file_name values are relative to
    val_ann_file: Optional[str] = None  # validation annotation file (COCO JSON), any layout; with val_image_dir
    val_image_dir: Optional[str] = None  # folder the validation file's file_name values are relative to
    keep_empty_images: bool = False  # train on images without any instance too (as negatives);
    #   false = they are skipped and counted
    coco_classes: List[str] = field(default_factory=lambda: ["background", "book"])  # [0] is background
    max_instance_count: int = 32  # GT instances per image after padding (largest kept beyond)
    img_height: int = 320  # network input height (after keep-ratio resize and padding)
    img_width: int = 320  # network input width
    keep_ratio: bool = True  # resize keeping aspect ratio (else stretch to the input size)
    # [short, long]: keep-ratio resize into a short x long box turned like the image instead of
    # img_height x img_width (torchvision's protocol: [800, 1333]); the input must hold the box in
    # both orientations (img_height and img_width >= long). [] = fit img_height x img_width.
    resize_to: List[int] = field(default_factory=list)
    flip_ratio: float = 0.5  # probability of a horizontal flip in training
    img_mean: List[float] = field(default_factory=lambda: [123.675, 116.28, 103.53])  # RGB
    img_std: List[float] = field(default_factory=lambda: [58.395, 57.12, 57.375])  # RGB
    num_parallel_workers: int = 2  # data-pipeline worker processes

    # ---- numerical conventions (issue 7) -------------------------------------------------
    # Preset of the network's conventions, matching where the weights come from: "native"
    # (this project), "zoo" (MindSpore model-zoo Mask R-CNN) or "torchvision"; the conventions of
    # each are listed in src/maskrcnn/numerics.py.
    numerics: str = "native"
    # Backbone BatchNorm epsilon; null = the preset's (1e-5; torchvision: 0, what its COCO Mask
    # R-CNN loader sets). 1e-5 for torchvision weights trained from an ImageNet backbone.
    bn_eps: Optional[float] = None

    # ---- backbone + FPN -------------------------------------------------------------------
    frozen_backbone_stages: int = 1  # with a pretrained backbone: stem + this many stages frozen
    fpn_channels: int = 256  # channels of P2..P6

    # ---- anchors + RPN --------------------------------------------------------------------
    anchor_scales: List[float] = field(default_factory=lambda: [8.0])  # size = scale * stride
    anchor_ratios: List[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])  # h / w
    rpn_pos_iou_thr: float = 0.7  # an anchor with IoU >= this with a GT box is an RPN positive
    rpn_neg_iou_thr: float = 0.3  # an anchor whose best IoU is below this is an RPN negative
    rpn_min_pos_iou: float = 0.3  # a GT's best anchor is positive only above this IoU
    rpn_num_samples: int = 256  # anchors sampled per image for the RPN loss
    rpn_pos_fraction: float = 0.5  # at most this fraction of the sampled anchors are positives
    rpn_pre_nms_top_k_train: int = 2000  # per level, before NMS
    rpn_post_nms_top_k_train: int = 1000  # proposals per image after NMS
    rpn_pre_nms_top_k_test: int = 1000  # inference: proposals per level before NMS
    rpn_post_nms_top_k_test: int = 1000  # inference: proposals per image after NMS
    rpn_nms_thr: float = 0.7  # IoU threshold of the proposals' NMS
    rpn_min_box_size: float = 0.0  # proposals smaller than this (pixels) are dropped

    # ---- RoI heads ------------------------------------------------------------------------
    rcnn_num_samples: int = 512  # RoIs sampled per image for the box/mask losses
    rcnn_pos_fraction: float = 0.25  # at most this fraction of the sampled RoIs are positives
    rcnn_pos_iou_thr: float = 0.5  # a RoI with IoU >= this with a GT box is a positive
    rcnn_neg_iou_thr: float = 0.5  # a RoI whose best IoU is below this is a negative
    # Stage-2 sampling: negatives also take the positive slots left unused (torchvision and
    # detectron2 do); False leaves them empty.
    rcnn_fill_with_negatives: bool = False
    # stds the box regression deltas (dx, dy, dw, dh) are divided by
    box_target_stds: List[float] = field(default_factory=lambda: [0.1, 0.1, 0.2, 0.2])
    roi_box_size: int = 7  # RoIAlign output for the box head
    roi_mask_size: int = 14  # RoIAlign output for the mask head (masks are 2x this: mask_out_size)
    roi_sampling_ratio: int = 2  # RoIAlign sampling points per bin side
    box_head_channels: int = 1024  # width of the two fully connected layers
    mask_head_channels: int = 256  # channels of the mask head's convolutions
    mask_loss_weight: float = 1.0  # weight of the mask loss in the total loss
    # Training, with dynamic mask rows (mask_rows below): null = the mask head runs on the
    # batch's real positives only, however many there are (a shape that changes every step; the
    # loss is the one of every slot); with static mask rows null = every positive slot. K = a
    # static bound: batch_size * K RoI slots, shared by the images of the batch and given to
    # real positives first (in turns: every image's first, then its second, ...); real positives
    # beyond it are left out of the mask loss (the box losses keep them). K = P_max =
    # int(rcnn_num_samples * rcnn_pos_fraction) runs every positive slot, padding included, for
    # backends where dynamic shapes are unsupported or slow. See MaskLoss.select.
    mask_rois_per_image: Optional[int] = None
    # Which rows the mask head runs on (src/maskrcnn/target.py decides): "dynamic" = only the
    # real ones (training: the batch's real positives when mask_rois_per_image is null;
    # inference: the real detections), row counts that change from call to call (ops.nonzero),
    # fast on the CPU; "static" = fixed counts (training: the mask_rois_per_image bound, every
    # positive slot when null; inference: all test_max_per_img slots), a fully static graph as
    # Ascend (jit_level O2) and the deployment toolchains need. "auto" = dynamic on the CPU,
    # static on Ascend/GPU and in exported graphs. Same losses and detections either way.
    mask_rows: str = "auto"

    # ---- inference ------------------------------------------------------------------------
    test_score_thr: float = 0.05  # inference: detections scoring below this are dropped before NMS
    test_nms_thr: float = 0.5  # inference: IoU threshold of the per-class NMS
    test_max_per_img: int = 100  # inference: detections kept per image
    mask_thr: float = 0.5  # probability threshold when pasting masks back

    # ---- training -------------------------------------------------------------------------
    device_target: str = "CPU"  # "CPU", "Ascend" or "GPU"
    batch_size: int = 2  # images per step (per device)
    epoch_size: int = 12  # training epochs
    base_lr: float = 0.02  # learning rate after warm-up (data parallel: scaled by lr_scaling)
    lr_schedule: str = "step"  # "step" or "cosine"
    lr_step_ratios: List[float] = field(default_factory=lambda: [0.67, 0.89])  # of total steps
    lr_step_gamma: float = 0.1  # lr_schedule "step": factor applied at each of lr_step_ratios
    warmup_steps: int = 100  # steps of linear warm-up from base_lr * warmup_ratio to base_lr
    warmup_ratio: float = 0.001  # LR at step 0 = base_lr * warmup_ratio
    momentum: float = 0.9  # SGD momentum
    weight_decay: float = 1e-4  # L2 weight decay on conv/dense weights (not on biases and norms)
    loss_scale: float = 1.0  # static loss scale (float16 on Ascend wants e.g. 256)
    dynamic_loss_scale: bool = False  # float16: grow/shrink the scale on overflow
    grad_clip_norm: float = 0.0  # clip gradients to this global L2 norm; 0 = no clipping
    # Checkpoints in run_dir: every save_checkpoint_epochs epochs (and at the end) a numbered
    # maskrcnn-<epoch>_<step>.ckpt with the network weights only (for eval.py, predict.py,
    # export.py, --pre_trained), and last.ckpt with the weights, optimizer state and global step
    # (the one file --resume reads). keep_checkpoint_max: how many numbered files are kept
    # (the oldest are deleted); 0 = none, last.ckpt only.
    save_checkpoint_epochs: int = 1
    keep_checkpoint_max: int = 5  # numbered checkpoints kept, the oldest deleted; 0 = last.ckpt only
    eval_interval: int = 0  # epochs between validation runs in training; 0 = never
    seed: int = 1  # seed of the weights' initialisation, sampling and augmentations
    run_dir: str = "FineTune/runs/default"  # checkpoints, logs and the loss CSV go here

    # ---- early stopping, TensorBoard (src/evaluation/hook.py, src/engine/callbacks.py) -------
    early_stop_metric: str = "segm_AP"  # validation metric best.ckpt and early stopping follow
    #   (higher is better): bbox_AP, bbox_AP50, bbox_AP75, segm_AP, segm_AP50 or segm_AP75
    early_stop_patience: int = 0  # stop training after this many evaluations in a row without a
    #   new best early_stop_metric (best.ckpt keeps the best); 0 = never; needs eval_interval > 0
    tensorboard: bool = True  # write TensorBoard event files of every logged scalar to <run_dir>/tensorboard

    # ---- augmentation and annotation defects (src/augment.py, src/dataset.py) ----------------
    # Training augmentations run in this order: random crop, resize (scale jitter or the plain
    # keep-ratio resize), horizontal flip (flip_ratio above), photometric distortion. Each
    # is drawn from a stream seeded by (seed, epoch, item), whatever the worker count.
    scale_jitter_range: List[float] = field(default_factory=list)  # [lo, hi]: resize to a factor
    #   drawn uniformly from [lo, hi] of the input size (keep ratio; > 1 is cropped back to the
    #   input); empty = off
    scale_jitter_list: List[float] = field(default_factory=list)  # factors of the input size, one
    #   drawn per image (multi-scale training); empty = off; at most one of the two jitter keys
    photometric_distortion: bool = False  # random brightness, contrast, saturation and hue
    crop_prob: float = 0.0  # probability of an instance-aware random crop of the original image
    crop_min_side: float = 0.5  # the crop's sides are at least this fraction of the image's
    strict_images: bool = False  # an image that cannot be decoded is an error naming the file
    #   (every image is decoded once when the dataset is built) instead of being skipped and counted
    check_images: bool = False  # decode every image once when the dataset is built; images that
    #   cannot be decoded are skipped and counted (always on with strict_images)
    strict_annotations: bool = False  # annotation defects (bad polygon parts, zero-area boxes,
    #   empty masks, boxes far from their mask, unknown image/category ids) are errors instead
    #   of being dropped/repaired and counted in one warning per split

    # ---- devices, parallelism, precision (src/engine/distributed.py, src/maskrcnn/target.py) -------------
    lr_scaling: str = "linear"  # data parallel over N ranks: "linear" = N * base_lr, "none" = base_lr
    dataset_sink_mode: bool = False  # feed batches through the device queue (Ascend: true)
    compute_dtype: str = "auto"  # backbone/FPN/heads: "float16", "float32", "auto" (float16 on Ascend)
    # Folder of MindSpore's compile cache (src/engine/runtime.py): the first run of a config compiles and
    # saves its graphs there, later runs of the same config and code load them in seconds. One
    # sub-folder per config + source hash (a change never reuses a stale graph), the 8 most
    # recently used kept. null or "" = off (every run compiles).
    compile_cache_dir: Optional[str] = "FineTune/.compile_cache"

    # ---- derived values --------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        """Number of classes including background."""
        return len(self.coco_classes)

    @property
    def num_anchors_per_location(self) -> int:
        return len(self.anchor_scales) * len(self.anchor_ratios)

    @property
    def feature_shapes(self) -> List[Tuple[int, int]]:
        """(height, width) of P2..P6 for the configured input size."""
        return [(math.ceil(self.img_height / s), math.ceil(self.img_width / s)) for s in FPN_STRIDES]

    @property
    def num_anchors(self) -> int:
        """Anchors over all FPN levels of one image."""
        return sum(h * w for h, w in self.feature_shapes) * self.num_anchors_per_location

    @property
    def mask_out_size(self) -> int:
        """Side of the predicted masks and mask targets (28 for roi_mask_size 14)."""
        return MASK_HEAD_UPSAMPLE * self.roi_mask_size

    @property
    def compute_float16(self) -> bool:
        """float16 compute of backbone/FPN/heads (``compute_dtype``; "auto" = on Ascend only)."""
        if self.compute_dtype == "auto":
            return self.device_target == "Ascend"
        return self.compute_dtype == "float16"

    def split_paths(self, split: str, root: Optional[str] = None) -> Tuple[str, str]:
        """(image folder, annotation file) of ``split``: the split's own keys when set
        (``train_image_dir``/``train_ann_file`` for ``train_data_type``, ``val_*`` for
        ``val_data_type``), else the COCO layout under ``root`` (default ``coco_root``; relative
        paths are relative to the repository)."""
        for prefix, split_name in (("train", self.train_data_type), ("val", self.val_data_type)):
            image_dir, ann_file = getattr(self, f"{prefix}_image_dir"), getattr(self, f"{prefix}_ann_file")
            if split == split_name and image_dir and ann_file:
                return os.path.abspath(image_dir), os.path.abspath(ann_file)
        root = resolve_path(root if root is not None else self.coco_root)
        return os.path.join(root, split), os.path.join(root, self.instance_set.format(split))

    def replace(self, **changes: Any) -> "Config":
        """A validated copy with some fields changed."""
        values = dataclasses.asdict(self)
        values.update(changes)
        return from_dict(values, source="replace()")

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def resolve_path(path: str) -> str:
    """Relative paths in configs are relative to the repository root."""
    return path if os.path.isabs(path) else os.path.join(REPO_ROOT, path)


_FIELDS = {f.name: f for f in dataclasses.fields(Config)}
_HINTS = typing.get_type_hints(Config)


def _check_type(key: str, value: Any, hint: Any, source: str) -> Any:
    """Return ``value`` converted to ``hint`` or raise ConfigError naming the key."""
    origin = typing.get_origin(hint)
    if origin is typing.Union and type(None) in typing.get_args(hint):  # Optional[X]: null or an X
        if value is None:
            return None
        (item_hint,) = [h for h in typing.get_args(hint) if h is not type(None)]
        return _check_type(key, value, item_hint, source)
    if origin in (list, List):
        (item_hint,) = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: key '{key}' must be a list, got {value!r}")
        return [_check_type(f"{key}[{i}]", v, item_hint, source) for i, v in enumerate(value)]
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: key '{key}' must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: key '{key}' must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: key '{key}' must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{source}: key '{key}' must be a finite number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{source}: key '{key}' must be a string, got {value!r}")
        return value
    raise ConfigError(f"{source}: key '{key}' has an unsupported type {hint}")


@dataclass(frozen=True)
class ValueRule:
    """A range a numeric key (or every item of a numeric list key) must lie in."""

    message: str  # what the error says after "key 'K' = VALUE", e.g. "must be positive"
    holds: typing.Callable[[float], bool]


POSITIVE = ValueRule("must be positive", lambda v: v > 0)
NOT_NEGATIVE = ValueRule("must not be negative", lambda v: v >= 0)
FRACTION = ValueRule("must be between 0 and 1", lambda v: 0 <= v <= 1)
# The range of every numeric key. Every float must also be finite (``_check_type``: NaN and Inf
# are refused for every key, listed here or not); a key of a list type is checked item by item.
VALUE_RULES: Dict[str, ValueRule] = {
    **{key: POSITIVE for key in (
        "max_instance_count", "batch_size", "epoch_size", "rpn_num_samples", "rcnn_num_samples",
        "rpn_pre_nms_top_k_train", "rpn_post_nms_top_k_train", "rpn_pre_nms_top_k_test",
        "rpn_post_nms_top_k_test", "test_max_per_img", "roi_box_size", "roi_mask_size", "roi_sampling_ratio",
        "fpn_channels", "box_head_channels", "mask_head_channels", "num_parallel_workers",
        "save_checkpoint_epochs", "base_lr", "loss_scale", "lr_step_gamma", "img_std", "anchor_scales",
        "anchor_ratios", "box_target_stds", "scale_jitter_range", "scale_jitter_list")},
    **{key: NOT_NEGATIVE for key in (
        "warmup_steps", "eval_interval", "seed", "weight_decay", "mask_loss_weight", "rpn_min_box_size")},
    **{key: FRACTION for key in (
        "flip_ratio", "rpn_pos_fraction", "rcnn_pos_fraction", "rpn_pos_iou_thr", "rpn_neg_iou_thr",
        "rpn_min_pos_iou", "rcnn_pos_iou_thr", "rcnn_neg_iou_thr", "rpn_nms_thr", "test_nms_thr",
        "test_score_thr", "mask_thr", "warmup_ratio", "crop_prob")},
    "momentum": ValueRule("must be in [0, 1)", lambda v: 0 <= v < 1),
    "crop_min_side": ValueRule("must be in (0, 1]", lambda v: 0 < v <= 1),
    "lr_step_ratios": ValueRule("must be increasing fractions between 0 and 1", lambda v: 0 < v < 1),
    "grad_clip_norm": ValueRule("must not be negative (0 = no clipping)", lambda v: v >= 0),
    "keep_checkpoint_max": ValueRule("must not be negative (0 = no numbered checkpoints, last.ckpt only)",
                                     lambda v: v >= 0),
    "frozen_backbone_stages": ValueRule("must be between 0 and 4", lambda v: 0 <= v <= 4),
}
# List keys that need at least one value.
NON_EMPTY_LISTS = ("anchor_scales", "anchor_ratios", "coco_classes")


def _check_ranges(cfg: Config, source: str) -> None:
    """Every key of VALUE_RULES within its range (every item, for a list), non-empty lists."""
    for key in NON_EMPTY_LISTS:
        if not getattr(cfg, key):
            raise ConfigError(f"{source}: key '{key}' = [] must not be empty")
    for key, rule in VALUE_RULES.items():
        value = getattr(cfg, key)
        values = value if isinstance(value, list) else [value]
        if any(v is not None and not rule.holds(v) for v in values):
            raise ConfigError(f"{source}: key '{key}' = {value!r} {rule.message}")


def _validate(cfg: Config, source: str) -> None:
    def bad(key: str, why: str) -> ConfigError:
        return ConfigError(f"{source}: key '{key}' = {getattr(cfg, key)!r} {why}")

    _check_ranges(cfg, source)
    for key in ("img_height", "img_width"):
        value = getattr(cfg, key)
        if value <= 0 or value % INPUT_SIZE_MULTIPLE:
            raise bad(key, f"must be a positive multiple of {INPUT_SIZE_MULTIPLE}")
    if len(cfg.coco_classes) < 2 or cfg.coco_classes[0] != "background":
        raise bad("coco_classes", "must start with 'background' and name at least one class")
    if len(set(cfg.coco_classes)) != len(cfg.coco_classes):
        raise bad("coco_classes", "has a repeated class name")
    if cfg.device_target not in DEVICE_TARGETS:
        raise bad("device_target", f"must be one of {DEVICE_TARGETS}")
    if cfg.numerics not in NUMERICS_PRESETS:
        raise bad("numerics", f"must be one of {NUMERICS_PRESETS}")
    if cfg.resize_to:
        if len(cfg.resize_to) != 2 or not 0 < cfg.resize_to[0] <= cfg.resize_to[1]:
            raise bad("resize_to", "must be [] or [short, long] with 0 < short <= long")
        if not cfg.keep_ratio:
            raise bad("resize_to", "needs keep_ratio: true")
        if cfg.resize_to[1] > min(cfg.img_height, cfg.img_width):
            raise bad("resize_to", f"does not fit the input {cfg.img_height}x{cfg.img_width} in both "
                                   f"orientations (img_height and img_width must be >= {cfg.resize_to[1]})")
    if cfg.bn_eps is not None and not 0.0 <= cfg.bn_eps < 1.0:
        raise bad("bn_eps", "must be null or in [0, 1)")
    if cfg.lr_schedule not in LR_SCHEDULES:
        raise bad("lr_schedule", f"must be one of {LR_SCHEDULES}")
    for key in ("img_mean", "img_std"):
        if len(getattr(cfg, key)) != 3:
            raise bad(key, "must have 3 values (R, G, B)")
    if len(cfg.box_target_stds) != 4:
        raise bad("box_target_stds", "must have 4 values (dx, dy, dw, dh)")
    if cfg.rpn_neg_iou_thr > cfg.rpn_pos_iou_thr:
        raise bad("rpn_neg_iou_thr", "must not exceed rpn_pos_iou_thr")
    if cfg.rcnn_neg_iou_thr > cfg.rcnn_pos_iou_thr:
        raise bad("rcnn_neg_iou_thr", "must not exceed rcnn_pos_iou_thr")
    max_positives = int(cfg.rcnn_num_samples * cfg.rcnn_pos_fraction)
    if max_positives < 1:
        raise bad("rcnn_pos_fraction", f"leaves no positive RoI slot (int(rcnn_num_samples * "
                                       f"rcnn_pos_fraction) = {max_positives}) for the mask head")
    if cfg.mask_rois_per_image is not None and not 1 <= cfg.mask_rois_per_image <= max_positives:
        raise bad("mask_rois_per_image", f"must be null or between 1 and int(rcnn_num_samples * "
                                         f"rcnn_pos_fraction) = {max_positives}")
    if cfg.lr_scaling not in LR_SCALING_RULES:
        raise bad("lr_scaling", "must be 'linear' or 'none'")
    if cfg.mask_rows not in MASK_ROWS_CHOICES:
        raise bad("mask_rows", f"must be one of {', '.join(repr(c) for c in MASK_ROWS_CHOICES)}")
    if cfg.compute_dtype not in ("auto", "float16", "float32"):
        raise bad("compute_dtype", "must be 'auto', 'float16' or 'float32'")
    if "{}" not in cfg.instance_set:
        raise bad("instance_set", "must contain '{}' where the split name goes")
    if cfg.scale_jitter_range and cfg.scale_jitter_list:
        raise bad("scale_jitter_list", "cannot be combined with scale_jitter_range (pick one)")
    if cfg.scale_jitter_range and (len(cfg.scale_jitter_range) != 2
                                   or cfg.scale_jitter_range[0] > cfg.scale_jitter_range[1]):
        raise bad("scale_jitter_range", "must be [lo, hi] with lo <= hi")
    if sorted(cfg.lr_step_ratios) != cfg.lr_step_ratios:
        raise bad("lr_step_ratios", "must be increasing fractions between 0 and 1")


# Keys holding a path of the data, anchored when read (see Config: relative to the config file
# when written in it, to the current folder on the command line).
DATA_PATH_KEYS = ("train_ann_file", "train_image_dir", "val_ann_file", "val_image_dir")


def _anchor_data_paths(values: Dict[str, Any], base_dir: str) -> Dict[str, Any]:
    """``values`` with the relative DATA_PATH_KEYS made absolute against ``base_dir``."""
    anchored = dict(values)
    for key in DATA_PATH_KEYS:
        path = anchored.get(key)
        if isinstance(path, str) and path and not os.path.isabs(path):
            anchored[key] = os.path.normpath(os.path.join(base_dir, os.path.expanduser(path)))
    return anchored


def _validate_data_keys(cfg: Config, source: str) -> None:
    for prefix in ("train", "val"):
        ann_file, image_dir = getattr(cfg, f"{prefix}_ann_file"), getattr(cfg, f"{prefix}_image_dir")
        if bool(ann_file) != bool(image_dir):
            missing = f"{prefix}_image_dir" if ann_file else f"{prefix}_ann_file"
            given = f"{prefix}_ann_file" if ann_file else f"{prefix}_image_dir"
            raise ConfigError(f"{source}: key '{given}' is set but '{missing}' is not; set both (the "
                              f"annotation file and the folder its file_name values are relative to)")


def _validate_early_stopping(cfg: Config, source: str) -> None:
    """The early-stopping keys (kept apart from :func:`_validate`)."""
    if cfg.early_stop_metric not in TRAINING_EVAL_METRICS:
        raise ConfigError(f"{source}: key 'early_stop_metric' = {cfg.early_stop_metric!r} must be one of "
                          f"{', '.join(TRAINING_EVAL_METRICS)}")
    if cfg.early_stop_patience < 0:
        raise ConfigError(f"{source}: key 'early_stop_patience' = {cfg.early_stop_patience} must not be negative")
    if cfg.early_stop_patience and not cfg.eval_interval:
        raise ConfigError(f"{source}: key 'early_stop_patience' = {cfg.early_stop_patience} needs evaluations "
                          f"in training: set eval_interval > 0")


def from_dict(values: Dict[str, Any], source: str = "config") -> Config:
    """Build and validate a Config; unknown keys and wrong types raise ConfigError."""
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: expected a mapping of keys to values, got {type(values).__name__}")
    checked = {}
    for key, value in values.items():
        if key not in _FIELDS:
            raise ConfigError(f"{source}: unknown key '{key}'")
        checked[key] = _check_type(key, value, _HINTS[key], source)
    cfg = Config(**checked)
    _validate(cfg, source)
    _validate_data_keys(cfg, source)
    _validate_early_stopping(cfg, source)
    return cfg


def load_config(path: Optional[str] = None, overrides: Optional[Dict[str, Any]] = None) -> Config:
    """Load a YAML recipe (default: FineTune/default.yaml) and apply overrides on top."""
    path = path or DEFAULT_CONFIG_PATH
    try:
        with open(path, "r", encoding="utf-8") as handle:
            values = _load_yaml(handle) or {}
    except FileNotFoundError as e:
        raise ConfigError(f"config file not found: {path}") from e
    except IsADirectoryError as e:
        raise ConfigError(f"{path}: is a folder, not a YAML config file") from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not a UTF-8 text file (byte {e.start} is {e.object[e.start:e.start + 1]!r}); "
                          f"save the recipe as UTF-8") from e
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config file: {e.strerror or e}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values")
    values = _anchor_data_paths(values, os.path.dirname(os.path.abspath(path)))
    values.update(_anchor_data_paths(overrides or {}, os.getcwd()))
    source = path if not overrides else f"{path} + command line"
    return from_dict(values, source=source)


def parse_overrides(extra_args: Sequence[str]) -> Dict[str, Any]:
    """Turn ``['--key', 'value', ...]`` into ``{key: value}`` with YAML typing of the value.

    ``--key=value`` is accepted too. Values are parsed as YAML, so ``--img_height 256`` is an
    int and ``--coco_classes "[background, book]"`` a list.
    """
    overrides: Dict[str, Any] = {}
    args = list(extra_args)
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise ConfigError(f"command line: expected --key value, got '{arg}'")
        if "=" in arg:
            key, text = arg[2:].split("=", 1)
            i += 1
        else:
            if i + 1 >= len(args):
                raise ConfigError(f"command line: option '{arg}' has no value")
            key, text = arg[2:], args[i + 1]
            i += 2
        if key not in _FIELDS:
            raise ConfigError(f"command line: unknown key '{key}'")
        try:
            overrides[key] = _load_yaml(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"command line: value of '{key}' is not valid: {text!r}") from e
    return overrides


def add_config_arguments(parser) -> None:
    """The ``--config_path`` option every CLI shares; ``--help`` lists every config key after the
    options (type, default, doc: ``src/config_help.py``)."""
    import argparse

    from src.config_help import config_keys_help

    parser.add_argument("--config_path", default=DEFAULT_CONFIG_PATH,
                        help="YAML recipe (default: FineTune/default.yaml); any config key can "
                             "be overridden as --key value (listed below)")
    parser.epilog = "\n\n".join(p for p in (parser.epilog, config_keys_help()) if p)
    if parser.formatter_class is argparse.HelpFormatter:  # keep the list's line breaks
        parser.formatter_class = argparse.RawDescriptionHelpFormatter


def config_from_cli(parser, argv: Optional[Sequence[str]] = None):
    """Parse known CLI options, treat the rest as config overrides; return (args, config)."""
    args, extra = parser.parse_known_args(argv)
    try:
        cfg = load_config(args.config_path, parse_overrides(extra))
    except ConfigError as e:
        parser.error(str(e))
    return args, cfg
