"""Shell entry points: usage checks and exit codes (the cases that fail before any training)."""

import os
import subprocess

import pytest

from conftest import REPO_ROOT


def _run(*args):
    return subprocess.run(["bash", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("script,args,message", [
    ("scripts/run_standalone_train.sh", ["missing.yaml"], "error: config file not found: missing.yaml"),
    ("scripts/run_standalone_train.sh", ["FineTune/default.yaml", "nope.ckpt"], "error: checkpoint not found: nope.ckpt"),
    ("scripts/run_distribute_train.sh", [], "Usage: bash scripts/run_distribute_train.sh DEVICE_NUM"),
    ("scripts/run_distribute_train.sh", ["two"], "Usage: bash scripts/run_distribute_train.sh DEVICE_NUM"),
    ("scripts/run_distribute_train.sh", ["2", "FineTune/default.yaml", "nope.ckpt"],
     "error: checkpoint not found: nope.ckpt"),
])
def test_bad_arguments_exit_2_with_a_message(script, args, message):
    result = _run(script, *args)
    assert result.returncode == 2
    assert message in result.stderr


def test_scripts_are_strict_bash():
    for name in os.listdir(os.path.join(REPO_ROOT, "scripts")):
        if name.endswith(".sh"):
            text = open(os.path.join(REPO_ROOT, "scripts", name)).read()
            assert "set -euo pipefail" in text or name == "train_args.sh", name
