"""Process-level set-up shared by the CLIs: exit codes, logging and the MindSpore context."""

import contextlib
import hashlib
import json
import logging
import logging.handlers
import os
import shutil
import sys
from typing import Iterator, List, Optional, Sequence

from src.maskrcnn.target import DEVICE_TARGETS, kernel_build_state

# Exit codes of every command-line tool (train.py, eval.py, predict.py, export.py,
# convert_checkpoint.py, the ``python -m src.*`` tools and the shell scripts): the one table,
# quoted in README.md ("Reliability") and docs/bad_input.md. src/cli.py maps errors to them.
EXIT_OK = 0
# train.py: the loss became NaN/Inf; the last good checkpoint is kept.
EXIT_TRAINING_STOPPED = 1
# Bad input: a config value, data, checkpoint, option or device that cannot work (also argparse's
# usage errors). Change the input and run again.
EXIT_BAD_INPUT = 2
# The machine, not the input: a full disk, an unwritable folder, a failed read or write.
EXIT_ENVIRONMENT = 3
# train.py stopped by SIGINT (Ctrl-C) or SIGTERM at a step boundary, after saving last.ckpt:
# continue with --resume (the log line gives the command). A second signal ends the process at
# once, by that signal (status 130 / 143 in a shell), without a new checkpoint.
EXIT_INTERRUPTED = 130

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(log_file: Optional[str] = None, level: int = logging.INFO, hold_for_file: bool = False) -> None:
    """Log to stderr and, when given, to ``log_file`` (appended).

    Args:
        hold_for_file: also keep every record in memory until :func:`add_log_file` names the
            file (train.py: ``train.log`` is only written once the inputs are checked, and then
            holds the lines from the start).
    """
    handlers = [logging.StreamHandler(sys.stderr)]
    if log_file:
        os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
        handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
    if hold_for_file:
        handlers.append(logging.handlers.MemoryHandler(capacity=1 << 30, flushLevel=logging.CRITICAL + 1))
    logging.basicConfig(level=level, format=LOG_FORMAT, handlers=handlers, force=True)


def add_log_file(log_file: Optional[str]) -> None:
    """Log to ``log_file`` (appended) from now on, after the records held since
    ``setup_logging(hold_for_file=True)``; None drops the held records (a process that writes
    no log file, e.g. a data-parallel rank other than 0)."""
    root = logging.getLogger()
    file_handler = None
    if log_file is not None:
        file_handler = logging.FileHandler(log_file, encoding="utf-8")
        file_handler.setFormatter(logging.Formatter(LOG_FORMAT))
    for held in [h for h in root.handlers if isinstance(h, logging.handlers.MemoryHandler)]:
        held.setTarget(file_handler)
        held.flush()
        root.removeHandler(held)
        held.close()
    if file_handler is not None:
        root.addHandler(file_handler)




class SetupError(RuntimeError):
    """The process cannot start as asked (device, output folder); the message is one line."""


class DeviceUnavailableError(SetupError):
    """The configured ``device_target`` cannot run with this MindSpore install on this machine."""


class EnvironmentFailure(RuntimeError):
    """The machine cannot do what was asked (a full disk, an unwritable folder); the
    message is one line naming the file. Exit code EXIT_ENVIRONMENT."""


class OutputFolderError(EnvironmentFailure):
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

    return [device for device in DEVICE_TARGETS if hal.is_available(device)]


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


# The variable that caps the CPU kernels' threads, as it does for NumPy's BLAS, oneDNN and
# PyTorch: MindSpore reads none (its default is 25 kernel threads, whatever the machine has).
CPU_THREADS_VARIABLE = "OMP_NUM_THREADS"


def limit_cpu_threads(environ=os.environ) -> Optional[int]:
    """Run MindSpore's CPU kernels on ``OMP_NUM_THREADS`` threads when it is a positive integer.

    Call before the first kernel runs; MindSpore takes the count once per process, so a later
    call (or a count set by the caller) is left alone.

    Returns:
        the count set, or None (variable unset or not a positive integer, or already set).
    """
    value = environ.get(CPU_THREADS_VARIABLE, "").strip()
    if not value.isdigit() or int(value) < 1:
        return None
    from mindspore._c_expression import RuntimeConf
    from mindspore.device_context.cpu.op_tuning import threads_num

    if RuntimeConf.get_instance().is_op_threads_num_configured():
        return None
    threads_num(int(value))
    return int(value)


def set_mindspore_context(device_target: str, seed: Optional[int] = None, graph_mode: bool = True) -> None:
    """Graph mode on the chosen device; a fixed seed for reproducible sampling and init; the CPU
    kernels on ``OMP_NUM_THREADS`` threads when that is set (:func:`limit_cpu_threads`).

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
    limit_cpu_threads()
    if seed is not None:
        ms.set_seed(seed)


# ---- compile cache -------------------------------------------------------------------------
# MindSpore's compile cache stores each compiled graph as ``rank_<R>/graph_cache/
# compile_cache_<i>.mindir`` (i = the order of the graphs compiled with the cache on in the
# process) and checks one thing before reusing it: a hash of the entry script and the modules it
# imports that are *not* on sys.path -- with the repository root on sys.path that is the entry
# script alone. Nothing about the graph's constants (image size, sample counts, dtype) or this
# project's src/ modules is checked, so a changed config or module would silently run the old
# graph. Each graph therefore gets its own folder named by a hash of everything that shapes it:
# the config (minus the keys below), what else the caller says shapes it, the source of src/ and
# of the entry script, and the MindSpore version.

# Config keys that only touch file locations, the data pipeline or values the graph reads from
# its parameters (never a graph's shapes or constants); changing them reuses the cached graph.
# Every other key is part of the hash.
COMPILE_CACHE_IGNORED_KEYS = (
    "compile_cache_dir", "run_dir", "coco_root", "train_data_type", "val_data_type", "instance_set",
    "num_parallel_workers", "save_checkpoint_epochs", "keep_checkpoint_max", "strict_annotations",
    "flip_ratio", "scale_jitter_range", "scale_jitter_list", "photometric_distortion", "crop_prob",
    "crop_min_side", "early_stop_metric", "early_stop_patience", "tensorboard",
    # Values the graph reads from parameters: the LR schedule (train.py keys the graph by its
    # length instead) and the momentum.
    "base_lr", "lr_schedule", "lr_step_ratios", "lr_step_gamma", "warmup_steps", "warmup_ratio", "lr_scaling",
    "epoch_size", "momentum",
)
# Devices on which MindSpore 2.7's Model.train runs ``dataset_sink_mode=True`` step by step (it
# logs that it cannot sink): there the option builds the same graph as sink mode off.
DEVICES_WITHOUT_SINK = ("CPU",)
# MindSpore's log line (GLOG_v <= 2) when it runs a graph from the cache instead of compiling it
# (tests and benchmarks look for it).
CACHE_LOADED_MESSAGE = "Use the compilation cache"
# Graph folders kept under compile_cache_dir (the most recently used); older ones are deleted.
COMPILE_CACHE_KEEP = 8
# src/ (this file is src/engine/runtime.py)
SOURCE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Whether this process has already run a CLI with the compile cache on (see compile_cache).
_compile_cache_used = False


def source_digest(paths: Sequence[str] = ()) -> str:
    """SHA-256 over the ``.py`` and ``.c`` files of src/ (recursively) and the extra files ``paths``.

    Args:
        paths: further files (e.g. the entry script); missing ones are skipped.

    Returns:
        hex digest; any edit of any of these files changes it.
    """
    files = []
    for folder, subfolders, names in os.walk(SOURCE_DIR):
        subfolders[:] = sorted(d for d in subfolders if d != "__pycache__")
        files.extend(os.path.join(folder, name) for name in sorted(names) if name.endswith((".py", ".c")))
    files.extend(os.path.abspath(p) for p in paths if os.path.isfile(p))
    digest = hashlib.sha256()
    for path in files:
        digest.update(os.path.relpath(path, os.path.dirname(SOURCE_DIR)).encode("utf-8") + b"\0")
        with open(path, "rb") as handle:
            digest.update(hashlib.sha256(handle.read()).digest())
    return digest.hexdigest()


def sinks_epochs(config) -> bool:
    """Whether ``Model.train`` really sinks an epoch into one call (``dataset_sink_mode`` on a
    device that can); on the CPU sink mode trains step by step with the graph of sink mode off."""
    return bool(config.dataset_sink_mode) and config.device_target not in DEVICES_WITHOUT_SINK


def compile_cache_folder(config, purpose: str, graph_inputs: Optional[dict] = None,
                         entry_file: str = "") -> Optional[str]:
    """The cache folder of the graphs one CLI compiles for ``config``, or None when the cache is off.

    Args:
        config: the run's Config; ``compile_cache_dir`` empty/None turns the cache off.
        purpose: the CLI (``"train"``, ``"eval"``): its graphs are numbered apart from the others'.
        graph_inputs: anything else that shapes the graphs (e.g. ``{"pretrained_backbone": True}``,
            which freezes stages); JSON-serialisable.
        entry_file: the CLI's script, hashed with src/.

    Returns:
        ``<compile_cache_dir>/<purpose>-<16 hex digits>`` (absolute), or None.
    """
    root = getattr(config, "compile_cache_dir", None)
    if not root:
        return None
    import mindspore as ms

    settings = {key: value for key, value in config.to_dict().items() if key not in COMPILE_CACHE_IGNORED_KEYS}
    settings["dataset_sink_mode"] = sinks_epochs(config)  # the CPU runs the graph of sink mode off
    # Whether the C kernels could be built decides which ops the CPU graph holds; the graph names
    # the oneDNN convolution library by its path.
    material = json.dumps({"config": settings, "graph_inputs": graph_inputs or {}, "mindspore": ms.__version__,
                           "source": source_digest([entry_file] if entry_file else []),
                           **kernel_build_state(config)}, sort_keys=True)
    key = hashlib.sha256(material.encode("utf-8")).hexdigest()[:16]
    from src.config import resolve_path

    return os.path.join(os.path.abspath(resolve_path(root)), f"{purpose}-{key}")


def _prune_compile_cache(root: str, keep: str) -> None:
    """Delete all but the COMPILE_CACHE_KEEP most recently used graph folders under ``root``."""
    try:
        entries = [os.path.join(root, name) for name in os.listdir(root)]
    except OSError:
        return
    folders = sorted((p for p in entries if os.path.isdir(p) and p != keep), key=os.path.getmtime, reverse=True)
    for old in folders[COMPILE_CACHE_KEEP - 1:]:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def compile_cache(config, purpose: str, graph_inputs: Optional[dict] = None,
                  entry_file: str = "") -> Iterator[Optional[str]]:
    """MindSpore's compile cache on, in the folder of ``config`` (see above), for the ``with`` body.

    Enter after :func:`set_mindspore_context` and before the first graph compiles. MindSpore
    fixes the cache folder at the first cached compile of a process and numbers the graphs in
    compile order, so only the first CLI run of a process uses the cache (the folder then holds
    exactly that CLI's graphs, in that order); later ones in the same process (tests, notebooks)
    run uncached. On leaving, the cache is turned off again.

    Args:
        config, purpose, graph_inputs, entry_file: as for :func:`compile_cache_folder`.

    Yields:
        the folder in use, or None (off by config, or a second run in this process).

    Raises:
        OutputFolderError: the folder cannot be written (the message names ``compile_cache_dir``).
    """
    global _compile_cache_used
    folder = compile_cache_folder(config, purpose, graph_inputs, entry_file)
    if folder is None:
        yield None
        return
    if _compile_cache_used:
        logging.getLogger(__name__).info("compile cache off: this process already ran with one")
        yield None
        return
    import mindspore as ms

    ensure_writable_folder(folder, "compile_cache_dir")
    os.makedirs(folder, exist_ok=True)
    os.utime(folder)  # marks it recently used for the pruning
    _prune_compile_cache(os.path.dirname(folder), folder)
    _compile_cache_used = True
    # set_context (not the MS_COMPILER_CACHE_* variables): child processes must not inherit it.
    ms.set_context(enable_compile_cache=True, compile_cache_path=folder)
    logging.getLogger(__name__).info("compile cache: %s", folder)
    try:
        yield folder
    finally:
        ms.set_context(enable_compile_cache=False)
