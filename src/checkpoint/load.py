"""Loading checkpoints into a network: pre-trained weights (``load_pretrained``) and the
training state of an interrupted run (``load_train_state``, ``train.py --resume``).

``load_pretrained`` loads any kind of file (converting foreign files on the fly), skipping
class-dependent layers whose class count differs and failing with a :class:`CheckpointError`
that lists every other mismatch; loading a whole model whose weights need another numerics
preset than the network's logs a warning naming both.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Mapping, Optional, Tuple

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn

from src.checkpoint.convert import CONVERTERS, ConversionReport, detect_checkpoint_kind
from src.checkpoint.io import CheckpointError, listing, read_checkpoint, read_weights, shape_of, to_numpy
from src.checkpoint.names import (BACKBONE_PREFIX, BN_EPS_KEY, CLASS_DEPENDENT_PREFIXES, FULL_MODEL_SOURCES,
                                  GLOBAL_STEP_NAME, KIND_BACKBONE, KIND_FULL, LAST_CHECKPOINT_NAME,
                                  NUMERICS_KEY, RECOMPUTED_ON_RESUME, RESNET50_SHAPES, ZOO_RESNET50_TO_OURS,
                                  is_training_state)
from src.maskrcnn.resnet50 import norm_eps

logger = logging.getLogger(__name__)


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
        bn_eps: the BatchNorm epsilon the weights ran with, known the same way, else None.
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
    bn_eps: Optional[float] = None

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
        problems.append(f"{len(unexpected)} {unexpected_what}: {listing(unexpected, None)}")
    if missing:
        problems.append(f"{len(missing)} {missing_what}: {listing(missing, None)}")
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
    report = LoadReport(source=ckpt_path, kind=kind, numerics=metadata.get(NUMERICS_KEY),
                        bn_eps=_recorded_bn_eps(metadata, ckpt_path))
    if kind in CONVERTERS:
        logger.info("%s: %s names detected, converting to this model's names", ckpt_path, kind)
        arrays, report.conversion = CONVERTERS[kind](raw, source=ckpt_path)
        report.converted_from, report.numerics = kind, report.conversion.numerics
        report.bn_eps = report.conversion.bn_eps
        report.kind = KIND_FULL if kind in FULL_MODEL_SOURCES else KIND_BACKBONE
    else:
        arrays = {n: to_numpy(n, v, ckpt_path) for n, v in raw.items() if not is_training_state(n)}
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
    _warn_bn_eps_mismatch(report, network_bn_eps(net))

    model_params = {p.name: p for p in net.get_parameters()}
    arrays = _file_to_model_names(arrays, report.kind, model_params)
    to_load: Dict[str, np.ndarray] = {}
    mismatched, unknown = [], []
    for name, value in arrays.items():
        param = model_params.get(name)
        if param is None:
            unknown.append(name)
        elif shape_of(value) != shape_of(param):
            if name.startswith(CLASS_DEPENDENT_PREFIXES):
                report.skipped.append(SkippedParam(name, shape_of(value), shape_of(param),
                                                   "class-dependent layer, class count differs"))
            else:
                mismatched.append(f"{name} file {shape_of(value)} model {shape_of(param)}")
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


def _recorded_bn_eps(metadata: Mapping[str, str], source: str) -> Optional[float]:
    """The BatchNorm epsilon a converted checkpoint records (``BN_EPS_KEY``), None if none."""
    text = metadata.get(BN_EPS_KEY)
    if text is None:
        return None
    try:
        return float(text)
    except ValueError as e:
        raise CheckpointError(f"{source}: recorded {BN_EPS_KEY} {text!r} is not a number") from e


def network_bn_eps(net: nn.Cell) -> Optional[float]:
    """The epsilon of the network's first BatchNorm (all share it), None without BatchNorm."""
    for _, cell in net.cells_and_names():
        if isinstance(cell, nn.BatchNorm2d):
            return norm_eps(cell)
    return None


def _warn_bn_eps_mismatch(report: LoadReport, net_eps: Optional[float]) -> None:
    """Log a warning when the weights ran with another BatchNorm epsilon than the network's."""
    if report.bn_eps is None or net_eps is None or report.bn_eps == net_eps:
        return
    logger.warning("%s: these weights ran with BatchNorm eps %r, but the network uses %r: the "
                   "backbone's features will differ from the source; set `%s: %r` to reproduce them",
                   report.source, report.bn_eps, net_eps, BN_EPS_KEY, report.bn_eps)


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
                              f"that should have loaded: {listing(failed, None)}")


def read_train_state(ckpt_path: str) -> Tuple[Dict[str, Parameter], int]:
    """Read a training checkpoint written by ``train.py`` (``last.ckpt``) before anything is built.

    Returns:
        ``(params, global_step)``: what :func:`load_train_state` loads (the per-step learning
        rates left out: they are rebuilt from the current config, so a resumed run may change
        epoch_size or the schedule; global_step indexes into them), and the step it was saved at.

    Raises:
        CheckpointError: unreadable or damaged file, or a weights-only file (no ``global_step``:
            the message names the run's ``last.ckpt`` and ``--pre_trained``).
    """
    raw = {n: v for n, v in read_checkpoint(ckpt_path).items() if n not in RECOMPUTED_ON_RESUME}
    if GLOBAL_STEP_NAME not in raw:
        last = os.path.join(os.path.dirname(ckpt_path), LAST_CHECKPOINT_NAME)
        raise CheckpointError(f"{ckpt_path}: holds weights only (no optimizer state, no '{GLOBAL_STEP_NAME}'), "
                              f"it cannot be resumed: resume from the run's {LAST_CHECKPOINT_NAME} ({last}), "
                              f"or start a new run from these weights with --pre_trained")
    return raw, int(np.asarray(to_numpy(GLOBAL_STEP_NAME, raw[GLOBAL_STEP_NAME], ckpt_path)).reshape(-1)[0])


def load_train_state(train_cell: nn.Cell, ckpt_path: str,
                     state: Optional[Tuple[Dict[str, Parameter], int]] = None) -> int:
    """Restore a training checkpoint written by ``train.py`` (weights, optimizer state, loss scale).

    Every parameter of ``train_cell`` must be in the file with the same shape; the file may not
    hold parameters the cell lacks. Only a run's ``last.ckpt`` holds that state: its numbered
    checkpoints and ``best.ckpt`` hold the weights only.

    Args:
        train_cell: the ``TrainOneStepCell`` (network + optimizer) to restore.
        ckpt_path: ``.ckpt`` saved from such a cell.
        state: what :func:`read_train_state` returned for it, when already read.

    Returns:
        The global step stored in the file.

    Raises:
        CheckpointError: as :func:`read_train_state`, or the file does not match the cell (every
            missing / extra / mismatched name listed).
    """
    raw, global_step = state if state is not None else read_train_state(ckpt_path)
    model_params = {p.name: p for p in train_cell.get_parameters() if p.name not in RECOMPUTED_ON_RESUME}
    missing = [n for n in model_params if n not in raw]
    extra = [n for n in raw if n not in model_params]
    mismatched = [f"{n} file {shape_of(v)} model {shape_of(model_params[n])}" for n, v in raw.items()
                  if n in model_params and shape_of(v) != shape_of(model_params[n])]
    problems = _fit_problems(mismatched, extra, "parameters not in the training cell", missing,
                             "parameters missing from the file")
    if problems:
        raise CheckpointError(f"{ckpt_path}: does not match the training set-up: " + " | ".join(problems))
    _load_checked(train_cell, model_params, {n: to_numpy(n, v, ckpt_path) for n, v in raw.items()}, ckpt_path)
    return global_step


def load_inference_checkpoint(net, ckpt_path: str):
    """Load a whole-model checkpoint for inference; anything that does not fit is an error.

    Unlike fine-tuning (:func:`load_pretrained` skips class-dependent layers with a
    different class count, and a backbone-only file leaves the heads at initialisation), inference
    needs every parameter from the file.

    Args:
        net: ``Mask_Rcnn_Resnet50`` built from the config.
        ckpt_path: ``.ckpt`` file written by train.py (or a converted model-zoo Mask R-CNN).

    Returns:
        the ``LoadReport`` of ``load_pretrained``.

    Raises:
        src.checkpoint.io.CheckpointError: one line naming the file and listing the mismatches.
    """
    report = load_pretrained(net, ckpt_path)
    if report.skipped:
        num_classes = getattr(net, "num_classes", None)
        raise CheckpointError(
            f"{ckpt_path}: does not fit the config ({num_classes} classes incl. background); "
            f"class-dependent layers differ: " + "; ".join(str(s) for s in report.skipped)
            + " -- set coco_classes to the classes the checkpoint was trained on")
    if report.left_at_init:
        raise CheckpointError(
            f"{ckpt_path}: holds only a {report.kind} checkpoint; {len(report.left_at_init)} parameters "
            f"of the heads would stay randomly initialised (e.g. {report.left_at_init[0]}); "
            f"evaluate a checkpoint written by train.py")
    return report
