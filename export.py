"""Export the inference graph of a checkpoint for deployment (MindIR; ONNX/AIR where the ops allow).

    python export.py --config_path FineTune/default.yaml --ckpt RUN_DIR/last.ckpt \
                     --file_format MINDIR --out model.mindir [--export_batch 1] [--report_json FILE]
                     [--any_config_key VALUE ...]

The graph is the model in inference mode at the config's input size, fully static shapes (the
mask head runs on all ``test_max_per_img`` detection slots; ``src/maskrcnn/target.py``; check a
file with ``python -m src.device_check --mindir FILE``):
inputs ``image [B, 3, img_height, img_width] float32`` (normalised and padded as
``src.transforms.preprocess_eval`` does) and ``image_shape [B, 4] float32``; outputs
``(boxes [B,K,4], scores [B,K], labels [B,K] int32, valid [B,K] bool, masks [B,K,M,M])`` as the
network's (see ``src/maskrcnn/mask_rcnn.py``). RoIAlign is the native ``ops.ROIAlign`` in the
exported graph (the CPU training kernel is a Python op that a file cannot hold).
Beside the graph goes ``FILE.json``, its metadata (classes, input size, mean/std, keep_ratio,
mask_thr, numerics preset, per-class score thresholds from ``--report_json`` or, when it exists,
``<run_dir>/eval/report/report.json``; ``src/engine/mindir.py``).
``predict.py --mindir FILE`` and ``eval.py --mindir FILE`` run the file with the same pre- and
post-processing, read from the metadata: no config needed (:func:`load_exported`).
Exit codes: 0 done, 2 bad input or a format the graph's ops cannot be written to, 3 environment or
I/O error (a full disk, an unwritable folder).
"""

import argparse
import logging
import os
import sys
from typing import Optional, Sequence

from src.cli import cli_errors, report_error
from src.config import add_config_arguments, config_from_cli, resolve_path
from src.engine.mindir import FILE_FORMATS, export_network, write_metadata
from src.engine.runtime import EXIT_BAD_INPUT, EXIT_OK

logger = logging.getLogger("export")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser)
    parser.add_argument("--ckpt", required=True, help="checkpoint of this model written by train.py")
    parser.add_argument("--file_format", default="MINDIR", choices=FILE_FORMATS, help="output format")
    parser.add_argument("--out", required=True, help="output file (the format's suffix is added if missing)")
    parser.add_argument("--export_batch", type=int, default=1, help="images per call of the exported graph")
    parser.add_argument("--report_json", default=None,
                        help="report.json of eval.py --report DIR: its per-class score thresholds go into the "
                             "metadata (default <run_dir>/eval/report/report.json when it exists)")
    return parser


def score_thresholds(config, report_json: Optional[str]):
    """``{label: threshold}`` of ``report_json`` (must exist when given), else of the run's own
    report when it exists, else None."""
    from src.evaluation.report_data import DEFAULT_REPORT_JSON, load_score_thresholds
    from src.predictor import DEFAULT_SCORE_THR

    path = report_json or os.path.join(resolve_path(config.run_dir), DEFAULT_REPORT_JSON)
    if not report_json and not os.path.isfile(path):
        return None
    logger.info("per-class score thresholds from %s", path)
    return load_score_thresholds(path, config.coco_classes, DEFAULT_SCORE_THR)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args, config = config_from_cli(parser, argv)
    if args.export_batch <= 0:
        parser.error(f"--export_batch must be positive, got {args.export_batch}")
    from src.engine.runtime import ensure_writable_folder, set_mindspore_context, setup_logging

    setup_logging()
    if not os.path.isfile(args.ckpt):
        logger.error("checkpoint file not found: %s", args.ckpt)
        return EXIT_BAD_INPUT
    try:
        ensure_writable_folder(os.path.dirname(os.path.abspath(args.out)), "out")
        set_mindspore_context(config.device_target, seed=config.seed)
        from src.checkpoint.load import load_inference_checkpoint
        from src.maskrcnn.builder import build_model

        net = build_model(config, for_export=True)
        load_inference_checkpoint(net, args.ckpt)
        thresholds = score_thresholds(config, args.report_json)
        path = export_network(net, config, args.out, args.file_format, args.export_batch)
        metadata = write_metadata(path, config, args.export_batch, thresholds)
    except cli_errors() as e:
        return report_error(logger, e)
    logger.info("exported %s (%s, input %dx%d, batch %d) and its metadata %s", path, args.file_format,
                config.img_height, config.img_width, args.export_batch, metadata)
    print(path)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
