"""C kernels for the CPU backend, built on first use with the system C compiler.

MindSpore 2.7's CPU kernels for some of the network's ops are far slower than the arithmetic
needs (``benchmarks/profile_step.py``). ``cpu_kernels.c`` holds plain C loops for them; this module
compiles it once per source version into a shared library (``$XDG_CACHE_HOME`` or
``~/.cache``, folder ``maskrcnn_mindspore``; the temporary folder when that is not writable),
loads it with ctypes and wraps each kernel for NumPy arrays. The network calls these wrappers
from ``pyfunc`` Custom ops (``src/maskrcnn/ops/cpu_ops.py``).

``conv3x3_onednn.c`` is built the same way, against oneDNN 3 (:func:`conv3x3_library`); MindSpore
calls its entry points directly (``aot`` Custom ops, ``cpu_ops.Conv3x3``), not through Python.

Without a working C compiler (``$CC``, else ``gcc``, else ``cc``) :func:`library` returns None
after one warning, and the network builds MindSpore's own ops instead: slower, same results.
"""

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from typing import Optional, Tuple

import numpy as np

LOGGER = logging.getLogger(__name__)

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cpu_kernels.c")
# 3x3 convolutions on oneDNN 3 (MindSpore 2.7.2 bundles oneDNN 2.2, whose NCHW convolution is
# im2col + GEMM); built against the onednn wheels of requirements.txt.
CONV3X3_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "conv3x3_onednn.c")
ONEDNN_MAJOR = 3
# Tried in order: with OpenMP threads, then single-threaded (a compiler without OpenMP).
FLAG_SETS = (("-O3", "-fopenmp", "-fPIC", "-shared"), ("-O3", "-fPIC", "-shared"))

_FLOATS = ctypes.POINTER(ctypes.c_float)
_I64, _INT = ctypes.c_int64, ctypes.c_int
# Argument types of the library's functions (every one returns int64: 0, or an error code).
_SIGNATURES = {
    "max_pool_forward": (_FLOATS, _I64, _I64, _I64, _INT, _INT, _INT, _INT, _I64, _I64, _FLOATS, _INT),
    "max_pool_backward": (_FLOATS, _FLOATS, _FLOATS, _I64, _I64, _I64, _INT, _INT, _INT, _INT, _I64, _I64, _FLOATS,
                          _INT),
    "upsample_nearest_forward": (_FLOATS, _I64, _I64, _I64, _INT, _FLOATS, _INT),
    "upsample_nearest_backward": (_FLOATS, _I64, _I64, _I64, _INT, _FLOATS, _INT),
}


def _cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    folder = os.path.join(base, "maskrcnn_mindspore")
    try:
        os.makedirs(folder, exist_ok=True)
        if os.access(folder, os.W_OK):
            return folder
    except OSError:
        pass
    return tempfile.gettempdir()


def _compiler() -> Optional[str]:
    for name in (os.environ.get("CC"), "gcc", "cc"):
        path = shutil.which(name) if name else None
        if path:
            return path
    return None


def _build(compiler: str, source: str, flags, libs, target: str) -> Optional[str]:
    """Compile ``source`` into ``target`` (atomically: a temporary file renamed). None or the error."""
    handle, partial = tempfile.mkstemp(suffix=".so", dir=os.path.dirname(target))
    os.close(handle)
    try:
        result = subprocess.run([compiler, *flags, "-o", partial, source, *libs], capture_output=True, text=True,
                                check=False)
        if result.returncode != 0:
            return result.stderr.strip() or f"exit status {result.returncode}"
        os.replace(partial, target)
        return None
    finally:
        if os.path.exists(partial):
            os.remove(partial)


def _built(stem: str, source: str, flag_sets, libs=()) -> Tuple[Optional[ctypes.CDLL], Optional[str], list]:
    """(loaded library, its path, errors): ``source`` built with the first of ``flag_sets`` that
    compiles and loads, kept in the cache folder under a name keyed by the source and the flags."""
    compiler = _compiler()
    if compiler is None:
        return None, None, ["no C compiler ($CC, gcc, cc) found"]
    with open(source, "rb") as handle:
        text = handle.read()
    errors = []
    for flags in flag_sets:
        key = hashlib.sha256(text + repr((flags, libs, platform.machine(), compiler)).encode("utf-8")).hexdigest()[:16]
        target = os.path.join(_cache_dir(), f"{stem}-{key}.so")
        error = None if os.path.exists(target) else _build(compiler, source, flags, libs, target)
        if error is None:
            try:
                return ctypes.CDLL(target), target, errors
            except OSError as exc:
                errors.append(f"{target}: {exc}")
                continue
        errors.append(f"{compiler} {' '.join(flags)}: {error}")
    return None, None, errors


@functools.lru_cache(maxsize=None)
def library() -> Optional[ctypes.CDLL]:
    """The loaded kernel library, built if needed; None (after one warning) when it cannot be."""
    lib, _, errors = _built("cpu_kernels", SOURCE, FLAG_SETS, ("-lm",))
    if lib is None:
        LOGGER.warning("could not build %s, the CPU backend uses MindSpore's slower kernels:\n%s",
                       SOURCE, "\n".join(errors))
        return None
    for name, argtypes in _SIGNATURES.items():
        getattr(lib, name).argtypes = argtypes
        getattr(lib, name).restype = ctypes.c_int64
    return lib


def onednn_prefix() -> Optional[str]:
    """The install prefix of oneDNN 3's library and headers (the ``onednn-cpu-gomp`` and
    ``onednn-devel-cpu-gomp`` wheels of requirements.txt put them under this Python's prefix), or None."""
    prefix = sys.prefix
    found = (os.path.exists(os.path.join(prefix, "include", "oneapi", "dnnl", "dnnl.h"))
             and os.path.exists(os.path.join(prefix, "lib", f"libdnnl.so.{ONEDNN_MAJOR}")))
    return prefix if found else None


@functools.lru_cache(maxsize=None)
def conv3x3_library() -> Optional[str]:
    """Path of the built ``conv3x3_onednn.c`` library (the entry points of ``cpu_ops.Conv3x3``);
    None, after one warning, without oneDNN 3 or a C compiler."""
    prefix = onednn_prefix()
    if prefix is None:
        LOGGER.warning("oneDNN %d (pip package onednn-cpu-gomp + onednn-devel-cpu-gomp) not found under %s: "
                       "3x3 convolutions use MindSpore's slower CPU kernel", ONEDNN_MAJOR, sys.prefix)
        return None
    include, lib_dir = os.path.join(prefix, "include"), os.path.join(prefix, "lib")
    flags = ("-O2", "-fPIC", "-shared", f"-I{include}", f"-L{lib_dir}", f"-Wl,-rpath,{lib_dir}")
    lib, path, errors = _built("conv3x3_onednn", CONV3X3_SOURCE, (flags,), (f"-l:libdnnl.so.{ONEDNN_MAJOR}",
                                                                           "-lpthread"))
    if lib is None:
        LOGGER.warning("could not build %s, 3x3 convolutions use MindSpore's slower CPU kernel:\n%s",
                       CONV3X3_SOURCE, "\n".join(errors))
        return None
    return path


def available() -> bool:
    """Whether the kernel library can be used (built or loaded) in this process."""
    return library() is not None


def _threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _floats(array) -> np.ndarray:
    return np.ascontiguousarray(array, dtype=np.float32)


def _pointer(array: np.ndarray):
    return array.ctypes.data_as(_FLOATS)


def _call(name: str, *args) -> int:
    lib = library()
    if lib is None:
        raise RuntimeError(f"{name}: the C kernel library is not available (see the warning above)")
    return getattr(lib, name)(*args, _threads())


def pooled_size(size: int, window: int, stride: int, pad_before: int, pad_after: int) -> int:
    """Outputs of a max-pool along one axis (windows that start inside the padded extent)."""
    return (size + pad_before + pad_after - window) // stride + 1


def max_pool_forward(x: np.ndarray, window: int, stride: int, pads) -> np.ndarray:
    """Max-pool of ``[B, C, H, W]`` with a square window; ``pads`` = (top, bottom, left, right).

    Padding never wins: a window's maximum is over its cells inside the map.
    """
    batch, channels, height, width = x.shape
    top, bottom, left, right = pads
    out_h, out_w = pooled_size(height, window, stride, top, bottom), pooled_size(width, window, stride, left, right)
    values = _floats(x)
    pooled = np.empty((batch, channels, out_h, out_w), dtype=np.float32)
    if _call("max_pool_forward", _pointer(values), batch * channels, height, width, window, stride, top, left,
             out_h, out_w, _pointer(pooled)) != 0:
        raise MemoryError(f"max_pool_forward: out of memory for a row of {width} floats")
    return pooled.astype(x.dtype, copy=False)


def max_pool_backward(x: np.ndarray, y: np.ndarray, grad_y: np.ndarray, window: int, stride: int,
                      pads) -> np.ndarray:
    """Gradient of :func:`max_pool_forward` (``y`` its output): each output's gradient goes to its
    window's maximum (the first in row-major order on a tie)."""
    batch, channels, height, width = x.shape
    values, pooled, grad = _floats(x), _floats(y), _floats(grad_y)
    result = np.empty(x.shape, dtype=np.float32)
    _call("max_pool_backward", _pointer(values), _pointer(pooled), _pointer(grad), batch * channels, height, width,
          window, stride, pads[0], pads[2], grad.shape[2], grad.shape[3], _pointer(result))
    return result.astype(x.dtype, copy=False)


def upsample_nearest_forward(x: np.ndarray, factor: int) -> np.ndarray:
    """``[B, C, H, W]`` -> ``[B, C, H * factor, W * factor]``, each cell repeated factor x factor times."""
    batch, channels, height, width = x.shape
    values = _floats(x)
    result = np.empty((batch, channels, height * factor, width * factor), dtype=np.float32)
    _call("upsample_nearest_forward", _pointer(values), batch * channels, height, width, factor, _pointer(result))
    return result.astype(x.dtype, copy=False)


def upsample_nearest_backward(x: np.ndarray, grad_y: np.ndarray, factor: int) -> np.ndarray:
    """Gradient of :func:`upsample_nearest_forward`: each cell sums its factor x factor block."""
    batch, channels, height, width = x.shape
    grad = _floats(grad_y)
    result = np.empty(x.shape, dtype=np.float32)
    _call("upsample_nearest_backward", _pointer(grad), batch * channels, height, width, factor, _pointer(result))
    return result.astype(x.dtype, copy=False)
