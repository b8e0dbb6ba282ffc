"""The README's commands and code stay true: its snippets run as written."""

from __future__ import annotations

import re
from pathlib import Path

from ormai_agents.policy_file import parse_policy

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def test_the_two_install_lines_are_there_exactly() -> None:
    lines = [line.strip() for line in README.splitlines()]
    assert 'pip install -e ".[all]" && ormai-agents demo' in lines
    assert 'pip install -e ".[test]" && pytest' in lines


def test_quickstart_runs_and_scopes(capsys: object) -> None:
    code = re.search(r"## Quickstart\n\n```python\n(.*?)```", README, re.S)
    assert code is not None
    namespace: dict[str, object] = {}
    exec(compile(code.group(1), "README quickstart", "exec", dont_inherit=True), namespace)  # noqa: S102 - our own README
    out = capsys.readouterr().out  # type: ignore[attr-defined]
    assert "'card_number': '****'" in out and "'id': 1" in out and "'id': 2" not in out


def test_policy_file_example_is_a_valid_policy() -> None:
    block = re.search(r"## Policy files\n.*?```yaml\n(.*?)```", README, re.S)
    assert block is not None
    policy = parse_policy(block.group(1))
    order = policy.models["Order"]
    assert order.row_policies[0].mode == "permit"
    assert order.write_policy.auto_set == {"tenant_id": "principal.tenant_id"}
    assert order.fields["card_number"].mask_show_last == 4


def test_files_the_readme_names_exist() -> None:
    root = Path(__file__).resolve().parents[1]
    named = set(re.findall(r"`((?:examples|notebooks|benchmarks|tests)/[\w./-]+\.(?:py|ipynb|yaml))`", README))
    assert {"examples/fastapi_service.py", "notebooks/02_multi_tenant_guide.ipynb"} <= named
    assert sorted(p for p in named if not (root / p).exists()) == []
