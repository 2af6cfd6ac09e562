"""The evaluation report: one self-contained ``report.html`` (plus its PNG/JPEG files) and ``report.json``.

    python -m src.report --ann_file ANN.json --detections DET.json --image_dir DIR --out DIR
                         [--metrics metrics.json] [--max_dets 100] [--classes a,b]

(``eval.py --report DIR`` and training with ``--eval_interval`` call :func:`write_report`
directly; the command line rebuilds a report from a saved COCO results file.)

The page opens from disk in any browser: no server, no script, no external style sheet; the
pictures are files beside it, referenced by relative paths. It holds

* the AP table (bbox and segm; all classes and each class; AP, AP50, AP75, APs, APm, APl);
* per class the precision-recall curves at IoU 0.5 and 0.75;
* the error breakdown of ``src/error_analysis.py`` (AP lost to localisation, class confusion,
  background false positives, missed objects), as a chart and a table;
* per class the score threshold with the best F1 at IoU 0.5 (segm) -- what
  ``predict.py --score_thr auto`` reads from ``report.json``;
* a gallery of the worst and best validation images (ground truth | prediction above the
  per-class thresholds).
"""

from __future__ import annotations

import argparse
import html
import json
import logging
import os
import sys
from typing import Dict, List, Mapping, Optional, Sequence

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from src import error_analysis as ea
from src.evaluation import IOU_TYPES, COCOEvaluator, run_cocoeval
from src.plots import error_breakdown_figure, pr_figure, save_png
from src.runtime import EXIT_BAD_INPUT, EXIT_OK

logger = logging.getLogger(__name__)

REPORT_HTML = "report.html"
REPORT_JSON = "report.json"
# Where predict.py --score_thr auto looks by default, relative to the run directory.
DEFAULT_REPORT_JSON = os.path.join("eval", "report", REPORT_JSON)
REPORT_FORMAT_VERSION = 1
DEFAULT_TITLE = "Mask R-CNN evaluation report"
# IoU type whose best-F1 thresholds are the deployment thresholds (the product is the mask).
THRESHOLD_IOU_TYPE = "segm"
TABLE_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
GALLERY_SIZE = 6
# Gallery pictures are shrunk so that each half (GT or prediction) is at most this wide.
GALLERY_HALF_WIDTH = 480
JPEG_QUALITY = 88
GALLERY_GAP = 6  # white pixels between the two halves
PR_DISPLAY_WIDTH = 280  # CSS pixels of a PR plot on the page (four side by side)
# COCO area-range label of each size column of the table.
_AREA_OF_KEY = {"AP": "all", "AP50": "all", "AP75": "all", "APs": "small", "APm": "medium", "APl": "large"}


class ReportError(ValueError):
    """A report cannot be written or read (missing image, bad report.json, ...); names the file."""


# ---------------------------------------------------------------------------------------------
# Numbers
# ---------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------
# Pictures
# ---------------------------------------------------------------------------------------------

def _label_names(evaluator: COCOEvaluator) -> List[str]:
    """Class names indexed by contiguous label (index 0 = background), for src.visualize."""
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
    from src import visualize

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
    rows = [f'<tr class="all"><td>all classes</td>'
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


def _reached(precision: Sequence[float]) -> np.ndarray:
    """Precision at the recall points up to the last one reached; NaN after it (not drawn).

    COCO fills the recall points beyond the largest recall with precision 0, which would draw
    as a drop to 0 and a line along the axis.
    """
    values = np.asarray(precision, dtype=np.float64).copy()
    reached = np.flatnonzero(values > 0)
    values[(reached[-1] + 1 if reached.size else 0):] = np.nan
    return values


def _jsonable(report: Mapping[str, object]) -> dict:
    return {k: v for k, v in report.items() if not k.startswith("_")}


def write_report(out_dir: str, evaluator: COCOEvaluator, metrics: Mapping[str, object], image_dir: str,
                 title: str = DEFAULT_TITLE, info: Optional[Mapping[str, object]] = None,
                 gallery_size: int = GALLERY_SIZE) -> str:
    """Write ``report.html``, ``report.json`` and the pictures into ``out_dir``.

    Args:
        out_dir: folder (created); existing report files are overwritten.
        evaluator: after ``evaluate()``.
        metrics: what ``evaluate()`` returned.
        image_dir: folder of the evaluated images (file names of the annotation file).
        title: page title.
        info: a few facts shown at the top and stored in the JSON (checkpoint, epoch, ...).
        gallery_size: images in each of the worst/best galleries.

    Returns:
        the path of report.html.
    """
    missing = [evaluator.coco_gt.imgs[i]["file_name"] for i in evaluator.image_ids
               if not os.path.isfile(os.path.join(image_dir, evaluator.coco_gt.imgs[i]["file_name"]))]
    if missing:  # fail before the analysis, not at the gallery
        raise ReportError(f"{image_dir}: {len(missing)} evaluated images are missing (e.g. {missing[0]})")
    os.makedirs(os.path.join(out_dir, "img"), exist_ok=True)
    report = compute_report(evaluator, metrics)
    report["info"] = dict(info or {})
    pictures: dict = {"pr": {}, "breakdown": {}, "gallery": {}}
    recall_points = None
    for iou_type in IOU_TYPES:
        analysis_eval, per_class, thresholds = report["_analysis"][iou_type]
        recall_points = analysis_eval.params.recThrs
        pictures["pr"][iou_type] = []
        for index, (name, errors) in enumerate(per_class.items()):
            if not errors.num_gt:
                continue
            curves = {f"IoU 0.50 (AP {_fmt(errors.ap50, False)})": _reached(errors.pr50),
                      f"IoU 0.75 (AP {_fmt(errors.ap75, False)})": _reached(errors.pr75)}
            rel = f"img/pr_{iou_type}_{index}.png"
            save_png(pr_figure(f"{name} ({iou_type})", recall_points, curves), os.path.join(out_dir, rel))
            pictures["pr"][iou_type].append((rel, f"{name}: precision-recall ({iou_type})"))
        rows = {"all classes": report["error_breakdown"][iou_type]["all"]}
        rows.update({name: dict(e.lost, ap50=e.ap50) for name, e in per_class.items()})
        rel = f"img/breakdown_{iou_type}.png"
        save_png(error_breakdown_figure(rows), os.path.join(out_dir, rel))
        pictures["breakdown"][iou_type] = rel
    analysis_eval, _, thresholds = report["_analysis"][THRESHOLD_IOU_TYPE]
    rows = ea.image_errors(analysis_eval, thresholds, evaluator.class_names)
    chosen = pick_gallery(rows, gallery_size)
    report["gallery"] = {kind: [dict(rows[i], image_id=i, file_name=evaluator.coco_gt.imgs[i]["file_name"])
                                for i in ids] for kind, ids in chosen.items()}
    for kind, ids in chosen.items():
        pictures["gallery"][kind] = []
        for image_id in ids:
            picture = gallery_picture(evaluator, image_id, image_dir, report["score_thresholds"])
            rel = f"img/{kind}_{image_id}.jpg"
            if not cv2.imwrite(os.path.join(out_dir, rel), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR),
                               [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]):
                raise ReportError(f"{os.path.join(out_dir, rel)}: could not write the picture")
            r = rows[image_id]
            caption = (f"{evaluator.coco_gt.imgs[image_id]['file_name']} (id {image_id}): {r['num_gt']} objects, "
                       f"{r['true_positive']} found, {r['missed']} missed, {r['false_positive']} false positives")
            pictures["gallery"][kind].append((rel, caption))
    with open(os.path.join(out_dir, REPORT_JSON), "w", encoding="utf-8") as handle:
        json.dump(_jsonable(report), handle, indent=1)
    html_path = os.path.join(out_dir, REPORT_HTML)
    with open(html_path, "w", encoding="utf-8") as handle:
        handle.write(render_html(report, pictures, title))
    return html_path


# ---------------------------------------------------------------------------------------------
# Reading the thresholds back (predict.py --score_thr auto)
# ---------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------
# Command line: a report from a saved results file
# ---------------------------------------------------------------------------------------------

def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Write report.html from a COCO annotation file and a "
                                                 "COCO results file (eval.py's detections_<split>.json).")
    parser.add_argument("--ann_file", required=True)
    parser.add_argument("--detections", required=True)
    parser.add_argument("--image_dir", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--max_dets", type=int, default=100, help="test_max_per_img of the model")
    parser.add_argument("--classes", default="", help="comma-separated class names (default: all categories)")
    parser.add_argument("--title", default=DEFAULT_TITLE, help="page title")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    from pycocotools.coco import COCO

    from src.dataset import DatasetError, load_coco_json, read_json
    from src.evaluation import EvaluationError

    try:
        gt = load_coco_json(args.ann_file)
        results = read_json(args.detections, "detections file")
    except DatasetError as e:
        logger.error("%s", e)
        return EXIT_BAD_INPUT
    coco = COCO()
    coco.dataset = gt
    coco.createIndex()
    cats = sorted(coco.cats)
    if args.classes:
        by_name = {coco.cats[c]["name"]: c for c in cats}
        unknown = [n for n in args.classes.split(",") if n not in by_name]
        if unknown:
            logger.error("%s: no category named %s", args.ann_file, ", ".join(unknown))
            return EXIT_BAD_INPUT
        cats = [by_name[n] for n in args.classes.split(",")]
    try:
        evaluator = COCOEvaluator(coco, cats, sorted(coco.imgs), max_dets=args.max_dets)
        by_image: Dict[int, list] = {}
        for res in results:
            by_image.setdefault(int(res["image_id"]), []).append(res)
        for image_id, image_results in by_image.items():
            evaluator.add_results(image_id, image_results)
        metrics = evaluator.evaluate()
        path = write_report(args.out, evaluator, metrics, args.image_dir, title=args.title,
                            info={"annotations": os.path.abspath(args.ann_file),
                                  "detections": os.path.abspath(args.detections)})
    except (EvaluationError, ReportError) as e:
        logger.error("%s", e)
        return EXIT_BAD_INPUT
    print(f"report: {path}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
