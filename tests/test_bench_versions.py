"""benchmarks/bench_versions.py without training: which interpreter and oneDNN setting each case
gets, the error for a missing interpreter, and run_in_child's interpreter/environment/extra fields."""

import json
import os
import subprocess
import sys

from conftest import REPO_ROOT

sys.path.insert(0, os.path.join(REPO_ROOT, "benchmarks"))

import bench_versions  # noqa: E402
from common import run_in_child  # noqa: E402


def test_cases_run_the_pinned_and_the_new_release_and_lift_the_cap_only_without_the_fix(monkeypatch):
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "SSE41")  # a value in the caller's shell must not leak in
    cases = bench_versions.cases("/venv-new/bin/python", skip_without_fix=False)
    assert [(label, python) for label, python, _ in cases] == [
        ("pinned", sys.executable), ("new_with_fix", "/venv-new/bin/python"),
        ("new_without_fix", "/venv-new/bin/python")]
    envs = {label: env for label, _, env in cases}
    assert "ONEDNN_MAX_CPU_ISA" not in envs["pinned"] and "ONEDNN_MAX_CPU_ISA" not in envs["new_with_fix"]
    assert envs["new_without_fix"]["ONEDNN_MAX_CPU_ISA"] == "ALL"
    assert [label for label, _, _ in bench_versions.cases("/p", skip_without_fix=True)] == ["pinned", "new_with_fix"]


def test_a_missing_interpreter_is_named():
    result = subprocess.run([sys.executable, "benchmarks/bench_versions.py", "--new_python", "/nope/python"],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: --new_python /nope/python: no such interpreter"


def test_run_in_child_uses_the_interpreter_and_environment_and_adds_extra_fields(tmp_path, capsys):
    script = tmp_path / "child.py"
    script.write_text("import json, os, sys\n"
                      "print(json.dumps({'python': sys.executable, 'value': os.environ.get('BENCH_PROBE')}))\n",
                      encoding="utf-8")
    run_in_child(str(script), [], {"bench": "probe"}, python=sys.executable, env=dict(os.environ, BENCH_PROBE="42"),
                 extra={"label": "probe"})
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["value"] == "42" and record["label"] == "probe" and record["python"] == sys.executable
    broken = tmp_path / "broken.py"
    broken.write_text("import sys\nsys.exit('no such MindSpore')\n", encoding="utf-8")
    run_in_child(str(broken), [], {"bench": "probe"}, python=sys.executable, extra={"label": "x"})
    failed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert failed["bench"] == "probe" and failed["label"] == "x" and failed["error"] == ["no such MindSpore"]
