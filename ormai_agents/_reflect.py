"""Policy models as they exist in a live database: mapped classes reflected from its tables.

Shared by `ormai-agents lint`, `ormai-agents schema --db` and `ormai-agents rls`, and kept apart
from the lint checks. Each policy model name is matched to a reflected table: an explicit entry in
`tables` ({"Order": "sales_orders"}) first, then the name as is, lower-cased, snake_case, and
snake_case plural (`OrderItem` → `OrderItem`, `orderitem`, `order_item`, `order_items`,
`order_itemes`; names ending in y also try `...ies`, e.g. `Category` → `categories`). Field
names are then column names.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import Boolean, MetaData, Table, inspect
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import DeclarativeBase

from ormai_agents._toolspecs import snake
from ormai_agents.policy import Policy

__all__ = ["Finding", "Severity", "reflect_models", "table_candidates"]

Severity = Literal["error", "warning"]


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem: a stable `code`, the model it concerns, what is wrong and how to fix it."""

    code: str
    model: str | None
    message: str
    fix: str = ""
    severity: Severity = "error"


def table_candidates(model: str) -> list[str]:
    """The table names tried for a policy model name, in order (see the module docstring)."""
    s = snake(model)
    plural = [s + "s", s + "es"] + ([s[:-1] + "ies"] if s.endswith("y") else [])
    return list(dict.fromkeys([model, model.lower(), s, *plural]))


def reflect_models(
    bind: Engine | Connection,
    policy: Policy,
    *,
    tables: Mapping[str, str] | None = None,
    schema: str | None = None,
) -> tuple[list[type], list[Finding]]:
    """Mapped classes named after the policy's models, built from the database's tables.

    Returns the classes and the findings for models that could not be mapped.
    """
    inspector = inspect(bind)
    existing = set(inspector.get_table_names(schema=schema)) | set(inspector.get_view_names(schema=schema))
    findings: list[Finding] = []

    class Reflected(DeclarativeBase):
        metadata = MetaData(schema=schema)

    classes: list[type] = []
    for name in policy.models:
        explicit = (tables or {}).get(name)
        candidates = [explicit] if explicit else table_candidates(name)
        table_name = next((t for t in candidates if t in existing), None)
        if table_name is None:
            findings.append(
                Finding(
                    "unknown-model",
                    name,
                    f"no table for model {name!r} (tried: {', '.join(candidates)})",
                    f"map it explicitly (--table {name}=TABLE), pass --models, or remove {name} from the policy",
                )
            )
            continue
        listeners = [("column_reflect", _reflected_type)]
        table = Table(table_name, Reflected.metadata, autoload_with=bind, listeners=listeners)
        if not table.primary_key.columns:
            findings.append(
                Finding(
                    "unmappable-table",
                    name,
                    f"table {table_name!r} has no primary key, so {name} can't be mapped",
                    "add a primary key, or pass the application's models with --models",
                )
            )
            continue
        classes.append(type(name, (Reflected,), {"__table__": table}))
    return classes, findings


def _reflected_type(inspector: Any, table: Any, info: dict[str, Any]) -> None:
    """MySQL and MariaDB store booleans as TINYINT(1): map them back to Boolean, so policy
    literals such as `is_public = true` fit the reflected column."""
    kind = info.get("type")
    if getattr(kind, "display_width", None) == 1 and type(kind).__name__ == "TINYINT":
        info["type"] = Boolean()
