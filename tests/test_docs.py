"""The documentation site builds, and every Python block of README.md and docs/*.md runs.

The convention (also in docs/development.md):

- Every ```python block runs. The blocks of one page run in order, as one script, in a fresh
  interpreter whose working directory is an empty temporary directory: what a reader gets by
  pasting them, in order, into one file. So a page defines what it uses (or imports it), awaits
  only inside `asyncio.run(...)`, and keeps its files in the current directory.
- Other languages (bash, yaml, text, pycon) are not run.
- A block that truly can't run standalone is preceded by `<!-- not-run: the reason -->` on the
  line just before its fence. The mark is rare and always says why.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("**/*.md"))]
NOT_RUN = re.compile(r"^<!--\s*not-run:\s*(\S.*?)\s*-->\s*$")
FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")


@dataclass
class Block:
    language: str
    first_line: int  # 1-based line of the block's first code line
    code: str
    not_run: str | None  # the reason, when the block is marked


def blocks(text: str) -> list[Block]:
    """The fenced code blocks of a Markdown text."""
    lines = text.splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, language = m.groups()
        mark = NOT_RUN.match(lines[i - 1].strip()) if i > 0 else None
        body: list[str] = []
        j = i + 1
        while j < len(lines) and not lines[j].strip().startswith(fence):
            line = lines[j]
            body.append(
                line[len(indent) :] if line.startswith(indent) else line.lstrip()
            )
            j += 1
        out.append(
            Block(
                language.lower(),
                i + 2,
                "\n".join(body) + "\n",
                mark.group(1) if mark else None,
            )
        )
        i = j + 1
    return out


def script(text: str) -> str:
    """The page's runnable Python blocks as one script, each block on its own lines of the page.

    Every other line is blank, so a traceback's line number is the line in the Markdown file.
    """
    lines = [""] * (len(text.splitlines()) + 1)
    for block in blocks(text):
        if block.language in ("python", "py") and block.not_run is None:
            for n, line in enumerate(block.code.splitlines()):
                lines[block.first_line - 1 + n] = line
    return "\n".join(lines) + "\n"


def _page_id(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _runnable(page: Path) -> bool:
    return any(
        b.language in ("python", "py") and b.not_run is None
        for b in blocks(page.read_text(encoding="utf-8"))
    )


@pytest.mark.slow
@pytest.mark.parametrize("page", [p for p in PAGES if _runnable(p)], ids=_page_id)
def test_python_blocks_run_as_pasted(page: Path, tmp_path: Path) -> None:
    text = page.read_text(encoding="utf-8")
    # Named after the page, so a traceback reads `docs/policy.md.py", line 57`: line 57 of the page.
    target = tmp_path / _page_id(page).replace("/", "_")
    target = target.with_name(target.name + ".py")
    target.write_text(script(text), encoding="utf-8")
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "100"}
    env.pop("CI", None)  # the page runs as a user's script, not as the test suite
    out = subprocess.run(
        [sys.executable, str(target)],
        check=False,
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, (
        f"{_page_id(page)}: a Python block failed\n{out.stdout[-3000:]}\n{out.stderr[-6000:]}"
    )


def test_not_run_marks_are_rare_and_give_a_reason() -> None:
    marked = [
        (page.name, b.first_line, b.not_run)
        for page in PAGES
        for b in blocks(page.read_text(encoding="utf-8"))
        if b.not_run
    ]
    python = sum(
        1
        for page in PAGES
        for b in blocks(page.read_text(encoding="utf-8"))
        if b.language in ("python", "py")
    )
    assert python > 20
    assert len(marked) <= max(3, python // 10), marked
    assert all(len(reason) >= 10 for _, _, reason in marked), marked


def test_block_parser() -> None:
    text = "# t\n\n```python\nx = 1\n```\n\n<!-- not-run: needs a server somewhere -->\n```python\nboom()\n```\n\n```bash\nls\n```\n"
    found = blocks(text)
    assert [(b.language, b.first_line, b.code, b.not_run) for b in found] == [
        ("python", 4, "x = 1\n", None),
        ("python", 9, "boom()\n", "needs a server somewhere"),
        ("bash", 13, "ls\n", None),
    ]
    assert script(text).splitlines()[3] == "x = 1" and "boom" not in script(text)


def _nav_pages(nav: list[object]) -> set[str]:
    found: set[str] = set()
    for item in nav:
        values = item.values() if isinstance(item, dict) else [item]
        for value in values:
            if isinstance(value, str) and value.endswith(".md"):
                found.add(value)
            elif isinstance(value, list):
                found |= _nav_pages(value)
    return found


def test_every_page_is_in_the_nav() -> None:
    config = yaml.load(
        (ROOT / "mkdocs.yml").read_text(encoding="utf-8"), Loader=yaml.BaseLoader
    )
    pages = {str(p.relative_to(DOCS)) for p in DOCS.glob("**/*.md")}
    listed = _nav_pages(config["nav"])
    assert sorted(pages - listed) == [], "add these pages to the nav in mkdocs.yml"
    assert sorted(listed - pages) == [], "the nav names pages that don't exist"


@pytest.mark.slow
def test_site_builds_strictly(tmp_path: Path) -> None:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-6000:]
    api = (tmp_path / "site" / "api" / "index.html").read_text(encoding="utf-8")
    # The API reference is generated from the docstrings.
    assert "Toolset" in api and "describe_schema" in api and "OrmAIToolkit" in api
