"""Shared test set-up: repository on sys.path, quiet MindSpore logs, shared data paths."""

import os
import sys

import pytest

os.environ.setdefault("GLOG_v", "3")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

SHARED_DIR = os.path.join(os.path.dirname(REPO_ROOT), "shared")


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
def shared_dir():
    """The team's shared folder beside the repository (name/shape lists of zoo checkpoints)."""
    if not os.path.isdir(SHARED_DIR):
        pytest.fail(f"../shared not found beside the repository (looked in {SHARED_DIR})")
    return SHARED_DIR
