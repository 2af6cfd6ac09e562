"""Convert a MindSpore model-zoo or torchvision checkpoint to this project's parameter names.

    python convert_checkpoint.py [--ckpt_file FineTune/resnet50.ckpt]
                                 [--output_file FineTune/resnet50_backbone.ckpt]
                                 [--mode resnet50|maskrcnn|torchvision_resnet50|torchvision_maskrcnn]

* ``resnet50``: the model-zoo ResNet50 ImageNet classifier (``.ckpt``) -> backbone checkpoint
  (``backbone.*``; the classifier ``end_point.*`` is dropped), the input of
  ``train.py --pre_trained``.
* ``maskrcnn``: the model-zoo Mask R-CNN ResNet50-FPN (``.ckpt``) -> a checkpoint of this model
  (fully connected weights transposed).
* ``torchvision_resnet50``: torchvision's ``resnet50`` ImageNet state dict -> backbone checkpoint
  (the classifier ``fc.*`` is dropped).
* ``torchvision_maskrcnn``: torchvision's ``maskrcnn_resnet50_fpn`` (v1, e.g. the COCO weights)
  -> a checkpoint of this model.

torchvision files are read as ``.safetensors`` (NumPy only) or ``.pth`` (needs torch, at
conversion time only: ``python -m pip install torch``). Fine-tuning with another class count skips
the class layers. Without ``--mode`` the kind is detected from the parameter names. The number
of converted, dropped (classifier, optimizer state) and unexpected tensors is logged, and so is
the numerics preset the weights need (config key ``numerics``), which is also stored in the
output, so that loading it into a network of another preset warns; so is the BatchNorm epsilon
the weights ran with at home (``bn_eps``: 0 for torchvision's COCO Mask R-CNN, whose loader sets
it so; 1e-5 otherwise; ``--bn_eps 1e-5`` for a torchvision Mask R-CNN fine-tuned from an
ImageNet backbone, where torchvision keeps 1e-5). The output is written
atomically. Exit codes: 0 done, 2 the input is missing, unreadable or not of the expected kind,
3 environment or I/O error (writing failed: a full disk, an unwritable folder).
"""

import argparse
import logging
import os
import sys
from typing import Optional, Sequence

from src.cli import cli_errors, report_error
from src.engine.runtime import EXIT_OK

REPO_ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CKPT_FILE = os.path.join(REPO_ROOT, "FineTune", "resnet50.ckpt")
DEFAULT_OUTPUT_FILES = {
    "resnet50": os.path.join(REPO_ROOT, "FineTune", "resnet50_backbone.ckpt"),
    "maskrcnn": os.path.join(REPO_ROOT, "FineTune", "maskrcnn_coco_converted.ckpt"),
    "torchvision_resnet50": os.path.join(REPO_ROOT, "FineTune", "torchvision_resnet50_backbone.ckpt"),
    "torchvision_maskrcnn": os.path.join(REPO_ROOT, "FineTune", "torchvision_maskrcnn_coco_converted.ckpt"),
}

logger = logging.getLogger("convert_checkpoint")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="convert_checkpoint.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt_file", default=DEFAULT_CKPT_FILE,
                        help="checkpoint to convert: .ckpt (model zoo), .safetensors or .pth (torchvision) "
                             "(default: FineTune/resnet50.ckpt)")
    parser.add_argument("--output_file", default=None,
                        help="converted checkpoint to write (default per kind: FineTune/resnet50_backbone.ckpt, "
                             "FineTune/maskrcnn_coco_converted.ckpt, FineTune/torchvision_resnet50_backbone.ckpt, "
                             "FineTune/torchvision_maskrcnn_coco_converted.ckpt)")
    parser.add_argument("--mode", choices=sorted(DEFAULT_OUTPUT_FILES), default=None,
                        help="kind of the input; default: detected from the parameter names")
    parser.add_argument("--bn_eps", type=float, default=None,
                        help="BatchNorm epsilon the weights were trained with (recorded in the output); default: "
                             "the source loader's: 0 for torchvision's COCO Mask R-CNN "
                             "(maskrcnn_resnet50_fpn(weights=COCO_V1) sets it), 1e-5 for the others; "
                             "1e-5 for a torchvision Mask R-CNN fine-tuned from an ImageNet backbone")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.bn_eps is not None and not 0.0 <= args.bn_eps < 1.0:
        parser.error(f"--bn_eps must be in [0, 1), got {args.bn_eps!r}")
    from src.engine.runtime import setup_logging

    setup_logging()
    # MindSpore is imported only once the arguments are known to be valid.
    from src.checkpoint.convert import convert_foreign_checkpoint
    from src.checkpoint.io import read_weights, save_checkpoint_atomic
    from src.checkpoint.names import BN_EPS_KEY, CONVERTED_FROM_KEY, CONVERT_MODES, NUMERICS_KEY

    try:
        params, _ = read_weights(args.ckpt_file)
        converted, report = convert_foreign_checkpoint(params, mode=args.mode, source=args.ckpt_file,
                                                       bn_eps=args.bn_eps)
        mode = next(m for m, kind in CONVERT_MODES.items() if kind == report.kind)
        output_file = args.output_file or DEFAULT_OUTPUT_FILES[mode]
        save_checkpoint_atomic(converted, output_file,
                               append_dict={NUMERICS_KEY: report.numerics, CONVERTED_FROM_KEY: report.kind,
                                            BN_EPS_KEY: repr(report.bn_eps)})
    except cli_errors() as e:
        return report_error(logger, e)
    logger.info("wrote %d tensors to %s", len(converted), output_file)
    # Printed too: the one thing the user must put in the recipe.
    print(f"{output_file}: train and evaluate these weights with `{NUMERICS_KEY}: {report.numerics}` "
          f"in the config (or --{NUMERICS_KEY} {report.numerics}); their BatchNorm eps is {report.bn_eps!r} "
          f"(`{BN_EPS_KEY}`, the preset's unless set)")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
