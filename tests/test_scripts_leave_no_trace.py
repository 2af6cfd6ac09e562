"""Every script in scripts/ answers --help (and a missing argument) with its usage, from an empty
folder, and writes, deletes or installs nothing on the way.

``quickstart.sh`` and ``test.sh`` work without arguments, so only their --help is run.
``setup_env.sh`` is not run: it is the set-up the other scripts source, and creating or updating
``.venv`` is what it is for.
"""

import os
import stat
import subprocess
import sys

import pytest

from conftest import REPO_ROOT

SCRIPTS_DIR = os.path.join(REPO_ROOT, "scripts")
WORK_WITHOUT_ARGUMENTS = {"quickstart.sh", "test.sh"}
NOT_RUN = {"setup_env.sh"}
# Commands that install or fetch: stand-ins on PATH record any call.
GUARDED_COMMANDS = ("apt-get", "apt", "dpkg", "sudo", "pip", "pip3", "curl", "wget")
SKIPPED_DIRS = {".git", ".venv", "__pycache__", ".pytest_cache"}

SCRIPTS = sorted(name for name in os.listdir(SCRIPTS_DIR)
                 if name.endswith((".sh", ".py")) and name not in NOT_RUN)


def _repo_snapshot():
    """(path, size, mtime) of every file in the repository outside .git/.venv/caches, plus the
    virtual environment's package folder and requirements stamp."""
    entries = set()
    for folder, dirs, files in os.walk(REPO_ROOT):
        dirs[:] = [d for d in dirs if d not in SKIPPED_DIRS]
        for name in files + dirs:
            path = os.path.join(folder, name)
            info = os.lstat(path)
            entries.add((os.path.relpath(path, REPO_ROOT), info.st_size if not os.path.isdir(path) else 0,
                         info.st_mtime_ns if not os.path.isdir(path) else 0))
    venv = os.path.join(REPO_ROOT, ".venv")
    for path in (os.path.join(venv, "lib"), os.path.join(venv, ".requirements.sha256")):
        if os.path.exists(path):
            entries.add((path, 0, os.stat(path).st_mtime_ns))
    return entries


@pytest.fixture
def sandbox(tmp_path):
    """An empty working folder and a PATH whose install/fetch commands only record that they were called."""
    shims, work = tmp_path / "shims", tmp_path / "work"
    shims.mkdir()
    work.mkdir()
    log = tmp_path / "guarded_calls.log"
    for command in GUARDED_COMMANDS:
        shim = shims / command
        shim.write_text(f"#!/bin/sh\necho {command} \"$@\" >> {log}\nexit 1\n")
        shim.chmod(shim.stat().st_mode | stat.S_IXUSR)
    env = dict(os.environ, PATH=f"{shims}{os.pathsep}{os.environ['PATH']}", CHROMIUM=str(tmp_path / "no-browser"))
    return {"work": work, "env": env, "log": log}


def _run(name, args, sandbox):
    script = os.path.join(SCRIPTS_DIR, name)
    command = [sys.executable, script] if name.endswith(".py") else ["bash", script]
    return subprocess.run(command + args, cwd=sandbox["work"], env=sandbox["env"], capture_output=True, text=True,
                          timeout=60)


def _assert_no_trace(sandbox, before):
    assert os.listdir(sandbox["work"]) == []
    assert not sandbox["log"].exists(), sandbox["log"].read_text()
    assert _repo_snapshot() == before


@pytest.mark.parametrize("name", SCRIPTS)
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_prints_usage_and_changes_nothing(name, flag, sandbox):
    before = _repo_snapshot()
    result = _run(name, [flag], sandbox)
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert "usage" in (result.stdout + result.stderr).lower()
    _assert_no_trace(sandbox, before)


@pytest.mark.parametrize("name", [n for n in SCRIPTS if n not in WORK_WITHOUT_ARGUMENTS])
def test_no_arguments_prints_usage_or_the_missing_tool_and_changes_nothing(name, sandbox):
    before = _repo_snapshot()
    result = _run(name, [], sandbox)
    assert result.returncode == 2, (result.stdout, result.stderr)
    if name == "check_report_page.sh":  # it needs no argument, but a browser: it says which, installs none
        assert f"error: {sandbox['env']['CHROMIUM']} is not installed; install it with: sudo apt-get install" \
            in result.stderr
    else:
        assert "usage" in result.stderr.lower()
    _assert_no_trace(sandbox, before)


def test_paths_are_taken_from_the_folder_the_script_runs_in(tmp_path):
    """A config given relative to another folder is found (it used to be looked up in the repository)."""
    recipe = tmp_path / "my.yaml"
    recipe.write_text("batch_size: 2\n")
    env = dict(os.environ, CONFIG="my.yaml", PRETRAINED="")
    result = subprocess.run(["bash", "-c", f'source "{SCRIPTS_DIR}/train_args.sh" && printf "%s\\n" "${{TRAIN_ARGS[@]}}"'],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["--config_path", str(recipe)]
