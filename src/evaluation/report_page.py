"""The evaluation report's page: ``report.html`` and its pictures, drawn from the report's numbers.

The page opens from disk in any browser: no server, no script, no external style sheet; the
pictures are files beside it (``img/``), referenced by relative paths. It shows the AP table, per
class the precision-recall curves at IoU 0.5 and 0.75, the error breakdown as a chart and a
table, the per-class score thresholds and a gallery of the worst and best validation images
(ground truth | prediction above the per-class thresholds). The numbers come from
:mod:`src.evaluation.report_data`.
"""

from __future__ import annotations

import html
import os
from typing import Dict, List, Mapping, Optional, Sequence

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from src.evaluation import error_analysis as ea
from src.evaluation.coco_eval import IOU_TYPES, COCOEvaluator
from src.evaluation.report_data import REPORT_JSON, TABLE_KEYS, THRESHOLD_IOU_TYPE, ReportError
from src.viz.plots import error_breakdown_figure, pr_figure, save_png

REPORT_HTML = "report.html"
DEFAULT_TITLE = "Mask R-CNN evaluation report"
# Gallery pictures are shrunk so that each half (GT or prediction) is at most this wide.
GALLERY_HALF_WIDTH = 480
JPEG_QUALITY = 88
GALLERY_GAP = 6  # white pixels between the two halves
PR_DISPLAY_WIDTH = 280  # CSS pixels of a PR plot on the page (four side by side)
# Folder of the pictures, relative to the page.
PICTURE_DIR = "img"


# ---------------------------------------------------------------------------------------------
# Pictures
# ---------------------------------------------------------------------------------------------

def _label_names(evaluator: COCOEvaluator) -> List[str]:
    """Class names indexed by contiguous label (index 0 = background), for src.viz.visualize."""
    names = ["background"] * (max(evaluator.label_to_cat_id) + 1)
    for label, cat_id in evaluator.label_to_cat_id.items():
        names[label] = evaluator.class_names.get(cat_id, str(cat_id))
    return names


def _shrink(image: np.ndarray) -> np.ndarray:
    if image.shape[1] <= GALLERY_HALF_WIDTH:
        return image
    scale = GALLERY_HALF_WIDTH / image.shape[1]
    return cv2.resize(image, (GALLERY_HALF_WIDTH, max(1, round(image.shape[0] * scale))), interpolation=cv2.INTER_AREA)


def gallery_picture(evaluator: COCOEvaluator, image_id: int, image_dir: str,
                    score_thresholds: Mapping[str, Optional[float]]) -> np.ndarray:
    """Ground truth (left) and the predictions kept by the thresholds (right) of one image, RGB.

    Raises:
        ReportError: the image file is missing or unreadable.
    """
    from src.viz import visualize

    info = evaluator.coco_gt.imgs[image_id]
    path = os.path.join(image_dir, info["file_name"])
    data = np.fromfile(path, dtype=np.uint8) if os.path.isfile(path) else np.zeros(0, np.uint8)
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if bgr is None:
        raise ReportError(f"{path}: image {image_id} is missing or unreadable")
    image = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    height, width = image.shape[:2]
    cat_to_label = {c: l for l, c in evaluator.label_to_cat_id.items()}
    names = _label_names(evaluator)
    gts = [a for a in evaluator.coco_gt.imgToAnns[image_id] if a["category_id"] in cat_to_label and not a["iscrowd"]]
    dts = [r for r in evaluator.results if int(r["image_id"]) == image_id
           and float(r["score"]) >= (score_thresholds.get(evaluator.class_names[int(r["category_id"])]) or 0.0)]

    def draw(anns, masks, scores):
        boxes = np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                          for a in anns], dtype=np.float32).reshape(-1, 4)
        labels = [cat_to_label[int(a["category_id"])] for a in anns]
        masks = np.stack(masks) if masks else np.zeros((0, height, width), np.uint8)
        return visualize.overlay(image, masks, boxes, labels, scores, names)

    left = draw(gts, [evaluator.coco_gt.annToMask(a) for a in gts], [1.0] * len(gts))
    right = draw(dts, [mask_utils.decode(r["segmentation"]) for r in dts], [float(r["score"]) for r in dts])
    left, right = _shrink(left), _shrink(right)
    gap = np.full((left.shape[0], GALLERY_GAP, 3), 255, np.uint8)
    return np.concatenate([left, gap, right], axis=1)


def _reached(precision: Sequence[float]) -> np.ndarray:
    """Precision at the recall points up to the last one reached; NaN after it (not drawn).

    COCO fills the recall points beyond the largest recall with precision 0, which would draw
    as a drop to 0 and a line along the axis.
    """
    values = np.asarray(precision, dtype=np.float64).copy()
    reached = np.flatnonzero(values > 0)
    values[(reached[-1] + 1 if reached.size else 0):] = np.nan
    return values


def draw_pictures(out_dir: str, report: Mapping[str, object], evaluator: COCOEvaluator,
                  image_dir: str) -> Dict[str, object]:
    """Write the PR curves, the error-breakdown charts and the gallery pictures into ``out_dir/img``.

    Args:
        out_dir: folder of the page (``img/`` is created in it).
        report: from ``report_data.compute_report`` after ``report_data.add_gallery``.
        evaluator: the evaluator the report was computed from (ground truth and results).
        image_dir: folder of the evaluated images.

    Returns:
        {"pr": {iou_type: [(path, caption)]}, "breakdown": {iou_type: path},
        "gallery": {"worst"/"best": [(path, caption)]}} with paths relative to ``out_dir``.

    Raises:
        ReportError: a gallery image is missing or a picture cannot be written.
    """
    os.makedirs(os.path.join(out_dir, PICTURE_DIR), exist_ok=True)
    pictures: dict = {"pr": {}, "breakdown": {}, "gallery": {}}
    for iou_type in IOU_TYPES:
        analysis_eval, per_class, _ = report["_analysis"][iou_type]
        recall_points = analysis_eval.params.recThrs
        pictures["pr"][iou_type] = []
        for index, (name, errors) in enumerate(per_class.items()):
            if not errors.num_gt:
                continue
            curves = {f"IoU 0.50 (AP {_fmt(errors.ap50, False)})": _reached(errors.pr50),
                      f"IoU 0.75 (AP {_fmt(errors.ap75, False)})": _reached(errors.pr75)}
            rel = f"{PICTURE_DIR}/pr_{iou_type}_{index}.png"
            save_png(pr_figure(f"{name} ({iou_type})", recall_points, curves), os.path.join(out_dir, rel))
            pictures["pr"][iou_type].append((rel, f"{name}: precision-recall ({iou_type})"))
        rows = {"all classes": report["error_breakdown"][iou_type]["all"]}
        rows.update({name: dict(e.lost, ap50=e.ap50) for name, e in per_class.items()})
        rel = f"{PICTURE_DIR}/breakdown_{iou_type}.png"
        save_png(error_breakdown_figure(rows), os.path.join(out_dir, rel))
        pictures["breakdown"][iou_type] = rel
    for kind, entries in report["gallery"].items():
        pictures["gallery"][kind] = []
        for entry in entries:
            image_id = entry["image_id"]
            picture = gallery_picture(evaluator, image_id, image_dir, report["score_thresholds"])
            rel = f"{PICTURE_DIR}/{kind}_{image_id}.jpg"
            if not cv2.imwrite(os.path.join(out_dir, rel), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR),
                               [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]):
                raise ReportError(f"{os.path.join(out_dir, rel)}: could not write the picture")
            caption = (f"{entry['file_name']} (id {image_id}): {entry['num_gt']} objects, "
                       f"{entry['true_positive']} found, {entry['missed']} missed, "
                       f"{entry['false_positive']} false positives")
            pictures["gallery"][kind].append((rel, caption))
    return pictures


# ---------------------------------------------------------------------------------------------
# Page
# ---------------------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:1.6em} h2{border-bottom:1px solid #ccc;padding-bottom:4px;margin-top:1.6em}
table{border-collapse:collapse;margin:8px 0 16px} th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}
th:first-child,td:first-child{text-align:left} thead th{background:#f2f2f2} tr.all td{font-weight:bold}
.grid{display:flex;flex-wrap:wrap;gap:8px} .grid img{border:1px solid #ddd}
figure{margin:0 0 14px} figcaption{font-size:.9em;color:#444}
.note{color:#555;font-size:.92em;max-width:900px}
"""


def _fmt(value: Optional[float], percent: bool = True) -> str:
    if value is None:
        return "-"
    return f"{100.0 * value:.1f}" if percent else f"{value:.3f}"


def _cell(key: str, value: Optional[float], percent: bool = True) -> str:
    """A table cell carrying its key (``data-key``) so tests can find it."""
    return f'<td data-key="{html.escape(key)}">{_fmt(value, percent)}</td>'


def _ap_table_html(iou_type: str, table: Mapping[str, Mapping[str, Optional[float]]]) -> str:
    head = "".join(f"<th>{k}</th>" for k in TABLE_KEYS)
    rows = []
    for name, row in table.items():
        label = "all classes" if name == "all" else html.escape(name)
        cells = "".join(_cell(f"{iou_type}/{name}/{k}", row[k]) for k in TABLE_KEYS)
        rows.append(f'<tr class="{"all" if name == "all" else "class"}"><td>{label}</td>{cells}</tr>')
    return f"<table><thead><tr><th>{iou_type}</th>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _breakdown_table_html(iou_type: str, breakdown: Mapping[str, object]) -> str:
    kinds = ("ap50",) + ea.ERROR_KINDS
    head = "".join(f"<th>{'AP50' if k == 'ap50' else 'lost: ' + k}</th>" for k in kinds)
    counts_head = "<th>found</th><th>mislocalised</th><th>confused</th><th>on background</th><th>missed</th>"
    rows = ['<tr class="all"><td>all classes</td>'
            + "".join(_cell(f"{iou_type}/all/{k}", breakdown["all"][k]) for k in kinds) + "<td colspan=5></td></tr>"]
    for name, errors in breakdown["per_class"].items():
        values = dict(errors["lost"], ap50=errors["ap50"])
        counts = errors["counts"]
        rows.append(f"<tr><td>{html.escape(name)}</td>"
                    + "".join(_cell(f"{iou_type}/{name}/{k}", values[k]) for k in kinds)
                    + "".join(f"<td>{counts[c]}</td>" for c in ("true_positive", "localisation", "confusion",
                                                                  "background", "missed")) + "</tr>")
    return (f"<table><thead><tr><th>{iou_type}</th>{head}{counts_head}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>")


def _thresholds_html(thresholds: Mapping[str, Mapping[str, Optional[float]]]) -> str:
    rows = []
    for name, t in thresholds.items():
        thr = "-" if t["score_thr"] is None else f"{t['score_thr']:.3f}"
        rows.append(f'<tr><td>{html.escape(name)}</td><td data-key="thr/{html.escape(name)}">{thr}</td>'
                    f"<td>{_fmt(t['f1'], False)}</td><td>{_fmt(t['precision'], False)}</td>"
                    f"<td>{_fmt(t['recall'], False)}</td></tr>")
    return ("<table><thead><tr><th>class</th><th>score_thr</th><th>F1</th><th>precision</th><th>recall</th>"
            f"</tr></thead><tbody>{''.join(rows)}</tbody></table>")


def _figure_html(src: str, caption: str, width: Optional[int] = None) -> str:
    size = f' width="{width}"' if width else ""
    return (f'<figure><img src="{html.escape(src)}" alt="{html.escape(caption)}"{size}>'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def render_html(report: Mapping[str, object], pictures: Mapping[str, object], title: str) -> str:
    """The page's HTML text (pictures are relative paths in ``pictures``)."""
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
             f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
    info = report.get("info", {})
    parts.append("<p class=note>" + " &middot; ".join(html.escape(f"{k}: {v}") for k, v in info.items())
                 + f" &middot; {report['num_images']} images, {report['num_detections']} detections, "
                 f"maxDets {report['max_dets']}. Numbers are percent.</p>")
    parts.append("<h2>Average precision</h2>")
    for iou_type in IOU_TYPES:
        parts.append(_ap_table_html(iou_type, report["ap_table"][iou_type]))
    parts.append("<h2>Precision-recall curves</h2><p class=note>Interpolated precision at COCO's 101 recall "
                 "points, IoU 0.5 and 0.75, all sizes.</p>")
    for iou_type in IOU_TYPES:
        parts.append(f"<h3>{iou_type}</h3><div class=grid>"
                     + "".join(_figure_html(src, caption, PR_DISPLAY_WIDTH) for src, caption in pictures["pr"][iou_type])
                     + "</div>")
    parts.append("<h2>Error breakdown</h2><p class=note>AP at IoU 0.5 plus the AP lost to each error kind adds up "
                 "to 100: <b>localisation</b> = gained when IoU 0.1 counts as a match; <b>confusion</b> = gained when "
                 "false positives on an object of another class are ignored; <b>background</b> = gained when all "
                 "other false positives are ignored; <b>missed</b> = objects no detection reaches. The counts "
                 "classify every detection at IoU 0.5 (all scores).</p>")
    for iou_type in IOU_TYPES:
        parts.append(f"<h3>{iou_type}</h3>" + _figure_html(pictures["breakdown"][iou_type], f"{iou_type} error breakdown")
                     + _breakdown_table_html(iou_type, report["error_breakdown"][iou_type]))
    parts.append(f"<h2>Score thresholds</h2><p class=note>Per class the score threshold with the best F1 at IoU 0.5 "
                 f"({THRESHOLD_IOU_TYPE}) on this split. <code>predict.py --score_thr auto --report_json "
                 f"{REPORT_JSON}</code> uses them.</p>")
    parts.append(_thresholds_html(report["thresholds"][THRESHOLD_IOU_TYPE]))
    parts.append("<h2>Gallery</h2><p class=note>Left: ground truth; right: predictions kept by the thresholds "
                 "above. Errors at IoU 0.5 (segm).</p>")
    for kind, heading in (("worst", "Worst images (most missed objects and false positives)"),
                          ("best", "Best images")):
        parts.append(f"<h3>{heading}</h3>")
        entries = pictures["gallery"][kind]
        if not entries:
            parts.append("<p class=note>none</p>")
        parts.extend(_figure_html(src, caption) for src, caption in entries)
    parts.append("</body></html>")
    return "\n".join(parts)
