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
Every config key is listed below the options.
Exit codes: 0 done, 1 training stopped (non-finite loss), 2 bad input.
"""

import argparse
import logging
import os
import sys
from typing import Optional, Sequence

from src.cli import bad_input_errors
from src.config import add_config_arguments, config_from_cli, resolve_path
from src.engine.runtime import EXIT_BAD_INPUT, EXIT_OK
from src.engine.trainer import EXIT_TRAINING_STOPPED, train

logger = logging.getLogger("train")

__all__ = ["EXIT_BAD_INPUT", "EXIT_OK", "EXIT_TRAINING_STOPPED", "build_parser", "main", "train"]


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
    args, config = config_from_cli(parser, argv)
    from src.engine.distributed import init_data_parallel, is_writer
    from src.engine.runtime import ensure_writable_folder, set_mindspore_context, setup_logging

    setup_logging()  # stderr only until the run folder is known to be writable
    try:
        ensure_writable_folder(resolve_path(config.run_dir), "run_dir")
        set_mindspore_context(config.device_target, seed=config.seed)
        rank, _ = init_data_parallel()
        # Other ranks log to the console only (msrun keeps it in msrun_logs/worker_<rank>.log).
        if is_writer(rank):
            setup_logging(os.path.join(resolve_path(config.run_dir), "train.log"))
        return train(config, pre_trained=args.pre_trained, resume=args.resume, log_every=args.log_every)
    except bad_input_errors() as e:
        logger.error("%s", e)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
