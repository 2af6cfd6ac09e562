"""Conversion of model-zoo and torchvision parameter dicts to this project's names.

``detect_checkpoint_kind`` tells the kind of a file from its parameter names.
``convert_resnet50`` / ``convert_zoo_maskrcnn`` / ``convert_torchvision_resnet50`` /
``convert_torchvision_maskrcnn`` apply the rename tables of ``src/checkpoint/names.py`` to a
parameter dict and return a :class:`ConversionReport`; ``convert_foreign_checkpoint`` (detect +
convert + log) is what ``convert_checkpoint.py`` runs. A converted file records the numerics
preset its weights need (``NUMERICS_KEY``; see ``ConversionReport.numerics``) and the BatchNorm
epsilon they ran with (``BN_EPS_KEY``; ``ConversionReport.bn_eps``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Mapping, Optional, Tuple

import numpy as np

from src.checkpoint.io import CheckpointError, listing, shape_of, to_numpy
from src.checkpoint.names import (BACKBONE_PREFIX, BN_EPS_FOR_SOURCE, BN_EPS_KEY, CONVERT_MODES, HEAD_PREFIXES, KIND_BACKBONE, KIND_FULL,
                                  KIND_TV_MASKRCNN, KIND_TV_RESNET50, KIND_ZOO_MASKRCNN, KIND_ZOO_RESNET50,
                                  NUMERICS_FOR_SOURCE, NUMERICS_KEY, RESNET50_SHAPES, TORCHVISION_BODY_PREFIX,
                                  TORCHVISION_CLASSIFIER_PREFIX, TORCHVISION_LEGACY_NAMES,
                                  TORCHVISION_MASKRCNN_PREFIXES, TORCHVISION_MASKRCNN_TO_OURS,
                                  TORCHVISION_RESNET50_TO_OURS, ZOO_CLASSIFIER_PREFIX, ZOO_MASKRCNN_PREFIXES,
                                  ZOO_MASKRCNN_TO_OURS, ZOO_MASKRCNN_TRANSPOSED, ZOO_RESNET50_TO_OURS,
                                  is_training_state, torchvision_resnet50_name, zoo_maskrcnn_backbone_name)

logger = logging.getLogger(__name__)


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
        bn_eps: the BatchNorm epsilon the weights ran with at home (``BN_EPS_FOR_SOURCE``
            unless the caller knows better, see ``convert_foreign_checkpoint``).
    """

    source: str
    kind: str
    converted: List[Tuple[str, str]] = field(default_factory=list)
    transposed: List[str] = field(default_factory=list)
    dropped_classifier: List[str] = field(default_factory=list)
    dropped_optimizer: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    bn_eps: Optional[float] = None

    def __post_init__(self):
        if self.bn_eps is None:
            self.bn_eps = BN_EPS_FOR_SOURCE[self.kind]

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
                          f"nor one of this project: unrecognised parameter names ({listing(sorted(weights))})")


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
        parts.append(f"missing: {listing(missing)}")
    if wrong:
        parts.append(f"wrong shapes: {listing(wrong)}")
    raise CheckpointError(f"{source}: not a {what} checkpoint: " + "; ".join(parts))


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
    _check_shapes({n: shape_of(v) for n, v in params.items() if n in RESNET50_SHAPES}, RESNET50_SHAPES,
                  source, "model-zoo ResNet50")
    converted = {}
    for zoo_name, our_name in ZOO_RESNET50_TO_OURS.items():
        converted[our_name] = to_numpy(zoo_name, params[zoo_name], source)
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
    expected.update({zoo_maskrcnn_backbone_name(n): s for n, s in RESNET50_SHAPES.items()})
    found = {n: shape_of(params[n]) for n in ZOO_MASKRCNN_TO_OURS if n in params}
    _check_shapes(found, expected, source, "model-zoo Mask R-CNN")
    converted = {}
    for zoo_name, our_name in ZOO_MASKRCNN_TO_OURS.items():
        value = to_numpy(zoo_name, params[zoo_name], source)
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
    expected.update({resnet_prefix + torchvision_resnet50_name(n): s for n, s in RESNET50_SHAPES.items()})
    _check_shapes({n: shape_of(v) for n, (_, v) in by_current_name.items()}, expected, source, what)
    converted = {}
    for tv_name, our_name in table.items():
        file_name, value = by_current_name[tv_name]
        converted[our_name] = to_numpy(file_name, value, source)
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


def convert_foreign_checkpoint(params: Mapping[str, object], mode: Optional[str] = None,
                               source: str = "parameters", bn_eps: Optional[float] = None
                               ) -> Tuple[Dict[str, np.ndarray], ConversionReport]:
    """Convert a model-zoo or torchvision parameter dict (what ``convert_checkpoint.py`` does).

    Args:
        params: foreign name -> Parameter / Tensor / ndarray, e.g. ``read_weights(path)[0]``.
        mode: a key of CONVERT_MODES ("resnet50", "maskrcnn", "torchvision_resnet50",
            "torchvision_maskrcnn") or None to detect the kind from the names.
        source: file name for messages.
        bn_eps: the BatchNorm epsilon the weights were trained / evaluated with; None = the
            source loader's (``BN_EPS_FOR_SOURCE``: 0 for torchvision's COCO Mask R-CNN, else
            1e-5). Pass 1e-5 for a torchvision Mask R-CNN fine-tuned from an ImageNet backbone.

    Returns:
        (converted, report) of the kind's converter (``CONVERTERS``); the counts, the dropped /
        unexpected names, the numerics preset the weights need and their BatchNorm epsilon
        are logged.

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
    if bn_eps is not None:
        report.bn_eps = float(bn_eps)
    logger.info("%s", report.summary())
    if report.dropped_classifier:
        logger.info("dropped classifier: %s", ", ".join(report.dropped_classifier))
    if report.dropped_optimizer:
        logger.info("dropped optimizer state: %s", listing(report.dropped_optimizer, 10))
    if report.unexpected:
        logger.warning("unexpected tensors, not converted: %s", ", ".join(report.unexpected))
    logger.info("these weights need the numerics preset '%s' (config key %s)", report.numerics, NUMERICS_KEY)
    logger.info("BatchNorm eps of these weights: %r (config key %s; recorded in the output)%s", report.bn_eps,
                BN_EPS_KEY, BN_EPS_NOTES.get(kind, "") if bn_eps is None else " (given)")
    return converted, report


# Why a source's default epsilon is what it is (logged by convert_foreign_checkpoint).
BN_EPS_NOTES = {
    KIND_TV_MASKRCNN: (": torchvision's maskrcnn_resnet50_fpn(weights=COCO_V1) sets FrozenBatchNorm eps 0; "
                       "for a model fine-tuned from an ImageNet backbone (eps 1e-5) convert with --bn_eps 1e-5"),
}


# The name convert_checkpoint.py used before torchvision files were supported.
convert_zoo_checkpoint = convert_foreign_checkpoint


