"""`ormai-agents schema`: the tools and JSON schemas an agent would see, and the principal's scope."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table

from ormai_agents._errors import PolicyError
from ormai_agents.cli._common import (
    CliError,
    JsonOpt,
    ModelsOpt,
    PolicyOpt,
    SchemaOpt,
    TablesOpt,
    console,
    database,
    models_option,
    policy_option,
    principal_option,
    table_map,
)
from ormai_agents.policy import Policy


def schema(
    policy: PolicyOpt,
    principal: Annotated[
        str,
        typer.Option(
            metavar="JSON",
            help='The principal as JSON (or @file.json): {"tenant_id": "acme", ...}',
        ),
    ],
    models: ModelsOpt = None,
    db: Annotated[
        str | None,
        typer.Option(
            metavar="URL",
            help="Reflect the models from this database instead of --models.",
        ),
    ] = None,
    layout: Annotated[str, typer.Option(metavar="generic|per_model", help="Tool layout.")] = "generic",
    table: TablesOpt = None,
    db_schema: SchemaOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The tools and JSON schemas an agent would see, and the scope the principal gets."""
    from ormai_agents._toolspecs import build_tool_specs
    from ormai_agents.toolset import Toolset

    pol = policy_option(policy)
    if layout not in ("generic", "per_model"):
        raise CliError("--layout is generic or per_model")
    who = principal_option(principal)
    source = models_for(pol, models, db, table, db_schema)
    try:
        toolset = Toolset(source, pol)
    except PolicyError as exc:
        raise CliError(f"{exc}{_valid_names(source, pol)}") from None
    specs = build_tool_specs(toolset, layout=layout)  # type: ignore[arg-type]
    scopes = _scopes(toolset, who)
    if as_json:
        out = {
            "tools": [
                {
                    "name": s.name,
                    "description": s.description,
                    "parameters": s.parameters,
                }
                for s in specs
            ],
            "scopes": scopes,
        }
        typer.echo(json.dumps(out, indent=2))
        return
    _print(specs, scopes, layout, who)


def _scopes(toolset: Any, who: Any) -> dict[str, Any]:
    """Per model, what the principal's calls get: the injected scope, or why every call is denied."""
    from ormai_agents._errors import OrmAIError

    scopes: dict[str, Any] = {}
    for name in toolset.model_names:
        try:
            where = toolset.plan(name).where(who)
            scopes[name] = {
                "scopes": where.scopes,
                "policies": where.policies,
                "bypass": where.bypass,
            }
        except OrmAIError as exc:
            scopes[name] = {"denied": exc.message}
    return scopes


def _print(specs: Any, scopes: dict[str, Any], layout: str, who: Any) -> None:
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
            scope_table.add_row(
                name,
                " AND ".join(info["scopes"]) or "(none)",
                ", ".join(info["policies"]),
                "yes" if info["bypass"] else "",
            )
    con.print(scope_table)


def _valid_names(source: Any, pol: Policy) -> str:
    """`; the models are: A, B` when the policy names a model that isn't among them."""
    from sqlalchemy.orm import DeclarativeBase

    if isinstance(source, type) and issubclass(source, DeclarativeBase):
        names = sorted(m.class_.__name__ for m in source.registry.mappers)
    else:
        try:
            names = sorted(getattr(c, "__name__", str(c)) for c in source)
        except TypeError:
            return ""
    if set(pol.models) <= set(names):
        return ""
    return f" (the mapped classes are: {', '.join(names) or 'none'})"


def models_for(
    pol: Policy,
    models: str | None,
    db: str | None,
    table: list[str] | None,
    db_schema: str | None,
) -> Any:
    """The mapped classes from --models, or reflected from --db."""
    if models:
        return models_option(models)
    if db:
        from ormai_agents._reflect import reflect_models

        tables = table_map(table)
        with database(db) as engine:
            classes, findings = reflect_models(engine, pol, tables=tables, schema=db_schema)
        if findings:
            raise CliError("; ".join(f.message for f in findings))
        return classes
    raise CliError("give the models: --models module:Base, or --db URL to reflect them")
