"""What toolset calls return. Plain data: the adapters serialize it for the model."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class QueryResult:
    """Rows of a `query` call, and the cursor of the next page (None on the last page).

    `truncated` is True when more rows matched but the model can't be paged (it has no plainly
    readable unique key to order by): narrow the filters to see the others.
    """

    rows: list[dict[str, Any]]
    next_cursor: str | None = None
    truncated: bool = False

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"rows": self.rows, "next_cursor": self.next_cursor}
        if self.truncated:
            out["truncated"] = True
        return out


@dataclass(frozen=True, slots=True)
class GetResult:
    """The row of a `get` call."""

    data: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"data": self.data}


@dataclass(frozen=True, slots=True)
class AggregateResult:
    """`value` for a plain aggregate; `groups` (one dict per group, with `value`) with group_by.

    `truncated` is True when there were more groups than the model's `max_rows`: the first
    `max_rows` groups, in group-key order, are returned.
    """

    value: Any = None
    groups: list[dict[str, Any]] | None = None
    truncated: bool = False

    def to_dict(self) -> dict[str, Any]:
        if self.groups is not None:
            return {"groups": self.groups, "truncated": True} if self.truncated else {"groups": self.groups}
        return {"value": self.value}


@dataclass(frozen=True, slots=True)
class WriteResult:
    """The written row as the principal may see it (`{"updated_count": n}` for bulk updates)."""

    data: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"data": self.data}


@dataclass(frozen=True, slots=True)
class SchemaResult:
    """What `describe_schema` returns: the models, fields and relationships the agent may use."""

    models: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"models": self.models}


def page_records(page: str | Mapping[str, Any]) -> list[dict[str, Any]]:
    """The records of a query page as a tool returned it to the model (its JSON text or the
    parsed object): `columns` and `rows` zipped, with `same_for_all_rows` added to each."""
    if isinstance(page, str):
        page = json.loads(page)
    if not isinstance(page, Mapping) or not isinstance(page.get("rows"), list):
        raise TypeError("not a query page: expected an object with rows")
    if "columns" not in page:
        return [dict(r) for r in page["rows"]]
    same = dict(page.get("same_for_all_rows") or {})
    columns = list(page["columns"])
    return [{**same, **dict(zip(columns, row, strict=False))} for row in page["rows"]]


__all__ = ["AggregateResult", "GetResult", "QueryResult", "SchemaResult", "WriteResult", "page_records"]
