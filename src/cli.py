"""What the command-line tools share: the inference weights options, the device override, and the
errors that mean bad input (exit code ``EXIT_BAD_INPUT``, one line, no traceback).

Each CLI (``train.py``, ``eval.py``, ``predict.py``, ``export.py``) parses its options, calls the
library and maps errors to exit codes with :func:`bad_input_errors`; no CLI imports another.
"""

import argparse
import os
from typing import Optional, Tuple, Type

from src.maskrcnn.target import DEVICE_TARGETS


def bad_input_errors(*extra: Type[BaseException]) -> Tuple[Type[BaseException], ...]:
    """The exception classes every CLI reports as bad input (one line, exit 2), plus ``extra``."""
    from src.checkpoint.io import CheckpointError
    from src.config import ConfigError
    from src.dataset import DatasetError
    from src.engine.mindir import ExportError
    from src.engine.runtime import SetupError
    from src.evaluation.report_data import ReportError
    from src.evaluation.results import EvaluationError

    return (ConfigError, CheckpointError, DatasetError, SetupError, ExportError, EvaluationError,
            ReportError) + tuple(extra)


def add_inference_weights_arguments(parser: argparse.ArgumentParser) -> None:
    """``--ckpt`` | ``--mindir`` (one of them, required) and ``--device_target``."""
    weights = parser.add_mutually_exclusive_group(required=True)
    weights.add_argument("--ckpt", help="checkpoint of this model written by train.py")
    weights.add_argument("--mindir", help="graph written by export.py; its metadata file (FILE.json) gives the "
                                          "classes, input size and normalisation, so no --config_path is needed")
    parser.add_argument("--device_target", default=None, choices=DEVICE_TARGETS,
                        help="overrides the config's device_target")


def with_device_override(config, args: argparse.Namespace):
    """``config`` with ``--device_target`` applied when given."""
    return config.replace(device_target=args.device_target) if args.device_target else config


def with_mindir_metadata(config, args: argparse.Namespace):
    """``config`` with the metadata of ``--mindir``'s graph applied (classes, input size,
    normalisation, ...: ``src.engine.mindir.config_with_metadata``), so that no ``--config_path``
    is needed; unchanged for ``--ckpt`` or a missing file (:func:`missing_weights_message`).

    Returns:
        ``(config, metadata or None)``.

    Raises:
        ExportError: the graph's metadata file is missing or unreadable (names it).
    """
    if not args.mindir or not os.path.isfile(args.mindir):
        return config, None
    from src.engine.mindir import config_with_metadata, read_metadata

    metadata = read_metadata(args.mindir)
    return config_with_metadata(config, metadata), metadata


def missing_weights_message(args: argparse.Namespace) -> Optional[str]:
    """The one-line error for a ``--ckpt``/``--mindir`` file that does not exist, else None."""
    weights = args.mindir or args.ckpt
    if os.path.isfile(weights):
        return None
    return f"{'MindIR' if args.mindir else 'checkpoint'} file not found: {weights}"


def inference_network(config, ckpt: Optional[str], mindir: Optional[str]):
    """The network to run: the exported ``mindir`` (``nn.GraphCell``), or the model of ``config``
    with every parameter from ``ckpt`` (``load_inference_checkpoint``).

    Returns:
        ``(net, load_report)``; ``load_report`` is None for a MindIR.
    """
    if mindir:
        from src.engine.mindir import load_exported

        return load_exported(mindir), None
    from src.checkpoint.load import load_inference_checkpoint
    from src.maskrcnn.builder import build_model

    net = build_model(config)
    return net, load_inference_checkpoint(net, ckpt)
