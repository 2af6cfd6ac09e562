"""COCO's 12 summary numbers for any ``maxDets`` setting.

``COCOeval.summarize`` looks up the AP@[.5:.95] entry with a hard-coded ``maxDets=100``: with
``params.maxDets = [1, 10, 150]`` (a model that keeps 150 detections per image) it finds no
matching column and reports -1, and with ``[1, 10, 100]`` detections past the 100th are never
scored. :func:`summarize` reads the same accumulated arrays but takes the largest ``maxDets``
for every AP entry, so ``test_max_per_img`` decides how many detections per image count.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np
from pycocotools.cocoeval import COCOeval

# COCO's default maxDets; the third entry is replaced by the model's detections per image.
COCO_MAX_DETS = (1, 10, 100)
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


def summarize(coco_eval: COCOeval) -> Tuple[np.ndarray, str]:
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
