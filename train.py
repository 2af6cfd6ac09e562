"""Fine-tune Mask R-CNN (ResNet50 + FPN) on a COCO-format set.

    python train.py [--config_path FineTune/default.yaml] [--pre_trained CKPT] [--resume CKPT]
                    [--device_target CPU|Ascend|GPU] [--any_config_key VALUE ...]

The run directory (``run_dir`` in the config) receives the resolved config, ``train.log``,
``losses.csv`` (every loss component per step) and the checkpoints, written atomically:
``last.ckpt`` (weights, optimizer state and global step: the file ``--resume`` takes), numbered
``maskrcnn-<epoch>_<step>.ckpt`` (weights only; ``keep_checkpoint_max`` of them, 0 = none) and,
with ``--eval_interval K``, ``best.ckpt`` by ``early_stop_metric`` (segm AP; weights only) and
``early_stopping.json`` (``--early_stop_patience N`` stops after N evaluations without a new best;
``--resume`` keeps the count). ``tensorboard/`` holds TensorBoard event files of every logged scalar.
One run per folder: a second train.py in a folder in use is refused, and so is a new run (without
``--resume``) in a folder that holds another run's files. Ctrl-C or SIGTERM stops at the next step
boundary and saves ``last.ckpt`` (a second one stops at once).
Every config key is listed below the options.
Exit codes: 0 done, 1 training stopped (non-finite loss), 2 bad input, 3 environment or I/O
error (a full disk, an unwritable folder), 130 stopped by SIGINT/SIGTERM with a checkpoint.
"""

import argparse
import logging
import sys
from typing import Optional, Sequence

from src.cli import cli_errors, report_error
from src.config import add_config_arguments, config_from_cli, resolve_path
from src.engine.runtime import (EXIT_BAD_INPUT, EXIT_ENVIRONMENT, EXIT_INTERRUPTED, EXIT_OK,
                                EXIT_TRAINING_STOPPED)
from src.engine.trainer import train

logger = logging.getLogger("train")

__all__ = ["EXIT_BAD_INPUT", "EXIT_ENVIRONMENT", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_TRAINING_STOPPED",
           "build_parser", "main", "train"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser)
    parser.add_argument("--pre_trained", default="",
                        help="backbone checkpoint (convert_checkpoint.py output), a model-zoo or torchvision "
                             "ResNet50 / Mask R-CNN checkpoint (.ckpt, .safetensors, .pth), or a checkpoint of "
                             "this model; empty = random init")
    parser.add_argument("--resume", default="",
                        help="RUN_DIR/last.ckpt of an earlier run: restores the weights, optimizer state and "
                             "global step, and continues from there (numbered checkpoints and best.ckpt hold "
                             "the weights only: start from those with --pre_trained)")
    parser.add_argument("--log_every", type=int, default=None,
                        help="print the losses every N steps instead of a progress bar (default: a bar with "
                             "steps/s and ETA on a terminal, a line every step otherwise)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args, config = config_from_cli(parser, argv)
    if args.log_every is not None and args.log_every <= 0:
        parser.error(f"--log_every must be a positive number of steps, got {args.log_every}")
    from src.engine.runtime import ensure_writable_folder, set_mindspore_context, setup_logging

    # stderr only, and held in memory: train.log is written once the inputs are checked (the
    # writing rank; others log to the console only, which msrun keeps in msrun_logs/).
    setup_logging(hold_for_file=True)
    try:
        ensure_writable_folder(resolve_path(config.run_dir), "run_dir")
        set_mindspore_context(config.device_target, seed=config.seed)
        return train(config, pre_trained=args.pre_trained, resume=args.resume, log_every=args.log_every,
                     argv=argv)
    except cli_errors() as e:
        return report_error(logger, e)


if __name__ == "__main__":
    sys.exit(main())
