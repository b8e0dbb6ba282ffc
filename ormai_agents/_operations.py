"""The operations an agent may call and the filter operators it may use, as data.

One table each: the argument parser (`_inputs`), the write path (`_writes`), the tool builder
(`_toolspecs`) and `describe_schema` all read them, so adding an operator or an argument is one
entry here, and the schema the model is shown can't drift from what the toolset accepts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

# What a filter's value looks like for an operator:
#   value: one value of the field's type      list: a list of such values
#   pair:  [low, high]                        flag: true/false (null means true)
#   text:  a text fragment (text fields only)
ValueShape = Literal["value", "list", "pair", "flag", "text"]


@dataclass(frozen=True, slots=True)
class FilterOperator:
    """One filter operator: the shape of its value, its SQL clause and how the model is told."""

    name: str
    shape: ValueShape
    text: str  # what it means, for tool schemas and docs
    clause: Callable[[Any, Any], Any]  # (column, coerced value) -> SQLAlchemy boolean clause
    # A text operator's LIKE pattern around the value, for statements that bind the whole pattern
    # as one parameter (the read path's cached statements); `clause` escapes the same way.
    like: tuple[str, str] | None = None

    @property
    def comparable_only(self) -> bool:
        """Only fields with comparable values take it (everything but is_null)."""
        return self.shape != "flag"

    def pattern(self, text: str) -> str:
        """`text` as this text operator's LIKE pattern, matching it literally (escape character '/',
        as `autoescape` in `clause`)."""
        if self.like is None:
            raise ValueError(f"{self.name} is not a text operator")
        before, after = self.like
        return before + text.replace("/", "//").replace("%", "/%").replace("_", "/_") + after


def _like(method: str) -> Callable[[Any, Any], Any]:
    # autoescape escapes %, _ and the escape character itself, and adds ESCAPE '/'.
    return lambda col, value: getattr(col, method)(value, autoescape=True)


FILTER_OPERATORS: dict[str, FilterOperator] = {
    op.name: op
    for op in (
        FilterOperator("eq", "value", "equals", lambda c, v: c == v),
        FilterOperator("ne", "value", "differs from (rows where the field is null don't match)", lambda c, v: c != v),
        FilterOperator("lt", "value", "less than", lambda c, v: c < v),
        FilterOperator("lte", "value", "at most", lambda c, v: c <= v),
        FilterOperator("gt", "value", "greater than", lambda c, v: c > v),
        FilterOperator("gte", "value", "at least", lambda c, v: c >= v),
        FilterOperator("in", "list", "is one of the values", lambda c, v: c.in_(v)),
        FilterOperator("not_in", "list", "is none of the values", lambda c, v: c.not_in(v)),
        FilterOperator(
            "is_null", "flag", "is null (value true or null) or is not null (false)",
            lambda c, v: c.is_(None) if v else c.is_not(None),
        ),
        FilterOperator("contains", "text", "text contains the value", _like("contains"), ("%", "%")),
        FilterOperator("startswith", "text", "text starts with the value", _like("startswith"), ("", "%")),
        FilterOperator("endswith", "text", "text ends with the value", _like("endswith"), ("%", "")),
        FilterOperator("between", "pair", "between low and high, both included", lambda c, v: c.between(v[0], v[1])),
    )
}  # fmt: skip
FILTER_OPS: tuple[str, ...] = tuple(FILTER_OPERATORS)
LIST_OPS: tuple[str, ...] = tuple(n for n, op in FILTER_OPERATORS.items() if op.shape in ("list", "pair"))

AGGREGATE_FUNCTIONS: tuple[str, ...] = ("count", "sum", "avg", "min", "max")


@dataclass(frozen=True, slots=True)
class Operation:
    """One toolset operation: its arguments (besides `model`) and when its tool exists."""

    name: str
    write: bool
    arguments: tuple[str, ...]
    required: tuple[str, ...] = ()  # arguments without a default
    by_key: bool = False  # names one record by primary key: needs a plainly readable key
    needs_fields: bool = False  # changes fields: no tool when no field is writable


OPERATIONS: dict[str, Operation] = {
    op.name: op
    for op in (
        Operation("describe_schema", False, ()),
        Operation("query", False, ("filters", "select", "order_by", "limit", "cursor", "include")),
        Operation("get", False, ("id", "select", "include"), ("id",), by_key=True),
        Operation("aggregate", False, ("function", "field", "filters", "group_by")),
        Operation("create", True, ("data",), ("data",)),
        Operation("update", True, ("id", "data"), ("id", "data"), by_key=True, needs_fields=True),
        Operation("delete", True, ("id",), ("id",), by_key=True),
        Operation("bulk_update", True, ("filters", "data"), ("filters", "data"), needs_fields=True),
    )
}
READ_OPERATIONS: tuple[str, ...] = tuple(n for n, op in OPERATIONS.items() if not op.write)
WRITE_OPERATIONS: tuple[str, ...] = tuple(n for n, op in OPERATIONS.items() if op.write)
