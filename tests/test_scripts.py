"""Shell entry points: usage checks and exit codes (the cases that fail before any training)."""

import os
import subprocess

import pytest

from conftest import REPO_ROOT


def _run(*args):
    return subprocess.run(["bash", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)


# The options of a node of a 2-worker job that these cases share (the others vary).
NODE_OF_2 = ["--worker_num", "2", "--master_addr", "127.0.0.1", "--master_port", "8118"]


@pytest.mark.parametrize("script,args,message", [
    ("scripts/run_standalone_train.sh", ["missing.yaml"], "error: config file not found: missing.yaml"),
    ("scripts/run_standalone_train.sh", ["FineTune/default.yaml", "nope.ckpt"], "error: checkpoint not found: nope.ckpt"),
    ("scripts/run_distribute_train.sh", [], "Usage: bash scripts/run_distribute_train.sh DEVICE_NUM"),
    ("scripts/run_distribute_train.sh", ["two"], "Usage: bash scripts/run_distribute_train.sh DEVICE_NUM"),
    ("scripts/run_distribute_train.sh", ["2", "FineTune/default.yaml", "nope.ckpt"],
     "error: checkpoint not found: nope.ckpt"),
    ("scripts/run_distribute_train.sh", ["--worker_num", "2", "--local_worker_num", "1"], "missing --master_addr"),
    ("scripts/run_distribute_train.sh", [*NODE_OF_2, "--local_worker_num", "3", "--node_rank", "0"],
     "error: --local_worker_num 3 is more than --worker_num 2"),
    ("scripts/run_distribute_train.sh", [*NODE_OF_2, "--local_worker_num", "1", "--node_rank", "2"],
     "error: --node_rank 2 with --local_worker_num 1 gives ranks from 2, beyond --worker_num 2"),
    ("scripts/run_distribute_train.sh", ["--worker_num=two", "--local_worker_num=1", "--master_addr=h",
                                         "--master_port=8118", "--node_rank=0"],
     "error: --worker_num must be a positive integer, got 'two'"),
    ("scripts/run_distribute_train.sh", ["--worker_num", "2", "--local_worker_num", "1", "--master_addr", "h",
                                         "--master_port", "70000", "--node_rank", "0"],
     "error: --master_port must be a TCP port (1-65535), got '70000'"),
])
def test_bad_arguments_exit_2_with_a_message(script, args, message):
    result = _run(script, *args)
    assert result.returncode == 2
    assert message in result.stderr


@pytest.mark.parametrize("args", [["--help"], ["-h"]])
def test_distribute_script_prints_both_forms_on_help(args):
    result = _run("scripts/run_distribute_train.sh", *args)
    assert result.returncode == 0 and result.stderr == ""
    assert "Usage: bash scripts/run_distribute_train.sh DEVICE_NUM" in result.stdout
    assert "--worker_num N --local_worker_num L --master_addr ADDR" in result.stdout
    assert "--master_port PORT --node_rank R" in result.stdout


def test_distribute_script_writes_nothing_before_its_arguments_are_checked(tmp_path):
    run_dir = tmp_path / "run"
    result = _run("scripts/run_distribute_train.sh", *NODE_OF_2, "--local_worker_num", "1", "--node_rank", "5",
                  "FineTune/default.yaml", "--run_dir", str(run_dir))
    assert result.returncode == 2 and "--node_rank 5" in result.stderr
    assert not run_dir.exists()


def test_scripts_are_strict_bash():
    for name in os.listdir(os.path.join(REPO_ROOT, "scripts")):
        if name.endswith(".sh"):
            text = open(os.path.join(REPO_ROOT, "scripts", name)).read()
            assert "set -euo pipefail" in text or name == "train_args.sh", name
