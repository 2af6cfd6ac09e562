"""Run a Mask R-CNN checkpoint on images or a video and draw the results.

    python predict.py --ckpt PATH|--mindir FILE --input IMAGE|DIR|VIDEO --out DIR [--score_thr 0.5|auto]
                      [--classes book,disc] [--config_path FILE] [--device_target CPU]
                      [--any_config_key VALUE ...]

For every image ``NAME.ext`` the output folder receives

* ``NAME_overlay.png``   masks in colour, boxes, class names and scores;
* ``NAME_splash.png``    colour splash: detected objects in colour on a greyscale image;
* ``NAME_cutout.png``    RGBA: the objects, alpha = mask, background transparent;
* ``NAME_classmap.png``  8-bit per-pixel label index (0 = background), and
  ``NAME_classmap_color.png`` its coloured version;
* ``NAME.json``          the detections (box x1, y1, x2, y2 in original pixels, score, label,
  class name, RLE mask).

``--export coco labelstudio labelme`` writes pre-labels for an annotation tool instead of the
pictures (images only): ``annotations/instances_default.json`` (COCO, as CVAT imports it),
``prelabels_label_studio.json`` + ``label_studio_config.xml`` (Label Studio predictions with scores),
``labelme/NAME.json``; masks become polygons simplified at ``--polygon_tolerance`` pixels (see
``src/prelabels.py``). With ``--export`` the score threshold defaults to ``auto`` when the report
exists, else 0.5.

``--score_thr auto`` takes each class's best-F1 threshold from the ``report.json`` of
``eval.py --report DIR`` (``--report_json``, default ``<run_dir>/eval/report/report.json``;
with ``--mindir``, default the thresholds stored in the graph's metadata when it has them).
``--mindir FILE`` needs no ``--config_path``: classes, input size and normalisation come from
``FILE.json``, written by ``export.py`` beside the graph.

A video (.mp4, .avi, .mov, .mkv) becomes ``NAME_splash.mp4`` (colour splash of every frame,
mp4v) plus ``NAME.json`` with the boxes of every frame.
Exit codes: 0 done, 2 bad input, 3 environment or I/O error (a full disk, an unwritable folder).
"""

import argparse
import logging
import os
import sys
from typing import Optional, Sequence

from src.cli import (add_inference_weights_arguments, cli_errors, inference_network, missing_weights_message,
                     report_error, with_device_override, with_mindir_metadata)
from src.config import add_config_arguments, config_from_cli
from src.engine.mindir import metadata_score_thresholds
from src.engine.runtime import EXIT_OK
from src.predictor import (AUTO_THRESHOLD, DEFAULT_SCORE_THR, VIDEO_EXTENSIONS, PredictError, Predictor,
                           export_prelabels, list_inputs, parse_classes, predict_image, predict_video)
from src.prelabels import DEFAULT_TOLERANCE, EXPORT_FORMATS

logger = logging.getLogger("predict")

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser)
    add_inference_weights_arguments(parser)
    parser.add_argument("--input", required=True, help="an image, a folder of images, or a video")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--score_thr", default=None,
                        help=f"keep detections with at least this score (default {DEFAULT_SCORE_THR}; with --export "
                             f"'auto' when the report exists); 'auto': per class the best-F1 threshold of the "
                             f"validation split from --report_json")
    parser.add_argument("--report_json", default=None,
                        help="report.json of eval.py --report DIR for --score_thr auto "
                             "(default <run_dir>/eval/report/report.json)")
    parser.add_argument("--classes", default="",
                        help="comma-separated class names to keep (default: all classes of the config)")
    parser.add_argument("--max_frames", type=int, default=0, help="video: stop after N frames (0 = all)")
    parser.add_argument("--export", nargs="+", choices=EXPORT_FORMATS, default=None,
                        help="write pre-labels in these formats instead of the pictures")
    parser.add_argument("--polygon_tolerance", type=float, default=DEFAULT_TOLERANCE,
                        help=f"--export: polygon simplification tolerance in pixels (default {DEFAULT_TOLERANCE})")
    parser.add_argument("--image_url_prefix", default="",
                        help="--export labelstudio: prepended to each file name to form the task's image URL, "
                             "e.g. /data/local-files/?d=photos/")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args, config = config_from_cli(parser, argv)
    config = with_device_override(config, args)
    if args.polygon_tolerance < 0:
        parser.error(f"--polygon_tolerance must not be negative, got {args.polygon_tolerance}")
    if args.score_thr not in (None, AUTO_THRESHOLD):
        try:
            args.score_thr = float(args.score_thr)
        except ValueError:
            parser.error(f"--score_thr must be a number between 0 and 1 or 'auto', got {args.score_thr!r}")
        if not 0.0 <= args.score_thr <= 1.0:
            parser.error(f"--score_thr must be between 0 and 1, got {args.score_thr}")
    from src.config import resolve_path
    from src.engine.runtime import compile_cache, ensure_writable_folder, set_mindspore_context, setup_logging
    from src.evaluation.report_data import DEFAULT_REPORT_JSON, load_score_thresholds

    setup_logging()
    try:
        config, metadata = with_mindir_metadata(config, args)
        report_json = args.report_json or os.path.join(resolve_path(config.run_dir), DEFAULT_REPORT_JSON)
        stored = metadata_score_thresholds(metadata) if metadata and not args.report_json else None
        if args.score_thr is None:
            # Pre-labels take the per-class thresholds of the report (or of the MindIR's metadata)
            # when there are some; pictures the fixed default.
            use_report = args.export and (stored or os.path.isfile(report_json))
            args.score_thr = AUTO_THRESHOLD if use_report else DEFAULT_SCORE_THR
        labels = parse_classes(args.classes, config.coco_classes)
        inputs = list_inputs(args.input)
        if args.score_thr == AUTO_THRESHOLD and stored:
            args.score_thr = stored
            logger.info("score thresholds from %s.json: %s", args.mindir, ", ".join(
                f"{config.coco_classes[l]} {t:.3f}" for l, t in sorted(stored.items())))
        elif args.score_thr == AUTO_THRESHOLD:
            args.score_thr = load_score_thresholds(report_json, config.coco_classes, DEFAULT_SCORE_THR)
            logger.info("score thresholds from %s: %s", report_json, ", ".join(
                f"{config.coco_classes[l]} {t:.3f}" for l, t in sorted(args.score_thr.items())))
        missing = missing_weights_message(args)
        if missing:
            raise PredictError(missing)
        ensure_writable_folder(args.out, "out")
        set_mindspore_context(config.device_target, seed=config.seed)
        net, _ = inference_network(config, args.ckpt, args.mindir)
        predictor = Predictor(net, config, args.score_thr, labels)
        os.makedirs(args.out, exist_ok=True)
        from tqdm import tqdm

        # The network built from the config is compiled once and cached (its single-image graph;
        # an exported MindIR is its own graph): a later run starts in seconds.
        cached_config = config.replace(compile_cache_dir=None) if args.mindir else config
        progress = tqdm(inputs, desc="predict", unit="file", disable=None if len(inputs) > 1 else True)
        with compile_cache(cached_config, "predict", entry_file=__file__):
            if args.export:
                export_prelabels(predictor, progress, args.out, config.coco_classes, args.export,
                                 args.polygon_tolerance, args.image_url_prefix)
                return EXIT_OK
            for path in progress:
                if path.lower().endswith(VIDEO_EXTENSIONS):
                    predict_video(predictor, path, args.out, config.coco_classes, args.max_frames)
                else:
                    predict_image(predictor, path, args.out, config.coco_classes)
    except cli_errors(PredictError) as e:
        return report_error(logger, e)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
