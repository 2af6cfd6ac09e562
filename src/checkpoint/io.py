"""Checkpoint files: reading ``.ckpt`` / ``.safetensors`` / ``.pth``, value checks, atomic saving.

``read_weights`` reads ``.ckpt`` (MindSpore), ``.safetensors`` (NumPy, no torch) and ``.pth``
(needs torch, at conversion time only); every file read is refused with a one-line
:class:`CheckpointError` when it holds NaN/Inf or a negative BatchNorm variance
(``check_checkpoint_values``). ``save_checkpoint_atomic`` never leaves a half-written ``.ckpt``
where the last good one was, and writes a CRC32 that every read of a ``.ckpt`` verifies
(``verify_checksum``); ``remove_interrupted_writes`` clears what a killed write left. The small helpers ``listing``, ``shape_of`` and ``to_numpy`` are
shared by the conversion and loading modules.
"""

from __future__ import annotations

import binascii
import logging
import os
import pickle
import re
import uuid
import zipfile
from typing import Dict, Mapping, Optional, Sequence, Tuple

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn

from src.checkpoint.names import is_training_state

CKPT_SUFFIX = ".ckpt"
# How many offending names an error message shows before "(+N more)".
MAX_LISTED = 5
# mindspore.save_checkpoint(crc_check=True) ends the file with this marker and the CRC32 of
# everything before it (10 bytes, big-endian).
CRC_MARKER = b"crc_num"
CRC_TRAILER_SIZE = len(CRC_MARKER) + 10
# The temporary files of save_checkpoint_atomic: ".<name>.<pid>.<8 hex>.partial.ckpt" and the
# ".<name>.<pid>.<8 hex>.partial.tmp" mindspore.save_checkpoint writes first.
PARTIAL_FILE = re.compile(r"^\..+\.\d+\.[0-9a-f]{8}\.partial(\.ckpt|\.tmp)$")

logger = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, of the wrong kind or does not fit the model."""


class CheckpointWriteError(CheckpointError):
    """Writing a checkpoint failed (a full disk, an unwritable folder): an environment error, not
    bad input (exit EXIT_ENVIRONMENT); the previous file is kept."""


def verify_checksum(path: str) -> bool:
    """Check the CRC32 that ``save_checkpoint_atomic`` stores at the end of a ``.ckpt``.

    Returns:
        True when the file holds a checksum and it matches; False for a file written without
        one (older files, other tools), which is logged as a one-line note.

    Raises:
        CheckpointError: the checksum does not match (the file changed after it was written).
    """
    crc = 0
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        if size >= CRC_TRAILER_SIZE:
            handle.seek(size - CRC_TRAILER_SIZE)
            trailer = handle.read(CRC_TRAILER_SIZE)
        else:
            trailer = b""
        if not trailer.startswith(CRC_MARKER):
            logger.info("%s: written without a checksum (an older file or another tool): loaded unverified", path)
            return False
        handle.seek(0)
        remaining = size - CRC_TRAILER_SIZE
        while remaining > 0:
            block = handle.read(min(remaining, 1 << 24))
            if not block:
                break
            crc = binascii.crc32(block, crc)
            remaining -= len(block)
    stored = int.from_bytes(trailer[len(CRC_MARKER):], byteorder="big")
    if crc != stored:
        raise CheckpointError(f"{path}: checksum mismatch (CRC32 stored {stored:08x}, computed {crc:08x}): the file "
                              f"was damaged after it was written; use another checkpoint")
    return True


def remove_interrupted_writes(directory: str) -> list:
    """Delete the temporary files of checkpoint writes that were killed in ``directory``.

    Only names of :data:`PARTIAL_FILE`'s pattern are touched (never a ``.ckpt`` a user can load);
    call it while holding the folder's run lock, so that no live write is among them.

    Returns:
        the names removed (also logged in one line).
    """
    try:
        names = sorted(n for n in os.listdir(directory) if PARTIAL_FILE.match(n))
    except FileNotFoundError:
        return []
    for name in names:
        os.remove(os.path.join(directory, name))
    if names:
        logger.info("%s: removed %d files left by interrupted checkpoint writes: %s", directory, len(names),
                    listing(names))
    return names


def listing(items: Sequence[str], limit: Optional[int] = MAX_LISTED) -> str:
    """'a, b, c (+4 more)': the first ``limit`` items (all when limit is None)."""
    items = list(items)
    if limit is None or len(items) <= limit:
        return ", ".join(items)
    return ", ".join(items[:limit]) + f" (+{len(items) - limit} more)"


def shape_of(value) -> Tuple[int, ...]:
    """The shape of a Parameter / Tensor / ndarray as a tuple of ints."""
    return tuple(int(d) for d in value.shape)


def to_numpy(name: str, value, source: str) -> np.ndarray:
    """Parameter / Tensor / ndarray -> ndarray (no copy for an ndarray); ``name`` and ``source``
    (the file) name the tensor in the error raised for any other type."""
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, Tensor):  # Parameter is a Tensor
        return value.asnumpy()
    raise CheckpointError(f"{source}: parameter '{name}' has a value of type {type(value).__name__}, "
                          f"expected a Tensor, Parameter or numpy array")


def read_checkpoint_with_metadata(path: str) -> Tuple[Dict[str, Parameter], Dict[str, str]]:
    """``mindspore.load_checkpoint`` with errors that name the file, tensors and strings apart.

    Returns:
        (params, metadata): name -> Parameter in file order, and the strings stored with
        ``append_dict`` (e.g. ``NUMERICS_KEY``; empty for most files).

    Raises:
        CheckpointError: the file is missing, not a ``.ckpt``, unreadable/corrupt or empty.
    """
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint file not found: {path}")
    if not path.endswith(CKPT_SUFFIX):
        raise CheckpointError(f"{path}: a MindSpore checkpoint file name must end with {CKPT_SUFFIX}")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"{path}: the file is empty (0 bytes): a copy or a write that did not finish; "
                              f"use another checkpoint")
    verify_checksum(path)
    try:
        loaded = ms.load_checkpoint(path)
    except (ValueError, RuntimeError, TypeError, OSError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: cannot read the checkpoint (corrupt, truncated or not a "
                              f"MindSpore .ckpt): {reason}") from e
    params = {n: v for n, v in loaded.items() if not isinstance(v, str)}
    metadata = {n: v for n, v in loaded.items() if isinstance(v, str)}
    if not params:
        raise CheckpointError(f"{path}: the checkpoint holds no parameters")
    check_checkpoint_values(params, path)
    return params, metadata


# Suffixes of BatchNorm running-variance names: MindSpore's (ours and the model zoo's) and PyTorch's.
MOVING_VARIANCE_SUFFIXES = ("moving_variance", "running_var")


def check_checkpoint_values(params: Mapping[str, object], source: str) -> None:
    """Refuse values no usable network holds: NaN/Inf in any tensor, a negative BatchNorm variance.

    Such a file (damaged, written by a diverged run, or wrongly converted) would otherwise load
    without a word and make every training step non-finite. Integer tensors are not checked.

    Args:
        params: name -> Parameter / Tensor / ndarray, e.g. what ``mindspore.load_checkpoint`` returns.
        source: file name for the message.

    Raises:
        CheckpointError: one line naming the file and every offending tensor (up to MAX_LISTED)
            with the count of bad values.
    """
    non_finite, negative_variance = [], []
    for name, value in params.items():
        array = to_numpy(name, value, source)
        if not np.issubdtype(array.dtype, np.floating):
            continue
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        if bad:
            non_finite.append(f"{name} ({bad} of {array.size})")
        elif name.endswith(MOVING_VARIANCE_SUFFIXES) and not is_training_state(name):
            negative = int(np.count_nonzero(array < 0))
            if negative:
                negative_variance.append(f"{name} ({negative} of {array.size}, min {float(array.min()):.4g})")
    problems = []
    if non_finite:
        problems.append(f"NaN/Inf values in {len(non_finite)} tensors: {listing(non_finite)}")
    if negative_variance:
        problems.append(f"negative BatchNorm moving variance in {len(negative_variance)} tensors: "
                        f"{listing(negative_variance)}")
    if problems:
        raise CheckpointError(f"{source}: values that cannot be right, refusing to load (damaged file, "
                              f"diverged run or wrong conversion): " + " | ".join(problems))


def read_checkpoint(path: str) -> Dict[str, Parameter]:
    """The tensors of a MindSpore ``.ckpt`` (see ``read_checkpoint_with_metadata``).

    Returns:
        name -> Parameter, in file order (stored strings left out).

    Raises:
        CheckpointError: the file is missing, not a ``.ckpt``, unreadable/corrupt or empty.
    """
    return read_checkpoint_with_metadata(path)[0]


SAFETENSORS_SUFFIX = ".safetensors"
TORCH_SUFFIXES = (".pth", ".pt")
# What a user runs to read .pth files (only convert_checkpoint.py / load_pretrained need it).
TORCH_INSTALL_COMMAND = "python -m pip install torch"
# Keys under which training checkpoints (e.g. torchvision's reference scripts) nest the weights.
TORCH_STATE_DICT_KEYS = ("model", "state_dict")


def _read_safetensors(path: str) -> Dict[str, np.ndarray]:
    """A ``.safetensors`` file as NumPy arrays (the ``safetensors`` package, no torch)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        return dict(load_file(path))
    except (SafetensorError, OSError, ValueError, TypeError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: cannot read the .safetensors file (corrupt, truncated, or a dtype "
                              f"NumPy lacks such as bfloat16): {reason}") from e


def _read_torch(path: str) -> Dict[str, np.ndarray]:
    """A PyTorch state dict (``torch.save``) as NumPy arrays; needs torch, only here."""
    try:
        import torch  # pylint: disable=import-outside-toplevel
    except ImportError as e:
        raise CheckpointError(f"{path}: reading a PyTorch .pth file needs torch (at conversion time only): "
                              f"{TORCH_INSTALL_COMMAND}, or save the state dict as .safetensors") from e
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, OSError, EOFError, ValueError,
            AttributeError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: cannot read the PyTorch file (corrupt, truncated or not a "
                              f"state dict): {reason}") from e
    for key in TORCH_STATE_DICT_KEYS:
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path}: holds a {type(state).__name__}, expected a state dict "
                              f"(name -> tensor)")
    arrays = {}
    for name, value in state.items():
        if not torch.is_tensor(value):
            raise CheckpointError(f"{path}: entry '{name}' is a {type(value).__name__}, expected a tensor")
        value = value.detach().cpu()
        if value.dtype == torch.bfloat16:  # NumPy has no bfloat16; float32 holds it exactly
            value = value.float()
        arrays[name] = value.numpy()
    return arrays


def read_weights(path: str) -> Tuple[Dict[str, object], Dict[str, str]]:
    """Read weights of any supported format, by file name suffix.

    Args:
        path: ``.ckpt`` (MindSpore), ``.safetensors`` (read with NumPy) or ``.pth`` / ``.pt``
            (a PyTorch state dict; needs torch).

    Returns:
        (params, metadata): name -> Parameter / ndarray in file order, and the strings a
        ``.ckpt`` stores (``NUMERICS_KEY``, ``CONVERTED_FROM_KEY``; empty otherwise).

    Raises:
        CheckpointError: missing, unknown format, unreadable or empty file; torch missing for a
            ``.pth`` (the message names the pip command).
    """
    if path.endswith(CKPT_SUFFIX):
        return read_checkpoint_with_metadata(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint file not found: {path}")
    if path.endswith(SAFETENSORS_SUFFIX):
        params = _read_safetensors(path)
    elif path.endswith(TORCH_SUFFIXES):
        params = _read_torch(path)
    else:
        raise CheckpointError(f"{path}: unknown checkpoint format; expected {CKPT_SUFFIX} (MindSpore), "
                              f"{SAFETENSORS_SUFFIX} or {'/'.join(TORCH_SUFFIXES)} (PyTorch)")
    if not params:
        raise CheckpointError(f"{path}: the checkpoint holds no parameters")
    check_checkpoint_values(params, path)
    return params, {}


def _save_object(obj):
    """What ``mindspore.save_checkpoint`` accepts: a Cell or list as is; a dict of
    name -> ndarray/Tensor/Parameter as a list of {'name', 'data'}."""
    if isinstance(obj, (nn.Cell, list)):
        return obj
    if isinstance(obj, Mapping):
        return [{"name": name, "data": value if isinstance(value, Tensor) else Tensor(np.asarray(value))}
                for name, value in obj.items()]
    raise CheckpointError(f"cannot save an object of type {type(obj).__name__}; expected a Cell, a "
                          f"list of parameters or a dict of name -> tensor")


def _fsync_path(path: str, directory: bool = False) -> None:
    if directory and os.name != "posix":  # folders cannot be opened for fsync elsewhere
        return
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint_atomic(net_or_params, path: str, append_dict: Optional[dict] = None) -> None:
    """Write a checkpoint so that ``path`` always holds either the old or the complete new file.

    ``mindspore.save_checkpoint`` deletes an existing target before writing, so it is pointed at a
    unique temporary file in the same folder; that file is fsync'ed and then renamed over
    ``path`` with ``os.replace`` (atomic within one file system), and the folder is fsync'ed.
    The file ends with a CRC32 of its content, which every read verifies. On any failure
    (including KeyboardInterrupt) the temporary files are removed and ``path`` is untouched; a
    process killed mid-write leaves them, and the next run in that folder removes them
    (:func:`remove_interrupted_writes`).

    Args:
        net_or_params: a Cell, a list (of Parameters or {'name', 'data'} dicts) or a dict
            name -> ndarray / Tensor / Parameter.
        path: target file, must end with ``.ckpt``; its folder is created if needed.
        append_dict: extra scalars to store (passed to ``mindspore.save_checkpoint``).

    Raises:
        CheckpointError: bad file name or object.
        CheckpointWriteError: writing failed (the message names ``path``).
    """
    if not path.endswith(CKPT_SUFFIX):
        raise CheckpointError(f"{path}: a MindSpore checkpoint file name must end with {CKPT_SUFFIX}")
    save_obj = _save_object(net_or_params)
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as e:
        raise CheckpointWriteError(f"{path}: cannot create the folder of the checkpoint: {e}") from e
    stem = os.path.basename(path)[: -len(CKPT_SUFFIX)]
    tmp_path = os.path.join(directory, f".{stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.partial{CKPT_SUFFIX}")
    # mindspore.save_checkpoint writes "<name>.tmp" first and renames it to its target.
    ms_tmp_path = tmp_path[: -len(CKPT_SUFFIX)] + ".tmp"
    try:
        ms.save_checkpoint(save_obj, tmp_path, append_dict=append_dict, crc_check=True)
        if not os.path.isfile(tmp_path):
            raise CheckpointWriteError(f"{path}: mindspore.save_checkpoint did not produce {tmp_path}")
        _fsync_path(tmp_path)
        os.replace(tmp_path, path)
    except CheckpointError:
        raise
    except (OSError, RuntimeError, TypeError, ValueError) as e:
        raise CheckpointWriteError(f"{path}: writing the checkpoint failed, the previous file (if any) is "
                                   f"kept: {e}") from e
    finally:
        for leftover in (tmp_path, ms_tmp_path):
            if os.path.lexists(leftover):
                os.remove(leftover)
    try:  # make the rename itself durable
        _fsync_path(directory, directory=True)
    except OSError as e:
        raise CheckpointWriteError(f"{path}: written, but syncing its folder to disk failed: {e}") from e
