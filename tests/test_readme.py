"""The README stays short and true: its two commands, its quickstart's output, the files it names.

Every Python block of the README and the docs runs in tests/test_docs.py; here, what they claim.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from ormai_agents.policy_file import parse_policy
from tests.test_docs import blocks, script

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
DOCS = sorted((ROOT / "docs").glob("*.md"))


def test_the_two_install_lines_are_there_exactly() -> None:
    lines = [line.strip() for line in README.splitlines()]
    assert 'pip install -e ".[all]" && ormai-agents demo' in lines
    assert 'pip install -e ".[test]" && pytest' in lines


def test_the_readme_is_short_and_points_to_the_docs() -> None:
    assert len(README.splitlines()) <= 150
    assert len(README.split()) <= 1000
    # It installs from a clone: the package is not on an index.
    assert (
        "pip install ormai-agents" not in README
        and 'pip install "ormai-agents[' not in README
    )
    for page in ("policy", "conditions", "multi-tenant", "transactions", "langchain", "llamaindex", "audit", "security",
                 "rls", "backends", "cli", "api"):  # fmt: skip
        assert f"(docs/{page}.md)" in README, page


@pytest.mark.slow
def test_quickstart_scopes_and_ends_in_an_agent_run(tmp_path: Path) -> None:
    path = tmp_path / "readme.py"
    path.write_text(script(README), encoding="utf-8")
    out = subprocess.run(
        [sys.executable, str(path)],
        check=False,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    direct, *agent = out.stdout.splitlines()
    assert direct.startswith("[{'id': 1, 'status': 'pending', 'card_number': '****'}]")
    transcript = "\n".join(agent)
    assert "ToolMessage" in transcript and '"error":"not_found"' in transcript
    assert '"columns":["id","status","card_number"],"rows":[[1,"pending","****"]]' in transcript
    assert "5500000000000004" not in out.stdout and "4111111111111111" not in out.stdout
    assert transcript.rstrip().endswith("Order 2 is not visible to you.")


@pytest.mark.parametrize("page", [ROOT / "README.md", *DOCS], ids=lambda p: p.name)
def test_files_and_pages_named_exist(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    named = set(
        re.findall(
            r"`((?:examples|notebooks|benchmarks|tests)/[\w./-]+\.(?:py|ipynb|yaml|md))`",
            text,
        )
    )
    assert sorted(p for p in named if not (ROOT / p).exists()) == []
    links = {
        link.split("#")[0]
        for link in re.findall(r"\]\(([\w./-]+\.md(?:#[\w-]+)?)\)", text)
    }
    assert sorted(link for link in links if not (page.parent / link).exists()) == []


def test_policy_file_examples_are_valid_policies() -> None:
    text = (ROOT / "docs" / "policy.md").read_text(encoding="utf-8")
    (example,) = [b.code for b in blocks(text) if b.language == "yaml"]
    policy = parse_policy(example)
    order = policy.models["Order"]
    assert order.row_policies[0].mode == "permit"
    assert order.write_policy.auto_set == {"tenant_id": "principal.tenant_id"}
    assert order.fields["card_number"].mask_show_last == 4


def test_project_text_speaks_only_of_the_project() -> None:
    # Users have the docs and the README, nothing else: no references to internal documents.
    for page in [ROOT / "README.md", *DOCS]:
        text = page.read_text(encoding="utf-8").lower()
        assert "seed guide" not in text and "setup guide" not in text, page.name
