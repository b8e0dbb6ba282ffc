"""What the commands share: errors, output, option types, and opening what the options name."""

from __future__ import annotations

import importlib
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from ormai_agents._context import Principal
from ormai_agents._errors import PolicyError

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from ormai_agents.policy import Policy


class CliError(Exception):
    """A failure the user can fix: printed as one line `error: ...` on stderr, exit status 2."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def one_line(text: str) -> str:
    """Several lines of a message joined into one."""
    parts = [line.strip() for line in str(text).splitlines() if line.strip()]
    return "; ".join(p.rstrip(":;") if i < len(parts) - 1 else p for i, p in enumerate(parts))


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print `error: message` as one line and return the Exit to raise (`raise fail(...)`)."""
    print_error(message)
    return typer.Exit(code)


def print_error(message: str) -> None:
    from rich.markup import escape

    # The message may hold brackets (`.[mysql]`, a policy's text): never markup.
    Console(stderr=True, highlight=False, soft_wrap=True).print(f"[bold red]error:[/] {escape(one_line(message))}")


def console() -> Console:
    """A console on the current stdout: the terminal's width, or $COLUMNS, or 140 when piped (logs, CI)."""
    width = int(os.environ.get("COLUMNS", "0") or 0) or None
    return Console(
        width=width if width else (None if sys.stdout.isatty() else 140),
        highlight=False,
    )


# --- option types ------------------------------------------------------------------------------

PolicyOpt = Annotated[
    Path,
    typer.Option("--policy", "-p", metavar="FILE", help="Policy file (.yaml, .yml or .json)."),
]
ModelsOpt = Annotated[
    str | None,
    typer.Option(
        "--models",
        "-m",
        metavar="MODULE:ATTR",
        help="Mapped classes to use: module.path:Base (or a list).",
    ),
]
TablesOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--table",
        metavar="MODEL=TABLE",
        help="Table of a reflected model whose table name isn't derived from its name.",
    ),
]
SchemaOpt = Annotated[
    str | None,
    typer.Option(
        "--schema",
        metavar="NAME",
        help="Database schema to reflect (default schema if omitted).",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]


# --- what the options name ---------------------------------------------------------------------


def load_models(spec: str) -> Any:
    """Import `module.path:Attribute` (a DeclarativeBase subclass or a list of mapped classes).

    The current directory is importable, as it is for `python -m`.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"--models takes module.path:Attribute, e.g. myapp.models:Base (got {spec!r})")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    module = importlib.import_module(module_name)
    value: Any = module
    for part in attr.split("."):
        value = getattr(value, part)
    return value


def models_option(models: str | None) -> Any:
    """The mapped classes named by --models (None when it was not given)."""
    if not models:
        return None
    try:
        return load_models(models)
    except (ImportError, AttributeError, ValueError) as exc:
        raise CliError(f"--models {models}: {exc}") from None


def parse_principal(text: str) -> Principal:
    """A Principal from JSON text, or from a JSON file given as `@path`."""
    if text.startswith("@"):
        text = Path(text[1:]).read_text(encoding="utf-8")
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(
            'the principal is a JSON object: {"tenant_id": ..., "user_id": ..., "roles": [...], "metadata": {...}}'
        )
    unknown = set(data) - {"tenant_id", "user_id", "roles", "metadata"}
    if unknown:
        names = ", ".join(sorted(unknown))
        raise ValueError(f"unknown principal keys: {names} (use tenant_id, user_id, roles, metadata)")
    try:
        return Principal(**data)
    except TypeError as exc:
        raise ValueError(str(exc)) from None


def principal_option(text: str) -> Principal:
    try:
        return parse_principal(text)
    except (ValueError, TypeError, OSError) as exc:
        raise CliError(f"--principal: {exc}") from None


def policy_option(path: Path) -> Policy:
    from ormai_agents.policy_file import load_policy

    try:
        return load_policy(path)
    except PolicyError as exc:
        raise CliError(str(exc)) from None


def table_map(items: list[str] | None) -> dict[str, str]:
    out = {}
    for item in items or []:
        model, sep, table = item.partition("=")
        if not sep or not model or not table:
            raise CliError(f"--table takes Model=table_name (got {item!r})")
        out[model] = table
    return out


# Async drivers an application's URL may name, and the sync twin that reflection uses.
_SYNC_TWINS = {
    "sqlite+aiosqlite": "sqlite",
    "postgresql+asyncpg": "postgresql+psycopg",
    "mysql+aiomysql": "mysql+pymysql",
}
# backend: (the extra with its drivers, those drivers, the URL form that names the sync one)
_EXTRAS = {
    "postgresql": ("postgres", ("psycopg", "asyncpg"), "postgresql+psycopg"),
    "mysql": ("mysql", ("pymysql", "aiomysql"), "mysql+pymysql"),
    "mariadb": ("mysql", ("pymysql", "aiomysql"), "mariadb+pymysql"),
}


def _safe(url: Any) -> str:
    return str(url.render_as_string(hide_password=True))


def open_engine(url: str, option: str = "--db") -> Engine:
    """A sync engine for the URL of an existing database; `CliError` when it can't be one.

    A SQLite file must already exist: reading a database never creates one.
    """
    from sqlalchemy import create_engine, make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        raise CliError(
            f"{option}: {url!r} is not a database URL (e.g. sqlite:///app.db, postgresql://user@127.0.0.1/app)"
        ) from None
    if parsed.drivername in _SYNC_TWINS:
        parsed = parsed.set(drivername=_SYNC_TWINS[parsed.drivername])
    backend = parsed.get_backend_name()
    database = parsed.database
    if backend == "sqlite" and database and database != ":memory:" and not database.startswith("file:"):
        path = Path(database)
        if not path.is_file():
            where = "" if path.parent.is_dir() else f" (the directory {path.parent} does not exist)"
            raise CliError(f"{option}: no SQLite database at {path}{where}")
    try:
        return create_engine(parsed)
    except ImportError as exc:
        hint = ""
        if backend in _EXTRAS:
            extra, drivers, form = _EXTRAS[backend]
            hint = f': pip install -e ".[{extra}]"'
            if parsed.get_driver_name() not in drivers:  # e.g. mysql:// means MySQLdb, which no extra installs
                hint = f": write the URL as {form}://... and{hint[1:]}"
        driver = exc.name or exc
        raise CliError(f"{option} {_safe(parsed)}: the database driver {driver} is not installed{hint}") from None
    except ArgumentError as exc:
        raise CliError(f"{option} {_safe(parsed)}: {exc}") from None


def database_error(exc: BaseException, url: str) -> str:
    """One line naming the cause: the driver's first line (connection refused, no such database,
    authentication failed), never SQL or parameters."""
    from sqlalchemy import make_url

    orig = getattr(exc, "orig", None) or exc
    first = next((line.strip() for line in str(orig).splitlines() if line.strip()), "") or type(orig).__name__
    try:
        where = _safe(make_url(url))
    except Exception:  # noqa: BLE001 - the URL was already used; show nothing of it rather than fail here
        where = "the database"
    return f"{where}: {first}"


@contextmanager
def database(url: str, option: str = "--db") -> Iterator[Engine]:
    """An engine for `url`, disposed at the end; a database error inside becomes one line."""
    from sqlalchemy.exc import SQLAlchemyError

    engine = open_engine(url, option)
    try:
        yield engine
    except SQLAlchemyError as exc:
        raise CliError(database_error(exc, url)) from None
    finally:
        engine.dispose()
