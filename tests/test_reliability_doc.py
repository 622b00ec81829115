"""docs/reliability.md: at least 40 rows, and every test it names exists."""
from __future__ import annotations

import ast
import re

from conftest import REPO_ROOT


def test_every_row_of_the_reliability_table_names_existing_tests():
    rows = [line for line in (REPO_ROOT / "docs" / "reliability.md").read_text().splitlines()
            if re.match(r"\| \d+ \|", line)]
    assert len(rows) >= 40
    defined = {}
    missing = []
    for row in rows:
        cell = row.rstrip(" |").rsplit("|", 1)[1]
        names = re.findall(r"(test_\w+\.py)::(test_\w+)", cell)
        assert names, f"row without a test: {row}"
        for file, test in names:
            if file not in defined:
                tree = ast.parse((REPO_ROOT / "tests" / file).read_text())
                defined[file] = {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}
            if test not in defined[file]:
                missing.append(f"{file}::{test}")
    assert missing == []
