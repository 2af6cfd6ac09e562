"""Helpers shared by the benchmarks: timing, peak memory, one JSON line per result."""

import json
import os
import resource
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
