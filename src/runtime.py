"""Process-level set-up shared by the CLIs: exit codes, logging and the MindSpore context."""

import logging
import os
import sys
from typing import List, Optional, Sequence

# Exit codes of every command-line tool (train.py, eval.py, predict.py, export.py,
# convert_checkpoint.py and the ``python -m src.*`` tools). Bad input (a config key, data,
# checkpoint, option or device that cannot work) is EXIT_BAD_INPUT, the same status argparse
# gives a usage error; train.py alone adds 1 for a run stopped by a non-finite loss.
EXIT_OK = 0
EXIT_BAD_INPUT = 2

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(log_file: Optional[str] = None, level: int = logging.INFO) -> None:
    """Log to stderr and, when given, to ``log_file`` (appended)."""
    handlers = [logging.StreamHandler(sys.stderr)]
    if log_file:
        os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
        handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
    logging.basicConfig(level=level, format=LOG_FORMAT, handlers=handlers, force=True)


# Every device_target a config may name, in the order the message lists the available ones.
KNOWN_DEVICES = ("CPU", "GPU", "Ascend")


class SetupError(RuntimeError):
    """The process cannot start as asked (device, output folder); the message is one line."""


class DeviceUnavailableError(SetupError):
    """The configured ``device_target`` cannot run with this MindSpore install on this machine."""


class OutputFolderError(SetupError):
    """An output folder cannot be created or written to."""


def ensure_writable_folder(path: str, what: str) -> str:
    """Check, before any work, that the output folder ``path`` can be written (or created).

    Nothing is created: the folder itself, or else its nearest existing parent, must be a
    folder this process may write to.

    Args:
        path: the folder.
        what: the config key or option that named it (``run_dir``, ``out``), for the message.

    Returns:
        ``path``.

    Raises:
        OutputFolderError: naming the folder, the blocking path and the option to change.
    """
    existing = os.path.abspath(path)
    while not os.path.exists(existing) and os.path.dirname(existing) != existing:
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        why = f"{existing} is not a folder"
    elif not os.access(existing, os.W_OK | os.X_OK):
        why = f"{existing} is not writable"
    else:
        return path
    raise OutputFolderError(f"{path}: cannot write the {what} folder there ({why}); "
                            f"choose a writable folder with --{what}")


def available_devices() -> List[str]:
    """The devices this MindSpore install can run (its backend plug-ins that load), e.g. ``['CPU']``."""
    from mindspore import hal

    return [device for device in KNOWN_DEVICES if hal.is_available(device)]


def device_unavailable_message(device_target: str, available: Sequence[str], reason: str = "") -> str:
    """The one line a user gets for a device that is not there: asked for, available, the override.

    Args:
        device_target: the device the config (or command line) asked for.
        available: what ``available_devices()`` returned.
        reason: MindSpore's own first line, when it refused the device itself.
    """
    import mindspore as ms

    fallback = "CPU" if "CPU" in available else (available[0] if available else "CPU")
    because = f" ({reason})" if reason else ""
    return (f"device_target '{device_target}' is not available with this MindSpore {ms.__version__} install on "
            f"this machine{because}; it can run: {', '.join(available) or 'none'}; "
            f"run with --device_target {fallback}")


def set_mindspore_context(device_target: str, seed: Optional[int] = None, graph_mode: bool = True) -> None:
    """Graph mode on the chosen device; a fixed seed for reproducible sampling and init.

    Raises:
        DeviceUnavailableError: ``device_target`` cannot run here (one line: the device asked
            for, the devices available, the ``--device_target`` override).
    """
    import mindspore as ms  # heavy import, kept out of module import time

    ms.set_context(mode=ms.GRAPH_MODE if graph_mode else ms.PYNATIVE_MODE)
    # The device can be chosen once per process (before the first kernel runs); a second CLI
    # call in the same process (tests, notebooks) keeps the device it already has.
    if ms.get_context("device_target") != device_target:
        # Asked before set_device: on an install without the device's plug-in, MindSpore
        # fails there with a long traceback about a missing shared library.
        available = available_devices()
        if device_target not in available:
            raise DeviceUnavailableError(device_unavailable_message(device_target, available))
        try:
            ms.set_device(device_target)
        except (RuntimeError, ValueError) as e:  # the plug-in loads but the device is absent
            first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DeviceUnavailableError(device_unavailable_message(device_target, available, first_line)) from e
    if seed is not None:
        ms.set_seed(seed)
