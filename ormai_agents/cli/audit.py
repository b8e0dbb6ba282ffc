"""`ormai-agents audit`: a tenant's audit records, newest first, from a JSONL file or a SQL store."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ormai_agents.cli._common import (
    CliError,
    console,
    database_error,
    open_engine,
)


def audit(
    store: Annotated[
        str,
        typer.Option(
            metavar="jsonl:PATH|sql:URL",
            help="A JsonlAuditStore file or a SqlAuditStore database.",
        ),
    ],
    tenant: Annotated[str, typer.Option(help="The tenant whose records to show.")],
    limit: Annotated[
        int,
        typer.Option(min=1, max=100_000, help="Most records to show (newest first)."),
    ] = 50,
    user: Annotated[str | None, typer.Option(help="Only this user's records.")] = None,
    tool: Annotated[
        str | None,
        typer.Option(help="Only this tool's records (query, get, create, ...)."),
    ] = None,
    table_name: Annotated[
        str, typer.Option(metavar="NAME", help="Audit table name for sql: stores.")
    ] = "ormai_audit_log",
    as_json: Annotated[bool, typer.Option("--json", help="Print the records as JSON lines.")] = False,
) -> None:
    """The audit records of a tenant, newest first."""
    records, skipped = asyncio.run(_read_audit(store, tenant, limit, user, tool, table_name))
    if skipped:
        Console(stderr=True, highlight=False, soft_wrap=True).print(
            Text(f"warning: skipped {skipped} unreadable line(s) in the audit file", style="yellow")
        )
    if as_json:
        for record in records:
            # ensure_ascii: control characters and escape sequences are written as \u escapes.
            typer.echo(json.dumps(record.to_dict(), default=str))
        return
    con = console()
    if not records:
        con.print(Text(f"No audit records for tenant {shown(repr(tenant))}."))
        return
    con.print(
        audit_table(
            records,
            title=f"{len(records)} audit record(s) of tenant {tenant!r}, newest first",
        )
    )


# Characters a terminal acts on, or that change how the text around them reads: C0 and C1
# controls (ESC starts ANSI and OSC sequences), bidirectional and zero-width marks, line and
# paragraph separators, lone surrogates. Shown as visible escapes.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff\ud800-\udfff]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def shown(value: Any) -> str:
    """Text an agent or a host chose, safe on a terminal: unprintable characters as escapes.

    Print it through `rich.text.Text` (never as markup), so `[bold]` stays literal text."""
    return _UNPRINTABLE.sub(_escape, value if isinstance(value, str) else str(value))


def audit_table(records: list[Any], title: str, show_tenant: bool = False) -> Table:
    """A rich table of audit records.

    Every value is plain text: markup and terminal escape sequences in what an agent sent (or a
    host stored) are shown, never interpreted."""
    out = Table(title=Text(shown(title)))
    columns = [
        "time (UTC)",
        "tenant",
        "user",
        "tool",
        "model",
        "outcome",
        "rows",
        "scope injected",
        "policies",
        "ms",
    ]
    for col in columns if show_tenant else [c for c in columns if c != "tenant"]:
        out.add_column(col, overflow="fold")
    styles = {"success": "green", "denied": "red"}
    for r in records:
        outcome = Text(shown(r.outcome), style=styles.get(r.outcome, "yellow"))
        if r.error_code:
            outcome.append(f" ({shown(r.error_code)})")
        policies = Text(shown(", ".join(str(p) for p in r.policies_applied)))
        if r.bypass_used:
            policies.append(" bypass", style="bold")
        cells = [
            Text(r.timestamp.strftime("%Y-%m-%d %H:%M:%S")),
            *([Text(shown(r.tenant_id))] if show_tenant else []),
            Text(shown(r.user_id) if r.user_id is not None else ""),
            Text(shown(r.tool_name)),
            Text(shown(r.model or "")),
            outcome,
            Text("" if r.row_count is None else str(r.row_count)),
            Text(shown(" AND ".join(str(s) for s in r.scopes_injected))),
            policies,
            Text(f"{r.duration_ms:.1f}"),
        ]
        out.add_row(*cells)
    return out


def _as_typed(value: str | None) -> list[Any]:
    """Ids typed on a command line are text; records may hold them as numbers."""
    return [value] + ([int(value)] if value is not None and value.lstrip("-").isdigit() else [])


def _open_store(kind: str, target: str, table_name: str) -> tuple[Any, Any]:
    """The store a --store spec names, and the engine to dispose of afterwards (None for jsonl)."""
    from sqlalchemy import inspect
    from sqlalchemy.exc import SQLAlchemyError

    from ormai_agents.audit import JsonlAuditStore, SqlAuditStore

    if kind == "jsonl":
        if not Path(target).is_file():
            raise CliError(f"--store: no audit file at {shown(target)}")
        return JsonlAuditStore(target, max_bytes=None), None
    engine = open_engine(target, "--store sql:")
    try:
        if not inspect(engine).has_table(table_name):
            raise CliError(f"--store: the database has no audit table {shown(repr(table_name))}")
    except SQLAlchemyError as exc:
        engine.dispose()
        raise CliError(f"--store: {database_error(exc, target)}") from None
    except CliError:
        engine.dispose()
        raise
    return SqlAuditStore(engine, table_name=table_name, batch_size=1), engine


async def _read_audit(
    spec: str,
    tenant: str,
    limit: int,
    user: str | None,
    tool: str | None,
    table_name: str,
) -> tuple[list[Any], int]:
    from sqlalchemy.exc import SQLAlchemyError

    kind, sep, target = spec.partition(":")
    if not sep or not target or kind not in ("jsonl", "sql"):
        raise CliError("--store takes jsonl:PATH or sql:URL")
    store, engine = _open_store(kind, target, table_name)
    try:
        skipped = 0
        for t in _as_typed(tenant):
            for u in _as_typed(user):
                found = await store.query(tenant_id=t, user_id=u, tool_name=tool, limit=limit)
                skipped = max(skipped, getattr(store, "skipped_lines", 0))
                if found:
                    return list(found), skipped
        return [], skipped
    except SQLAlchemyError as exc:
        raise CliError(f"--store: {database_error(exc, target)}") from None
    finally:
        await store.aclose()
        if engine is not None:
            engine.dispose()
