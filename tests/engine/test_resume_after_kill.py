"""Training runs stopped from outside, as users stop them: SIGKILL in the middle of a checkpoint
write, SIGTERM and SIGINT (Ctrl-C) during a step, and a second Ctrl-C; then --resume.

train.py runs in a subprocess (as a user runs it) on a tiny set: 64x64 input, batch 1, three
steps per epoch, a checkpoint every epoch. One run goes through three processes: the first is
killed (SIGKILL) while the second epoch's checkpoint is being written, having logged steps
beyond that checkpoint (rows the resumed run must not duplicate); the second resumes it, must
remove what the killed write left, and gets a SIGTERM during a step of the third epoch: it must
save ``last.ckpt`` of that step (as a rule mid-epoch), exit 130 and log one line with the ``--resume``
command; the third runs that command and must finish with every step exactly once in
``losses.csv`` (the input of the loss plot) and only checkpoints that load. A second SIGINT ends
the process at once. (A single SIGINT, which must behave as the SIGTERM, stops the trainer tests'
shared run: tests/engine/test_trainer.py.) One graph compile in all (the compile cache serves the
other processes). The processes are started and read with tests/train_process.py.

The stopped and resumed run logs the losses of the same run uninterrupted, digit for digit: the
data stream, the weights, the optimizer state, the learning rate and the random anchor and RoI
sampling continue exactly. The sampling is the quick start's (FineTune/default.yaml): 256 of the
1023 anchors per image, 128 RoIs of some 220-240 candidates (proposals surviving NMS + boxes). Its
keys are a hash of (seed, global step, position) (src/maskrcnn/sampling.py), so the resumed
process draws the samples of the uninterrupted one.
"""

import csv
import os
import signal
import subprocess
import sys

import pytest

from src.checkpoint.io import CKPT_SUFFIX, PARTIAL_FILE, read_checkpoint
from src.checkpoint.load import load_pretrained
from src.config import REPO_ROOT, load_config, parse_overrides
from src.engine.runtime import EXIT_OK
from src.synthetic import generate
from train_process import (RUN_TIMEOUT_S, check_interrupted, global_step, last_logged, logged_steps,
                           partial_files, resume_command_of, run_and_signal, stop_record, train_env)

pytestmark = pytest.mark.slow(70)

TRAIN_IMAGES = 3  # all with objects (the synthetic set leaves every 25th image empty)
EPOCHS = 4  # the SIGTERM comes in epoch 3, well before the end
STEPS_PER_EPOCH = TRAIN_IMAGES  # batch 1
TOTAL_STEPS = EPOCHS * STEPS_PER_EPOCH


def _args(data_dir, run_dir):
    return ["--coco_root", str(data_dir), "--run_dir", str(run_dir), "--img_height", "64", "--img_width", "64",
            "--batch_size", "1", "--epoch_size", str(EPOCHS), "--save_checkpoint_epochs", "1",
            "--keep_checkpoint_max", "10", "--num_parallel_workers", "1", "--flip_ratio", "0.0",
            "--fpn_channels", "32", "--box_head_channels", "64", "--mask_head_channels", "32",
            "--max_instance_count", "8", "--warmup_steps", "2", "--base_lr", "0.005",
            # beside the data: every process of this module shares it, and no earlier test run's
            # graph in the repository's cache spares the first compile
            "--compile_cache_dir", f"{data_dir}_compile_cache"]


def _train_command(data_dir, run_dir, *extra):
    return [sys.executable, os.path.join(REPO_ROOT, "train.py"), *_args(data_dir, run_dir), *extra]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    generate(str(folder), TRAIN_IMAGES, 1, seed=5, style="solid")
    return folder


@pytest.fixture(scope="module")
def stopped_three_times(tmp_path_factory, data_dir):
    """The run of the module docstring: SIGKILL during a checkpoint write, resume + SIGTERM, resume."""
    root = tmp_path_factory.mktemp("kill")
    run_dir = str(root / "run")
    last = os.path.join(run_dir, "last.ckpt")

    def writing_the_second_checkpoint():
        # (the second run's SIGTERM below waits for rows beyond those the killed run logged)
        return (os.path.exists(last) and STEPS_PER_EPOCH < last_logged(run_dir) <= 2 * STEPS_PER_EPOCH
                and bool(partial_files(run_dir)))

    killed = stop_record(run_dir, *run_and_signal(_train_command(data_dir, run_dir), root / "killed.log",
                                                    writing_the_second_checkpoint, [signal.SIGKILL]))
    resume = _train_command(data_dir, run_dir, "--resume", last)
    terminated = stop_record(run_dir, *run_and_signal(
        resume, root / "terminated.log", lambda: last_logged(run_dir) > 2 * STEPS_PER_EPOCH, [signal.SIGTERM]))
    finished = subprocess.run(resume_command_of(terminated["output"]), cwd=REPO_ROOT, env=train_env(),
                              capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    return run_dir, killed, terminated, finished


def test_the_kill_left_rows_after_the_checkpoint_and_a_partial_write(stopped_three_times):
    """The set-up is the case that matters: the killed run logged steps its last checkpoint does not
    hold, and its checkpoint write was cut."""
    _, killed, _, _ = stopped_three_times
    assert killed["returncode"] == -signal.SIGKILL
    resumed_step = killed["checkpoint_step"]
    assert resumed_step % STEPS_PER_EPOCH == 0 and resumed_step < TOTAL_STEPS
    assert killed["steps"][:resumed_step] == list(range(1, resumed_step + 1))
    assert max(killed["steps"]) > resumed_step, killed["steps"]
    assert killed["leftovers"], "the kill did not come during a checkpoint write"


def test_the_next_start_removes_the_leftovers_and_names_them(stopped_three_times):
    run_dir, killed, terminated, _ = stopped_three_times
    assert (f"{run_dir}: removed {len(killed['leftovers'])} files left by interrupted checkpoint writes: "
            in terminated["output"])
    assert f"resumed from {run_dir}/last.ckpt at global step {killed['checkpoint_step']}" in terminated["output"]


@pytest.fixture(scope="module")
def uninterrupted_losses(tmp_path_factory, data_dir):
    run_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
    result = subprocess.run(_train_command(data_dir, run_dir), cwd=REPO_ROOT, env=train_env(), capture_output=True,
                            text=True, timeout=RUN_TIMEOUT_S)
    assert result.returncode == EXIT_OK, result.stderr[-3000:]
    return _loss_rows(run_dir)


def _loss_rows(run_dir):
    """losses.csv without the step times (the one column that differs between equal runs)."""
    with open(os.path.join(run_dir, "losses.csv"), newline="", encoding="utf-8") as handle:
        return [{k: v for k, v in row.items() if k != "step_seconds"} for row in csv.DictReader(handle)]


def test_the_stopped_and_resumed_run_logs_the_uninterrupted_losses_digit_for_digit(stopped_three_times,
                                                                                  uninterrupted_losses):
    # The sampling takes a subset: the random keys decide which anchors and RoIs train.
    config = load_config(None, parse_overrides(_args("unused", "unused")))
    assert (config.num_anchors, config.rpn_num_samples) == (1023, 256)
    assert config.rcnn_num_samples < config.rpn_post_nms_top_k_train
    run_dir, _, _, finished = stopped_three_times
    assert finished.returncode == EXIT_OK, finished.stderr[-3000:]
    resumed = _loss_rows(run_dir)
    assert len(resumed) == len(uninterrupted_losses) == TOTAL_STEPS
    for got, want in zip(resumed, uninterrupted_losses):
        assert got == want


def test_sigterm_during_a_step_saves_that_step_and_logs_the_resume_command(stopped_three_times):
    run_dir, _, terminated, _ = stopped_three_times
    stopped_at = check_interrupted(run_dir, terminated, "SIGTERM", TOTAL_STEPS, STEPS_PER_EPOCH)
    assert stopped_at > 2 * STEPS_PER_EPOCH  # after the first step of epoch 3: as a rule mid-epoch


def test_the_logged_command_finishes_the_run_with_every_step_logged_once(stopped_three_times):
    run_dir, _, terminated, finished = stopped_three_times
    assert finished.returncode == EXIT_OK, finished.stderr[-3000:]
    assert f"resumed from {run_dir}/last.ckpt at global step {max(terminated['steps'])}" in finished.stderr
    assert logged_steps(os.path.join(run_dir, "losses.csv")) == list(range(1, TOTAL_STEPS + 1))
    assert global_step(os.path.join(run_dir, "last.ckpt")) == TOTAL_STEPS


def test_every_checkpoint_in_the_run_directory_loads(stopped_three_times):
    from src.maskrcnn.builder import build_model

    run_dir, _, _, finished = stopped_three_times
    assert finished.returncode == 0, finished.stderr[-3000:]
    names = os.listdir(run_dir)
    ckpts = sorted(n for n in names if n.endswith(CKPT_SUFFIX))
    # every epoch's checkpoint (of the killed and the resumed runs) and last.ckpt; no temporary
    # file, no lock
    assert ckpts == sorted(["last.ckpt"] + [f"maskrcnn-{e}_{e * STEPS_PER_EPOCH}.ckpt" for e in range(1, EPOCHS + 1)])
    assert not [n for n in names if n.startswith(".")], names
    config = load_config(None, parse_overrides(_args("unused", run_dir)))
    net = build_model(config)
    for name in ckpts:
        report = load_pretrained(net, os.path.join(run_dir, name))
        assert not report.skipped and not report.left_at_init, name


def test_a_second_sigint_stops_at_once_and_leaves_loadable_checkpoints(tmp_path, data_dir):
    run_dir = str(tmp_path / "run")
    returncode, output = run_and_signal(_train_command(data_dir, run_dir), tmp_path / "train.log",
                                         lambda: last_logged(run_dir) > STEPS_PER_EPOCH, [signal.SIGINT, signal.SIGINT])
    # Ended by the signal itself (MindSpore turns a SIGINT during a step into a SIGTERM), before
    # the run could finish.
    assert returncode in (-signal.SIGINT, -signal.SIGTERM), output[-3000:]
    assert last_logged(run_dir) < TOTAL_STEPS
    assert "interrupted (" not in output
    for name in os.listdir(run_dir):
        if name.endswith(CKPT_SUFFIX) and not PARTIAL_FILE.match(name):
            read_checkpoint(os.path.join(run_dir, name))
