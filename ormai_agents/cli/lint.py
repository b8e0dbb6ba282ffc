"""`ormai-agents lint`: check a policy against a live database (exit 1 on findings, for CI)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table

from ormai_agents.cli._common import (
    JsonOpt,
    ModelsOpt,
    PolicyOpt,
    SchemaOpt,
    TablesOpt,
    console,
    database,
    models_option,
    policy_option,
    table_map,
)


def lint(
    db: Annotated[
        str,
        typer.Option(metavar="URL", help="SQLAlchemy URL of the database to check against."),
    ],
    policy: PolicyOpt,
    models: ModelsOpt = None,
    table: TablesOpt = None,
    db_schema: SchemaOpt = None,
    ignore: Annotated[
        list[str] | None,
        typer.Option(metavar="CODE", help="A finding code to ignore (repeatable)."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Check a policy against a live database. Exits 1 when there are findings (for CI)."""
    from ormai_agents.lint import lint_policy

    pol = policy_option(policy)
    model_source = models_option(models)
    tables = table_map(table)
    with database(db) as engine:
        findings = lint_policy(pol, engine, models=model_source, tables=tables, schema=db_schema)
    skip = set(ignore or [])
    findings = [f for f in findings if f.code not in skip]
    if as_json:
        typer.echo(json.dumps([finding_dict(f) for f in findings], indent=2))
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
                out.add_row(
                    f"[{colour}]{f.severity}[/]",
                    f.code,
                    f.model or "",
                    f.message,
                    f.fix,
                )
            con.print(out)
    if findings:
        raise typer.Exit(1)


def finding_dict(f: Any) -> dict[str, Any]:
    return {
        "code": f.code,
        "severity": f.severity,
        "model": f.model,
        "message": f.message,
        "fix": f.fix,
    }
