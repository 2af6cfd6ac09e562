"""Process-level set-up shared by the CLIs: logging and the MindSpore context."""

import logging
import os
import sys
from typing import Optional

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(log_file: Optional[str] = None, level: int = logging.INFO) -> None:
    """Log to stderr and, when given, to ``log_file`` (appended)."""
    handlers = [logging.StreamHandler(sys.stderr)]
    if log_file:
        os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
        handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
    logging.basicConfig(level=level, format=LOG_FORMAT, handlers=handlers, force=True)


def set_mindspore_context(device_target: str, seed: Optional[int] = None, graph_mode: bool = True) -> None:
    """Graph mode on the chosen device; a fixed seed for reproducible sampling and init."""
    import mindspore as ms  # heavy import, kept out of module import time

    ms.set_context(mode=ms.GRAPH_MODE if graph_mode else ms.PYNATIVE_MODE)
    # The device can be chosen once per process (before the first kernel runs); a second CLI
    # call in the same process (tests, notebooks) keeps the device it already has.
    if ms.get_context("device_target") != device_target:
        ms.set_device(device_target)
    if seed is not None:
        ms.set_seed(seed)
