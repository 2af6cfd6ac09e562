"""The supported MindSpore range, the pinned release CI installs, and the run-time oneDNN setting.

- ``requirements.txt`` allows a range and ``constraints.txt`` pins a release inside it; this venv
  (made by ``scripts/setup_env.sh``, which applies the constraints) runs that release.
- Importing ``src`` sets ``ONEDNN_MAX_CPU_ISA=AVX2`` before MindSpore loads, with a one-line
  warning, exactly when the installed release is one whose CPU convolutions fall onto oneDNN's
  reference kernel (2.9, 2.10) on an x86-64 CPU, and keeps any value the user set. The decision is
  tested as a function and, end to end, in a fresh interpreter that sees a fake ``mindspore``
  distribution (its metadata only) ahead of the real one.
"""

import os
import re
import subprocess
import sys
from importlib import metadata

import pytest
from packaging.requirements import Requirement

import src
from conftest import REPO_ROOT


def _requirement(path, name):
    """The ``name`` line of a pip requirements/constraints file as a packaging Requirement."""
    with open(os.path.join(REPO_ROOT, path), encoding="utf-8") as handle:
        for line in handle:
            line = line.split("#", 1)[0].strip()
            if line and Requirement(line).name == name:
                return Requirement(line)
    raise AssertionError(f"{path} has no {name} line")


def test_requirements_allow_a_range_and_constraints_pin_the_installed_release():
    allowed = _requirement("requirements.txt", "mindspore").specifier
    pinned = _requirement("constraints.txt", "mindspore").specifier
    (pin,) = list(pinned)
    assert pin.operator == "==" and pin.version in allowed
    # the range is a range: the newest measured release and the oldest with cp311 wheels are in it
    assert "2.10.0" in allowed and "2.7.0" in allowed and "2.11.0" not in allowed
    # scripts/setup_env.sh installed this venv with the constraints applied
    assert metadata.version("mindspore") == pin.version


@pytest.mark.parametrize("version", ["2.9.0", "2.10.0", "2.10.0rc1", "2.10.1"])
def test_known_slow_releases_get_the_avx2_cap_and_a_warning_naming_it(version):
    environ = {}
    warning = src.cap_onednn_isa(environ, version, "x86_64")
    assert environ == {"ONEDNN_MAX_CPU_ISA": "AVX2"}
    assert f"MindSpore {version} " in warning and "ONEDNN_MAX_CPU_ISA=AVX2" in warning
    assert "\n" not in warning


@pytest.mark.parametrize("version", ["2.7.2", "2.7.0", "2.8.0", "2.11.0", "3.9.0", None])
def test_other_releases_and_no_mindspore_change_nothing(version):
    environ = {"PATH": "/bin"}
    assert src.cap_onednn_isa(environ, version, "x86_64") is None
    assert environ == {"PATH": "/bin"}


def test_a_value_the_user_set_is_kept_and_arm_cpus_are_left_alone():
    for name in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        environ = {name: "ALL"}
        assert src.cap_onednn_isa(environ, "2.10.0", "x86_64") is None
        assert environ == {name: "ALL"}
    environ = {}
    assert src.cap_onednn_isa(environ, "2.10.0", "aarch64") is None
    assert environ == {}
    assert src.cap_onednn_isa(environ, "2.10.0", "AMD64") is not None  # Windows' name for x86-64


def test_release_of_reads_major_minor():
    assert src.release_of("2.10.0") == "2.10"
    assert src.release_of("2.9.0rc1") == "2.9"
    assert src.release_of("2.7.1.post1") == "2.7"
    assert src.release_of("3") == "3.0"


def _import_src_with_mindspore_version(tmp_path, version, extra_env=None):
    """``import src`` in a fresh interpreter whose metadata lookup finds ``mindspore==version``
    first; returns (ONEDNN_MAX_CPU_ISA after the import, stderr)."""
    dist = tmp_path / f"mindspore-{version}.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: mindspore\nVersion: {version}\n", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")}
    env.update(PYTHONPATH=f"{tmp_path}{os.pathsep}{REPO_ROOT}", **(extra_env or {}))
    code = ("import os, sys, src; assert 'mindspore' not in sys.modules; "
            "print(os.environ.get('ONEDNN_MAX_CPU_ISA', '-'))")
    result = subprocess.run([sys.executable, "-c", code], cwd=str(tmp_path), env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip(), result.stderr


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the cap applies to x86-64 CPUs only")
def test_importing_src_applies_the_cap_before_mindspore_loads(tmp_path):
    value, stderr = _import_src_with_mindspore_version(tmp_path, "2.10.0")
    assert value == "AVX2"
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and re.search(r"MindSpore 2\.10\.0 .*ONEDNN_MAX_CPU_ISA=AVX2", lines[0]), stderr


def test_importing_src_keeps_the_users_value_and_is_silent_on_the_pinned_release(tmp_path):
    kept = tmp_path / "kept"
    kept.mkdir()
    assert _import_src_with_mindspore_version(kept, "2.10.0", {"ONEDNN_MAX_CPU_ISA": "ALL"}) == ("ALL", "")
    pinned = tmp_path / "pinned"
    pinned.mkdir()
    assert _import_src_with_mindspore_version(pinned, "2.7.2") == ("-", "")
