"""Test helpers for users' own suites: scripted fake chat models that call tools, and
tenant-isolation checks (`assert_tenant_isolation`; pytest fixtures in
`ormai_agents.testing.pytest_plugin`).

Names are loaded on first use, so importing `ormai_agents.testing` imports no framework:
`from ormai_agents.testing import ScriptedChatModel` imports langchain-core then, and
`ScriptedFunctionCallingLLM` (for LlamaIndex agents) imports llama-index-core.
"""

from __future__ import annotations

import importlib
from typing import Any

# name -> submodule that defines it
_LAZY = {
    "IsolationReport": "ormai_agents.testing.isolation",
    "assert_tenant_isolation": "ormai_agents.testing.isolation",
    "ScriptedChatModel": "ormai_agents.testing.langchain",
    "tool_call": "ormai_agents.testing.langchain",
    "ScriptedFunctionCallingLLM": "ormai_agents.testing.llamaindex",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ormai_agents.testing' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
