"""Checkpoint names, conversion, loading and atomic saving: the one module that renames.

Five naming schemes meet here:

* the MindSpore model-zoo ResNet50 ImageNet classifier (``conv1.weight``, ``bn1.gamma``,
  ``layer1.0.down_sample_layer.0.weight``, ..., classifier ``end_point.*``);
* the model-zoo Mask R-CNN ResNet50-FPN (``backbone.layer1.0.conv_down_sample.weight``,
  ``fpn_ncek.lateral_convs_list.0.weight``, ``rcnn_cls.fpn_cls.shared_fc_0.weight``, ...; its
  fully connected weights are stored ``[in, out]``);
* torchvision's ``resnet50`` ImageNet classifier (``conv1.weight``, ``bn1.running_mean``,
  ``layer1.0.downsample.0.weight``, ..., classifier ``fc.*``);
* torchvision's ``maskrcnn_resnet50_fpn`` (``backbone.body.*``, ``backbone.fpn.inner_blocks.*``,
  ``rpn.head.*``, ``roi_heads.box_head.fc6``, ``roi_heads.mask_predictor.*``, ...); its Linear
  ``[out, in]`` and ConvTranspose ``[in, out, k, k]`` layouts are ours, nothing is transposed;
* this project's ``Mask_Rcnn_Resnet50`` (``backbone.<zoo ResNet50 name>``, ``fpn.*``,
  ``rpn_head.*``, ``box_head.*``, ``mask_head.*``; ``nn.Dense`` weights are ``[out, in]``).

``ZOO_RESNET50_TO_OURS``, ``ZOO_MASKRCNN_TO_OURS``, ``TORCHVISION_RESNET50_TO_OURS`` and
``TORCHVISION_MASKRCNN_TO_OURS`` are the explicit rename tables, one per source.
``convert_resnet50`` / ``convert_zoo_maskrcnn`` / ``convert_torchvision_resnet50`` /
``convert_torchvision_maskrcnn`` apply them to a parameter dict and return a
:class:`ConversionReport`; ``convert_foreign_checkpoint`` (detect + convert + log) is what
``convert_checkpoint.py`` runs. ``read_weights`` reads ``.ckpt`` (MindSpore), ``.safetensors``
(NumPy, no torch) and ``.pth`` (needs torch, at conversion time only).
Weights computed with a source's numerics (FPN upsampling, RoIAlign alignment, anchors, ...):
a converted file records the numerics preset they need (``NUMERICS_KEY``), and loading a
whole model into a network of another preset logs a warning naming both.
``load_pretrained`` loads any of these kinds of file into the network (converting foreign
files on the fly), skipping class-dependent layers whose class count differs and failing with a
:class:`CheckpointError` that lists every other mismatch. ``save_checkpoint_atomic`` never
leaves a half-written ``.ckpt`` where the last good one was.
"""

from __future__ import annotations

import logging
import os
import pickle
import uuid
import zipfile
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn

from src.maskrcnn.numerics import NATIVE as NATIVE_NUMERICS
from src.maskrcnn.numerics import TORCHVISION as TORCHVISION_NUMERICS
from src.maskrcnn.numerics import ZOO as ZOO_NUMERICS

logger = logging.getLogger(__name__)

CKPT_SUFFIX = ".ckpt"
# How many offending names an error message shows before "(+N more)".
MAX_LISTED = 5

# Kinds of checkpoint file, by their parameter names.
KIND_ZOO_RESNET50 = "zoo_resnet50"  # model-zoo ImageNet ResNet50 classifier
KIND_ZOO_MASKRCNN = "zoo_maskrcnn"  # model-zoo Mask R-CNN ResNet50-FPN
KIND_BACKBONE = "backbone"  # this project's backbone only (convert_checkpoint.py output)
KIND_FULL = "full"  # this project's whole Mask_Rcnn_Resnet50
KIND_TV_RESNET50 = "torchvision_resnet50"  # torchvision resnet50 ImageNet classifier
KIND_TV_MASKRCNN = "torchvision_maskrcnn"  # torchvision maskrcnn_resnet50_fpn (v1)
CONVERT_MODES = {"resnet50": KIND_ZOO_RESNET50, "maskrcnn": KIND_ZOO_MASKRCNN,
                 "torchvision_resnet50": KIND_TV_RESNET50, "torchvision_maskrcnn": KIND_TV_MASKRCNN}
# Kinds that hold a whole Mask R-CNN (heads included) once converted.
FULL_MODEL_SOURCES = (KIND_ZOO_MASKRCNN, KIND_TV_MASKRCNN)

# Numerics preset (config key ``numerics``, src/maskrcnn/numerics.py) under which each source's
# weights compute what they computed at home. For ImageNet backbones only the stem pooling and
# the input normalisation matter (the heads are trained anew): the zoo ResNet50's stem is the
# native one, torchvision's pools with symmetric padding.
NUMERICS_KEY = "numerics"  # string stored in converted checkpoints (mindspore append_dict)
CONVERTED_FROM_KEY = "converted_from"  # string stored beside it: the source kind
NUMERICS_FOR_SOURCE = {
    KIND_ZOO_RESNET50: NATIVE_NUMERICS.name,
    KIND_ZOO_MASKRCNN: ZOO_NUMERICS.name,
    KIND_TV_RESNET50: TORCHVISION_NUMERICS.name,
    KIND_TV_MASKRCNN: TORCHVISION_NUMERICS.name,
}

BACKBONE_PREFIX = "backbone."
ZOO_CLASSIFIER_PREFIX = "end_point."
# First name components of this project's non-backbone parts.
HEAD_PREFIXES = ("fpn.", "rpn_head.", "box_head.", "mask_head.")
# First name components only the zoo Mask R-CNN uses.
ZOO_MASKRCNN_PREFIXES = ("fpn_ncek.", "rpn_with_loss.", "rcnn_cls.", "rcnn_mask.")
# Layers whose shape depends on the number of classes: skipped (and listed) when it differs.
CLASS_DEPENDENT_PREFIXES = ("box_head.cls_score.", "box_head.box_deltas.", "mask_head.mask_logits.")

# Optimizer and training-loop state found in training checkpoints (ours and the zoo's):
# never network weights, dropped and counted when converting or loading pre-trained weights.
OPTIMIZER_STATE_PREFIXES = ("moments.", "accum.", "moment1.", "moment2.", "adam_m.", "adam_v.",
                            "accu_grads.")
TRAINING_STATE_NAMES = frozenset({
    "learning_rate", "global_step", "momentum", "beta1_power", "beta2_power", "weight_decay",
    "loss_scale", "loss_scale_good_steps", "scale_sense", "current_iterator_step",
    "last_overflow_iterator_step", "epoch_num", "step_num",
})
# PyTorch BatchNorm's update counter (``bn1.num_batches_tracked``): training state, never a weight.
TORCH_BN_COUNTER_SUFFIX = ".num_batches_tracked"
GLOBAL_STEP_NAME = "global_step"
# Optimizer state that train.py recomputes from the config instead of restoring on --resume.
RECOMPUTED_ON_RESUME = frozenset({"learning_rate"})

# ResNet50 architecture facts (bottleneck v1.5, as the model zoo): blocks and bottleneck width
# per stage; a block outputs BOTTLENECK_EXPANSION x width channels.
RESNET50_STAGE_BLOCKS = (3, 4, 6, 3)
RESNET50_STAGE_WIDTHS = (64, 128, 256, 512)
BOTTLENECK_EXPANSION = 4
STEM_CHANNELS = 64
STEM_KERNEL = 7
IMAGE_CHANNELS = 3
BN_PARAM_NAMES = ("moving_mean", "moving_variance", "gamma", "beta")


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, of the wrong kind or does not fit the model."""


def _bn_shapes(prefix: str, channels: int) -> List[Tuple[str, Tuple[int, ...]]]:
    return [(f"{prefix}.{p}", (channels,)) for p in BN_PARAM_NAMES]


def resnet50_param_shapes() -> Dict[str, Tuple[int, ...]]:
    """Names and shapes of the model-zoo ResNet50 without its classifier, in file order.

    These are also the names of this project's ``ResNet50`` (``src/maskrcnn/resnet50.py``).
    Conv weights are ``[out, in, kh, kw]``; BatchNorm has gamma/beta/moving_mean/moving_variance.
    """
    shapes: List[Tuple[str, Tuple[int, ...]]] = [
        ("conv1.weight", (STEM_CHANNELS, IMAGE_CHANNELS, STEM_KERNEL, STEM_KERNEL))]
    shapes += _bn_shapes("bn1", STEM_CHANNELS)
    in_channels = STEM_CHANNELS
    for stage, (blocks, width) in enumerate(zip(RESNET50_STAGE_BLOCKS, RESNET50_STAGE_WIDTHS), start=1):
        out_channels = width * BOTTLENECK_EXPANSION
        for block in range(blocks):
            p = f"layer{stage}.{block}"
            shapes.append((f"{p}.conv1.weight", (width, in_channels, 1, 1)))
            shapes += _bn_shapes(f"{p}.bn1", width)
            shapes.append((f"{p}.conv2.weight", (width, width, 3, 3)))
            shapes += _bn_shapes(f"{p}.bn2", width)
            shapes.append((f"{p}.conv3.weight", (out_channels, width, 1, 1)))
            shapes += _bn_shapes(f"{p}.bn3", out_channels)
            if block == 0:  # the projection shortcut of the first block of every stage
                shapes.append((f"{p}.down_sample_layer.0.weight", (out_channels, in_channels, 1, 1)))
                shapes += _bn_shapes(f"{p}.down_sample_layer.1", out_channels)
            in_channels = out_channels
    return dict(shapes)


RESNET50_SHAPES: Dict[str, Tuple[int, ...]] = resnet50_param_shapes()

# zoo ResNet50 name -> our name: the backbone keeps the zoo names under "backbone.";
# the classifier end_point.* has no counterpart and is dropped.
ZOO_RESNET50_TO_OURS: Dict[str, str] = {name: BACKBONE_PREFIX + name for name in RESNET50_SHAPES}


def _zoo_maskrcnn_backbone_name(name: str) -> str:
    """The zoo Mask R-CNN spells the projection shortcut conv_down_sample / bn_down_sample."""
    return (BACKBONE_PREFIX + name.replace("down_sample_layer.0.", "conv_down_sample.")
            .replace("down_sample_layer.1.", "bn_down_sample."))


def _layer_params(layers: Mapping[str, str]) -> Dict[str, str]:
    """{foreign layer: our layer} -> the same for their ``weight`` and ``bias`` tensors."""
    return {f"{theirs}.{p}": f"{ours}.{p}" for theirs, ours in layers.items() for p in ("weight", "bias")}


def _zoo_maskrcnn_table() -> Dict[str, str]:
    table = {_zoo_maskrcnn_backbone_name(name): BACKBONE_PREFIX + name for name in RESNET50_SHAPES}
    for level in range(len(RESNET50_STAGE_BLOCKS)):  # one lateral + one output conv per C2..C5
        for p in ("weight", "bias"):
            table[f"fpn_ncek.lateral_convs_list.{level}.{p}"] = f"fpn.lateral_convs.{level}.{p}"
            table[f"fpn_ncek.fpn_convs_list.{level}.{p}"] = f"fpn.output_convs.{level}.{p}"
    heads = {
        "rpn_with_loss.rpn_convs_list.0.rpn_conv": "rpn_head.conv",
        "rpn_with_loss.rpn_convs_list.0.rpn_cls": "rpn_head.objectness",
        "rpn_with_loss.rpn_convs_list.0.rpn_reg": "rpn_head.box_deltas",
        "rcnn_cls.fpn_cls.shared_fc_0": "box_head.fc1",
        "rcnn_cls.fpn_cls.shared_fc_1": "box_head.fc2",
        "rcnn_cls.fpn_cls.cls_scores": "box_head.cls_score",
        "rcnn_cls.fpn_cls.reg_scores": "box_head.box_deltas",
        "rcnn_mask.fpn_mask.mask_conv1": "mask_head.conv1",
        "rcnn_mask.fpn_mask.mask_conv2": "mask_head.conv2",
        "rcnn_mask.fpn_mask.mask_conv3": "mask_head.conv3",
        "rcnn_mask.fpn_mask.mask_conv4": "mask_head.conv4",
        "rcnn_mask.fpn_mask.mask_deconv5": "mask_head.deconv",
        "rcnn_mask.fpn_mask.mask_conv6": "mask_head.mask_logits",
    }
    table.update(_layer_params(heads))
    return table


# zoo Mask R-CNN name -> our name (explicit; every zoo network parameter has exactly one entry).
ZOO_MASKRCNN_TO_OURS: Dict[str, str] = _zoo_maskrcnn_table()
# The zoo's fully connected layers multiply x @ W with W stored [in, out]; nn.Dense wants [out, in].
ZOO_MASKRCNN_TRANSPOSED = frozenset({
    "rcnn_cls.fpn_cls.shared_fc_0.weight", "rcnn_cls.fpn_cls.shared_fc_1.weight",
    "rcnn_cls.fpn_cls.cls_scores.weight", "rcnn_cls.fpn_cls.reg_scores.weight",
})

# ---- torchvision ----------------------------------------------------------------------------
# BatchNorm / FrozenBatchNorm2d tensors: torchvision name -> ours (= the model zoo's).
TORCHVISION_BN_TO_OURS = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean",
                          "running_var": "moving_variance"}
_OURS_TO_TORCHVISION_BN = {ours: tv for tv, ours in TORCHVISION_BN_TO_OURS.items()}
TORCHVISION_CLASSIFIER_PREFIX = "fc."
TORCHVISION_BODY_PREFIX = "backbone.body."
# First name components only torchvision's Mask R-CNN uses.
TORCHVISION_MASKRCNN_PREFIXES = (TORCHVISION_BODY_PREFIX, "backbone.fpn.", "rpn.head.", "roi_heads.")


def _torchvision_resnet50_name(our_name: str) -> str:
    """Our (model-zoo) ResNet50 name -> torchvision's: ``downsample`` for ``down_sample_layer``,
    BatchNorm ``weight/bias/running_mean/running_var`` for ``gamma/beta/moving_mean/moving_variance``."""
    module, param = our_name.rsplit(".", 1)
    module = module.replace("down_sample_layer.", "downsample.")
    return f"{module}.{_OURS_TO_TORCHVISION_BN.get(param, param)}"


# torchvision resnet50 name -> our name (the classifier fc.* has no counterpart and is dropped).
TORCHVISION_RESNET50_TO_OURS: Dict[str, str] = {
    _torchvision_resnet50_name(name): BACKBONE_PREFIX + name for name in RESNET50_SHAPES}


def _torchvision_maskrcnn_table() -> Dict[str, str]:
    table = {TORCHVISION_BODY_PREFIX + tv: ours for tv, ours in TORCHVISION_RESNET50_TO_OURS.items()}
    for level in range(len(RESNET50_STAGE_BLOCKS)):  # one inner (lateral) + one layer (output) conv per C2..C5
        for p in ("weight", "bias"):
            table[f"backbone.fpn.inner_blocks.{level}.0.{p}"] = f"fpn.lateral_convs.{level}.{p}"
            table[f"backbone.fpn.layer_blocks.{level}.0.{p}"] = f"fpn.output_convs.{level}.{p}"
    heads = {
        "rpn.head.conv.0.0": "rpn_head.conv",
        "rpn.head.cls_logits": "rpn_head.objectness",
        "rpn.head.bbox_pred": "rpn_head.box_deltas",
        "roi_heads.box_head.fc6": "box_head.fc1",
        "roi_heads.box_head.fc7": "box_head.fc2",
        "roi_heads.box_predictor.cls_score": "box_head.cls_score",
        "roi_heads.box_predictor.bbox_pred": "box_head.box_deltas",
        "roi_heads.mask_head.0.0": "mask_head.conv1",
        "roi_heads.mask_head.1.0": "mask_head.conv2",
        "roi_heads.mask_head.2.0": "mask_head.conv3",
        "roi_heads.mask_head.3.0": "mask_head.conv4",
        "roi_heads.mask_predictor.conv5_mask": "mask_head.deconv",
        "roi_heads.mask_predictor.mask_fcn_logits": "mask_head.mask_logits",
    }
    table.update(_layer_params(heads))
    return table


# torchvision maskrcnn_resnet50_fpn name -> our name (explicit; one entry per network tensor).
# Both layouts match ours: Linear [out, in], ConvTranspose2d [in, out, k, k]; the RPN's
# channel a*4+j and the box predictor's column 4c+j order agree with ours too.
TORCHVISION_MASKRCNN_TO_OURS: Dict[str, str] = _torchvision_maskrcnn_table()


def _torchvision_legacy_names() -> Dict[str, str]:
    """Spellings of torchvision < 0.13 (e.g. the published COCO weights) -> today's names, as
    torchvision's own state-dict upgrade renames them."""
    legacy = {}
    for p in ("weight", "bias"):
        legacy[f"rpn.head.conv.{p}"] = f"rpn.head.conv.0.0.{p}"
        for i in range(4):
            legacy[f"roi_heads.mask_head.mask_fcn{i + 1}.{p}"] = f"roi_heads.mask_head.{i}.0.{p}"
    return legacy


TORCHVISION_LEGACY_NAMES: Dict[str, str] = _torchvision_legacy_names()


# ---------------------------------------------------------------------------------------------
# reports


@dataclass
class ConversionReport:
    """What a conversion did, name by name.

    Attributes:
        source: file (or description) the parameters came from.
        kind: KIND_ZOO_RESNET50, KIND_ZOO_MASKRCNN, KIND_TV_RESNET50 or KIND_TV_MASKRCNN.
        converted: (file name, our name) pairs, in table order.
        transposed: our names of fully connected weights transposed [in, out] -> [out, in].
        dropped_classifier: ImageNet classifier names (``end_point.*``, torchvision ``fc.*``).
        dropped_optimizer: optimizer / training-loop state (moments, learning_rate, global_step,
            BatchNorm num_batches_tracked...).
        unexpected: names with no entry in the table (not converted).
    """

    source: str
    kind: str
    converted: List[Tuple[str, str]] = field(default_factory=list)
    transposed: List[str] = field(default_factory=list)
    dropped_classifier: List[str] = field(default_factory=list)
    dropped_optimizer: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)

    @property
    def numerics(self) -> str:
        """The numerics preset these weights need (see NUMERICS_FOR_SOURCE)."""
        return NUMERICS_FOR_SOURCE[self.kind]

    def summary(self) -> str:
        return (f"{self.source} ({self.kind}): {len(self.converted)} tensors converted "
                f"({len(self.transposed)} transposed), {len(self.dropped_classifier)} classifier + "
                f"{len(self.dropped_optimizer)} optimizer-state tensors dropped, "
                f"{len(self.unexpected)} unexpected")

    __str__ = summary


@dataclass
class SkippedParam:
    """A parameter of the file that was not loaded, with the reason (shapes as in file / model)."""

    name: str
    file_shape: Tuple[int, ...]
    model_shape: Tuple[int, ...]
    reason: str

    def __str__(self) -> str:
        return f"{self.name}: {self.reason} (file {self.file_shape} vs model {self.model_shape})"


@dataclass
class LoadReport:
    """What ``load_pretrained`` loaded.

    Attributes:
        source: checkpoint file.
        kind: KIND_BACKBONE or KIND_FULL (after any conversion).
        converted_from: KIND_ZOO_RESNET50 / KIND_ZOO_MASKRCNN when the file was converted on the
            fly, else None; ``conversion`` holds that conversion's report.
        loaded: model parameter names set from the file.
        skipped: class-dependent parameters not loaded because the class count differs.
        left_at_init: model parameters the file does not cover (only for a backbone-only file:
            everything outside the backbone).
        dropped: classifier (zoo ResNet50) and optimizer / training-loop state in the file, ignored.
        numerics: the numerics preset the weights need, when known (recorded by
            convert_checkpoint.py, or from the source of an on-the-fly conversion), else None.
    """

    source: str
    kind: str
    converted_from: Optional[str] = None
    conversion: Optional[ConversionReport] = None
    loaded: List[str] = field(default_factory=list)
    skipped: List[SkippedParam] = field(default_factory=list)
    left_at_init: List[str] = field(default_factory=list)
    dropped: List[str] = field(default_factory=list)
    numerics: Optional[str] = None

    def summary(self) -> str:
        origin = f" converted from {self.converted_from}" if self.converted_from else ""
        if self.numerics:
            origin += f", numerics {self.numerics}"
        text = (f"{self.source} ({self.kind}{origin}): {len(self.loaded)} parameters loaded, "
                f"{len(self.skipped)} skipped, {len(self.left_at_init)} left at initialisation, "
                f"{len(self.dropped)} classifier/optimizer-state tensors ignored")
        if self.skipped:
            text += "; skipped: " + "; ".join(str(s) for s in self.skipped)
        return text

    __str__ = summary


# ---------------------------------------------------------------------------------------------
# helpers


def _listing(items: Sequence[str], limit: Optional[int] = MAX_LISTED) -> str:
    """'a, b, c (+4 more)': the first ``limit`` items (all when limit is None)."""
    items = list(items)
    if limit is None or len(items) <= limit:
        return ", ".join(items)
    return ", ".join(items[:limit]) + f" (+{len(items) - limit} more)"


def _shape(value) -> Tuple[int, ...]:
    return tuple(int(d) for d in value.shape)


def _to_numpy(name: str, value, source: str) -> np.ndarray:
    """Parameter / Tensor / ndarray -> ndarray (no copy for an ndarray)."""
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, Tensor):  # Parameter is a Tensor
        return value.asnumpy()
    raise CheckpointError(f"{source}: parameter '{name}' has a value of type {type(value).__name__}, "
                          f"expected a Tensor, Parameter or numpy array")


def is_training_state(name: str) -> bool:
    """True for optimizer / training-loop state (moments.*, learning_rate, global_step, ...)."""
    return (name in TRAINING_STATE_NAMES or name.startswith(OPTIMIZER_STATE_PREFIXES)
            or name.endswith(TORCH_BN_COUNTER_SUFFIX))


def detect_checkpoint_kind(names: Iterable[str], source: str = "checkpoint") -> str:
    """Which kind of checkpoint the parameter ``names`` come from.

    Returns:
        KIND_TV_MASKRCNN, KIND_TV_RESNET50, KIND_ZOO_MASKRCNN, KIND_FULL, KIND_BACKBONE or
        KIND_ZOO_RESNET50.

    Raises:
        CheckpointError: no network parameter, or names of none of the known kinds.
    """
    weights = [n for n in names if not is_training_state(n)]
    if not weights:
        raise CheckpointError(f"{source}: holds no network parameters (only optimizer state or nothing)")
    if any(n.startswith(TORCHVISION_MASKRCNN_PREFIXES) for n in weights):
        return KIND_TV_MASKRCNN
    # torchvision's BatchNorm buffers / shortcut / classifier names never occur in the zoo's.
    if any(n.endswith((".running_mean", ".running_var")) or ".downsample." in n
           or n.startswith(TORCHVISION_CLASSIFIER_PREFIX) for n in weights):
        return KIND_TV_RESNET50
    if any(n.startswith(ZOO_MASKRCNN_PREFIXES) or "_down_sample." in n for n in weights):
        return KIND_ZOO_MASKRCNN
    if any(n.startswith(HEAD_PREFIXES) for n in weights):
        return KIND_FULL
    if any(n.startswith(BACKBONE_PREFIX) for n in weights):
        return KIND_BACKBONE
    if any(n in RESNET50_SHAPES or n.startswith(ZOO_CLASSIFIER_PREFIX) for n in weights):
        return KIND_ZOO_RESNET50
    raise CheckpointError(f"{source}: not a model-zoo or torchvision ResNet50 / Mask R-CNN checkpoint "
                          f"nor one of this project: unrecognised parameter names ({_listing(sorted(weights))})")


def _check_shapes(found: Mapping[str, Tuple[int, ...]],
                  expected: Mapping[str, Optional[Tuple[int, ...]]], source: str, what: str) -> None:
    """Every expected name present with its shape, else CheckpointError naming the first misfits.

    Args:
        found: name -> shape of the file (already in the naming of ``expected``).
        expected: name -> shape required (None: any shape).
        what: e.g. "model-zoo ResNet50", for the message.
    """
    missing = [n for n in expected if n not in found]
    wrong = [f"{n} file {found[n]} expected {shape}" for n, shape in expected.items()
             if n in found and shape is not None and found[n] != shape]
    if not missing and not wrong:
        return
    parts = [f"found {len(expected) - len(missing)} of the {len(expected)} expected parameter names"]
    if missing:
        parts.append(f"missing: {_listing(missing)}")
    if wrong:
        parts.append(f"wrong shapes: {_listing(wrong)}")
    raise CheckpointError(f"{source}: not a {what} checkpoint: " + "; ".join(parts))


# ---------------------------------------------------------------------------------------------
# conversion


def convert_resnet50(params: Mapping[str, object], source: str = "parameters"
                     ) -> Tuple[Dict[str, np.ndarray], ConversionReport]:
    """Rename a model-zoo ResNet50 classifier checkpoint to this project's backbone names.

    Args:
        params: zoo name -> Parameter / Tensor / ndarray (e.g. ``mindspore.load_checkpoint``).
        source: file name used in messages and in the report.

    Returns:
        (converted, report): ``backbone.<zoo name>`` -> ndarray (dtype kept) for all 265 backbone
        tensors; the report lists converted, dropped (``end_point.*`` classifier, optimizer
        state) and unexpected names.

    Raises:
        CheckpointError: a backbone name is missing or has the wrong shape (not a ResNet50).
    """
    report = ConversionReport(source=source, kind=KIND_ZOO_RESNET50)
    for name in params:
        if name in ZOO_RESNET50_TO_OURS:
            continue
        if name.startswith(ZOO_CLASSIFIER_PREFIX):
            report.dropped_classifier.append(name)
        elif is_training_state(name):
            report.dropped_optimizer.append(name)
        else:
            report.unexpected.append(name)
    _check_shapes({n: _shape(v) for n, v in params.items() if n in RESNET50_SHAPES}, RESNET50_SHAPES,
                  source, "model-zoo ResNet50")
    converted = {}
    for zoo_name, our_name in ZOO_RESNET50_TO_OURS.items():
        converted[our_name] = _to_numpy(zoo_name, params[zoo_name], source)
        report.converted.append((zoo_name, our_name))
    return converted, report


def convert_zoo_maskrcnn(params: Mapping[str, object], source: str = "parameters"
                         ) -> Tuple[Dict[str, np.ndarray], ConversionReport]:
    """Rename a model-zoo Mask R-CNN ResNet50-FPN checkpoint to this project's names.

    Fully connected weights (``ZOO_MASKRCNN_TRANSPOSED``) are transposed from the zoo's
    ``[in, out]`` to ``nn.Dense``'s ``[out, in]``; everything else is copied as is. The
    class-dependent layers keep the file's class count (81 for COCO); ``load_pretrained`` skips
    them when the model's class count differs.

    Args:
        params: zoo name -> Parameter / Tensor / ndarray.
        source: file name used in messages and in the report.

    Returns:
        (converted, report): our name -> ndarray; the report lists converted, transposed,
        dropped (optimizer state) and unexpected names.

    Raises:
        CheckpointError: a table name is missing, the backbone has a wrong shape, or a fully
            connected weight is not 2-D.
    """
    report = ConversionReport(source=source, kind=KIND_ZOO_MASKRCNN)
    for name in params:
        if name in ZOO_MASKRCNN_TO_OURS:
            continue
        if is_training_state(name):
            report.dropped_optimizer.append(name)
        else:
            report.unexpected.append(name)
    # Head shapes depend on the zoo config (classes, channels): only their presence is required
    # here (None); load_pretrained compares them with the model.
    expected: Dict[str, Optional[Tuple[int, ...]]] = {n: None for n in ZOO_MASKRCNN_TO_OURS}
    expected.update({_zoo_maskrcnn_backbone_name(n): s for n, s in RESNET50_SHAPES.items()})
    found = {n: _shape(params[n]) for n in ZOO_MASKRCNN_TO_OURS if n in params}
    _check_shapes(found, expected, source, "model-zoo Mask R-CNN")
    converted = {}
    for zoo_name, our_name in ZOO_MASKRCNN_TO_OURS.items():
        value = _to_numpy(zoo_name, params[zoo_name], source)
        if zoo_name in ZOO_MASKRCNN_TRANSPOSED:
            if value.ndim != 2:
                raise CheckpointError(f"{source}: fully connected weight '{zoo_name}' should be 2-D "
                                      f"[in, out], got shape {value.shape}")
            value = np.ascontiguousarray(value.T)
            report.transposed.append(our_name)
        converted[our_name] = value
        report.converted.append((zoo_name, our_name))
    return converted, report


def _convert_torchvision(params: Mapping[str, object], table: Mapping[str, str], kind: str, what: str,
                         source: str) -> Tuple[Dict[str, np.ndarray], ConversionReport]:
    """Rename torchvision tensors with ``table`` (after the legacy spellings are updated).

    The backbone's shapes are checked (it is a ResNet50 in every torchvision checkpoint); head
    shapes depend on the class count and are compared with the model by ``load_pretrained``.
    """
    report = ConversionReport(source=source, kind=kind)
    by_current_name: Dict[str, Tuple[str, object]] = {}
    for name, value in params.items():
        current = TORCHVISION_LEGACY_NAMES.get(name, name)
        if current in table:
            if current in by_current_name:
                raise CheckpointError(f"{source}: holds both '{by_current_name[current][0]}' and '{name}' "
                                      f"(two spellings of the same torchvision tensor)")
            by_current_name[current] = (name, value)
        elif name.startswith(TORCHVISION_CLASSIFIER_PREFIX) and kind == KIND_TV_RESNET50:
            report.dropped_classifier.append(name)
        elif is_training_state(name):
            report.dropped_optimizer.append(name)
        else:
            report.unexpected.append(name)
    resnet_prefix = TORCHVISION_BODY_PREFIX if kind == KIND_TV_MASKRCNN else ""
    expected: Dict[str, Optional[Tuple[int, ...]]] = {n: None for n in table}
    expected.update({resnet_prefix + _torchvision_resnet50_name(n): s for n, s in RESNET50_SHAPES.items()})
    _check_shapes({n: _shape(v) for n, (_, v) in by_current_name.items()}, expected, source, what)
    converted = {}
    for tv_name, our_name in table.items():
        file_name, value = by_current_name[tv_name]
        converted[our_name] = _to_numpy(file_name, value, source)
        report.converted.append((file_name, our_name))
    return converted, report


def convert_torchvision_resnet50(params: Mapping[str, object], source: str = "parameters"
                                 ) -> Tuple[Dict[str, np.ndarray], ConversionReport]:
    """Rename a torchvision ``resnet50`` ImageNet state dict to this project's backbone names.

    Args:
        params: torchvision name -> ndarray (e.g. ``read_weights(path)``).
        source: file name used in messages and in the report.

    Returns:
        (converted, report): ``backbone.<our name>`` -> ndarray for all 265 backbone tensors; the
        classifier ``fc.*`` and the BatchNorm ``num_batches_tracked`` counters are dropped and
        listed.

    Raises:
        CheckpointError: a backbone tensor is missing or has the wrong shape (not a ResNet50).
    """
    return _convert_torchvision(params, TORCHVISION_RESNET50_TO_OURS, KIND_TV_RESNET50,
                                "torchvision resnet50", source)


def convert_torchvision_maskrcnn(params: Mapping[str, object], source: str = "parameters"
                                 ) -> Tuple[Dict[str, np.ndarray], ConversionReport]:
    """Rename a torchvision ``maskrcnn_resnet50_fpn`` (v1) state dict to this project's names.

    Today's names and the older ``rpn.head.conv.*`` / ``roi_heads.mask_head.mask_fcn1..4.*``
    spellings (``TORCHVISION_LEGACY_NAMES``) are both read. No tensor is transposed. The
    class-dependent layers keep the file's class count (91 for COCO); ``load_pretrained`` skips
    them when the model's class count differs.

    Args:
        params: torchvision name -> ndarray.
        source: file name used in messages and in the report.

    Returns:
        (converted, report): our name -> ndarray; the report lists converted, dropped
        (num_batches_tracked, optimizer state) and unexpected names.

    Raises:
        CheckpointError: a table name is missing (e.g. a ``maskrcnn_resnet50_fpn_v2`` file, whose
            heads differ) or the backbone has a wrong shape.
    """
    return _convert_torchvision(params, TORCHVISION_MASKRCNN_TO_OURS, KIND_TV_MASKRCNN,
                                "torchvision maskrcnn_resnet50_fpn (v1)", source)


# The converter of each foreign kind.
CONVERTERS = {
    KIND_ZOO_RESNET50: convert_resnet50,
    KIND_ZOO_MASKRCNN: convert_zoo_maskrcnn,
    KIND_TV_RESNET50: convert_torchvision_resnet50,
    KIND_TV_MASKRCNN: convert_torchvision_maskrcnn,
}


def read_checkpoint_with_metadata(path: str) -> Tuple[Dict[str, Parameter], Dict[str, str]]:
    """``mindspore.load_checkpoint`` with errors that name the file, tensors and strings apart.

    Returns:
        (params, metadata): name -> Parameter in file order, and the strings stored with
        ``append_dict`` (e.g. ``NUMERICS_KEY``; empty for most files).

    Raises:
        CheckpointError: the file is missing, not a ``.ckpt``, unreadable/corrupt or empty.
    """
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint file not found: {path}")
    if not path.endswith(CKPT_SUFFIX):
        raise CheckpointError(f"{path}: a MindSpore checkpoint file name must end with {CKPT_SUFFIX}")
    try:
        loaded = ms.load_checkpoint(path)
    except (ValueError, RuntimeError, TypeError, OSError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: cannot read the checkpoint (corrupt, truncated or not a "
                              f"MindSpore .ckpt): {reason}") from e
    params = {n: v for n, v in loaded.items() if not isinstance(v, str)}
    metadata = {n: v for n, v in loaded.items() if isinstance(v, str)}
    if not params:
        raise CheckpointError(f"{path}: the checkpoint holds no parameters")
    check_checkpoint_values(params, path)
    return params, metadata


# Suffixes of BatchNorm running-variance names: MindSpore's (ours and the model zoo's) and PyTorch's.
MOVING_VARIANCE_SUFFIXES = ("moving_variance", "running_var")


def check_checkpoint_values(params: Mapping[str, object], source: str) -> None:
    """Refuse values no usable network holds: NaN/Inf in any tensor, a negative BatchNorm variance.

    Such a file (damaged, written by a diverged run, or wrongly converted) would otherwise load
    without a word and make every training step non-finite. Integer tensors are not checked.

    Args:
        params: name -> Parameter / Tensor / ndarray, e.g. what ``mindspore.load_checkpoint`` returns.
        source: file name for the message.

    Raises:
        CheckpointError: one line naming the file and every offending tensor (up to MAX_LISTED)
            with the count of bad values.
    """
    non_finite, negative_variance = [], []
    for name, value in params.items():
        array = _to_numpy(name, value, source)
        if not np.issubdtype(array.dtype, np.floating):
            continue
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        if bad:
            non_finite.append(f"{name} ({bad} of {array.size})")
        elif name.endswith(MOVING_VARIANCE_SUFFIXES) and not is_training_state(name):
            negative = int(np.count_nonzero(array < 0))
            if negative:
                negative_variance.append(f"{name} ({negative} of {array.size}, min {float(array.min()):.4g})")
    problems = []
    if non_finite:
        problems.append(f"NaN/Inf values in {len(non_finite)} tensors: {_listing(non_finite)}")
    if negative_variance:
        problems.append(f"negative BatchNorm moving variance in {len(negative_variance)} tensors: "
                        f"{_listing(negative_variance)}")
    if problems:
        raise CheckpointError(f"{source}: values that cannot be right, refusing to load (damaged file, "
                              f"diverged run or wrong conversion): " + " | ".join(problems))


def read_checkpoint(path: str) -> Dict[str, Parameter]:
    """The tensors of a MindSpore ``.ckpt`` (see ``read_checkpoint_with_metadata``).

    Returns:
        name -> Parameter, in file order (stored strings left out).

    Raises:
        CheckpointError: the file is missing, not a ``.ckpt``, unreadable/corrupt or empty.
    """
    return read_checkpoint_with_metadata(path)[0]


SAFETENSORS_SUFFIX = ".safetensors"
TORCH_SUFFIXES = (".pth", ".pt")
# What a user runs to read .pth files (only convert_checkpoint.py / load_pretrained need it).
TORCH_INSTALL_COMMAND = "python -m pip install torch"
# Keys under which training checkpoints (e.g. torchvision's reference scripts) nest the weights.
TORCH_STATE_DICT_KEYS = ("model", "state_dict")


def _read_safetensors(path: str) -> Dict[str, np.ndarray]:
    """A ``.safetensors`` file as NumPy arrays (the ``safetensors`` package, no torch)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        return dict(load_file(path))
    except (SafetensorError, OSError, ValueError, TypeError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: cannot read the .safetensors file (corrupt, truncated, or a dtype "
                              f"NumPy lacks such as bfloat16): {reason}") from e


def _read_torch(path: str) -> Dict[str, np.ndarray]:
    """A PyTorch state dict (``torch.save``) as NumPy arrays; needs torch, only here."""
    try:
        import torch  # pylint: disable=import-outside-toplevel
    except ImportError as e:
        raise CheckpointError(f"{path}: reading a PyTorch .pth file needs torch (at conversion time only): "
                              f"{TORCH_INSTALL_COMMAND}, or save the state dict as .safetensors") from e
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, OSError, EOFError, ValueError,
            AttributeError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: cannot read the PyTorch file (corrupt, truncated or not a "
                              f"state dict): {reason}") from e
    for key in TORCH_STATE_DICT_KEYS:
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path}: holds a {type(state).__name__}, expected a state dict "
                              f"(name -> tensor)")
    arrays = {}
    for name, value in state.items():
        if not torch.is_tensor(value):
            raise CheckpointError(f"{path}: entry '{name}' is a {type(value).__name__}, expected a tensor")
        value = value.detach().cpu()
        if value.dtype == torch.bfloat16:  # NumPy has no bfloat16; float32 holds it exactly
            value = value.float()
        arrays[name] = value.numpy()
    return arrays


def read_weights(path: str) -> Tuple[Dict[str, object], Dict[str, str]]:
    """Read weights of any supported format, by file name suffix.

    Args:
        path: ``.ckpt`` (MindSpore), ``.safetensors`` (read with NumPy) or ``.pth`` / ``.pt``
            (a PyTorch state dict; needs torch).

    Returns:
        (params, metadata): name -> Parameter / ndarray in file order, and the strings a
        ``.ckpt`` stores (``NUMERICS_KEY``, ``CONVERTED_FROM_KEY``; empty otherwise).

    Raises:
        CheckpointError: missing, unknown format, unreadable or empty file; torch missing for a
            ``.pth`` (the message names the pip command).
    """
    if path.endswith(CKPT_SUFFIX):
        return read_checkpoint_with_metadata(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint file not found: {path}")
    if path.endswith(SAFETENSORS_SUFFIX):
        params = _read_safetensors(path)
    elif path.endswith(TORCH_SUFFIXES):
        params = _read_torch(path)
    else:
        raise CheckpointError(f"{path}: unknown checkpoint format; expected {CKPT_SUFFIX} (MindSpore), "
                              f"{SAFETENSORS_SUFFIX} or {'/'.join(TORCH_SUFFIXES)} (PyTorch)")
    if not params:
        raise CheckpointError(f"{path}: the checkpoint holds no parameters")
    check_checkpoint_values(params, path)
    return params, {}


def convert_foreign_checkpoint(params: Mapping[str, object], mode: Optional[str] = None,
                               source: str = "parameters") -> Tuple[Dict[str, np.ndarray], ConversionReport]:
    """Convert a model-zoo or torchvision parameter dict (what ``convert_checkpoint.py`` does).

    Args:
        params: foreign name -> Parameter / Tensor / ndarray, e.g. ``read_weights(path)[0]``.
        mode: a key of CONVERT_MODES ("resnet50", "maskrcnn", "torchvision_resnet50",
            "torchvision_maskrcnn") or None to detect the kind from the names.
        source: file name for messages.

    Returns:
        (converted, report) of the kind's converter (``CONVERTERS``); the counts, the dropped /
        unexpected names and the numerics preset the weights need are logged.

    Raises:
        CheckpointError: unknown mode; input not of the requested kind or of no known foreign
            kind, or already in this project's names.
    """
    if mode is not None and mode not in CONVERT_MODES:
        raise CheckpointError(f"unknown conversion mode {mode!r}; expected one of {sorted(CONVERT_MODES)}")
    detected = detect_checkpoint_kind(params.keys(), source=source)
    if mode is None:
        if detected in (KIND_BACKBONE, KIND_FULL):
            raise CheckpointError(f"{source}: already uses this project's names ({detected} "
                                  f"checkpoint); nothing to convert")
        kind = detected
        logger.info("%s: detected a %s checkpoint", source, kind)
    else:
        kind = CONVERT_MODES[mode]
    if kind == KIND_ZOO_RESNET50 and detected == KIND_ZOO_MASKRCNN:
        raise CheckpointError(f"{source}: not a model-zoo ResNet50 checkpoint: its names are "
                              f"those of a model-zoo Mask R-CNN (use --mode maskrcnn)")
    if kind == KIND_TV_RESNET50 and detected == KIND_TV_MASKRCNN:
        raise CheckpointError(f"{source}: not a torchvision resnet50 checkpoint: its names are those of "
                              f"a torchvision Mask R-CNN (use --mode torchvision_maskrcnn)")
    converted, report = CONVERTERS[kind](params, source=source)
    logger.info("%s", report.summary())
    if report.dropped_classifier:
        logger.info("dropped classifier: %s", ", ".join(report.dropped_classifier))
    if report.dropped_optimizer:
        logger.info("dropped optimizer state: %s", _listing(report.dropped_optimizer, 10))
    if report.unexpected:
        logger.warning("unexpected tensors, not converted: %s", ", ".join(report.unexpected))
    logger.info("these weights need the numerics preset '%s' (config key %s)", report.numerics, NUMERICS_KEY)
    return converted, report


# The name convert_checkpoint.py used before torchvision files were supported.
convert_zoo_checkpoint = convert_foreign_checkpoint


# ---------------------------------------------------------------------------------------------
# loading


def _file_to_model_names(arrays: Dict[str, np.ndarray], kind: str, model_names: Iterable[str]
                         ) -> Dict[str, np.ndarray]:
    """A backbone file loads into a bare ``ResNet50`` too (its names lack ``backbone.``)."""
    model_names = set(model_names)
    if kind == KIND_BACKBONE and not any(n.startswith(BACKBONE_PREFIX) for n in model_names):
        return {n[len(BACKBONE_PREFIX):] if n.startswith(BACKBONE_PREFIX) else n: v
                for n, v in arrays.items()}
    return arrays


def _fit_problems(mismatched: List[str], unexpected: List[str], unexpected_what: str,
                  missing: List[str], missing_what: str) -> List[str]:
    """The parts of a "does not fit" error: shape mismatches, then unexpected, then missing names."""
    problems = []
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches: " + "; ".join(mismatched))
    if unexpected:
        problems.append(f"{len(unexpected)} {unexpected_what}: {_listing(unexpected, None)}")
    if missing:
        problems.append(f"{len(missing)} {missing_what}: {_listing(missing, None)}")
    return problems


def load_pretrained(net: nn.Cell, ckpt_path: str, numerics: Optional[str] = None) -> LoadReport:
    """Load pre-trained weights into ``net`` (a ``Mask_Rcnn_Resnet50`` or a bare ``ResNet50``).

    Accepted files: a backbone checkpoint (``convert_checkpoint.py`` output), a checkpoint of
    this model (optimizer state in it is ignored), or a raw model-zoo / torchvision ResNet50 or
    Mask R-CNN checkpoint (``.ckpt``, ``.safetensors``, ``.pth``), converted on the fly (logged).
    Class-dependent layers (``box_head.cls_score``, ``box_head.box_deltas``,
    ``mask_head.mask_logits``) whose shape differs because the class count differs are skipped
    and listed with both shapes. The result of ``mindspore.load_param_into_net`` is checked
    against what should have loaded. A whole model whose weights need another numerics preset
    than the network's is loaded with a warning naming both presets.

    Args:
        net: the network; its parameter names are this project's names.
        ckpt_path: checkpoint file.
        numerics: name of the network's numerics preset (config key ``numerics``); default:
            the name of the network's ``numerics`` attribute (a ``Numerics``), if any.

    Returns:
        LoadReport (also logged).

    Raises:
        CheckpointError: unreadable file; any shape mismatch outside the class-dependent layers
            (every mismatch listed: name, file shape, model shape); file parameters the model does
            not have; model parameters a full checkpoint lacks (backbone ones for a backbone file);
            a parameter ``load_param_into_net`` did not load.
    """
    raw, metadata = read_weights(ckpt_path)
    kind = detect_checkpoint_kind(raw.keys(), source=ckpt_path)
    report = LoadReport(source=ckpt_path, kind=kind, numerics=metadata.get(NUMERICS_KEY))
    if kind in CONVERTERS:
        logger.info("%s: %s names detected, converting to this model's names", ckpt_path, kind)
        arrays, report.conversion = CONVERTERS[kind](raw, source=ckpt_path)
        report.converted_from, report.numerics = kind, report.conversion.numerics
        report.kind = KIND_FULL if kind in FULL_MODEL_SOURCES else KIND_BACKBONE
    else:
        arrays = {n: _to_numpy(n, v, ckpt_path) for n, v in raw.items() if not is_training_state(n)}
    if report.conversion is not None:
        report.dropped = report.conversion.dropped_classifier + report.conversion.dropped_optimizer
        if report.conversion.unexpected:
            logger.warning("%s: tensors not in the rename table, ignored: %s", ckpt_path,
                           ", ".join(report.conversion.unexpected))
    else:
        report.dropped = [n for n in raw if is_training_state(n)]
    if numerics is None:  # Mask_Rcnn_Resnet50 keeps its preset (a Numerics) as .numerics
        numerics = getattr(getattr(net, NUMERICS_KEY, None), "name", None)
    _warn_numerics_mismatch(report, numerics)

    model_params = {p.name: p for p in net.get_parameters()}
    arrays = _file_to_model_names(arrays, report.kind, model_params)
    to_load: Dict[str, np.ndarray] = {}
    mismatched, unknown = [], []
    for name, value in arrays.items():
        param = model_params.get(name)
        if param is None:
            unknown.append(name)
        elif _shape(value) != _shape(param):
            if name.startswith(CLASS_DEPENDENT_PREFIXES):
                report.skipped.append(SkippedParam(name, _shape(value), _shape(param),
                                                   "class-dependent layer, class count differs"))
            else:
                mismatched.append(f"{name} file {_shape(value)} model {_shape(param)}")
        else:
            to_load[name] = value
    not_in_file = [n for n in model_params if n not in arrays]
    if report.kind == KIND_FULL:
        missing = not_in_file
    else:
        backbone_names = set(ZOO_RESNET50_TO_OURS.values()) | set(RESNET50_SHAPES)
        missing = [n for n in not_in_file if n in backbone_names]
    problems = _fit_problems(mismatched, unknown, "parameters not in the model", missing,
                             f"model parameters missing from the {report.kind} checkpoint")
    if problems:
        raise CheckpointError(f"{ckpt_path}: does not fit the model: " + " | ".join(problems))
    report.left_at_init = [n for n in not_in_file if n not in missing]

    _load_checked(net, model_params, to_load, ckpt_path)
    report.loaded = list(to_load)
    logger.info("%s", report.summary())
    return report


def _warn_numerics_mismatch(report: LoadReport, net_numerics: Optional[str]) -> None:
    """Log a warning when a whole model's weights need another numerics preset than the network's.

    Backbone-only files are not warned about: the heads are trained anew under the network's
    conventions (the stem and normalisation differences are small and learned away).
    """
    if report.kind != KIND_FULL or not report.numerics or not net_numerics or report.numerics == net_numerics:
        return
    logger.warning("%s: these weights were computed with the numerics preset '%s', but the network "
                   "uses '%s': their features and boxes will differ from the source; set "
                   "`%s: %s` to reproduce them", report.source, report.numerics, net_numerics,
                   NUMERICS_KEY, report.numerics)


def _load_checked(net: nn.Cell, model_params: Mapping[str, Parameter], arrays: Mapping[str, np.ndarray],
                  source: str) -> None:
    """``load_param_into_net`` of exactly ``arrays`` (cast to the model dtypes), then verify
    from its return value that every one of them was loaded."""
    param_dict = {name: Parameter(Tensor(value, dtype=model_params[name].dtype), name=name)
                  for name, value in arrays.items()}
    try:
        # strict_load: no fallback matching of name suffixes, which could load a tensor into
        # the wrong layer without a word.
        param_not_load, ckpt_not_load = ms.load_param_into_net(net, param_dict, strict_load=True)
    except (RuntimeError, TypeError, ValueError) as e:
        raise CheckpointError(f"{source}: loading into the network failed: {e}") from e
    failed = sorted((set(param_not_load) & set(param_dict)) | set(ckpt_not_load))
    if failed:
        raise CheckpointError(f"{source}: load_param_into_net did not load {len(failed)} parameters "
                              f"that should have loaded: {_listing(failed, None)}")


def load_train_state(train_cell: nn.Cell, ckpt_path: str) -> int:
    """Restore a training checkpoint written by ``train.py`` (weights, optimizer state, loss scale).

    Every parameter of ``train_cell`` must be in the file with the same shape; the file may not
    hold parameters the cell lacks.

    Args:
        train_cell: the ``TrainOneStepCell`` (network + optimizer) to restore.
        ckpt_path: ``.ckpt`` saved from such a cell.

    Returns:
        The global step stored in the file.

    Raises:
        CheckpointError: unreadable file, no ``global_step``, or the file does not match the cell
            (every missing / extra / mismatched name listed).
    """
    raw = read_checkpoint(ckpt_path)
    # The per-step learning rates are rebuilt from the current config (so a resumed run may
    # change epoch_size or the schedule); global_step indexes into them.
    raw = {n: v for n, v in raw.items() if n not in RECOMPUTED_ON_RESUME}
    if GLOBAL_STEP_NAME not in raw:
        raise CheckpointError(f"{ckpt_path}: not a training checkpoint of train.py (no '{GLOBAL_STEP_NAME}'); "
                              f"use --pre_trained for weights only")
    model_params = {p.name: p for p in train_cell.get_parameters() if p.name not in RECOMPUTED_ON_RESUME}
    missing = [n for n in model_params if n not in raw]
    extra = [n for n in raw if n not in model_params]
    mismatched = [f"{n} file {_shape(v)} model {_shape(model_params[n])}" for n, v in raw.items()
                  if n in model_params and _shape(v) != _shape(model_params[n])]
    problems = _fit_problems(mismatched, extra, "parameters not in the training cell", missing,
                             "parameters missing from the file")
    if problems:
        raise CheckpointError(f"{ckpt_path}: does not match the training set-up: " + " | ".join(problems))
    _load_checked(train_cell, model_params, {n: _to_numpy(n, v, ckpt_path) for n, v in raw.items()}, ckpt_path)
    return int(np.asarray(_to_numpy(GLOBAL_STEP_NAME, raw[GLOBAL_STEP_NAME], ckpt_path)).reshape(-1)[0])


# ---------------------------------------------------------------------------------------------
# saving


def _save_object(obj):
    """What ``mindspore.save_checkpoint`` accepts: a Cell or list as is; a dict of
    name -> ndarray/Tensor/Parameter as a list of {'name', 'data'}."""
    if isinstance(obj, (nn.Cell, list)):
        return obj
    if isinstance(obj, Mapping):
        return [{"name": name, "data": value if isinstance(value, Tensor) else Tensor(np.asarray(value))}
                for name, value in obj.items()]
    raise CheckpointError(f"cannot save an object of type {type(obj).__name__}; expected a Cell, a "
                          f"list of parameters or a dict of name -> tensor")


def _fsync_path(path: str, directory: bool = False) -> None:
    if directory and os.name != "posix":  # folders cannot be opened for fsync elsewhere
        return
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint_atomic(net_or_params, path: str, append_dict: Optional[dict] = None) -> None:
    """Write a checkpoint so that ``path`` always holds either the old or the complete new file.

    ``mindspore.save_checkpoint`` deletes an existing target before writing, so it is pointed at a
    unique temporary file in the same folder; that file is fsync'ed and then renamed over
    ``path`` with ``os.replace`` (atomic within one file system), and the folder is fsync'ed.
    On any failure (including KeyboardInterrupt) the temporary files are removed and ``path`` is
    untouched.

    Args:
        net_or_params: a Cell, a list (of Parameters or {'name', 'data'} dicts) or a dict
            name -> ndarray / Tensor / Parameter.
        path: target file, must end with ``.ckpt``; its folder is created if needed.
        append_dict: extra scalars to store (passed to ``mindspore.save_checkpoint``).

    Raises:
        CheckpointError: bad file name or object, or writing failed (the message names ``path``).
    """
    if not path.endswith(CKPT_SUFFIX):
        raise CheckpointError(f"{path}: a MindSpore checkpoint file name must end with {CKPT_SUFFIX}")
    save_obj = _save_object(net_or_params)
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot create the folder of the checkpoint: {e}") from e
    stem = os.path.basename(path)[: -len(CKPT_SUFFIX)]
    tmp_path = os.path.join(directory, f".{stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.partial{CKPT_SUFFIX}")
    # mindspore.save_checkpoint writes "<name>.tmp" first and renames it to its target.
    ms_tmp_path = tmp_path[: -len(CKPT_SUFFIX)] + ".tmp"
    try:
        ms.save_checkpoint(save_obj, tmp_path, append_dict=append_dict)
        if not os.path.isfile(tmp_path):
            raise CheckpointError(f"{path}: mindspore.save_checkpoint did not produce {tmp_path}")
        _fsync_path(tmp_path)
        os.replace(tmp_path, path)
    except CheckpointError:
        raise
    except (OSError, RuntimeError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: writing the checkpoint failed, the previous file (if any) is "
                              f"kept: {e}") from e
    finally:
        for leftover in (tmp_path, ms_tmp_path):
            if os.path.lexists(leftover):
                os.remove(leftover)
    try:  # make the rename itself durable
        _fsync_path(directory, directory=True)
    except OSError as e:
        raise CheckpointError(f"{path}: written, but syncing its folder to disk failed: {e}") from e
