"""Export the inference graph of a checkpoint for deployment (MindIR; ONNX/AIR where the ops allow).

    python export.py --config_path FineTune/default.yaml --ckpt RUN_DIR/last.ckpt \
                     --file_format MINDIR --out model.mindir [--export_batch 1] [--any_config_key VALUE ...]

The graph is the model in inference mode at the config's input size, static shapes:
inputs ``image [B, 3, img_height, img_width] float32`` (normalised and padded as
``src.transforms.preprocess_eval`` does) and ``image_shape [B, 4] float32``; outputs
``(boxes [B,K,4], scores [B,K], labels [B,K] int32, valid [B,K] bool, masks [B,K,M,M])`` as the
network's (see ``src/maskrcnn/mask_rcnn.py``). RoIAlign is the native ``ops.ROIAlign`` in the
exported graph (the CPU training kernel is a Python op that a file cannot hold).
``predict.py --mindir FILE`` and ``eval.py --mindir FILE`` run the file with the same pre- and
post-processing (:func:`load_exported`).
Exit codes: 0 done, 2 bad input or a format the graph's ops cannot be written to, 3 environment or
I/O error (a full disk, an unwritable folder).
"""

import argparse
import logging
import os
import sys
from typing import Optional, Sequence

from src.cli import cli_errors, report_error
from src.config import add_config_arguments, config_from_cli
from src.engine.mindir import FILE_FORMATS, export_network
from src.engine.runtime import EXIT_BAD_INPUT, EXIT_OK

logger = logging.getLogger("export")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser)
    parser.add_argument("--ckpt", required=True, help="checkpoint of this model written by train.py")
    parser.add_argument("--file_format", default="MINDIR", choices=FILE_FORMATS, help="output format")
    parser.add_argument("--out", required=True, help="output file (the format's suffix is added if missing)")
    parser.add_argument("--export_batch", type=int, default=1, help="images per call of the exported graph")
    return parser


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
        path = export_network(net, config, args.out, args.file_format, args.export_batch)
    except cli_errors() as e:
        return report_error(logger, e)
    logger.info("exported %s (%s, input %dx%d, batch %d)", path, args.file_format, config.img_height,
                config.img_width, args.export_batch)
    print(path)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
