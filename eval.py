"""Evaluate a Mask R-CNN checkpoint on the val split: COCO bbox + segm mAP and per-class AP.

    python eval.py --ckpt PATH|--mindir FILE [--config_path FineTune/default.yaml] [--data_path ROOT]
                   [--ann_file FILE] [--out DIR] [--device_target CPU|Ascend|GPU]
                   [--any_config_key VALUE ...]

Writes ``OUT/detections_<split>.json`` (COCO results: bbox [x, y, w, h] in original pixels, score,
category_id of the annotation file, RLE segmentation), ``OUT/ground_truth_<split>.json`` (the
cleaned annotations the results are scored against, as training reads them: src/annotations.py)
and ``OUT/metrics.json`` (with the counts of dropped/repaired annotations and, in ``image_counts``,
of the images left out because they cannot be decoded: a JPEG cut short is skipped with one
warning, or is an error with ``strict_images``), and prints the 12-line COCO summaries for bbox
and segm plus a per-class AP table. The val split is ``val_ann_file``/``val_image_dir`` when set,
else ``<data_path>/<val split>``.
Exit codes: 0 done, 2 bad input (checkpoint that does not fit the config, bad data, bad option),
3 environment or I/O error (a full disk, an unwritable folder).
"""

import argparse
import json
import logging
import os
import sys
from typing import Optional, Sequence

from src.cli import (add_inference_weights_arguments, cli_errors, inference_network, missing_weights_message,
                     report_error, with_device_override, with_mindir_metadata)
from src.config import add_config_arguments, config_from_cli, resolve_path
from src.engine.runtime import EXIT_BAD_INPUT, EXIT_OK

logger = logging.getLogger("eval")

METRICS_FILE = "metrics.json"
DEFAULT_OUT_SUBDIR = "eval"
GROUND_TRUTH_PREFIX = "ground_truth_"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser)
    add_inference_weights_arguments(parser)
    parser.add_argument("--data_path", default=None,
                        help="COCO-format root with <val split>/ and annotations/ (default: coco_root)")
    parser.add_argument("--ann_file", default=None,
                        help="annotation JSON of the val split (default: <root>/annotations/instances_<split>.json)")
    parser.add_argument("--out", default=None, help="output folder (default: <run_dir>/eval)")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    parser.add_argument("--report", default=None, metavar="DIR",
                        help="also write DIR/report.html (AP table, PR curves, error breakdown, best-F1 score "
                             "thresholds in DIR/report.json for predict.py --score_thr auto, gallery)")
    return parser


def config_with_ann_file(config, root: str, ann_file: str):
    """``config`` evaluating ``ann_file`` (paths relative to the current folder) on the val
    split's image folder (``val_image_dir``, else ``<root>/<val split>``)."""
    from src.annotations import DatasetError

    image_dir, _ = config.split_paths(config.val_data_type, root)
    if not os.path.isdir(image_dir):
        raise DatasetError(f"image folder not found: {image_dir}")
    if not os.path.isfile(ann_file):
        raise DatasetError(f"annotation file not found: {ann_file}")
    return config.replace(val_ann_file=os.path.abspath(ann_file), val_image_dir=image_dir)


def write_ground_truth(out_dir: str, sub) -> str:
    """The cleaned annotations evaluation scored against (a COCO file pycocotools reads):
    ``OUT/ground_truth_<split>.json``."""
    path = os.path.join(out_dir, f"{GROUND_TRUTH_PREFIX}{sub.split}.json")
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(sub.cleaned_coco, handle)
    return path


def run_eval(config, ckpt: str, data_root: Optional[str], ann_file: Optional[str], out_dir: str,
             progress: bool = True, report_dir: Optional[str] = None, mindir: Optional[str] = None) -> dict:
    """Build the model, load ``ckpt`` (or run the exported ``mindir``, at the batch of its
    metadata), evaluate the val split, write the results (and the report page in ``report_dir``);
    returns the metrics."""
    from src.evaluation.inference import build_eval_split, evaluate_model, split_report_info

    net, report = inference_network(config, ckpt, mindir)
    eval_batch = None
    if mindir:
        from src.engine.mindir import read_metadata

        eval_batch = read_metadata(mindir)["batch"]  # the exported graph's static batch
        ckpt = mindir
    else:
        logger.info("loaded %s: %d parameters", ckpt, len(report.loaded))
    root = resolve_path(data_root if data_root is not None else config.coco_root)
    if ann_file:
        config = config_with_ann_file(config, root, ann_file)
    dataset, evaluator, sub = build_eval_split(config, data_root=root, batch_size=eval_batch)
    logger.info("evaluating %d images of %s (%s)", len(sub), sub.image_dir, sub.ann_file)
    metrics = evaluate_model(net, dataset, evaluator, progress=progress)
    os.makedirs(out_dir, exist_ok=True)
    gt_path = write_ground_truth(out_dir, sub)
    if report_dir:
        from src.evaluation.report import write_report

        report_path = write_report(report_dir, evaluator, metrics, sub.image_dir,
                                   info={"checkpoint": os.path.abspath(ckpt), "annotations": sub.ann_file,
                                         "scored against": gt_path, **split_report_info(sub)})
        print(f"report: {os.path.abspath(report_path)}")

    det_path = os.path.join(out_dir, f"detections_{config.val_data_type}.json")
    with open(det_path, "w", encoding="utf-8") as handle:
        json.dump(evaluator.results, handle)
    metrics = dict(metrics, checkpoint=os.path.abspath(ckpt), ann_file=sub.ann_file, ground_truth=gt_path,
                   annotation_defects=dict(sub.defect_counts), image_counts=dict(sub.image_counts),
                   classes=list(config.coco_classes[1:]), mask_thr=config.mask_thr)
    metrics_path = os.path.join(out_dir, METRICS_FILE)
    with open(metrics_path, "w", encoding="utf-8") as handle:
        json.dump(metrics, handle, indent=2)
    print(f"bbox AP {metrics['bbox']['AP']:.4f}  AP50 {metrics['bbox']['AP50']:.4f}  "
          f"AP75 {metrics['bbox']['AP75']:.4f}")
    print(f"segm AP {metrics['segm']['AP']:.4f}  AP50 {metrics['segm']['AP50']:.4f}  "
          f"AP75 {metrics['segm']['AP75']:.4f}")
    logger.info("wrote %s and %s (%d detections)", det_path, metrics_path, len(evaluator.results))
    return metrics


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args, config = config_from_cli(parser, argv)
    config = with_device_override(config, args)
    from src.engine.runtime import compile_cache, ensure_writable_folder, set_mindspore_context, setup_logging

    setup_logging()
    out_dir = args.out or os.path.join(resolve_path(config.run_dir), DEFAULT_OUT_SUBDIR)
    missing = missing_weights_message(args)
    if missing:
        logger.error("%s", missing)
        return EXIT_BAD_INPUT

    try:
        config, _ = with_mindir_metadata(config, args)
        ensure_writable_folder(out_dir, "out")
        set_mindspore_context(config.device_target, seed=config.seed)
        # An exported MindIR is its own graph: only the network built from the config is cached.
        cached_config = config if args.ckpt else config.replace(compile_cache_dir=None)
        with compile_cache(cached_config, "eval", entry_file=__file__):
            run_eval(config, args.ckpt, args.data_path, args.ann_file, out_dir, progress=not args.no_progress,
                     report_dir=args.report, mindir=args.mindir)
    except cli_errors() as e:
        return report_error(logger, e)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
