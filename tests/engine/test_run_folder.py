"""One run per folder: the run lock (a live holder refuses, a dead one is taken over), a new run
never touches another run's files, nothing is written before the inputs are checked, the
rotation limit holds across a resume, and a full disk is an environment error (exit 3)."""

import csv
import errno
import hashlib
import logging
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

import train
from conftest import REPO_ROOT
from helpers import error_lines
from src.checkpoint.io import save_checkpoint_atomic
from src.engine.callbacks import CheckpointCallback, LossCallBack
from src.engine.run_folder import LOCK_NAME, RunFolderError, RunLock
from src.engine.runtime import EXIT_BAD_INPUT, EXIT_ENVIRONMENT, EnvironmentFailure

HOLD_LOCK = ("import sys, time; sys.path.insert(0, sys.argv[1]); from src.engine.run_folder import RunLock; "
             "RunLock(sys.argv[2]).acquire(); print('locked', flush=True); time.sleep(600)")


def _digests(folder):
    return {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in sorted(os.listdir(folder))}


@pytest.fixture
def used_run_dir(tmp_path):
    """A folder as a finished run leaves it (small files)."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("base_lr: 0.01\n")
    (run_dir / "losses.csv").write_text("epoch,step,total\n1,1,2.5\n")
    (run_dir / "train.log").write_text("earlier run\n")
    save_checkpoint_atomic({"global_step": np.array([3], np.int32), "w": np.ones(4, np.float32)},
                           str(run_dir / "last.ckpt"))
    return run_dir


@pytest.fixture
def lock_holder(tmp_path):
    """Starts a process that holds the lock of tmp_path/'busy'; yields (process, folder)."""
    folder = tmp_path / "busy"
    process = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, REPO_ROOT, str(folder)], stdout=subprocess.PIPE,
                               text=True)
    try:
        assert process.stdout.readline().strip() == "locked"
        yield process, folder
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


def test_a_new_run_in_a_used_folder_is_refused_and_changes_nothing(used_run_dir, capsys):
    before = _digests(used_run_dir)
    code = train.main(["--run_dir", str(used_run_dir)])
    assert code == EXIT_BAD_INPUT
    errors = error_lines(capsys.readouterr().err)
    last = used_run_dir / "last.ckpt"
    assert len(errors) == 1 and errors[0].endswith(
        f"{used_run_dir}: holds the files of an earlier run (config.yaml, last.ckpt, losses.csv, train.log); "
        f"continue that run with --resume {last}, or start this one in a fresh folder with --run_dir NEW_FOLDER "
        f"(a new run never writes into another run's files)"), errors
    assert _digests(used_run_dir) == before


def test_a_refused_resume_leaves_the_run_folder_unchanged(used_run_dir, capsys):
    last = used_run_dir / "last.ckpt"
    data = bytearray(last.read_bytes())
    data[len(data) // 2] ^= 0xFF
    last.write_bytes(bytes(data))
    before = _digests(used_run_dir)
    code = train.main(["--run_dir", str(used_run_dir), "--resume", str(last), "--base_lr", "0.5"])
    assert code == EXIT_BAD_INPUT
    errors = error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and errors[0].endswith(
        "the file was damaged after it was written; use another checkpoint") and str(last) in errors[0], errors
    assert _digests(used_run_dir) == before  # config.yaml still holds the earlier run's base_lr


def test_a_second_run_while_one_runs_gets_one_line_naming_the_process(lock_holder, capsys):
    process, folder = lock_holder
    before = _digests(folder)
    code = train.main(["--run_dir", str(folder)])
    assert code == EXIT_BAD_INPUT
    errors = error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and errors[0].endswith(
        f"{folder}: another train.py (process {process.pid}) is running in this folder; wait for it to end, or "
        f"choose another --run_dir"), errors
    assert _digests(folder) == before


def test_the_lock_of_a_killed_run_is_taken_over_with_a_line(lock_holder, caplog):
    process, folder = lock_holder
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert os.path.exists(folder / LOCK_NAME)  # what a killed run leaves
    with caplog.at_level(logging.WARNING):
        with RunLock(str(folder)):
            assert (folder / LOCK_NAME).read_text().strip() == str(os.getpid())
            with pytest.raises(RunFolderError, match=f"process {os.getpid()}"):
                RunLock(str(folder)).acquire()
    assert [r.getMessage() for r in caplog.records] == [
        f"{folder}: taking over the lock of process {process.pid}, which is no longer running (killed?)"]
    assert not os.path.exists(folder / LOCK_NAME)


def test_a_refused_run_leaves_no_folder_behind(tmp_path):
    folder = tmp_path / "new"
    with pytest.raises(RunFolderError):
        with RunLock(str(folder)):
            raise RunFolderError("refused input")
    assert not folder.exists()


class _Args:
    """What Model.train hands the callbacks (run_context.original_args())."""

    def __init__(self, **values):
        self.__dict__.update(values)


class _RunContext:
    def __init__(self, **values):
        self.args = _Args(**values)
        self.stop_requested = False

    def original_args(self):
        return self.args

    def request_stop(self):
        self.stop_requested = True


def test_the_rotation_limit_counts_the_checkpoints_of_the_interrupted_run(tmp_path):
    for epoch in (1, 2, 3):
        (tmp_path / f"maskrcnn-{epoch}_{3 * epoch}.ckpt").write_bytes(b"x")
    saved = []

    def save(cell, path):
        saved.append(path)
        open(path, "wb").close()

    callback = CheckpointCallback(save, None, str(tmp_path), "maskrcnn", every_epochs=1, keep_max=3,
                                  step_offset=9, steps_per_epoch=3)
    for step in range(1, 7):  # epochs 4 and 5 of the resumed run
        callback.on_train_step_end(_RunContext(cur_step_num=step, train_network=None))
    assert sorted(n for n in os.listdir(tmp_path) if n.startswith("maskrcnn")) == [
        "maskrcnn-3_9.ckpt", "maskrcnn-4_12.ckpt", "maskrcnn-5_15.ckpt"]
    assert saved[-1] == str(tmp_path / "last.ckpt")


def test_a_full_disk_while_writing_config_yaml_is_an_environment_error(tmp_path, monkeypatch, capsys):
    import yaml

    from src.synthetic import generate

    generate(str(tmp_path / "data"), 2, 0, seed=1, style="solid")

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(yaml, "safe_dump", full_disk)
    run_dir = tmp_path / "run"
    code = train.main(["--coco_root", str(tmp_path / "data"), "--run_dir", str(run_dir), "--img_height", "64",
                       "--img_width", "64", "--batch_size", "1", "--fpn_channels", "32", "--num_parallel_workers", "1"])
    assert code == EXIT_ENVIRONMENT
    errors = error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and errors[0].endswith(
        f"{run_dir / 'config.yaml'}: cannot write the run's config: No space left on device"), errors
    assert not run_dir.exists()  # nothing half-written left, not even the folder


class _FullDisk:
    def write(self, text):
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_while_appending_losses_csv_is_an_environment_error(tmp_path, caplog):
    import mindspore as ms

    from src.batch import LOSS_NAMES
    from src.cli import report_error

    path = tmp_path / "losses.csv"
    callback = LossCallBack(str(path), steps_per_epoch=3, total_epochs=1)
    callback._writer = csv.writer(_FullDisk())  # the disk fills after the header
    outputs = [ms.Tensor(np.float32(1.0))] * (1 + len(LOSS_NAMES)) + [ms.Tensor(True), ms.Tensor(np.float32(1.0))]
    with pytest.raises(EnvironmentFailure) as raised:
        callback.on_train_step_end(_RunContext(cur_step_num=1, cur_epoch_num=1, net_outputs=outputs))
    with caplog.at_level(logging.ERROR):
        assert report_error(logging.getLogger("test"), raised.value) == EXIT_ENVIRONMENT
    assert [r.getMessage() for r in caplog.records] == [
        f"{path}: cannot append the losses of step 1: No space left on device"]
