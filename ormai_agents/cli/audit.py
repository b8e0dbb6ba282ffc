"""`ormai-agents audit`: a tenant's audit records, newest first, from a JSONL file or a SQL store."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

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
    user: Annotated[Optional[str], typer.Option(help="Only this user's records.")] = None,
    tool: Annotated[
        Optional[str],
        typer.Option(help="Only this tool's records (query, get, create, ...)."),
    ] = None,
    table_name: Annotated[str, typer.Option(metavar="NAME", help="Audit table name for sql: stores.")] = "ormai_audit_log",
    as_json: Annotated[bool, typer.Option("--json", help="Print the records as JSON lines.")] = False,
) -> None:
    """The audit records of a tenant, newest first."""
    records = asyncio.run(_read_audit(store, tenant, limit, user, tool, table_name))
    if as_json:
        for record in records:
            typer.echo(json.dumps(record.to_dict(), default=str))
        return
    con = console()
    if not records:
        con.print(f"No audit records for tenant {tenant!r}.")
        return
    con.print(
        audit_table(
            records,
            title=f"{len(records)} audit record(s) of tenant {tenant!r}, newest first",
        )
    )


def audit_table(records: list[Any], title: str, show_tenant: bool = False) -> Table:
    """A rich table of audit records."""
    out = Table(title=title)
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
    for r in records:
        outcome = {"success": "[green]success[/]", "denied": "[red]denied[/]"}.get(r.outcome, f"[yellow]{r.outcome}[/]")
        if r.error_code:
            outcome += f" ({r.error_code})"
        policies = ", ".join(r.policies_applied) + (" [bold]bypass[/]" if r.bypass_used else "")
        cells = [
            r.timestamp.strftime("%Y-%m-%d %H:%M:%S"),
            *([str(r.tenant_id)] if show_tenant else []),
            str(r.user_id) if r.user_id is not None else "",
            r.tool_name,
            r.model or "",
            outcome,
            "" if r.row_count is None else str(r.row_count),
            " AND ".join(r.scopes_injected),
            policies,
            f"{r.duration_ms:.1f}",
        ]
        out.add_row(*cells)
    return out


async def _read_audit(
    spec: str,
    tenant: str,
    limit: int,
    user: str | None,
    tool: str | None,
    table_name: str,
) -> list[Any]:
    from sqlalchemy.exc import SQLAlchemyError

    from ormai_agents.audit import JsonlAuditStore, SqlAuditStore

    kind, sep, target = spec.partition(":")
    if not sep or not target or kind not in ("jsonl", "sql"):
        raise CliError("--store takes jsonl:PATH or sql:URL")
    # Ids typed on a command line are text; records may hold them as numbers.
    tenants: list[Any] = [tenant] + ([int(tenant)] if tenant.lstrip("-").isdigit() else [])
    users: list[Any] = [user] + ([int(user)] if user is not None and user.lstrip("-").isdigit() else [])
    engine = None
    if kind == "jsonl":
        if not Path(target).is_file():
            raise CliError(f"--store: no audit file at {target}")
        store: Any = JsonlAuditStore(target, max_bytes=None)
    else:
        from sqlalchemy import inspect

        engine = open_engine(target, "--store sql:")
        try:
            if not inspect(engine).has_table(table_name):
                raise CliError(f"--store: the database has no audit table {table_name!r}")
        except SQLAlchemyError as exc:
            engine.dispose()
            raise CliError(f"--store: {database_error(exc, target)}") from None
        except CliError:
            engine.dispose()
            raise
        store = SqlAuditStore(engine, table_name=table_name, batch_size=1)
    try:
        for t in tenants:
            for u in users:
                found = await store.query(tenant_id=t, user_id=u, tool_name=tool, limit=limit)
                if found:
                    return list(found)
        return []
    except SQLAlchemyError as exc:
        raise CliError(f"--store: {database_error(exc, target)}") from None
    finally:
        await store.aclose()
        if engine is not None:
            engine.dispose()
