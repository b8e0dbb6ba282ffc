"""The Typer application: every command is registered here, and every error ends here.

A new command is a function in its own module of this package, added to `COMMANDS` below. Heavy
imports (frameworks, the demo) happen inside the command functions, so `--help` stays fast.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from ormai_agents import _mcp_command
from ormai_agents.cli import audit, demo, lint, rls, schema
from ormai_agents.cli._common import CliError, print_error

__all__ = ["COMMANDS", "app"]

# name -> function, in the order `--help` lists them.
COMMANDS: dict[str, Callable[..., None]] = {
    "demo": demo.demo,
    "schema": schema.schema,
    "lint": lint.lint,
    "rls": rls.rls,
    "audit": audit.audit,
    "mcp": _mcp_command.mcp,
}


def _click_exceptions(name: str) -> tuple[type[BaseException], ...]:
    """The exception class `name` of click and of the click that recent typer versions vendor."""
    found = []
    for module in ("typer._click.exceptions", "click.exceptions", "typer.exceptions"):
        try:
            cls = getattr(importlib.import_module(module), name, None)
        except ImportError:
            continue
        if isinstance(cls, type) and issubclass(cls, BaseException):
            found.append(cls)
    return tuple(found)


_NO_ARGS = _click_exceptions("NoArgsIsHelpError")
_USAGE = _click_exceptions("UsageError")
_CLICK = _click_exceptions("ClickException")
_ABORT = _click_exceptions("Abort")
_EXIT = _click_exceptions("Exit")


class _OneLineErrors(TyperGroup):
    """Every failure is one line on stderr naming the cause, with exit status 2; no traceback.

    Set ORMAI_AGENTS_DEBUG=1 to get the traceback of an unexpected error.
    """

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        code = self._run(args, prog_name, **extra)
        if standalone_mode:
            sys.exit(code)
        return code

    def _run(self, args: Sequence[str] | None, prog_name: str | None, **extra: Any) -> int:
        try:
            result = super().main(args=args, prog_name=prog_name, standalone_mode=False, **extra)
            return result if isinstance(result, int) else 0
        except CliError as exc:
            print_error(str(exc))
            return exc.code
        except _NO_ARGS as exc:
            ctx = getattr(exc, "ctx", None)
            typer.echo(ctx.get_help() if ctx else str(exc))
            return 2
        except _USAGE as exc:
            ctx = getattr(exc, "ctx", None)
            command = ctx.command_path if ctx else "ormai-agents"
            print_error(f"{exc.format_message()} (see {command} --help)")  # type: ignore[attr-defined]
            return 2
        except _CLICK as exc:
            print_error(exc.format_message())  # type: ignore[attr-defined]
            return int(getattr(exc, "exit_code", 2))
        except _EXIT as exc:
            return int(getattr(exc, "exit_code", 0))
        except _ABORT:
            print_error("aborted")
            return 130
        except Exception as exc:
            if os.environ.get("ORMAI_AGENTS_DEBUG"):
                raise
            print_error(f"unexpected {type(exc).__name__}: {exc} (set ORMAI_AGENTS_DEBUG=1 for the traceback)")
            return 2


def _version(value: bool) -> None:
    if value:
        from ormai_agents import __version__

        typer.echo(f"ormai-agents {__version__}")
        raise typer.Exit()


app = typer.Typer(
    name="ormai-agents",
    cls=_OneLineErrors,
    help="Policy-scoped, audited database tools for LLM agents.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


@app.callback()
def _root(
    version: Annotated[
        bool | None,
        typer.Option(
            "--version",
            callback=_version,
            is_eager=True,
            help="Print the version and exit.",
        ),
    ] = None,
) -> None:
    """Policy-scoped, audited database tools for LLM agents."""


for _name, _command in COMMANDS.items():
    app.command(_name)(_command)
