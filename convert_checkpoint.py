"""Convert a MindSpore model-zoo checkpoint to this project's parameter names.

    python convert_checkpoint.py [--ckpt_file FineTune/resnet50.ckpt]
                                 [--output_file FineTune/resnet50_backbone.ckpt]
                                 [--mode resnet50|maskrcnn]

* ``resnet50``: the model-zoo ResNet50 ImageNet classifier -> backbone checkpoint
  (``backbone.*``; the classifier ``end_point.*`` is dropped), the input of
  ``train.py --pre_trained``.
* ``maskrcnn``: the model-zoo Mask R-CNN ResNet50-FPN -> a checkpoint of this model (fully
  connected weights transposed); fine-tuning with another class count skips the class layers.

Without ``--mode`` the kind is detected from the parameter names. The number of converted,
dropped (classifier, optimizer state) and unexpected tensors is logged; the output is written
atomically. Exit codes: 0 done, 1 the input is missing, unreadable or not of the expected kind.
"""

import argparse
import logging
import os
import sys
from typing import Optional, Sequence

REPO_ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CKPT_FILE = os.path.join(REPO_ROOT, "FineTune", "resnet50.ckpt")
DEFAULT_OUTPUT_FILES = {
    "resnet50": os.path.join(REPO_ROOT, "FineTune", "resnet50_backbone.ckpt"),
    "maskrcnn": os.path.join(REPO_ROOT, "FineTune", "maskrcnn_coco_converted.ckpt"),
}
EXIT_OK = 0
EXIT_BAD_INPUT = 1

logger = logging.getLogger("convert_checkpoint")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="convert_checkpoint.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt_file", default=DEFAULT_CKPT_FILE,
                        help="model-zoo checkpoint to convert (default: FineTune/resnet50.ckpt)")
    parser.add_argument("--output_file", default=None,
                        help="converted checkpoint to write (default: FineTune/resnet50_backbone.ckpt; "
                             "FineTune/maskrcnn_coco_converted.ckpt for a Mask R-CNN input)")
    parser.add_argument("--mode", choices=sorted(DEFAULT_OUTPUT_FILES), default=None,
                        help="kind of the input; default: detected from the parameter names")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from src.runtime import setup_logging

    setup_logging()
    # MindSpore is imported only once the arguments are known to be valid.
    from src.checkpoint import (KIND_ZOO_MASKRCNN, CheckpointError, convert_zoo_checkpoint, read_checkpoint,
                                save_checkpoint_atomic)

    try:
        params = read_checkpoint(args.ckpt_file)
        converted, report = convert_zoo_checkpoint(params, mode=args.mode, source=args.ckpt_file)
        output_file = args.output_file or DEFAULT_OUTPUT_FILES[
            "maskrcnn" if report.kind == KIND_ZOO_MASKRCNN else "resnet50"]
        save_checkpoint_atomic(converted, output_file)
    except CheckpointError as e:
        logger.error("%s", e)
        return EXIT_BAD_INPUT
    logger.info("wrote %d tensors to %s", len(converted), output_file)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
