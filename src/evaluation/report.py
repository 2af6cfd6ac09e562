"""The evaluation report: one self-contained ``report.html`` (plus its PNG/JPEG files) and ``report.json``.

    python -m src.evaluation.report --ann_file ANN.json --detections DET.json --image_dir DIR --out DIR
                                    [--max_dets 100] [--classes a,b] [--title TITLE]

(``eval.py --report DIR`` and training with ``--eval_interval`` call :func:`write_report`
directly; the command line rebuilds a report from a saved COCO results file.)

:func:`write_report` computes the numbers (:mod:`src.evaluation.report_data`: AP table, error
breakdown, best-F1 score thresholds, gallery choice), draws the page and its pictures
(:mod:`src.evaluation.report_page`) and writes both files.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Dict, Mapping, Optional, Sequence

from src.evaluation.coco_eval import COCOEvaluator
from src.evaluation.report_data import (GALLERY_SIZE, REPORT_JSON, ReportError, add_gallery, compute_report,
                                        jsonable)
from src.evaluation.report_page import DEFAULT_TITLE, REPORT_HTML, draw_pictures, render_html
from src.evaluation.results import EvaluationError
from src.engine.runtime import EXIT_BAD_INPUT, EXIT_OK

logger = logging.getLogger(__name__)


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

    Raises:
        ReportError: an evaluated image is missing, or a picture cannot be written.
    """
    missing = [evaluator.coco_gt.imgs[i]["file_name"] for i in evaluator.image_ids
               if not os.path.isfile(os.path.join(image_dir, evaluator.coco_gt.imgs[i]["file_name"]))]
    if missing:  # fail before the analysis, not at the gallery
        raise ReportError(f"{image_dir}: {len(missing)} evaluated images are missing (e.g. {missing[0]})")
    report = compute_report(evaluator, metrics)
    report["info"] = dict(info or {})
    add_gallery(report, evaluator, gallery_size)
    pictures = draw_pictures(out_dir, report, evaluator, image_dir)
    with open(os.path.join(out_dir, REPORT_JSON), "w", encoding="utf-8") as handle:
        json.dump(jsonable(report), handle, indent=1)
    html_path = os.path.join(out_dir, REPORT_HTML)
    with open(html_path, "w", encoding="utf-8") as handle:
        handle.write(render_html(report, pictures, title))
    return html_path


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

    from src.annotations import DatasetError, read_annotations, read_json

    classes = args.classes.split(",") if args.classes else None
    try:  # the annotations as training and eval.py read them: cleaned and counted
        clean = read_annotations(args.ann_file, classes)
        results = read_json(args.detections, "detections file")
    except DatasetError as e:
        logger.error("%s", e)
        return EXIT_BAD_INPUT
    coco = COCO()
    coco.dataset = clean.to_coco()
    coco.createIndex()
    cats = [clean.label_to_cat_id[label] for label in sorted(clean.label_to_cat_id)]
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
