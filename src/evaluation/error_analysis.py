"""Where detections fail: AP lost per error kind, and the score threshold with the best F1.

The breakdown follows the idea of the COCO analysis tool (Hoiem et al.'s diagnosis): the
precision-recall curve is recomputed under settings that forgive one kind of error after the
other, and the AP gained at each step is the AP lost to that error. Everything is derived
from one ``COCOeval`` run at IoU thresholds 0.1, 0.5 and 0.75 (area "all", the model's maxDets):

1. ``ap50``: the plain AP at IoU 0.5 (the reference);
2. ``ap_relaxed_iou``: AP at IoU 0.1 -- a detection that is on the object but poorly placed
   counts as found; the gain is the AP lost to **localisation**;
3. ``ap_no_confusion``: at IoU 0.1 and with the false positives that overlap (IoU >= 0.1) an
   object of *another* evaluated class ignored; the gain is the AP lost to **class confusion**;
4. ``ap_no_background``: at IoU 0.1 and with every remaining false positive ignored (what is
   left are detections on nothing); the gain is the AP lost to **background** false positives;
5. what is still missing to 1.0 is the AP lost to **missed objects** (instances no detection
   reaches even at IoU 0.1).

The four losses and ``ap50`` add up to 1 for a class with ground truth. The detections are
also counted per kind (``counts``), and per image for the gallery of the report.

For deployment, :func:`best_f1_thresholds` picks per class the score threshold that maximises
F1 (IoU 0.5) on the evaluated split.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from src.evaluation.coco_eval import DEFAULT_MAX_DETS, run_cocoeval

RELAXED_IOU = 0.1
REFERENCE_IOU = 0.5
STRICT_IOU = 0.75
ANALYSIS_IOUS = (RELAXED_IOU, REFERENCE_IOU, STRICT_IOU)
_T_RELAXED, _T_REFERENCE, _T_STRICT = range(3)
# Area range "all" is the first of COCO's area ranges.
_AREA_ALL = 0
ERROR_KINDS = ("localisation", "confusion", "background", "missed")


@dataclass
class ClassErrors:
    """Error breakdown of one class (AP values are fractions, None without ground truth).

    Attributes:
        name: class name; num_gt: instances (crowd excluded); num_dets: scored detections.
        ap50, ap75: plain AP at IoU 0.5 / 0.75.
        ap_relaxed_iou, ap_no_confusion, ap_no_background: AP under the relaxed settings.
        lost: {error kind: AP lost to it} (see the module docstring).
        counts: detections per kind at IoU 0.5 (``true_positive``, ``localisation``,
            ``confusion``, ``background``) and ``missed`` instances (not reached at IoU 0.1).
        pr50, pr75: interpolated precision at COCO's 101 recall points (-1 where not reached
            is mapped to 0), for the PR plots.
    """

    name: str
    num_gt: int
    num_dets: int
    ap50: Optional[float] = None
    ap75: Optional[float] = None
    ap_relaxed_iou: Optional[float] = None
    ap_no_confusion: Optional[float] = None
    ap_no_background: Optional[float] = None
    lost: Dict[str, Optional[float]] = field(default_factory=dict)
    counts: Dict[str, int] = field(default_factory=dict)
    pr50: List[float] = field(default_factory=list)
    pr75: List[float] = field(default_factory=list)


@dataclass
class Threshold:
    """Best-F1 operating point of one class at IoU 0.5 (None fields: no ground truth or no detection)."""

    score_thr: Optional[float]
    f1: float
    precision: float
    recall: float


def _class_ap(precision: np.ndarray, t: int, k: int) -> Optional[float]:
    """Mean interpolated precision of class index k at IoU index t (area all, largest maxDets)."""
    values = precision[t, :, k, _AREA_ALL, -1]
    values = values[values > -1]
    return float(values.mean()) if values.size else None


def _entries(coco_eval: COCOeval, k: int) -> List[dict]:
    """The evalImgs entries of class index k, area "all", one per image with GT or detections."""
    num_images = len(coco_eval.params.imgIds)
    num_areas = len(coco_eval.params.areaRng)
    start = k * num_areas * num_images + _AREA_ALL * num_images
    return [e for e in coco_eval.evalImgs[start:start + num_images] if e is not None]


def _iou_with_others(coco_eval: COCOeval, dt_id: int, image_id: int, cat_id: int, iou_type: str) -> float:
    """Largest IoU of detection ``dt_id`` with a non-crowd GT of another evaluated class."""
    gt_coco: COCO = coco_eval.cocoGt
    others = [a for a in gt_coco.imgToAnns[image_id]
              if a["category_id"] != cat_id and a["category_id"] in coco_eval.params.catIds and not a["iscrowd"]]
    if not others:
        return 0.0
    det = coco_eval.cocoDt.anns[dt_id]
    if iou_type == "segm":
        dts, gts = [det["segmentation"]], [gt_coco.annToRLE(a) for a in others]
    else:
        dts, gts = [det["bbox"]], [a["bbox"] for a in others]
    return float(np.max(mask_utils.iou(dts, gts, [0] * len(gts))))


def _relaxed_precision(coco_eval: COCOeval, ignore: Dict[int, np.ndarray]) -> np.ndarray:
    """Accumulated precision [T, R, K, A, M] after setting dtIgnore where ``ignore[entry index]`` is True.

    ``coco_eval.evalImgs`` is restored afterwards (the entries are copied, not changed).
    """
    saved = coco_eval.evalImgs
    relaxed = list(saved)
    for index, extra in ignore.items():
        entry = copy.copy(saved[index])
        entry["dtIgnore"] = saved[index]["dtIgnore"] | extra[None, :]
        relaxed[index] = entry
    coco_eval.evalImgs = relaxed
    try:
        coco_eval.accumulate()
    finally:
        coco_eval.evalImgs = saved
    return coco_eval.eval["precision"].copy()


def run_analysis_eval(coco_gt: COCO, results: List[Dict[str, object]], cat_ids: Sequence[int],
                      image_ids: Sequence[int], iou_type: str, max_dets: int = DEFAULT_MAX_DETS) -> COCOeval:
    """``COCOeval`` evaluated and accumulated at IoU 0.1, 0.5 and 0.75 (input of the functions below)."""
    return run_cocoeval(coco_gt, results, cat_ids, image_ids, iou_type, max_dets, iou_thrs=ANALYSIS_IOUS)


def analyse_errors(coco_eval: COCOeval, class_names: Mapping[int, str]) -> Dict[str, ClassErrors]:
    """Per class AP lost to localisation, confusion, background and missed objects.

    Args:
        coco_eval: from :func:`run_analysis_eval`.
        class_names: category id -> name.

    Returns:
        {class name: ClassErrors} in the order of ``coco_eval.params.catIds``.
    """
    import contextlib
    import io

    iou_type = coco_eval.params.iouType
    with contextlib.redirect_stdout(io.StringIO()):  # accumulate() prints
        coco_eval.accumulate()
    precision = coco_eval.eval["precision"].copy()
    num_images = len(coco_eval.params.imgIds)
    num_areas = len(coco_eval.params.areaRng)
    # entry index -> detections to ignore; one dict for all classes (an entry belongs to one class)
    confusion_ignore: Dict[int, np.ndarray] = {}
    all_fp_ignore: Dict[int, np.ndarray] = {}
    out: Dict[str, ClassErrors] = {}
    for k, cat_id in enumerate(coco_eval.params.catIds):
        counts = dict(true_positive=0, localisation=0, confusion=0, background=0, missed=0)
        num_gt = num_dets = 0
        start = k * num_areas * num_images + _AREA_ALL * num_images
        for index in range(start, start + num_images):
            entry = coco_eval.evalImgs[index]
            if entry is None:
                continue
            dt_ignored = entry["dtIgnore"][_T_RELAXED].astype(bool)
            gt_ignored = np.asarray(entry["gtIgnore"]).astype(bool)
            num_gt += int((~gt_ignored).sum())
            counts["missed"] += int(((entry["gtMatches"][_T_RELAXED] == 0) & ~gt_ignored).sum())
            matched_relaxed = entry["dtMatches"][_T_RELAXED] > 0
            matched_reference = entry["dtMatches"][_T_REFERENCE] > 0
            confused = np.zeros(len(entry["dtIds"]), dtype=bool)
            for j, dt_id in enumerate(entry["dtIds"]):
                if dt_ignored[j]:
                    continue
                num_dets += 1
                if matched_reference[j]:
                    counts["true_positive"] += 1
                elif matched_relaxed[j]:
                    counts["localisation"] += 1
                elif _iou_with_others(coco_eval, dt_id, entry["image_id"], cat_id, iou_type) >= RELAXED_IOU:
                    counts["confusion"] += 1
                    confused[j] = True
                else:
                    counts["background"] += 1
            confusion_ignore[index] = confused
            all_fp_ignore[index] = ~matched_relaxed
        out[class_names[cat_id]] = ClassErrors(name=class_names[cat_id], num_gt=num_gt, num_dets=num_dets,
                                               counts=counts)
    with contextlib.redirect_stdout(io.StringIO()):
        no_confusion = _relaxed_precision(coco_eval, confusion_ignore)
        no_background = _relaxed_precision(coco_eval, all_fp_ignore)
        coco_eval.accumulate()  # leave coco_eval.eval as it was
    for k, errors in enumerate(out.values()):
        errors.pr50 = [float(max(v, 0.0)) for v in precision[_T_REFERENCE, :, k, _AREA_ALL, -1]]
        errors.pr75 = [float(max(v, 0.0)) for v in precision[_T_STRICT, :, k, _AREA_ALL, -1]]
        if not errors.num_gt:
            errors.lost = {kind: None for kind in ERROR_KINDS}
            continue
        errors.ap50 = _class_ap(precision, _T_REFERENCE, k)
        errors.ap75 = _class_ap(precision, _T_STRICT, k)
        errors.ap_relaxed_iou = _class_ap(precision, _T_RELAXED, k)
        errors.ap_no_confusion = _class_ap(no_confusion, _T_RELAXED, k)
        errors.ap_no_background = _class_ap(no_background, _T_RELAXED, k)
        errors.lost = {
            "localisation": errors.ap_relaxed_iou - errors.ap50,
            "confusion": errors.ap_no_confusion - errors.ap_relaxed_iou,
            "background": errors.ap_no_background - errors.ap_no_confusion,
            "missed": 1.0 - errors.ap_no_background,
        }
    return out


def mean_lost(per_class: Mapping[str, ClassErrors]) -> Dict[str, Optional[float]]:
    """The AP lost per error kind averaged over the classes with ground truth (as COCO's mAP)."""
    with_gt = [c for c in per_class.values() if c.num_gt]
    summary: Dict[str, Optional[float]] = {}
    summary["ap50"] = float(np.mean([c.ap50 for c in with_gt])) if with_gt else None
    for kind in ERROR_KINDS:
        summary[kind] = float(np.mean([c.lost[kind] for c in with_gt])) if with_gt else None
    return summary


def best_f1_thresholds(coco_eval: COCOeval, class_names: Mapping[int, str]) -> Dict[str, Threshold]:
    """Per class the score threshold whose kept detections give the best F1 at IoU 0.5.

    Only cut points between different scores are considered (a threshold keeps every detection
    with ``score >= score_thr``); among equal F1 values the highest threshold wins.

    Args:
        coco_eval: from :func:`run_analysis_eval`.
        class_names: category id -> name.

    Returns:
        {class name: Threshold}; ``score_thr`` None for a class without ground truth or without
        detections.
    """
    max_det = coco_eval.params.maxDets[-1]
    out: Dict[str, Threshold] = {}
    for k, cat_id in enumerate(coco_eval.params.catIds):
        entries = _entries(coco_eval, k)
        num_gt = int(sum((~np.asarray(e["gtIgnore"]).astype(bool)).sum() for e in entries))
        if entries:
            scores = np.concatenate([np.asarray(e["dtScores"][:max_det], dtype=np.float64) for e in entries])
            matched = np.concatenate([e["dtMatches"][_T_REFERENCE, :max_det] > 0 for e in entries])
            ignored = np.concatenate([e["dtIgnore"][_T_REFERENCE, :max_det].astype(bool) for e in entries])
            scores, matched = scores[~ignored], matched[~ignored]
        else:
            scores, matched = np.zeros(0), np.zeros(0, dtype=bool)
        name = class_names[cat_id]
        if num_gt == 0 or scores.size == 0:
            out[name] = Threshold(None, 0.0, 0.0, 0.0)
            continue
        order = np.argsort(-scores, kind="mergesort")
        scores, matched = scores[order], matched[order]
        true_pos = np.cumsum(matched)
        kept = np.arange(1, scores.size + 1)
        precision = true_pos / kept
        recall = true_pos / num_gt
        with np.errstate(invalid="ignore", divide="ignore"):
            f1 = np.where(true_pos > 0, 2 * precision * recall / (precision + recall), 0.0)
        # cut after position i only where the next detection has a lower score
        cuts = np.append(scores[:-1] > scores[1:], True)
        best = int(np.flatnonzero(cuts)[np.argmax(f1[cuts])])
        out[name] = Threshold(float(scores[best]), float(f1[best]), float(precision[best]), float(recall[best]))
    return out


def image_errors(coco_eval: COCOeval, thresholds: Mapping[str, Threshold],
                 class_names: Mapping[int, str]) -> Dict[int, Dict[str, int]]:
    """Per image, at IoU 0.5 with each class's best-F1 threshold: true positives, FPs, missed.

    A class without a threshold keeps all its detections.

    Returns:
        {image id: {"true_positive", "false_positive", "missed", "num_gt"}} for every evaluated image.
    """
    max_det = coco_eval.params.maxDets[-1]
    out = {int(i): dict(true_positive=0, false_positive=0, missed=0, num_gt=0) for i in coco_eval.params.imgIds}
    for k, cat_id in enumerate(coco_eval.params.catIds):
        thr = thresholds[class_names[cat_id]].score_thr
        thr = -np.inf if thr is None else thr
        for entry in _entries(coco_eval, k):
            row = out[int(entry["image_id"])]
            scores = np.asarray(entry["dtScores"][:max_det])
            kept = (scores >= thr) & ~entry["dtIgnore"][_T_REFERENCE, :max_det].astype(bool)
            matched = entry["dtMatches"][_T_REFERENCE, :max_det] > 0
            row["true_positive"] += int((kept & matched).sum())
            row["false_positive"] += int((kept & ~matched).sum())
            kept_ids = {dt_id for dt_id, keep in zip(entry["dtIds"][:max_det], kept) if keep}
            gt_ignored = np.asarray(entry["gtIgnore"]).astype(bool)
            for gt_match, ignored in zip(entry["gtMatches"][_T_REFERENCE], gt_ignored):
                if ignored:
                    continue
                row["num_gt"] += 1
                if int(gt_match) not in kept_ids:
                    row["missed"] += 1
    return out


def to_jsonable(per_class: Mapping[str, ClassErrors]) -> Dict[str, dict]:
    """ClassErrors as plain dicts (PR curves left out: they are plotted, not tabulated)."""
    out = {}
    for name, errors in per_class.items():
        record = asdict(errors)
        record.pop("pr50")
        record.pop("pr75")
        out[name] = record
    return out
