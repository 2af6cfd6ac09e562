"""docs/bad_input.md names a test for every bad input; those tests must exist, and the README
must quote the catalogue's size.

The test files are parsed (``ast``), not imported, so this check needs no MindSpore.
"""

import ast
import os
import re

from conftest import REPO_ROOT

CATALOGUE = os.path.join(REPO_ROOT, "docs", "bad_input.md")
README = os.path.join(REPO_ROOT, "README.md")
MIN_CASES = 30
# A table row: | number | bad input | what you get | tests/FILE.py::NAME[optional id] |
ROW = re.compile(r"^\|\s*(\d+)\s*\|(.+)\|(.+)\|\s*(tests/[\w/]+\.py)::(\w+)(?:\[([^\]]+)\])?\s*\|\s*$")


def _rows():
    with open(CATALOGUE, encoding="utf-8") as handle:
        table_lines = [line.rstrip("\n") for line in handle if re.match(r"^\|\s*\d+\s*\|", line)]
    rows = []
    for line in table_lines:
        match = ROW.match(line)
        assert match, f"docs/bad_input.md: row not of the form | N | input | message | tests/F.py::name |: {line}"
        rows.append(match.groups())
    return rows


def _test_functions(path):
    with open(os.path.join(REPO_ROOT, path), encoding="utf-8") as handle:
        source = handle.read()
    tree = ast.parse(source)
    names = {node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}
    return names, source


def test_catalogue_has_enough_numbered_cases_each_with_a_message():
    rows = _rows()
    assert len(rows) >= MIN_CASES
    assert [int(r[0]) for r in rows] == list(range(1, len(rows) + 1)), "rows must be numbered 1..N"
    for number, bad_input, message, _, _, _ in rows:
        assert bad_input.strip() and message.strip(), f"row {number} lacks the input or the message"


def test_every_named_test_exists():
    missing = []
    for number, _, _, path, name, param_id in _rows():
        if not os.path.isfile(os.path.join(REPO_ROOT, path)):
            missing.append(f"row {number}: no file {path}")
            continue
        names, source = _test_functions(path)
        if name not in names or not name.startswith("test_"):
            missing.append(f"row {number}: no test function {path}::{name}")
        elif param_id is not None and f'"{param_id}"' not in source:
            missing.append(f"row {number}: {path}::{name} has no parameter id '{param_id}'")
    assert not missing, "; ".join(missing)


def test_readme_quotes_the_number_of_cases():
    with open(README, encoding="utf-8") as handle:
        readme = handle.read()
    match = re.search(r"\[docs/bad_input\.md\]\(docs/bad_input\.md\) lists (\d+) bad inputs", readme)
    assert match, "README.md: no reliability line pointing at docs/bad_input.md"
    assert int(match.group(1)) == len(_rows())
