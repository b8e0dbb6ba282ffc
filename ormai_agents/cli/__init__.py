"""The `ormai-agents` command: demo, schema, lint, rls, audit and mcp.

It needs the `cli` extra (typer, rich, PyYAML). `main()` checks for it first and, when it is
missing, says which extra to install in one line instead of a traceback.

Each command is a function in its own module (`ormai_agents/cli/demo.py`, ...), registered on the
Typer application in one place: `ormai_agents/cli/_app.py`.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # at run time these come from __getattr__, so typer loads only when used
    from ormai_agents.cli._app import app
    from ormai_agents.cli._common import fail, load_models, parse_principal

__all__ = ["app", "fail", "load_models", "main", "parse_principal"]

# What the command imports at start-up; each comes with the `cli` extra.
_NEEDS = ("typer", "rich", "yaml")


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point."""
    for name in _NEEDS:
        try:
            importlib.import_module(name)
        except ImportError:
            sys.stderr.write(
                f"error: the ormai-agents command needs its 'cli' extra ({name} is not installed): "
                'pip install -e ".[cli]" in a clone of ormai-agents\n'
            )
            raise SystemExit(2) from None
    from ormai_agents.cli._app import app

    app(args=list(argv) if argv is not None else None, prog_name="ormai-agents")


def __getattr__(name: str) -> Any:
    # `from ormai_agents.cli import app` works as before, importing typer only then.
    if name == "app":
        from ormai_agents.cli._app import app

        return app
    if name in ("fail", "load_models", "parse_principal"):
        from ormai_agents.cli import _common

        return getattr(_common, name)
    raise AttributeError(f"module 'ormai_agents.cli' has no attribute {name!r}")
