"""Validation of the agent's arguments against a model plan.

Everything the agent sends passes through here before a statement is built. Errors name only
what the principal may use, never the rejected name itself (it may be a denied field), and
never a value.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter
from pydantic import ValidationError as PydanticValidationError
from sqlalchemy import ColumnElement

from ormai_agents._errors import FieldNotAllowedError, ValidationError
from ormai_agents._operations import FILTER_OPERATORS, FILTER_OPS
from ormai_agents._plan import FieldInfo, ModelPlan, RelationInfo
from ormai_agents._types import check_text
from ormai_agents.policy import Policy

MAX_FILTERS = 50
MAX_IN_VALUES = 500

# The operator names as a Literal, built from the table (pydantic validates `op` against it).
FilterOp: Any = Literal.__getitem__(FILTER_OPS)


class FilterSpec(BaseModel):
    """One filter as the agent sends it."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    field: str = Field(min_length=1, max_length=200)
    op: FilterOp
    value: Any = None
    # The typed slot for list operators (in, not_in, between), which tool schemas offer beside
    # `value` so that every operator survives converters that keep one type per node.
    values: list[Any] | None = None


_FILTERS = TypeAdapter(list[FilterSpec])


@dataclass(frozen=True, slots=True)
class Bounds:
    """The policy's bounds on the shape of a call's arguments."""

    depth: int
    list_length: int
    string_length: int
    values: int

    @classmethod
    def of(cls, policy: Policy) -> Bounds:
        return cls(policy.max_argument_depth, policy.max_list_length, policy.max_string_length,
                   policy.max_argument_values)  # fmt: skip


# Exact types that need no walk (a subclass, say of str, goes through the full check).
_SCALAR_TYPES = frozenset({int, float, bool, type(None)})


def check_bounds(arguments: Mapping[str, Any], bounds: Bounds) -> dict[str, str]:
    """The arguments that break `bounds`, each with what is wrong (empty when all fit).

    Iterative, so no value is deep enough to exhaust the interpreter's stack, and it stops at the
    first problem of each argument, so no value is big enough to make it slow.
    """
    problems: dict[str, str] = {}
    budget = bounds.values
    max_text = bounds.string_length
    for name, value in arguments.items():
        kind = type(value)
        budget -= 1
        if kind in _SCALAR_TYPES or (kind is str and len(value) <= max_text):
            continue  # the common case, without the walk
        stack: list[tuple[Any, int]] = [(value, 1)]
        budget += 1
        while stack:
            item, depth = stack.pop()
            budget -= 1
            if budget < 0:
                problems[name] = f"the arguments hold too many values (at most {bounds.values} in one call)"
                return problems
            kind = type(item)
            if kind in _SCALAR_TYPES or (kind is str and len(item) <= max_text):
                continue
            problem = _out_of_bounds(item, depth, bounds)
            if problem is not None:
                problems[name] = f"argument {name} {problem}"
                break
            if isinstance(item, Mapping):
                for key, child in item.items():
                    stack.append((key, depth + 1))
                    stack.append((child, depth + 1))
            elif isinstance(item, (list, tuple, set, frozenset)):
                stack.extend((child, depth + 1) for child in item)
    return problems


def _out_of_bounds(item: Any, depth: int, bounds: Bounds) -> str | None:
    """What is wrong with one value at `depth` (its children are checked on their own)."""
    if isinstance(item, (str, bytes, bytearray)):
        if len(item) > bounds.string_length:
            return f"holds a text longer than {bounds.string_length} characters"
    elif isinstance(item, (Mapping, list, tuple, set, frozenset)):
        if len(item) > bounds.list_length:
            return f"holds a list or object with more than {bounds.list_length} entries"
        if item and depth >= bounds.depth:
            return f"is nested more than {bounds.depth} levels deep"
    return None


def _names(names: list[str]) -> str:
    return ", ".join(names) if names else "(none)"


def pydantic_message(error: PydanticValidationError, prefix: str) -> str:
    """A short message from a pydantic error, without echoing the input values."""
    parts = []
    for err in error.errors()[:5]:
        loc_parts = list(err.get("loc", ()))
        if err.get("type") == "extra_forbidden" and loc_parts:
            # The unknown key is the agent's text (perhaps a denied field's name): don't echo it.
            loc_parts[-1] = "<unknown key>"
        loc = ".".join(str(p) for p in loc_parts)
        parts.append(f"{loc}: {err.get('msg')}" if loc else str(err.get("msg")))
    return f"{prefix}: " + "; ".join(parts)


@dataclass(frozen=True, slots=True)
class ParsedFilter:
    """One filter, validated: the field, the operator and the value coerced to the field's type."""

    info: FieldInfo
    op: str
    value: Any

    def clause(self) -> ColumnElement[bool]:
        """The filter's SQL clause with its value bound as a literal parameter."""
        return FILTER_OPERATORS[self.op].clause(self.info.column, self.value)  # type: ignore[no-any-return]


def parse_filters(plan: ModelPlan, filters: Any) -> tuple[list[ColumnElement[bool]], list[Any]]:
    """SQL clauses for the agent's filters, and their canonical form (for cursor binding)."""
    parsed, canonical = parse_filter_specs(plan, filters)
    return [f.clause() for f in parsed], canonical


def parse_filter_specs(plan: ModelPlan, filters: Any) -> tuple[list[ParsedFilter], list[Any]]:
    """The agent's filters validated against the plan, and their canonical form."""
    if filters is None:
        return [], []
    if isinstance(filters, Mapping):
        filters = [filters]
    if not isinstance(filters, list):
        raise ValidationError(
            'filters must be a list of {"field": ..., "op": ..., "value": ...} objects'
        )
    if len(filters) > MAX_FILTERS:
        raise ValidationError(f"at most {MAX_FILTERS} filters are allowed in one call")
    try:
        specs = _FILTERS.validate_python(filters)
    except PydanticValidationError as exc:
        raise ValidationError(
            pydantic_message(exc, "Invalid filters")
            + f'. Each filter is {{"field": ..., "op": ..., "value": ...}} with op one of: {", ".join(FILTER_OPS)}'
        ) from None
    parsed = [_parse_filter(plan, spec, i) for i, spec in enumerate(specs, 1)]
    return parsed, [[f.info.name, f.op, f.value] for f in parsed]


def _filter_field(plan: ModelPlan, name: str, position: int) -> FieldInfo:
    info = plan.fields.get(name)
    if info is None or not info.plain:
        usable = plan.plain_fields
        what = (
            f"Field {name!r} is {info.action.value}ed and can't be filtered on"
            if info is not None
            else f"Filter {position} names a field that is not available on {plan.name}"
        )
        raise FieldNotAllowedError(
            f"{what}. Fields you can filter {plan.name} on: {_names(usable)}",
            details={"allowed_fields": usable},
        )
    return info


def _coerce(info: FieldInfo, value: Any, position: int) -> Any:
    try:
        out = info.coerce(value)
    except ValueError as exc:
        raise ValidationError(f"Filter {position} on {info.name!r}: {exc}") from None
    if info.max_text is not None and isinstance(out, str):
        _check_text(info, out, position)
    return out


def _check_text(info: FieldInfo, value: str, position: int) -> None:
    # A longer value can't match the column, and a long LIKE pattern costs the database dearly.
    if len(value) > info.max_text:  # type: ignore[operator]
        raise ValidationError(
            f"Filter {position} on {info.name!r}: text values are at most {info.max_text} characters"
        )


def _parse_filter(plan: ModelPlan, spec: FilterSpec, i: int) -> ParsedFilter:
    info = _filter_field(plan, spec.field, i)
    operator = FILTER_OPERATORS[spec.op]
    op, value = spec.op, spec.value
    shape = operator.shape
    # Schemas offer both slots, and some providers make the model fill both: an empty `values`
    # is "not given", and so is an empty `value` beside a list in `values`.
    if spec.values:
        if shape not in ("list", "pair"):
            raise ValidationError(f"Filter {i}: {op} takes value, not values")
        if value is not None and value != "":
            raise ValidationError(f"Filter {i}: give the list in values or in value, not both")
        value = spec.values
    if shape == "flag":
        if value is None:
            value = True
        elif isinstance(value, str) and value.lower() in ("true", "false"):
            value = value.lower() == "true"  # from schemas that keep one type (text) for values
        if not isinstance(value, bool):
            raise ValidationError(f"Filter {i}: {op} takes true or false")
        return ParsedFilter(info, op, value)
    if not info.comparable:
        raise ValidationError(f"Filter {i}: {info.name!r} can only be filtered with is_null")
    return ParsedFilter(info, op, _SHAPES.get(shape, _single)(info, op, value, i))


def _single(info: FieldInfo, op: str, value: Any, i: int) -> Any:
    return _coerce(info, value, i)


def _list(info: FieldInfo, op: str, value: Any, i: int) -> Any:
    if not isinstance(value, list):
        raise ValidationError(f"Filter {i}: {op} takes a list of values")
    if len(value) > MAX_IN_VALUES:
        raise ValidationError(f"Filter {i}: {op} takes at most {MAX_IN_VALUES} values")
    return [_coerce(info, v, i) for v in value]


def _pair(info: FieldInfo, op: str, value: Any, i: int) -> Any:
    if not isinstance(value, list) or len(value) != 2:
        raise ValidationError(f"Filter {i}: {op} takes a list of two values [low, high]")
    return [_coerce(info, value[0], i), _coerce(info, value[1], i)]


def _text(info: FieldInfo, op: str, value: Any, i: int) -> Any:
    if info.pytype is not str:
        raise ValidationError(f"Filter {i}: {op} applies to text fields only")
    if not isinstance(value, str):
        raise ValidationError(f"Filter {i}: {op} takes a text value")
    try:
        check_text(value)
    except ValueError as exc:
        raise ValidationError(f"Filter {i}: {op}: {exc}") from None
    _check_text(info, value, i)
    return value


# How each value shape of the operator table is validated and coerced ("flag" is handled inline).
_SHAPES: dict[str, Callable[[FieldInfo, str, Any, int], Any]] = {"list": _list, "pair": _pair, "text": _text}


def _str_list(value: Any, what: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValidationError(f"{what} must be a list of field names")
    if len(value) > 200:
        raise ValidationError(f"{what} has too many entries")
    return value


def parse_select(plan: ModelPlan, select: Any) -> list[str]:
    """The fields to return: every readable field by default."""
    if select is None:
        return list(plan.fields)
    names = _str_list(select, "select")
    if not names:
        raise ValidationError("select must name at least one field, or be omitted for all fields")
    for name in names:
        if name not in plan.fields:
            readable = list(plan.fields)
            raise FieldNotAllowedError(
                f"select names a field that is not available on {plan.name}. Readable fields: {_names(readable)}",
                details={"allowed_fields": readable},
            )
    return list(dict.fromkeys(names))


def parse_order(plan: ModelPlan, order_by: Any) -> list[tuple[FieldInfo, bool]]:
    """(field, descending) pairs, without repeats (the plan's readable tie-break is added by the query)."""
    out: list[tuple[FieldInfo, bool]] = []
    seen: set[str] = set()
    if order_by is not None:
        for item in _str_list(order_by, "order_by"):
            desc = item.startswith("-")
            name = item[1:] if desc else item.lstrip("+")
            info = comparable_field(
                plan, name, f"order_by names a field that can't be sorted on {plan.name}. Sortable fields: "
                "{fields} (prefix with '-' for descending)",
            )  # fmt: skip
            if name not in seen:
                seen.add(name)
                out.append((info, desc))
    return out


def comparable_field(plan: ModelPlan, name: Any, message: str) -> FieldInfo:
    """A plainly allowed field with comparable values (to sort, group or aggregate by).

    Otherwise FieldNotAllowedError with `message`, whose `{fields}` lists the usable fields: the
    rejected name itself is never echoed (it may be a denied field)."""
    info = plan.fields.get(name) if isinstance(name, str) else None
    if info is None or not info.comparable:
        usable = plan.comparable_fields
        raise FieldNotAllowedError(message.format(fields=_names(usable)), details={"allowed_fields": usable})
    return info


def parse_group_by(plan: ModelPlan, group_by: Any) -> list[FieldInfo]:
    """The fields to group an aggregate by, in order, without repeats."""
    if group_by is None:
        return []
    out: list[FieldInfo] = []
    for name in _str_list(group_by, "group_by"):
        message = f"group_by names a field that can't be grouped on {plan.name}. Fields you can group by: {{fields}}"
        info = comparable_field(plan, name, message)
        if info not in out:
            out.append(info)
    return out


def parse_limit(plan: ModelPlan, limit: Any) -> int:
    """The page size: validated, and clamped to the model's maximum."""
    if limit is None:
        return plan.max_rows
    if isinstance(limit, bool) or not isinstance(limit, (int, str, float)):
        raise ValidationError(f"limit must be a whole number between 1 and {plan.max_rows}")
    if isinstance(limit, str):
        # Plain ASCII digits only: int() would also take "1_0" and non-ASCII digits.
        text = limit.strip()
        number = int(text) if text.isascii() and text.isdigit() and len(text) <= 100 else None
    elif isinstance(limit, float):
        number = int(limit) if limit.is_integer() else None
    else:
        number = limit
    if number is None or number < 1:
        raise ValidationError(f"limit must be a whole number between 1 and {plan.max_rows}")
    return min(number, plan.max_rows)


def parse_include(
    plans: Mapping[str, ModelPlan], plan: ModelPlan, include: Any, max_depth: int
) -> dict[str, tuple[RelationInfo, dict[str, Any]]]:
    """A tree {relation: (info, subtree)} from ["customer", "customer.orders"]."""
    if include is None:
        return {}
    paths = _str_list(include, "include")
    tree: dict[str, tuple[RelationInfo, dict[str, Any]]] = {}
    for path in paths:
        parts = path.split(".")
        if len(parts) > max_depth:
            raise ValidationError(
                f"include paths may follow at most {max_depth} relationship(s)"
                if max_depth
                else "include is not enabled by this policy"
            )
        node, current = tree, plan
        for part in parts:
            rel = current.relations.get(part)
            if rel is None:
                options = list(current.relations)
                raise FieldNotAllowedError(
                    f"include names a relationship that is not available on {current.name}. "
                    f"Relationships you can include: {_names(options)}",
                    details={"allowed_relationships": options},
                )
            if part not in node:
                node[part] = (rel, {})
            node = node[part][1]
            current = plans[rel.target]
    return tree


def parse_id(plan: ModelPlan, id: Any) -> list[Any]:
    """Primary key values in mapper order, coerced to their column types."""
    if not plan.keyed:
        raise ValidationError(f"get is not available on {plan.name}; use query with filters instead")
    infos: list[FieldInfo] = [i for i in plan.pk if i is not None]
    if len(infos) == 1:
        if isinstance(id, Mapping) and set(id) == {infos[0].name}:
            id = id[infos[0].name]
        return [_coerce_id(infos[0], id)]
    if not isinstance(id, Mapping) or set(id) != {i.name for i in infos}:
        raise ValidationError(
            f"{plan.name} has a composite key: pass id as an object with {', '.join(i.name for i in infos)}"
        )
    return [_coerce_id(info, id[info.name]) for info in infos]


def _coerce_id(info: FieldInfo, value: Any) -> Any:
    try:
        return info.coerce(value)
    except ValueError as exc:
        raise ValidationError(f"id: {exc}") from None


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
