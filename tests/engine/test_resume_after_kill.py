"""A training run killed with SIGKILL after its first checkpoint, then resumed with --resume.

train.py runs in a subprocess (as a user runs it) on a tiny set: 64x64 input, batch 1, three
steps per epoch, a checkpoint every epoch. The run is killed once its first checkpoint exists and
it has logged a step beyond it (the rows the resumed run must not duplicate). The resumed run
must finish, ``losses.csv`` (the input of the loss plot) must hold every step exactly once in
order, and every checkpoint left in the run directory must load. Two graph compiles in all.
"""

import csv
import os
import signal
import subprocess
import sys
import time

import pytest

from src.checkpoint.io import CKPT_SUFFIX, read_checkpoint
from src.checkpoint.load import load_pretrained
from src.checkpoint.names import GLOBAL_STEP_NAME
from src.config import REPO_ROOT, load_config, parse_overrides
from src.synthetic import generate

TRAIN_IMAGES = 3  # all with objects (the synthetic set leaves every 25th image empty)
EPOCHS = 3
STEPS_PER_EPOCH = TRAIN_IMAGES  # batch 1
TOTAL_STEPS = EPOCHS * STEPS_PER_EPOCH
# Generous: two graph compiles on a loaded 2-core machine.
RUN_TIMEOUT_S = 600
POLL_S = 0.05


def _args(data_dir, run_dir):
    return ["--coco_root", str(data_dir), "--run_dir", str(run_dir), "--img_height", "64", "--img_width", "64",
            "--batch_size", "1", "--epoch_size", str(EPOCHS), "--save_checkpoint_epochs", "1",
            "--keep_checkpoint_max", "10", "--num_parallel_workers", "1", "--flip_ratio", "0.0",
            "--fpn_channels", "32", "--box_head_channels", "64", "--mask_head_channels", "32",
            "--rpn_pre_nms_top_k_train", "100", "--rpn_post_nms_top_k_train", "50", "--rcnn_num_samples", "32",
            "--rpn_num_samples", "64", "--max_instance_count", "8", "--warmup_steps", "2",
            "--base_lr", "0.005"]


def _train_command(data_dir, run_dir, *extra):
    return [sys.executable, os.path.join(REPO_ROOT, "train.py"), *_args(data_dir, run_dir), *extra]


def _env():
    return dict(os.environ, GLOG_v="3", PYTHONPATH=REPO_ROOT)


def _logged_steps(csv_path):
    """Steps of the complete rows of losses.csv (a row cut by the kill is not counted)."""
    if not os.path.exists(csv_path):
        return []
    with open(csv_path, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        return []
    width, index = len(rows[0]), rows[0].index("step")
    return [int(r[index]) for r in rows[1:] if len(r) == width and r[index].isdigit()]


def _global_step(ckpt_path):
    return int(read_checkpoint(ckpt_path)[GLOBAL_STEP_NAME].asnumpy().reshape(-1)[0])


def _kill_after_first_checkpoint(command, run_dir, log_path):
    """Start ``command``; SIGKILL it once last.ckpt exists and a later step is logged.

    Returns:
        (steps logged at the kill, global step of last.ckpt at the kill).
    """
    last = os.path.join(run_dir, "last.ckpt")
    csv_path = os.path.join(run_dir, "losses.csv")
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=_env(), stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + RUN_TIMEOUT_S
    try:
        while time.time() < deadline and process.poll() is None:
            if os.path.exists(last) and max(_logged_steps(csv_path), default=0) > STEPS_PER_EPOCH:
                break
            time.sleep(POLL_S)
        assert process.poll() is None, f"the run ended before it could be killed:\n{open(log_path).read()}"
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == -signal.SIGKILL
    return _logged_steps(csv_path), _global_step(last)


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory):
    root = tmp_path_factory.mktemp("kill")
    data_dir, run_dir = root / "data", root / "run"
    generate(str(data_dir), TRAIN_IMAGES, 1, seed=5, style="solid")
    steps_at_kill, resumed_step = _kill_after_first_checkpoint(_train_command(data_dir, run_dir), str(run_dir),
                                                               str(root / "killed.log"))
    resumed = subprocess.run(_train_command(data_dir, run_dir, "--resume", str(run_dir / "last.ckpt")),
                             cwd=REPO_ROOT, env=_env(), capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    return run_dir, steps_at_kill, resumed_step, resumed


def test_the_kill_left_rows_after_the_checkpoint(killed_and_resumed):
    """The set-up is the case that matters: the killed run had logged steps that its last checkpoint does not hold."""
    _, steps_at_kill, resumed_step, _ = killed_and_resumed
    assert resumed_step % STEPS_PER_EPOCH == 0 and resumed_step < TOTAL_STEPS
    assert steps_at_kill[:resumed_step] == list(range(1, resumed_step + 1))
    assert max(steps_at_kill) > resumed_step, steps_at_kill


def test_resumed_run_finishes_with_every_step_logged_once(killed_and_resumed):
    run_dir, _, resumed_step, resumed = killed_and_resumed
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {run_dir / 'last.ckpt'} at global step {resumed_step}" in resumed.stderr
    assert _logged_steps(run_dir / "losses.csv") == list(range(1, TOTAL_STEPS + 1))
    assert _global_step(str(run_dir / "last.ckpt")) == TOTAL_STEPS


def test_every_checkpoint_in_the_run_directory_loads(killed_and_resumed):
    from src.maskrcnn.builder import build_model

    run_dir, _, _, resumed = killed_and_resumed
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    ckpts = sorted(n for n in os.listdir(run_dir) if n.endswith(CKPT_SUFFIX))
    # every epoch's checkpoint (the killed run's and the resumed run's) and last.ckpt, no partial files
    assert ckpts == sorted(["last.ckpt"] + [f"maskrcnn-{e}_{e * STEPS_PER_EPOCH}.ckpt" for e in range(1, EPOCHS + 1)])
    config = load_config(None, parse_overrides(_args("unused", run_dir)))
    net = build_model(config)
    for name in ckpts:
        report = load_pretrained(net, str(run_dir / name))
        assert not report.skipped and not report.left_at_init, name
