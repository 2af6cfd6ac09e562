"""The repository's layout as the README states it, and the import rules that keep it.

- every path named in the README's "Layout" block and "Where to change what" table exists;
- the network's stage modules reach the CPU kernels (``src/maskrcnn/ops``) only through the
  per-target decision (``src/maskrcnn/target.py``), and ``src/maskrcnn`` never imports the config;
- no command-line tool imports another;
- test modules share code only through the helper modules beside them, never private names.
"""

import ast
import os
import re

import pytest

from src.config import REPO_ROOT

CLIS = ("train", "eval", "predict", "export", "convert_checkpoint")
TOP_LEVEL = ("src", "tests", "scripts", "benchmarks", "FineTune", "docs")


def _readme_layout_paths():
    text = open(os.path.join(REPO_ROOT, "README.md"), encoding="utf-8").read()
    layout = text[text.index("## Layout"):]
    block = layout[layout.index("```") + 3:]
    block = block[:block.index("```")]
    table = layout[layout.index("### Where to change what"):]
    paths = set()
    folder = ""
    for line in block.splitlines():
        if not line.strip():
            continue
        if not line.startswith(" "):
            # "src/maskrcnn/ ..." opens a folder: bare file names after it, on its line and on the
            # indented lines below, are its files
            first = line.split()[0]
            folder = first if first.endswith("/") else ""
        paths.update(p for p in re.findall(r"(?<![\w./-])((?:\w+/)+(?:\w+\.(?:py|c|sh))?)(?![\w/])", line)
                     if p.split("/")[0] in TOP_LEVEL)
        paths.update(folder + name for name in re.findall(r"(?<![\w./-])(\w+\.(?:py|c|sh))\b", line))
    paths.update(re.findall(r"`((?:src|scripts|tests|benchmarks)/[\w./]*)`", table))
    return sorted(paths)


def test_the_readme_names_the_files_it_documents():
    paths = _readme_layout_paths()
    assert "src/maskrcnn/target.py" in paths and "src/maskrcnn/ops/cpu_ops.py" in paths
    assert "src/engine/trainer.py" in paths and "src/viz/plots.py" in paths
    assert len(paths) > 40


@pytest.mark.parametrize("path", _readme_layout_paths())
def test_every_path_in_the_readme_layout_exists(path):
    assert os.path.exists(os.path.join(REPO_ROOT, path)), f"README.md names {path}, which does not exist"


def _imports(path):
    """Every module a Python file imports (function-local imports included), as dotted names."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _python_files(folder):
    for root, dirs, names in os.walk(os.path.join(REPO_ROOT, folder)):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in names:
            if name.endswith(".py"):
                yield os.path.join(root, name)


def test_network_stages_reach_the_cpu_kernels_only_through_the_target():
    ops_dir = os.path.join(REPO_ROOT, "src", "maskrcnn", "ops")
    target = os.path.join(REPO_ROOT, "src", "maskrcnn", "target.py")
    offenders = []
    for path in _python_files(os.path.join("src", "maskrcnn")):
        if path.startswith(ops_dir + os.sep) or path == target:
            continue
        bad = [m for m in _imports(path) if m.startswith("src.maskrcnn.ops")]
        if bad:
            offenders.append(f"{os.path.relpath(path, REPO_ROOT)}: {sorted(bad)}")
    assert offenders == []


def test_nothing_else_in_src_imports_the_cpu_kernels():
    offenders = []
    for folder in ("src",):
        for path in _python_files(folder):
            rel = os.path.relpath(path, REPO_ROOT)
            if rel.startswith(os.path.join("src", "maskrcnn")):
                continue
            bad = [m for m in _imports(path) if m.startswith("src.maskrcnn.ops")]
            if bad:
                offenders.append(f"{rel}: {sorted(bad)}")
    assert offenders == []


def test_the_network_never_imports_the_config():
    offenders = [os.path.relpath(p, REPO_ROOT) for p in _python_files(os.path.join("src", "maskrcnn"))
                 if any(m == "src.config" or m.startswith("src.config.") for m in _imports(p))]
    assert offenders == []


def test_no_cli_imports_another_cli():
    offenders = []
    for cli in CLIS:
        path = os.path.join(REPO_ROOT, f"{cli}.py")
        bad = sorted(set(CLIS) & {m.split(".")[0] for m in _imports(path)} - {cli})
        if bad:
            offenders.append(f"{cli}.py imports {bad}")
    for path in _python_files("src"):
        bad = sorted(set(CLIS) & {m.split(".")[0] for m in _imports(path)})
        if bad:
            offenders.append(f"{os.path.relpath(path, REPO_ROOT)} imports {bad}")
    assert offenders == []


def test_test_modules_share_code_only_through_the_helper_modules():
    """A test module imports no other test module (``test_*``), and no underscored name from the
    shared helper modules beside them (tests/helpers.py, tests/train_process.py, ...)."""
    tests_dir = os.path.join(REPO_ROOT, "tests")
    local = {os.path.splitext(name)[0] for _, _, names in os.walk(tests_dir) for name in names if name.endswith(".py")}
    offenders = []
    for path in _python_files("tests"):
        tree = ast.parse(open(path, encoding="utf-8").read(), path)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module in local:
                private = [alias.name for alias in node.names if alias.name.startswith("_")]
                if node.module.startswith("test_") or private:
                    offenders.append(f"{os.path.relpath(path, REPO_ROOT)}:{node.lineno} from {node.module} "
                                     f"import {[a.name for a in node.names]}")
            elif isinstance(node, ast.Import):
                offenders += [f"{os.path.relpath(path, REPO_ROOT)}:{node.lineno} import {alias.name}"
                              for alias in node.names if alias.name.startswith("test_") and alias.name in local]
    assert offenders == []
