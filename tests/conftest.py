"""Shared test set-up: repository on sys.path, quiet MindSpore logs, test data paths."""

import os
import sys

import pytest

os.environ.setdefault("GLOG_v", "3")
# Two workers share two cores: one CPU kernel thread each (and in every train.py / eval.py
# process a test starts, which inherit the variable) does the same work in less CPU time than
# MindSpore's 25 threads each competing for the cores (src/engine/runtime.py limit_cpu_threads).
os.environ.setdefault("OMP_NUM_THREADS", "1")
# pytest-xdist starts its workers with `python -c`, so sys.argv[0] is "-c"; MindSpore's compile
# cache reads the entry script that sys.argv[0] names (mindspore/common/api.py, when mindspore is
# imported) and fails on a path that is not a file. Name this file instead.
if not os.path.isfile(sys.argv[0]):
    sys.argv[0] = os.path.abspath(__file__)
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from src.engine.runtime import limit_cpu_threads  # noqa: E402  (needs the repository on sys.path)

limit_cpu_threads()  # for the networks tests build in this process, before any kernel runs

# Facts the tests need (model-zoo parameter names and shapes) live in the repository itself.
ZOO_LISTS_DIR = os.path.join(REPO_ROOT, "tests", "data")


@pytest.fixture(params=["graph", "pynative"])
def mode(request):
    """Runs a test once in graph mode and once in PyNative mode (restored afterwards)."""
    import mindspore as ms

    wanted = ms.GRAPH_MODE if request.param == "graph" else ms.PYNATIVE_MODE
    previous = ms.get_context("mode")
    ms.set_context(mode=wanted, device_target="CPU")
    yield wanted
    ms.set_context(mode=previous)


@pytest.fixture
def graph_mode():
    """Runs a test in graph mode (restored afterwards)."""
    import mindspore as ms

    previous = ms.get_context("mode")
    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    yield
    ms.set_context(mode=previous)


@pytest.fixture(scope="session")
def zoo_lists_dir():
    """tests/data: the name/shape lists of model-zoo checkpoints (facts, kept in the repository)."""
    return ZOO_LISTS_DIR


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow(seconds): the file compiles and runs whole-model graphs for about this many seconds "
                   "(idle machine); its tests are scheduled first")


def pytest_collection_modifyitems(session, config, items):
    """Slowest files first (``pytest.mark.slow(seconds)``; unmarked files after, in collection order).

    scripts/test.sh hands whole files to two workers in this order (``--dist loadfile
    --no-loadscope-reorder``): the long training runs start at once, one per worker, and the many
    short files fill the gaps, so both workers finish together instead of one running a long file
    alone at the end.
    """
    file_seconds = {}
    for item in items:
        marker = item.get_closest_marker("slow")
        seconds = float(marker.args[0]) if marker else 0.0
        file_seconds[item.fspath] = max(file_seconds.get(item.fspath, 0.0), seconds)
    items.sort(key=lambda item: -file_seconds[item.fspath])
