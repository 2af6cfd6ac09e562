"""Mask R-CNN (ResNet50 + FPN) fine-tuning pipeline for MindSpore.

Importing ``src`` sets two process-wide settings that must be in place before MindSpore loads
(every entry point imports ``src`` first; a value the user set is always kept):

- ``OMP_WAIT_POLICY=PASSIVE``: OpenMP threads sleep after a parallel region instead of spinning.
  The oneDNN 3 convolutions (src/maskrcnn/ops/conv3x3_onednn.c) run on libgomp's threads, and
  spinning ones take the cores from the MindSpore kernels that run next (BENCHMARKS.md, "Which
  convolution MindSpore runs"). libgomp reads it once, when it is loaded.
- ``ONEDNN_MAX_CPU_ISA=AVX2`` when the installed MindSpore is a release whose PyPI wheels run the
  CPU backend's 3x3/7x7/strided convolutions on oneDNN's reference kernel on AVX-512 machines
  (:data:`SLOW_CPU_CONV_RELEASES`, about 100x slower; BENCHMARKS.md, "MindSpore versions"), with
  a one-line warning. The version is read from the package metadata, without importing MindSpore.
"""

import logging
import os
import platform
from importlib import metadata
from typing import MutableMapping, Optional

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# MindSpore releases (major.minor) measured to hit oneDNN's reference convolution kernel on this
# project's AVX-512 machine; releases not listed (2.7, 2.8) run the fast kernels with no setting.
SLOW_CPU_CONV_RELEASES = ("2.9", "2.10")
# The oneDNN setting that avoids it: the library's CPU dispatch capped at AVX2. oneDNN also reads
# the older name DNNL_MAX_CPU_ISA; a user who set either keeps it (ALL lifts the cap).
ONEDNN_ISA_VARIABLE = "ONEDNN_MAX_CPU_ISA"
ONEDNN_ISA_VARIABLES = (ONEDNN_ISA_VARIABLE, "DNNL_MAX_CPU_ISA")
ONEDNN_ISA_CAP = "AVX2"
# platform.machine() of the CPUs the cap applies to (oneDNN's x64 dispatch).
X86_64_MACHINES = ("x86_64", "amd64")


def installed_mindspore_version() -> Optional[str]:
    """The installed ``mindspore`` distribution's version, or None (read without importing it)."""
    try:
        return metadata.version("mindspore")
    except metadata.PackageNotFoundError:
        return None


def release_of(version: str) -> str:
    """``"2.10.0"`` / ``"2.9.0rc1"`` -> ``"2.10"`` / ``"2.9"`` (major.minor, pre-release tags dropped)."""
    parts = version.split(".")
    minor = "".join(ch for ch in (parts[1] if len(parts) > 1 else "") if ch.isdigit()) or "0"
    return f"{parts[0]}.{minor}"


def cap_onednn_isa(environ: MutableMapping[str, str], version: Optional[str], machine: str) -> Optional[str]:
    """Set ``ONEDNN_MAX_CPU_ISA=AVX2`` in ``environ`` when MindSpore ``version`` on ``machine`` needs it.

    Args:
        environ: the environment to change (``os.environ`` at import).
        version: the installed MindSpore version, or None when it is not installed.
        machine: ``platform.machine()``.

    Returns:
        The one-line warning to show when the setting was applied, else None (a version not in
        :data:`SLOW_CPU_CONV_RELEASES`, a non-x86-64 CPU, or a value the user already set).
    """
    if version is None or release_of(version) not in SLOW_CPU_CONV_RELEASES:
        return None
    if machine.lower() not in X86_64_MACHINES or any(name in environ for name in ONEDNN_ISA_VARIABLES):
        return None
    environ[ONEDNN_ISA_VARIABLE] = ONEDNN_ISA_CAP
    return (f"MindSpore {version} runs the CPU backend's 3x3/7x7/strided convolutions on oneDNN's slow reference "
            f"kernel on AVX-512 CPUs, so {ONEDNN_ISA_VARIABLE}={ONEDNN_ISA_CAP} is set for this process "
            f"(set {ONEDNN_ISA_VARIABLE} yourself to choose; MindSpore 2.7.2 needs no setting)")


_warning = cap_onednn_isa(os.environ, installed_mindspore_version(), platform.machine())
if _warning:
    logging.getLogger(__name__).warning(_warning)
