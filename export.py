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
Exit codes: 0 done, 2 bad input or a format the graph's ops cannot be written to.
"""

import argparse
import logging
import os
import sys
from typing import Optional, Sequence

from src.config import add_config_arguments, config_from_cli
from src.runtime import EXIT_BAD_INPUT, EXIT_OK

logger = logging.getLogger("export")

FILE_FORMATS = ("MINDIR", "ONNX", "AIR")
SUFFIXES = {"MINDIR": ".mindir", "ONNX": ".onnx", "AIR": ".air"}


class ExportError(ValueError):
    """The graph cannot be written in the requested format, or an exported file is unusable."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser)
    parser.add_argument("--ckpt", required=True, help="checkpoint of this model written by train.py")
    parser.add_argument("--file_format", default="MINDIR", choices=FILE_FORMATS, help="output format")
    parser.add_argument("--out", required=True, help="output file (the format's suffix is added if missing)")
    parser.add_argument("--export_batch", type=int, default=1, help="images per call of the exported graph")
    return parser


def export_network(net, config, out: str, file_format: str = "MINDIR", batch: int = 1) -> str:
    """Write ``net`` (inference mode) with static inputs of ``config``'s size; returns the file path.

    Raises:
        ExportError: the format cannot hold one of the graph's operators (the message names it).
    """
    import mindspore as ms
    import numpy as np

    suffix = SUFFIXES[file_format]
    stem = out[: -len(suffix)] if out.lower().endswith(suffix) else out
    os.makedirs(os.path.dirname(os.path.abspath(stem)), exist_ok=True)
    image = ms.Tensor(np.zeros((batch, 3, config.img_height, config.img_width), np.float32))
    image_shape = ms.Tensor(np.tile(np.array([[config.img_height, config.img_width, 1.0, 1.0]], np.float32),
                                    (batch, 1)))
    net.set_train(False)
    try:
        ms.export(net, image, image_shape, file_name=stem, file_format=file_format)
    except (RuntimeError, TypeError, ValueError) as e:
        raise ExportError(f"{file_format} export failed: {blocking_operator(str(e))}") from e
    path = stem + suffix
    if not os.path.isfile(path):
        raise ExportError(f"{file_format} export wrote no file at {path}")
    return path


def blocking_operator(message: str) -> str:
    """The one line of an exporter's error that names the unsupported operator (else the first line)."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    for line in lines:
        lowered = line.lower()
        if ("not support" in lowered or "unsupported" in lowered) and ("op" in lowered or "primitive" in lowered):
            return line
    return lines[0] if lines else "unknown error"


def load_exported(path: str):
    """``nn.GraphCell`` of an exported MindIR: ``cell(image, image_shape)`` -> the network's outputs.

    Raises:
        ExportError: missing or unreadable file (names it).
    """
    import mindspore as ms
    from mindspore import nn

    if not os.path.isfile(path):
        raise ExportError(f"MindIR file not found: {path}")
    try:
        graph = ms.load(path)
    except (RuntimeError, ValueError) as e:
        raise ExportError(f"{path}: not a loadable MindIR file ({str(e).splitlines()[0]})") from e
    return nn.GraphCell(graph)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args, config = config_from_cli(parser, argv)
    if args.export_batch <= 0:
        parser.error(f"--export_batch must be positive, got {args.export_batch}")
    from src.runtime import set_mindspore_context, setup_logging

    setup_logging()
    from src.checkpoint.io import CheckpointError

    if not os.path.isfile(args.ckpt):
        logger.error("checkpoint file not found: %s", args.ckpt)
        return EXIT_BAD_INPUT
    set_mindspore_context(config.device_target, seed=config.seed)
    from src.evaluation.inference import load_inference_checkpoint
    from src.maskrcnn.builder import build_model

    try:
        net = build_model(config, for_export=True)
        load_inference_checkpoint(net, args.ckpt)
        path = export_network(net, config, args.out, args.file_format, args.export_batch)
    except (CheckpointError, ExportError) as e:
        logger.error("%s", e)
        return EXIT_BAD_INPUT
    logger.info("exported %s (%s, input %dx%d, batch %d)", path, args.file_format, config.img_height,
                config.img_width, args.export_batch)
    print(path)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
