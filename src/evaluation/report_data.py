"""The numbers of the evaluation report (what ``report.json`` holds) and reading them back.

:func:`compute_report` derives from an evaluator after ``evaluate()``

* the AP table (bbox and segm; all classes and each class; AP, AP50, AP75, APs, APm, APl);
* the error breakdown of :mod:`src.evaluation.error_analysis` (AP lost to localisation, class
  confusion, background false positives, missed objects);
* per class the score threshold with the best F1 at IoU 0.5 (segm) -- what
  ``predict.py --score_thr auto`` reads back with :func:`load_score_thresholds`;

and :func:`add_gallery` picks the worst and best validation images. The page and its pictures
are drawn by :mod:`src.evaluation.report_page`; :mod:`src.evaluation.report` writes the files.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

from src.evaluation import error_analysis as ea
from src.evaluation.coco_eval import IOU_TYPES, COCOEvaluator, run_cocoeval

logger = logging.getLogger(__name__)

REPORT_JSON = "report.json"
# Where predict.py --score_thr auto looks by default, relative to the run directory.
DEFAULT_REPORT_JSON = os.path.join("eval", "report", REPORT_JSON)
REPORT_FORMAT_VERSION = 1
# IoU type whose best-F1 thresholds are the deployment thresholds (the product is the mask).
THRESHOLD_IOU_TYPE = "segm"
TABLE_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
GALLERY_SIZE = 6
# COCO area-range label of each size column of the table.
_AREA_OF_KEY = {"AP": "all", "AP50": "all", "AP75": "all", "APs": "small", "APm": "medium", "APl": "large"}


class ReportError(ValueError):
    """A report cannot be written or read (missing image, bad report.json, ...); names the file."""


def per_class_table(coco_eval, class_names: Mapping[int, str]) -> Dict[str, Dict[str, Optional[float]]]:
    """AP, AP50, AP75, APs, APm, APl per class from a standard accumulated ``COCOeval``.

    Values are computed like COCO's summary (mean of the interpolated precision entries > -1,
    largest maxDets); None where the class has no ground truth (in that area range).
    """
    params = coco_eval.params
    precision = coco_eval.eval["precision"]  # [T, R, K, A, M]
    table = {}
    for k, cat_id in enumerate(params.catIds):
        row = {}
        for key in TABLE_KEYS:
            values = precision[:, :, k, list(params.areaRngLbl).index(_AREA_OF_KEY[key]), -1]
            if key in ("AP50", "AP75"):
                values = values[np.isclose(params.iouThrs, 0.5 if key == "AP50" else 0.75)]
            values = values[values > -1]
            row[key] = float(values.mean()) if values.size else None
        table[class_names[cat_id]] = row
    return table


def _none_if_negative(value: float) -> Optional[float]:
    """COCO writes -1 for "no ground truth"; the report shows that as None / '-'."""
    return None if value is None or value < 0 else float(value)


def compute_report(evaluator: COCOEvaluator, metrics: Mapping[str, object]) -> dict:
    """Every number of the report (what ``report.json`` holds), from an evaluator after ``evaluate()``.

    Args:
        evaluator: holds the ground truth, the results and the evaluation settings.
        metrics: ``evaluator.evaluate()`` (the content of metrics.json).

    Returns:
        dict with ``ap_table`` {iou_type: {"all": row, class: row}}, ``error_breakdown``
        {iou_type: {"all": {...}, "per_class": {...}}}, ``thresholds`` {iou_type: {class: ...}},
        ``score_thresholds`` {class: thr or None} and, for the figures, ``_pr`` and ``_analysis``
        entries that are not written to JSON.
    """
    names = evaluator.class_names
    report: dict = {"format_version": REPORT_FORMAT_VERSION, "max_dets": evaluator.max_dets,
                    "num_images": len(evaluator.image_ids), "num_detections": len(evaluator.results),
                    "ap_table": {}, "error_breakdown": {}, "thresholds": {}, "_analysis": {}}
    for iou_type in IOU_TYPES:
        standard = run_cocoeval(evaluator.coco_gt, evaluator.results, evaluator.cat_ids, evaluator.image_ids,
                                iou_type, evaluator.max_dets)
        table = {"all": {key: _none_if_negative(metrics[iou_type][key]) for key in TABLE_KEYS}}
        table.update(per_class_table(standard, names))
        report["ap_table"][iou_type] = table
        analysis_eval = ea.run_analysis_eval(evaluator.coco_gt, evaluator.results, evaluator.cat_ids,
                                             evaluator.image_ids, iou_type, evaluator.max_dets)
        per_class = ea.analyse_errors(analysis_eval, names)
        thresholds = ea.best_f1_thresholds(analysis_eval, names)
        report["error_breakdown"][iou_type] = {"all": ea.mean_lost(per_class), "per_class": ea.to_jsonable(per_class)}
        report["thresholds"][iou_type] = {name: vars(t) for name, t in thresholds.items()}
        report["_analysis"][iou_type] = (analysis_eval, per_class, thresholds)
    report["score_thresholds"] = {name: t["score_thr"] for name, t in report["thresholds"][THRESHOLD_IOU_TYPE].items()}
    return report


def pick_gallery(rows: Mapping[int, Mapping[str, int]], size: int = GALLERY_SIZE) -> Dict[str, List[int]]:
    """Worst images (most missed + false positives) and best ones (fewest errors, most found).

    Args:
        rows: ``error_analysis.image_errors`` output.

    Returns:
        {"worst": image ids, "best": image ids}; worst only lists images with an error and
        best none of the worst.
    """
    def errors(i):
        return rows[i]["missed"] + rows[i]["false_positive"]

    worst = sorted((i for i in rows if errors(i) > 0), key=lambda i: (-errors(i), -rows[i]["missed"], i))[:size]
    best = sorted((i for i in rows if i not in worst), key=lambda i: (errors(i), -rows[i]["true_positive"], i))[:size]
    return {"worst": worst, "best": best}


def add_gallery(report: dict, evaluator: COCOEvaluator, size: int = GALLERY_SIZE) -> None:
    """Pick the worst and best images (errors at IoU 0.5, segm) into ``report["gallery"]``.

    Args:
        report: from :func:`compute_report`.
        evaluator: the evaluator the report was computed from.
        size: images in each of the worst/best galleries.

    ``report["gallery"]`` becomes {"worst": rows, "best": rows}; a row is the image's error counts
    (``error_analysis.image_errors``: num_gt, true_positive, missed, false_positive) plus
    ``image_id`` and ``file_name``.
    """
    analysis_eval, _, thresholds = report["_analysis"][THRESHOLD_IOU_TYPE]
    rows = ea.image_errors(analysis_eval, thresholds, evaluator.class_names)
    chosen = pick_gallery(rows, size)
    report["gallery"] = {kind: [dict(rows[i], image_id=i, file_name=evaluator.coco_gt.imgs[i]["file_name"])
                                for i in ids] for kind, ids in chosen.items()}


def jsonable(report: Mapping[str, object]) -> dict:
    """What of ``report`` goes into report.json (the entries not starting with ``_``)."""
    return {k: v for k, v in report.items() if not k.startswith("_")}


def load_score_thresholds(path: str, class_names: Sequence[str], fallback: float) -> Dict[int, float]:
    """Per-label score thresholds from a ``report.json``.

    Args:
        path: report.json written by :func:`write_report`.
        class_names: ``config.coco_classes`` (index 0 = background).
        fallback: threshold of a class the report has no threshold for (no ground truth or no
            detection on the validation split); a warning names such classes.

    Returns:
        {contiguous label: threshold} for labels 1..len(class_names)-1.

    Raises:
        ReportError: missing file, not JSON, or no ``score_thresholds`` in it.
    """
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError as e:
        raise ReportError(f"--score_thr auto: report file not found: {path} "
                          f"(write it with eval.py --report DIR, then pass --report_json DIR/{REPORT_JSON})") from e
    except json.JSONDecodeError as e:
        raise ReportError(f"{path}: not valid JSON ({e})") from e
    table = data.get("score_thresholds") if isinstance(data, dict) else None
    if not isinstance(table, dict):
        raise ReportError(f"{path}: has no 'score_thresholds' (not a {REPORT_JSON} written by eval.py --report)")
    out, missing = {}, []
    for label, name in enumerate(class_names[1:], start=1):
        value = table.get(name)
        if value is None:
            missing.append(name)
            value = fallback
        elif not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            raise ReportError(f"{path}: score threshold of '{name}' must be a number in [0, 1], got {value!r}")
        out[label] = float(value)
    if missing:
        logger.warning("%s: no score threshold for %s; using %.2f", path, ", ".join(missing), fallback)
    return out
