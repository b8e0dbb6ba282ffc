"""The principal as PostgreSQL settings: the runtime half of row-level security.

`Toolset(..., rls=True)` sets these transaction-local settings at the start of every call; the
policies `ormai_agents.rls` generates read them. Kept apart from the DDL generator so a call
loads only this.

The settings and how each principal value is encoded are listed in `ormai_agents.rls`. An
empty string means unset: no rows.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import re
import uuid
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from sqlalchemy import Text, func, literal, select, true

from ormai_agents import _conditions as c
from ormai_agents._context import Principal

if TYPE_CHECKING:
    from ormai_agents._plan import ModelPlan

__all__ = ["PREFIX", "principal_settings", "setting_name", "settings_paths", "settings_statement"]

PREFIX = "ormai"
_GUC_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def setting_name(path: tuple[str, ...]) -> str | None:
    """The setting that carries a principal path, or None when PostgreSQL can't name it
    (a metadata key that is not a simple identifier, such as one with a dash)."""
    if path[0] != "metadata":
        return f"{PREFIX}.{path[0]}"
    if not all(_GUC_KEY.match(k) for k in path[1:]):
        return None
    return ".".join((PREFIX, *path))


def settings_paths(plans: Mapping[str, ModelPlan]) -> list[tuple[str, ...]]:
    """Every principal path the plans read: tenant_id, user_id, roles, and metadata paths."""
    paths: dict[tuple[str, ...], None] = dict.fromkeys(_BASE_PATHS)
    for plan in plans.values():
        for _, _, path, _ in plan.scoping:
            paths[path] = None
        for compiled in (*plan.bypasses, *plan.permits, *plan.restricts):
            for op in c.operands(compiled.condition.tree):
                if isinstance(op, c.Ref):
                    paths[op.path] = None
    return list(paths)


def _scalar_text(value: Any) -> str | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, str):
        return value or None
    if isinstance(value, (int, float, decimal.Decimal, uuid.UUID)):
        return str(value)
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    return None


def _json_scalar(value: Any) -> Any:
    """A JSON-ready string or number, or None for anything else."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return value
    return _scalar_text(value)


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((_plain(v) for v in value), key=str)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _encode(path: tuple[str, ...], value: Any) -> str:
    if path[0] in ("tenant_id", "user_id"):
        return _scalar_text(value) or ""
    if path[0] == "roles":
        return json.dumps([str(r) for r in value or ()])
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [_json_scalar(v) for v in value]
        if any(v is None for v in items):
            return ""  # the toolset denies such a list; so does the database
        return json.dumps(sorted(items, key=str) if isinstance(value, (set, frozenset)) else items)
    if isinstance(value, bool):
        return json.dumps(value)  # compared as in Python; never a scope value
    if isinstance(value, Mapping):
        return json.dumps(_plain(value))  # equal to nothing but itself; never a scope value
    one = _json_scalar(value)
    return "" if one is None else json.dumps(one)


def _metadata_leaves(value: Any, prefix: tuple[str, ...]) -> Iterable[tuple[str, ...]]:
    for key, item in value.items():
        path = (*prefix, str(key))
        if isinstance(item, Mapping):
            yield from _metadata_leaves(item, path)
        else:
            yield path


_BASE_PATHS = (("tenant_id",), ("user_id",), ("roles",))


def principal_settings(principal: Principal, paths: Iterable[tuple[str, ...]] = _BASE_PATHS) -> dict[str, str]:
    """The setting values for a principal: tenant_id, user_id, roles and the given paths (every
    one is set, so a value from an earlier call in the same transaction is overwritten), and the
    principal's own metadata values. An empty string means unset: no rows.

    `session.execute(settings_statement(principal_settings(principal)))` makes your own
    statements in that transaction run under the row-level security of that principal.
    """
    out: dict[str, str] = {}
    folded_names: dict[str, str] = {}  # setting names are case-insensitive in PostgreSQL
    all_paths = dict.fromkeys((*_BASE_PATHS, *paths))
    all_paths.update(dict.fromkeys(_metadata_leaves(principal.metadata, ("metadata",))))
    for path in all_paths:
        name = setting_name(path)
        if name is None:
            continue
        value = _encode(path, principal.resolve(path))
        first = folded_names.setdefault(name.lower(), name)
        if first != name:
            if out[first] != value:
                out[first] = ""  # two keys PostgreSQL can't tell apart: neither is usable
            continue
        out[name] = value
    return out


def settings_statement(values: Mapping[str, str]) -> Any:
    """One SELECT that sets every value transaction-locally, names and values bound."""
    return select(
        *(func.set_config(literal(n, Text()), literal(v, Text()), true()) for n, v in values.items())
    )
