"""The package's promises about imports and public names."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_import_pulls_in_no_framework() -> None:
    code = (
        "import sys, ormai_agents, ormai_agents.core, ormai_agents.policy, ormai_agents.audit;"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('langchain', 'langchain_core', 'langgraph', 'llama_index'));"
        "print(','.join(bad))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT, env=env)
    assert out.stdout.strip() == ""


def test_public_names() -> None:
    import ormai_agents
    from ormai_agents import core, policy

    for name in ("Principal", "RunContext", "OrmAIError", "ModelNotAllowedError", "FieldNotAllowedError",
                 "RecordNotFoundError", "WriteNotAllowedError", "ValidationError", "PolicyError"):  # fmt: skip
        assert getattr(core, name) is getattr(ormai_agents, name)
    for name in ("Policy", "ModelPolicy", "FieldPolicy", "FieldAction", "RowPolicy", "WritePolicy", "WriteAction"):
        assert getattr(policy, name) is getattr(ormai_agents, name)
    assert ormai_agents.Toolset is not None
    codes = {core.ModelNotAllowedError.code, core.FieldNotAllowedError.code, core.RecordNotFoundError.code,
             core.WriteNotAllowedError.code, core.ValidationError.code, core.PolicyError.code}  # fmt: skip
    assert len(codes) == 6
