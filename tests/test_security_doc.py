"""Every promise of docs/security.md names tests that prove it, and those tests exist.

The node ids are taken from pytest's own collection (in a fresh process, over the files the page
names), so a renamed or deleted test breaks the page's promise here, not silently.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "security.md"
NODE = re.compile(r"`(tests/[\w/]+\.py::\w+)`")


def promises() -> list[tuple[str, list[str]]]:
    """(promise, node ids) for every row of the promises table."""
    text = PAGE.read_text(encoding="utf-8")
    table = text.split("## Promises", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| promise")]
    out = []
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split(" | ")]
        if set(cells[0]) <= {"-", " "}:
            continue
        assert len(cells) == 2, row
        out.append((cells[0], NODE.findall(cells[1])))
    return out


def test_every_promise_names_tests() -> None:
    rows = promises()
    assert len(rows) >= 15
    for promise, nodes in rows:
        assert nodes, f"no test named for: {promise}"


@pytest.mark.slow
def test_every_named_test_exists() -> None:
    named = {node for _, nodes in promises() for node in nodes}
    files = sorted({node.split("::")[0] for node in named})
    assert all((ROOT / f).is_file() for f in files), files
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *files],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    collected = {line.split("[", 1)[0] for line in out.stdout.splitlines() if "::" in line}
    assert collected, out.stdout + out.stderr
    missing = sorted(named - collected)
    assert not missing, f"docs/security.md names tests that do not exist: {missing}"
