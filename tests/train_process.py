"""train.py in a process of its own, as a user runs it (tests/ is on sys.path through its
conftest.py): the environment of such a process, and, for the test modules that stop and resume
runs, starting it, sending it signals once it has logged enough steps, reading what it left
(losses.csv rows, last.ckpt's step, temporary checkpoint files) and the ``--resume`` command it
logged, and checking what an interrupted run must leave."""

import csv
import os
import re
import shlex
import subprocess
import sys
import time

from src.checkpoint.io import PARTIAL_FILE, read_checkpoint
from src.checkpoint.names import GLOBAL_STEP_NAME
from src.config import REPO_ROOT
from src.engine.runtime import EXIT_INTERRUPTED

# Generous: a graph compile on a loaded 2-core machine.
RUN_TIMEOUT_S = 600
POLL_S = 0.05


def train_env(glog_level="3"):
    """The environment of a train.py process: the repository importable, MindSpore's log level
    (2 shows its line saying that it ran a cached graph)."""
    return dict(os.environ, GLOG_v=glog_level, PYTHONPATH=REPO_ROOT)


def logged_steps(csv_path):
    """Steps of the complete rows of losses.csv (a row cut by a kill is not counted)."""
    if not os.path.exists(csv_path):
        return []
    with open(csv_path, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        return []
    width, index = len(rows[0]), rows[0].index("step")
    return [int(r[index]) for r in rows[1:] if len(r) == width and r[index].isdigit()]


def last_logged(run_dir):
    return max(logged_steps(os.path.join(run_dir, "losses.csv")), default=0)


def global_step(ckpt_path):
    return int(read_checkpoint(ckpt_path)[GLOBAL_STEP_NAME].asnumpy().reshape(-1)[0])


def partial_files(run_dir):
    return sorted(n for n in os.listdir(run_dir) if PARTIAL_FILE.match(n)) if os.path.isdir(run_dir) else []


def run_and_signal(command, log_path, ready, signals, env=None):
    """Start ``command``; once ``ready()`` holds, send ``signals`` one after the other (each next
    one once the run has logged that it received the previous one) and wait for the end.

    Returns:
        (exit status, the process's output).
    """
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=env or train_env(), stdout=log,
                                   stderr=subprocess.STDOUT)
    deadline = time.time() + RUN_TIMEOUT_S
    try:
        while time.time() < deadline and process.poll() is None and not ready():
            time.sleep(POLL_S)
        assert process.poll() is None, f"the run ended before the signal:\n{open(log_path).read()[-3000:]}"
        for number, sig in enumerate(signals):
            if number:
                while process.poll() is None and "received: training stops" not in open(log_path).read():
                    time.sleep(POLL_S)
            process.send_signal(sig)
        process.wait(timeout=RUN_TIMEOUT_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return process.returncode, open(log_path).read()


def stop_record(run_dir, returncode, output):
    """What a stopped process left: status, output, steps logged, last.ckpt's step, temporary files."""
    last = os.path.join(run_dir, "last.ckpt")
    return {"returncode": returncode, "output": output, "steps": logged_steps(os.path.join(run_dir, "losses.csv")),
            "checkpoint_step": global_step(last) if os.path.exists(last) else None,
            "leftovers": partial_files(run_dir)}


def resume_command_of(output):
    """The command an interrupted run logged, runnable here (the same Python)."""
    match = re.search(r"continue with: (python train\.py .*)$", output, re.MULTILINE)
    assert match, output[-3000:]
    return [sys.executable, os.path.join(REPO_ROOT, "train.py"), *shlex.split(match.group(1))[2:]]


def check_interrupted(run_dir, record, name, total_steps, steps_per_epoch):
    """A run of ``total_steps`` stopped by signal ``name`` during a step: status 130, last.ckpt of
    the last logged step, one line with the --resume command, no traceback, no temporary file.

    Returns:
        the step it stopped after.
    """
    assert record["returncode"] == EXIT_INTERRUPTED == 130, record["output"][-3000:]
    stopped_at = max(record["steps"])
    assert record["checkpoint_step"] == stopped_at < total_steps
    epoch, step_in_epoch = (stopped_at - 1) // steps_per_epoch + 1, (stopped_at - 1) % steps_per_epoch + 1
    lines = [line for line in record["output"].splitlines() if "interrupted (" in line]
    assert len(lines) == 1 and re.search(
        rf"WARNING train: interrupted \(SIG(INT|TERM)\) after step {stopped_at} of {total_steps} \(epoch {epoch}, "
        rf"step {step_in_epoch} of {steps_per_epoch}\), saved in {run_dir}/last\.ckpt; continue with: "
        rf"python train\.py .*--run_dir {run_dir} .* --resume {run_dir}/last\.ckpt$", lines[0]), lines
    assert lines[0].count("--resume") == 1  # the resumed run's own --resume is replaced
    assert f"{name} received: training stops after this step" in record["output"] or name == "SIGINT"
    assert "Traceback" not in record["output"]
    assert not record["leftovers"]
    return stopped_at
