"""What the command-line tools share: the inference weights options, the device override, and the
mapping of errors to exit codes (one line, no traceback; the table is in src/engine/runtime.py).

Each CLI (``train.py``, ``eval.py``, ``predict.py``, ``export.py``, ``convert_checkpoint.py``)
parses its options, calls the library, catches :func:`cli_errors` and returns
:func:`report_error`'s code; no CLI imports another.
"""

import argparse
import logging
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


def environment_errors() -> Tuple[Type[BaseException], ...]:
    """The exception classes that mean the machine failed, not the input (exit EXIT_ENVIRONMENT):
    a full disk, an unwritable folder, any other failed read or write."""
    from src.checkpoint.io import CheckpointWriteError
    from src.engine.runtime import EnvironmentFailure

    return (EnvironmentFailure, CheckpointWriteError, OSError)


def cli_errors(*extra_bad_input: Type[BaseException]) -> Tuple[Type[BaseException], ...]:
    """Everything a CLI reports as one line with an exit code: environment and bad-input errors."""
    return environment_errors() + bad_input_errors(*extra_bad_input)


def error_line(error: BaseException) -> str:
    """The one line that reports ``error``: an OSError as ``FILE: reason``, anything else as is."""
    if isinstance(error, OSError) and error.strerror:
        where = error.filename if error.filename is not None else ""
        return f"{where}: {error.strerror}" if where else error.strerror
    return " ".join(str(error).split("\n")) or type(error).__name__


def report_error(logger: logging.Logger, error: BaseException) -> int:
    """Log ``error`` as one ERROR line and return its exit code (environment errors first: a
    checkpoint write that failed on a full disk is EXIT_ENVIRONMENT, not bad input)."""
    from src.engine.runtime import EXIT_BAD_INPUT, EXIT_ENVIRONMENT

    logger.error("%s", error_line(error))
    return EXIT_ENVIRONMENT if isinstance(error, environment_errors()) else EXIT_BAD_INPUT


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
