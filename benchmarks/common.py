"""Helpers shared by the benchmarks: timing, peak memory, one JSON line per result."""

import json
import os
import resource
import subprocess
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)


def peak_rss_mb(include_children: bool = True) -> float:
    """Peak resident set size of this process (and its finished children) in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if include_children:
        peak += resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return peak / 1024.0


def emit(record: dict) -> None:
    """Print one benchmark result as a JSON line (the format BENCHMARKS.md quotes)."""
    record = dict(record)
    record.setdefault("unix_time", int(time.time()))
    print(json.dumps(record, sort_keys=True), flush=True)


def run_in_child(script: str, args, error_record: dict, python: str = "", env=None, extra=None) -> None:
    """Run ``python script *args`` from the repository root (a clean process: its own peak RSS and
    compile) and print its last JSON line, with the fields of ``extra`` added; if it fails or prints
    none, emit ``error_record`` (plus ``extra``) with the last line of its stderr as ``error``.

    Args:
        python: the interpreter (default: this one, ``sys.executable``).
        env: the child's environment (default: this process's).
    """
    result = subprocess.run([python or sys.executable, os.path.abspath(script), *args], cwd=REPO_ROOT,
                            capture_output=True, text=True, env=env)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode or not lines:
        emit(dict(error_record, **(extra or {}), error=result.stderr.strip().splitlines()[-1:]))
    else:
        emit(dict(json.loads(lines[-1]), **(extra or {})))
