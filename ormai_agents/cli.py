"""The `ormai-agents` command: demo, schema, lint, rls, audit and mcp.

Commands are registered on `app` (a Typer application); other modules add theirs with
`@app.command()`. Heavy imports (frameworks, the demo) happen inside the commands, so
`ormai-agents --help` stays fast.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from ormai_agents._context import Principal
from ormai_agents._errors import PolicyError
from ormai_agents.policy import Policy
from ormai_agents.policy_file import load_policy

__all__ = ["app", "load_models", "main", "parse_principal"]

app = typer.Typer(
    name="ormai-agents",
    help="Policy-scoped, audited database tools for LLM agents: demo, schema, lint and audit.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def console() -> Console:
    """A console on the current stdout (wide enough for tables in logs and CI)."""
    width = int(os.environ.get("COLUMNS", "0") or 0) or None
    return Console(width=width if width else (None if sys.stdout.isatty() else 140), highlight=False)


def fail(message: str, code: int = 2) -> typer.Exit:
    Console(stderr=True, highlight=False).print(f"[bold red]error:[/] {message}", soft_wrap=True)  # one line
    return typer.Exit(code)


# --- shared option parsing ---------------------------------------------------------------------


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


def parse_principal(text: str) -> Principal:
    """A Principal from JSON text, or from a JSON file given as `@path`."""
    if text.startswith("@"):
        text = Path(text[1:]).read_text(encoding="utf-8")
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("the principal is a JSON object: {\"tenant_id\": ..., \"user_id\": ..., \"roles\": [...], \"metadata\": {...}}")
    unknown = set(data) - {"tenant_id", "user_id", "roles", "metadata"}
    if unknown:
        raise ValueError(f"unknown principal keys: {', '.join(sorted(unknown))} (use tenant_id, user_id, roles, metadata)")
    try:
        return Principal(**data)
    except TypeError as exc:
        raise ValueError(str(exc)) from None


def _sync_url(url: str) -> str:
    """Reflection needs a sync driver: swap the async ones for their sync twins."""
    from sqlalchemy import make_url

    parsed = make_url(url)
    swap = {"sqlite+aiosqlite": "sqlite", "postgresql+asyncpg": "postgresql+psycopg"}
    if parsed.drivername in swap:
        parsed = parsed.set(drivername=swap[parsed.drivername])
    return parsed.render_as_string(hide_password=False)


def _table_map(items: list[str] | None) -> dict[str, str]:
    out = {}
    for item in items or []:
        model, sep, table = item.partition("=")
        if not sep or not model or not table:
            raise ValueError(f"--table takes Model=table_name (got {item!r})")
        out[model] = table
    return out


def _policy(path: Path) -> Policy:
    try:
        return load_policy(path)
    except PolicyError as exc:
        raise fail(str(exc)) from None


PolicyOpt = Annotated[Path, typer.Option("--policy", "-p", help="Policy file (.yaml, .yml or .json).")]
ModelsOpt = Annotated[
    Optional[str], typer.Option("--models", "-m", help="Mapped classes to use: module.path:Base (or a list).")
]
TablesOpt = Annotated[
    Optional[list[str]],
    typer.Option("--table", help="Model=table for reflected models whose table name isn't derived from the model name."),
]
SchemaOpt = Annotated[Optional[str], typer.Option("--schema", help="Database schema to reflect (default schema if omitted).")]


# --- demo --------------------------------------------------------------------------------------


@app.command()
def demo(
    db: Annotated[
        Optional[Path], typer.Option(help="Keep the demo's SQLite database at this path (default: a temporary file).")
    ] = None,
) -> None:
    """Play a scripted agent conversation for two tenants (offline) and show what was allowed."""
    from rich.panel import Panel

    from ormai_agents._toolspecs import render
    from ormai_agents.demo import PRINCIPALS, run_demo

    con = console()
    con.print(
        Panel.fit(
            "A shop with two tenants, [bold]acme[/] and [bold]globex[/], in an embedded SQLite database.\n"
            "A LangChain agent (create_agent) with a scripted model (offline, no LLM) gets tools bound\n"
            "to one tenant's user, then tries the other tenant's rows, a denied field and writes.",
            title="ormai-agents demo",
        )
    )
    report = run_demo(db)
    for tenant in ("acme", "globex"):
        who = PRINCIPALS[tenant]
        steps = Table(title=f"Agent of {tenant} (user {who.user_id}): tool calls and results", show_lines=True)
        for col in ("#", "intent", "tool call", "result"):
            steps.add_column(col, overflow="fold")
        for i, step in enumerate((s for s in report.steps if s.tenant == tenant), 1):
            result = render(step.result)
            if len(result) > 260:
                result = result[:257] + "..."
            mark = "[green]ok[/]" if step.ok else "[red]refused[/]"
            steps.add_row(str(i), step.label, f"{step.tool}({render(step.arguments)})", f"{mark} {result}")
        con.print(steps)
        con.print(f"[dim]agent's answer:[/] {report.answers.get(tenant, '')}\n")
    con.print(audit_table(report.audit, title="Audit trail (oldest first)", show_tenant=True))
    checks = Table(title="What the demo checked")
    checks.add_column("")
    checks.add_column("check", overflow="fold")
    for text, ok in report.checks:
        checks.add_row("[green]✓[/]" if ok else "[red]✗[/]", text)
    con.print(checks)
    if db is not None:
        con.print(f"The database is kept at {db}.")
    if not report.passed:
        raise fail("a demo check failed", code=1)


# --- schema ------------------------------------------------------------------------------------


@app.command()
def schema(
    policy: PolicyOpt,
    principal: Annotated[str, typer.Option(help='The principal as JSON (or @file.json): {"tenant_id": "acme", ...}')],
    models: ModelsOpt = None,
    db: Annotated[Optional[str], typer.Option(help="Reflect models from this database instead of --models.")] = None,
    layout: Annotated[str, typer.Option(help="Tool layout: generic or per_model.")] = "generic",
    table: TablesOpt = None,
    db_schema: SchemaOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the tools as JSON.")] = False,
) -> None:
    """The tools and JSON schemas an agent would see, and the scope the principal gets."""
    from ormai_agents._errors import OrmAIError
    from ormai_agents._toolspecs import build_tool_specs
    from ormai_agents.toolset import Toolset

    pol = _policy(policy)
    if layout not in ("generic", "per_model"):
        raise fail("--layout is generic or per_model")
    try:
        who = parse_principal(principal)
    except (ValueError, TypeError, OSError) as exc:
        raise fail(f"--principal: {exc}") from None
    source = _models_for(pol, models, db, table, db_schema)
    try:
        toolset = Toolset(source, pol)
    except PolicyError as exc:
        raise fail(str(exc)) from None
    specs = build_tool_specs(toolset, layout=layout)  # type: ignore[arg-type]
    scopes: dict[str, Any] = {}
    for name in toolset.model_names:
        try:
            where = toolset.plan(name).where(who)
            scopes[name] = {"scopes": where.scopes, "policies": where.policies, "bypass": where.bypass}
        except OrmAIError as exc:
            scopes[name] = {"denied": exc.message}
    if as_json:
        out = {
            "tools": [{"name": s.name, "description": s.description, "parameters": s.parameters} for s in specs],
            "scopes": scopes,
        }
        typer.echo(json.dumps(out, indent=2))
        return
    from rich.json import JSON

    con = console()
    tools = Table(title=f"{len(specs)} tools ({layout} layout)", show_lines=False)
    for col in ("tool", "runs", "description"):
        tools.add_column(col, overflow="fold")
    for s in specs:
        runs = s.method + (f" {s.model}" if s.model else "") + (" (approval)" if s.requires_approval else "")
        tools.add_row(s.name, runs, s.description)
    con.print(tools)
    for s in specs:
        con.rule(f"[bold]{s.name}")
        con.print(JSON(json.dumps(s.parameters)))
    scope_table = Table(title=f"Scope for principal {who.to_dict()}")
    for col in ("model", "injected", "row policies", "bypass"):
        scope_table.add_column(col, overflow="fold")
    for name, info in scopes.items():
        if "denied" in info:
            scope_table.add_row(name, "[red]every call denied[/]", info["denied"], "")
        else:
            scope_table.add_row(name, " AND ".join(info["scopes"]) or "(none)", ", ".join(info["policies"]), "yes" if info["bypass"] else "")
    con.print(scope_table)


def _models_option(models: str | None) -> Any:
    """The mapped classes named by --models (None when it was not given); exit 2 when it is wrong."""
    if not models:
        return None
    try:
        return load_models(models)
    except (ImportError, AttributeError, ValueError) as exc:
        raise fail(f"--models {models}: {exc}") from None


def _models_for(pol: Policy, models: str | None, db: str | None, table: list[str] | None, db_schema: str | None) -> Any:
    if models:
        return _models_option(models)
    if db:
        from sqlalchemy import create_engine

        from ormai_agents.lint import reflect_models

        try:
            tables = _table_map(table)
        except ValueError as exc:
            raise fail(str(exc)) from None
        engine = create_engine(_sync_url(db))
        try:
            classes, findings = reflect_models(engine, pol, tables=tables, schema=db_schema)
        finally:
            engine.dispose()
        if findings:
            raise fail("; ".join(f.message for f in findings))
        return classes
    raise fail("give the models: --models module:Base, or --db URL to reflect them")


# --- lint --------------------------------------------------------------------------------------


@app.command()
def lint(
    db: Annotated[str, typer.Option(help="SQLAlchemy URL of the database to check against.")],
    policy: PolicyOpt,
    models: ModelsOpt = None,
    table: TablesOpt = None,
    db_schema: SchemaOpt = None,
    ignore: Annotated[Optional[list[str]], typer.Option(help="A finding code to ignore (repeatable).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the findings as JSON.")] = False,
) -> None:
    """Check a policy against a live database. Exits 1 when there are findings (for CI)."""
    from sqlalchemy import create_engine

    from ormai_agents.lint import lint_policy

    pol = _policy(policy)
    model_source = _models_option(models)
    try:
        tables = _table_map(table)
    except ValueError as exc:
        raise fail(str(exc)) from None
    try:
        engine = create_engine(_sync_url(db))
    except Exception as exc:  # noqa: BLE001 - a bad URL or a missing driver
        raise fail(f"--db: {type(exc).__name__}: {exc}") from None
    try:
        findings = lint_policy(pol, engine, models=model_source, tables=tables, schema=db_schema)
    except Exception as exc:  # noqa: BLE001 - connection refused, permissions: say so, exit 2
        from sqlalchemy.exc import SQLAlchemyError

        if not isinstance(exc, SQLAlchemyError):
            raise
        raise fail(f"can't inspect the database: {type(exc).__name__}") from None
    finally:
        engine.dispose()
    skip = set(ignore or [])
    findings = [f for f in findings if f.code not in skip]
    if as_json:
        typer.echo(json.dumps([_finding_dict(f) for f in findings], indent=2))
    else:
        con = console()
        if not findings:
            con.print(f"[green]✓[/] {policy}: no findings ({len(pol.models)} models checked)")
        else:
            out = Table(title=f"{len(findings)} finding(s) in {policy}", show_lines=True)
            for col in ("severity", "code", "model", "problem", "fix"):
                out.add_column(col, overflow="fold")
            for f in findings:
                colour = "red" if f.severity == "error" else "yellow"
                out.add_row(f"[{colour}]{f.severity}[/]", f.code, f.model or "", f.message, f.fix)
            con.print(out)
    if findings:
        raise typer.Exit(1)


# --- rls ---------------------------------------------------------------------------------------


@app.command()
def rls(
    policy: PolicyOpt,
    db: Annotated[str, typer.Option(help="SQLAlchemy URL of the PostgreSQL database.")],
    models: ModelsOpt = None,
    table: TablesOpt = None,
    db_schema: SchemaOpt = None,
    apply: Annotated[bool, typer.Option("--apply", help="Run the DDL in one transaction (as the tables' owner).")] = False,
    allow_unsupported: Annotated[
        bool, typer.Option("--allow-unsupported", help="Apply even when part of the policy can't be expressed.")
    ] = False,
) -> None:
    """PostgreSQL row-level security DDL generated from the policy (see ormai_agents.rls).

    Prints the DDL; exits 1 when part of the policy can't be expressed in SQL (listed on stderr).
    """
    from sqlalchemy import create_engine
    from sqlalchemy.exc import SQLAlchemyError

    from ormai_agents.rls import generate_rls_for_database

    pol = _policy(policy)
    model_source = _models_option(models)
    try:
        tables = _table_map(table)
        engine = create_engine(_sync_url(db))
    except Exception as exc:  # noqa: BLE001 - a bad URL or a missing driver
        raise fail(f"{type(exc).__name__}: {exc}") from None
    try:
        plan = generate_rls_for_database(pol, engine, models=model_source, tables=tables, schema=db_schema)
        if apply and (allow_unsupported or not plan.unsupported):
            with engine.begin() as conn:
                plan.apply(conn)
    except PolicyError as exc:
        raise fail(str(exc)) from None
    except SQLAlchemyError as exc:
        raise fail(f"the database refused: {type(exc).__name__}") from None
    finally:
        engine.dispose()
    typer.echo(plan.sql, nl=False)
    err = Console(stderr=True, highlight=False)
    if plan.unsupported:
        out = Table(title=f"{len(plan.unsupported)} rule(s) the database will NOT enforce", show_lines=True)
        for col in ("model", "rule", "why"):
            out.add_column(col, overflow="fold")
        for u in plan.unsupported:
            out.add_row(u.model, u.rule, u.reason)
        err.print(out)
        if apply and not allow_unsupported:
            err.print("[red]Nothing applied[/]: fix the rules above or pass --allow-unsupported.")
        raise typer.Exit(1)
    if apply:
        err.print(f"[green]✓[/] applied {len(plan.statements)} statements")


def _finding_dict(f: Any) -> dict[str, Any]:
    return {"code": f.code, "severity": f.severity, "model": f.model, "message": f.message, "fix": f.fix}


# --- audit -------------------------------------------------------------------------------------


@app.command()
def audit(
    store: Annotated[str, typer.Option(help="jsonl:PATH (a JsonlAuditStore file) or sql:URL (a SqlAuditStore database).")],
    tenant: Annotated[str, typer.Option(help="The tenant whose records to show.")],
    limit: Annotated[int, typer.Option(min=1, max=100_000, help="Most records to show (newest first).")] = 50,
    user: Annotated[Optional[str], typer.Option(help="Only this user's records.")] = None,
    tool: Annotated[Optional[str], typer.Option(help="Only this tool's records (query, get, create, ...).")] = None,
    table_name: Annotated[str, typer.Option(help="Audit table name for sql: stores.")] = "ormai_audit_log",
    as_json: Annotated[bool, typer.Option("--json", help="Print the records as JSON lines.")] = False,
) -> None:
    """The audit records of a tenant, newest first."""
    import asyncio

    records = asyncio.run(_read_audit(store, tenant, limit, user, tool, table_name))
    if as_json:
        for record in records:
            typer.echo(json.dumps(record.to_dict(), default=str))
        return
    con = console()
    if not records:
        con.print(f"No audit records for tenant {tenant!r}.")
        return
    con.print(audit_table(records, title=f"{len(records)} audit record(s) of tenant {tenant!r}, newest first"))


def audit_table(records: list[Any], title: str, show_tenant: bool = False) -> Table:
    """A rich table of audit records (also used by the demo)."""
    out = Table(title=title)
    columns = ["time (UTC)", "tenant", "user", "tool", "model", "outcome", "rows", "scope injected", "policies", "ms"]
    for col in columns if show_tenant else [c for c in columns if c != "tenant"]:
        out.add_column(col, overflow="fold")
    for r in records:
        outcome = {"success": "[green]success[/]", "denied": "[red]denied[/]"}.get(r.outcome, f"[yellow]{r.outcome}[/]")
        if r.error_code:
            outcome += f" ({r.error_code})"
        policies = ", ".join(r.policies_applied) + (" [bold]bypass[/]" if r.bypass_used else "")
        cells = [
            r.timestamp.strftime("%H:%M:%S.%f")[:-3],
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


async def _read_audit(spec: str, tenant: str, limit: int, user: str | None, tool: str | None, table_name: str) -> list[Any]:
    from ormai_agents.audit import JsonlAuditStore, SqlAuditStore

    kind, sep, target = spec.partition(":")
    if not sep or not target or kind not in ("jsonl", "sql"):
        raise fail("--store takes jsonl:PATH or sql:URL")
    # Ids typed on a command line are text; records may hold them as numbers.
    tenants: list[Any] = [tenant] + ([int(tenant)] if tenant.lstrip("-").isdigit() else [])
    users: list[Any] = [user] + ([int(user)] if user is not None and user.lstrip("-").isdigit() else [])
    if kind == "jsonl":
        if not Path(target).exists():
            raise fail(f"no audit file at {target}")
        store: Any = JsonlAuditStore(target, max_bytes=None)
        engine = None
    else:
        from sqlalchemy import create_engine, inspect

        engine = create_engine(_sync_url(target))
        try:
            if not inspect(engine).has_table(table_name):
                raise fail(f"the database has no audit table {table_name!r}")
        except Exception as exc:
            from sqlalchemy.exc import SQLAlchemyError

            engine.dispose()
            if isinstance(exc, SQLAlchemyError):
                raise fail(f"can't open the audit database: {type(exc).__name__}") from None
            raise
        store = SqlAuditStore(engine, table_name=table_name, batch_size=1)
    try:
        for t in tenants:
            for u in users:
                found = await store.query(tenant_id=t, user_id=u, tool_name=tool, limit=limit)
                if found:
                    return list(found)
        return []
    finally:
        await store.aclose()
        if engine is not None:
            engine.dispose()


# --- mcp (ormai_agents._mcp_command) ---------------------------------------------------------

from ormai_agents._mcp_command import mcp as _mcp  # noqa: E402 - it imports this module's helpers lazily

app.command(name="mcp")(_mcp)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
