"""COCO metrics of COCO results: pycocotools ``COCOeval`` for ``bbox`` and ``segm``.

:class:`COCOEvaluator` accumulates the results of a dataset (batch by batch from the network's
outputs, via :mod:`src.evaluation.results`, or as ready result dicts) and runs ``COCOeval``
restricted to the configured classes and the evaluated images; :func:`format_per_class_table`
prints its per-class AP.

COCO's 12 summary numbers for any ``maxDets`` setting: ``COCOeval.summarize`` looks up the
AP@[.5:.95] entry with a hard-coded ``maxDets=100``. With ``params.maxDets = [1, 10, 150]`` (a
model that keeps 150 detections per image) it finds no matching column and reports -1, and with
``[1, 10, 100]`` detections past the 100th are never scored. :func:`summarize_cocoeval` reads the
same accumulated arrays but takes the largest ``maxDets`` for every AP entry, so
``test_max_per_img`` decides how many detections per image count.
"""

from __future__ import annotations

import contextlib
import io
import logging
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from src.batch import PAD_IMAGE_ID, PREDICTION_NAMES
from src.evaluation.results import EvaluationError, predictions_to_coco, to_numpy

logger = logging.getLogger(__name__)

IOU_TYPES = ("bbox", "segm")
# Names of the 12 numbers of COCOeval.stats, in its order.
COCO_STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl",
                   "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
# COCO's default maxDets; the third entry is replaced by the model's detections per image.
COCO_MAX_DETS = (1, 10, 100)
# Detections per image scored by COCOeval unless the config says otherwise (test_max_per_img).
DEFAULT_MAX_DETS = COCO_MAX_DETS[-1]


# ---------------------------------------------------------------------------------------------
# COCO's 12 summary numbers for any maxDets
# ---------------------------------------------------------------------------------------------

# (is AP, IoU threshold or None = mean over .50:.95, area label, index into params.maxDets)
_STAT_SPECS = (
    (True, None, "all", -1), (True, 0.5, "all", -1), (True, 0.75, "all", -1),
    (True, None, "small", -1), (True, None, "medium", -1), (True, None, "large", -1),
    (False, None, "all", 0), (False, None, "all", 1), (False, None, "all", -1),
    (False, None, "small", -1), (False, None, "medium", -1), (False, None, "large", -1),
)


def max_dets_setting(max_per_image: int) -> List[int]:
    """``params.maxDets`` for a model keeping ``max_per_image`` detections: [1, 10, max_per_image].

    The first two entries (COCO's AR1 and AR10) are capped at ``max_per_image``.

    Raises:
        ValueError: ``max_per_image`` below 1.
    """
    max_per_image = int(max_per_image)
    if max_per_image < 1:
        raise ValueError(f"max detections per image must be >= 1, got {max_per_image}")
    return [min(COCO_MAX_DETS[0], max_per_image), min(COCO_MAX_DETS[1], max_per_image), max_per_image]


def _mean_valid(values: np.ndarray) -> float:
    """Mean of the entries > -1 (COCO marks absent categories with -1); -1 if there are none."""
    values = values[values > -1]
    return float(values.mean()) if values.size else -1.0


def summarize_cocoeval(coco_eval: COCOeval) -> Tuple[np.ndarray, str]:
    """The 12 COCO stats of an accumulated ``COCOeval`` and the text lines COCO prints.

    Args:
        coco_eval: after ``evaluate()`` and ``accumulate()``; its ``params.iouThrs`` must
            contain 0.5 and 0.75 and ``params.areaRngLbl`` the labels all/small/medium/large.

    Returns:
        (stats [12] float64 in the order AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR@max, ARs,
        ARm, ARl -- the AP entries and the last four AR entries at ``params.maxDets[-1]``;
        summary text, one line per stat in COCO's format).
    """
    params = coco_eval.params
    stats = np.zeros(len(_STAT_SPECS))
    lines = []
    for index, (is_ap, iou_thr, area, max_index) in enumerate(_STAT_SPECS):
        area_index = list(params.areaRngLbl).index(area)
        values = coco_eval.eval["precision"] if is_ap else coco_eval.eval["recall"]
        iou_index: Optional[np.ndarray] = None
        if iou_thr is not None:
            iou_index = np.where(np.isclose(params.iouThrs, iou_thr))[0]
            values = values[iou_index]
        values = values[..., area_index, max_index]
        stats[index] = _mean_valid(values)
        iou_text = (f"{params.iouThrs[0]:0.2f}:{params.iouThrs[-1]:0.2f}" if iou_thr is None
                    else f"{iou_thr:0.2f}")
        title = "Average Precision  (AP)" if is_ap else "Average Recall     (AR)"
        lines.append(f" {title} @[ IoU={iou_text:<9} | area={area:>6s} | maxDets={params.maxDets[max_index]:>3d} ]"
                     f" = {stats[index]:0.3f}")
    return stats, "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# COCOeval
# ---------------------------------------------------------------------------------------------

def _quiet(func, *args):
    """Run a pycocotools call, sending what it prints to the debug log instead of stdout."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        value = func(*args)
    for line in buffer.getvalue().splitlines():
        logger.debug("pycocotools: %s", line)
    return value


def _results_coco(coco_gt: COCO, results: List[Dict[str, object]], iou_type: str) -> COCO:
    """A COCO object holding ``results`` as annotations (like COCO.loadRes, empty lists allowed).

    The area of a segm result is its mask area (so area ranges S/M/L follow the mask), of a
    bbox result its box area. The input dicts are not modified.
    """
    anns = []
    for index, res in enumerate(results, start=1):
        ann = dict(res)
        if iou_type == "segm":
            ann["area"] = float(mask_utils.area(res["segmentation"]))
        else:
            ann.pop("segmentation", None)
            ann["area"] = float(res["bbox"][2] * res["bbox"][3])
        ann["id"] = index
        ann["iscrowd"] = 0
        anns.append(ann)
    coco_dt = COCO()
    coco_dt.dataset = {"images": list(coco_gt.dataset["images"]),
                       "categories": list(coco_gt.dataset["categories"]),
                       "annotations": anns}
    _quiet(coco_dt.createIndex)
    return coco_dt


def _per_class_ap(coco_eval: COCOeval) -> Dict[int, Optional[float]]:
    """AP@[.5:.95] per category id (area all, largest maxDets); None for a class without GT."""
    precision = coco_eval.eval["precision"]  # [T, R, K, A, M]
    per_class = {}
    for k, cat_id in enumerate(coco_eval.params.catIds):
        values = precision[:, :, k, 0, -1]
        values = values[values > -1]
        per_class[int(cat_id)] = float(values.mean()) if values.size else None
    return per_class


def run_cocoeval(coco_gt: COCO, results: List[Dict[str, object]], cat_ids: Sequence[int],
                 image_ids: Sequence[int], iou_type: str, max_dets: int = DEFAULT_MAX_DETS,
                 iou_thrs: Optional[Sequence[float]] = None) -> COCOeval:
    """An evaluated and accumulated ``COCOeval`` (see :func:`coco_evaluate` for the arguments).

    ``max_dets`` detections per image are scored (maxDets [1, 10, max_dets]); ``iou_thrs``
    replaces COCO's IoU thresholds .50:.05:.95 when given (the error analysis uses 0.1).
    """
    if iou_type not in IOU_TYPES:
        raise EvaluationError(f"iou_type must be one of {IOU_TYPES}, got {iou_type!r}")
    coco_dt = _results_coco(coco_gt, results, iou_type)
    coco_eval = COCOeval(coco_gt, coco_dt, iou_type)
    coco_eval.params.catIds = sorted(int(c) for c in cat_ids)
    coco_eval.params.imgIds = sorted(int(i) for i in image_ids)
    try:
        coco_eval.params.maxDets = max_dets_setting(max_dets)
    except ValueError as e:
        raise EvaluationError(f"test_max_per_img: {e}") from e
    if iou_thrs is not None:
        coco_eval.params.iouThrs = np.asarray(iou_thrs, dtype=np.float64)
    _quiet(coco_eval.evaluate)
    _quiet(coco_eval.accumulate)
    return coco_eval


def coco_evaluate(coco_gt: COCO, results: List[Dict[str, object]], cat_ids: Sequence[int],
                  image_ids: Sequence[int], iou_type: str,
                  max_dets: int = DEFAULT_MAX_DETS) -> Tuple[Dict[str, object], str]:
    """Run COCOeval on ``results`` for one IoU type.

    Args:
        coco_gt: ground truth.
        results: COCO result dicts (see :func:`detections_to_coco`).
        cat_ids: category ids to evaluate (the configured classes).
        image_ids: image ids to evaluate.
        iou_type: "bbox" or "segm".
        max_dets: detections per image that are scored (``config.test_max_per_img``); the
            AP entries and AR100/ARs/ARm/ARl use this many (COCO's own summary uses 100).

    Returns:
        (metrics, summary): metrics has the 12 COCO stats by name (AP, AP50, ..., ARl; -1 where
        COCO has no ground truth for the area range) and ``per_class`` {cat_id: AP or None};
        summary is the 12-line text in COCOeval.summarize's format.
    """
    coco_eval = run_cocoeval(coco_gt, results, cat_ids, image_ids, iou_type, max_dets)
    stats, summary = summarize_cocoeval(coco_eval)
    metrics: Dict[str, object] = {name: float(v) for name, v in zip(COCO_STAT_NAMES, stats)}
    metrics["per_class"] = _per_class_ap(coco_eval)
    return metrics, summary


def format_per_class_table(metrics: Mapping[str, Mapping[str, object]], class_names: Mapping[int, str]) -> str:
    """A text table: one row per class with its bbox and segm AP (percent), ``-`` without GT.

    Args:
        metrics: the dict returned by :meth:`COCOEvaluator.evaluate`.
        class_names: category id -> name.
    """
    width = max([len("class")] + [len(n) for n in class_names.values()])
    lines = [f"{'class':<{width}}  {'cat_id':>6}  {'bbox AP':>7}  {'segm AP':>7}"]
    for cat_id, name in class_names.items():
        cells = []
        for iou_type in IOU_TYPES:
            value = metrics[iou_type]["per_class"].get(name)
            cells.append(f"{100.0 * value:7.2f}" if value is not None else f"{'-':>7}")
        lines.append(f"{name:<{width}}  {cat_id:>6}  {cells[0]}  {cells[1]}")
    return "\n".join(lines)


class COCOEvaluator:
    """Accumulates predictions batch by batch and computes COCO bbox + segm metrics.

    Args:
        coco_gt: pycocotools COCO object with the ground truth (e.g. ``COCOSubDataset.coco``).
        cat_ids: the configured classes' category ids in contiguous-label order
            (``cat_ids[i - 1]`` is the category of label i); only these are evaluated.
        image_ids: the evaluated image ids (all images of the split, also those without
            instances). Predictions for other ids are an error.
        mask_thr: threshold of the pasted mask probabilities (``config.mask_thr``).
        label_to_cat_id: optional explicit label -> category id map (defaults to the
            ``cat_ids`` order).
        max_dets: detections per image COCOeval scores (``config.test_max_per_img``).
        numerics: the numerics preset (``config.numerics``) whose mask paste and COCO box
            width the results are written with (``src/evaluation/results.py``).
    """

    def __init__(self, coco_gt: COCO, cat_ids: Sequence[int], image_ids: Sequence[int],
                 mask_thr: float = 0.5, label_to_cat_id: Optional[Mapping[int, int]] = None,
                 max_dets: int = DEFAULT_MAX_DETS, numerics: str = "native"):
        self.coco_gt = coco_gt
        self.numerics = numerics
        self.max_dets = int(max_dets)
        self.cat_ids = [int(c) for c in cat_ids]
        unknown = [c for c in self.cat_ids if c not in coco_gt.cats]
        if unknown:
            raise EvaluationError(f"category ids {unknown} are not in the ground-truth file")
        self.image_ids = [int(i) for i in image_ids]
        missing = [i for i in self.image_ids if i not in coco_gt.imgs]
        if missing:
            raise EvaluationError(f"image ids {missing[:10]} are not in the ground-truth file")
        self.mask_thr = float(mask_thr)
        if label_to_cat_id is None:
            label_to_cat_id = {label: cat for label, cat in enumerate(self.cat_ids, start=1)}
        self.label_to_cat_id = {int(k): int(v) for k, v in label_to_cat_id.items()}
        self.class_names = {c: coco_gt.cats[c]["name"] for c in self.cat_ids}
        self._image_set = set(self.image_ids)
        self.results: List[Dict[str, object]] = []
        self.seen_image_ids: set = set()

    def reset(self) -> None:
        """Forget all accumulated results."""
        self.results = []
        self.seen_image_ids = set()

    def _check_image_id(self, image_id: int) -> None:
        if image_id not in self._image_set:
            raise EvaluationError(f"image id {image_id} is not one of the evaluated images")

    def process(self, batch_predictions: Sequence[np.ndarray], image_ids: Sequence[int],
                image_shapes: np.ndarray) -> None:
        """Add one batch of network predictions.

        Args:
            batch_predictions: (boxes [B,K,4], scores [B,K], labels [B,K], valid [B,K],
                masks [B,K,28,28]) as NumPy arrays or MindSpore Tensors (order of
                ``src.batch.PREDICTION_NAMES``).
            image_ids: [B] COCO image ids; -1 marks a padding image, which is skipped.
            image_shapes: [B, 4] (resized_h, resized_w, scale_h, scale_w).
        """
        if len(batch_predictions) != len(PREDICTION_NAMES):
            raise EvaluationError(f"expected {len(PREDICTION_NAMES)} prediction arrays "
                                  f"{PREDICTION_NAMES}, got {len(batch_predictions)}")
        boxes, scores, labels, valid, masks = (to_numpy(p) for p in batch_predictions)
        image_ids = to_numpy(image_ids).reshape(-1)
        image_shapes = to_numpy(image_shapes).reshape(-1, 4)
        for b, image_id in enumerate(image_ids):
            image_id = int(image_id)
            if image_id == PAD_IMAGE_ID:
                continue
            self._check_image_id(image_id)
            info = self.coco_gt.imgs[image_id]
            self.results.extend(predictions_to_coco(
                image_id, boxes[b], scores[b], labels[b], valid[b], masks[b], image_shapes[b],
                int(info["height"]), int(info["width"]), self.label_to_cat_id, self.mask_thr,
                numerics=self.numerics))
            self.seen_image_ids.add(image_id)

    def add_results(self, image_id: int, results: Iterable[Dict[str, object]]) -> None:
        """Add ready COCO result dicts of one image (e.g. from :func:`detections_to_coco`)."""
        image_id = int(image_id)
        self._check_image_id(image_id)
        for res in results:
            if int(res["image_id"]) != image_id:
                raise EvaluationError(f"result for image {res['image_id']} added as image {image_id}")
            self.results.append(res)
        self.seen_image_ids.add(image_id)

    def evaluate(self) -> Dict[str, object]:
        """COCO metrics of everything processed since the last reset.

        Returns:
            {"bbox": {AP, AP50, AP75, APs, APm, APl, AR1, ..., "per_class": {name: AP}},
             "segm": {...}, "num_images": int, "num_detections": int}. AP values are fractions
            (0..1); a class without ground truth in the evaluated images has AP None. With no
            detections at all every AP is 0.
        """
        not_seen = self._image_set - self.seen_image_ids
        if not_seen:
            logger.warning("%d of %d evaluated images received no predictions (e.g. image %d)",
                           len(not_seen), len(self.image_ids), min(not_seen))
        if not self.results:
            logger.warning("no detections at all: every AP is 0")
        metrics: Dict[str, object] = {}
        for iou_type in IOU_TYPES:
            stats, summary = coco_evaluate(self.coco_gt, self.results, self.cat_ids, self.image_ids, iou_type,
                                           self.max_dets)
            stats["per_class"] = {self.class_names[c]: ap for c, ap in stats["per_class"].items()}
            metrics[iou_type] = stats
            logger.info("COCO %s metrics:\n%s", iou_type, summary)
        metrics["num_images"] = len(self.image_ids)
        metrics["num_detections"] = len(self.results)
        metrics["max_dets"] = self.max_dets
        logger.info("per-class AP:\n%s", format_per_class_table(metrics, self.class_names))
        return metrics
