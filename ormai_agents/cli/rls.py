"""`ormai-agents rls`: PostgreSQL row-level security DDL generated from the policy."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from ormai_agents._errors import PolicyError
from ormai_agents.cli._common import (
    CliError,
    ModelsOpt,
    PolicyOpt,
    SchemaOpt,
    TablesOpt,
    database,
    models_option,
    policy_option,
    table_map,
)


def rls(
    policy: PolicyOpt,
    db: Annotated[
        str,
        typer.Option(metavar="URL", help="SQLAlchemy URL of the PostgreSQL database."),
    ],
    models: ModelsOpt = None,
    table: TablesOpt = None,
    db_schema: SchemaOpt = None,
    apply: Annotated[
        bool,
        typer.Option("--apply", help="Run the DDL in one transaction (as the tables' owner)."),
    ] = False,
    allow_unsupported: Annotated[
        bool,
        typer.Option(
            "--allow-unsupported",
            help="Apply even when part of the policy can't be expressed.",
        ),
    ] = False,
) -> None:
    """PostgreSQL row-level security DDL generated from the policy (see ormai_agents.rls).

    Prints the DDL; exits 1 when part of the policy can't be expressed in SQL (listed on stderr).
    """
    from ormai_agents.rls import generate_rls_for_database

    pol = policy_option(policy)
    model_source = models_option(models)
    tables = table_map(table)
    with database(db) as engine:
        try:
            plan = generate_rls_for_database(pol, engine, models=model_source, tables=tables, schema=db_schema)
        except PolicyError as exc:
            raise CliError(str(exc)) from None
        if apply and (allow_unsupported or not plan.unsupported):
            with engine.begin() as conn:
                plan.apply(conn)
    typer.echo(plan.sql, nl=False)
    err = Console(stderr=True, highlight=False)
    if plan.unsupported:
        out = Table(
            title=f"{len(plan.unsupported)} rule(s) the database will NOT enforce",
            show_lines=True,
        )
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
