"""Column type knowledge: coercing agent and principal values to a column's Python type."""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import uuid
from collections.abc import Callable
from functools import cache
from typing import Any

from pydantic import TypeAdapter
from pydantic import ValidationError as PydanticValidationError
from sqlalchemy import types as sqltypes

# Types whose values can be compared, sorted and filtered on.
_COMPARABLE = (str, int, float, decimal.Decimal, bool, dt.datetime, dt.date, dt.time, dt.timedelta, uuid.UUID)
_NUMERIC = (int, float, decimal.Decimal)
# No database integer column holds more than 64 bits; a larger value would reach the driver and
# fail there (SQLite raises OverflowError before SQLAlchemy can map it).
_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1

_JSON_TYPES: dict[type, str] = {
    bool: "boolean",
    int: "integer",
    float: "number",
    decimal.Decimal: "number",
    str: "string",
}
_JSON_FORMATS: dict[type, str] = {
    dt.datetime: "date-time",
    dt.date: "date",
    dt.time: "time",
    uuid.UUID: "uuid",
}


def python_type(column_type: sqltypes.TypeEngine[Any]) -> type | None:
    """The column's Python type, or None when SQLAlchemy does not say (JSON, ARRAY, custom)."""
    try:
        pt = column_type.python_type
    except NotImplementedError:
        return None
    return pt if isinstance(pt, type) else None


def is_comparable(pt: type | None) -> bool:
    return pt is not None and (issubclass(pt, _COMPARABLE) or issubclass(pt, enum.Enum))


def is_numeric(pt: type | None) -> bool:
    return pt is not None and issubclass(pt, _NUMERIC) and not issubclass(pt, bool)


def is_text(pt: type | None) -> bool:
    return pt is not None and issubclass(pt, str) and not issubclass(pt, enum.Enum)


@cache
def _adapter(pt: type) -> TypeAdapter[Any]:
    return TypeAdapter(pt)


def check_text(value: str) -> None:
    """Refuse text no database takes: NUL (PostgreSQL text can't hold it) and lone surrogates
    (no driver can encode them), here rather than in the driver."""
    if "\x00" in value:
        raise ValueError("text can't contain NUL characters")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("text must be valid Unicode (a lone surrogate is not a character)") from None


def make_coercer(pt: type | None) -> Callable[[Any], Any]:
    """A function turning a JSON-ish value into `pt`, raising ValueError with a short reason."""
    if pt is None:
        def passthrough(value: Any) -> Any:
            return value

        return passthrough
    adapter = _adapter(pt)
    is_str = pt is str
    is_int = pt is int

    def coerce(value: Any) -> Any:
        if value is None:
            raise ValueError("null is not a value here; use the is_null operator")
        if is_str and type(value) is str:
            check_text(value)
            return value  # the common case, without a validation round trip
        if isinstance(value, (list, dict, tuple, set)) or (is_int and isinstance(value, bool)):
            raise ValueError(f"expected a single {json_type_name(pt)} value")
        try:
            out = adapter.validate_python(value)
        except PydanticValidationError:
            raise ValueError(f"expected a {json_type_name(pt)} value") from None
        if is_int and not _INT_MIN <= out <= _INT_MAX:
            raise ValueError("expected an integer within the 64-bit range")
        return out

    return coerce


def coercer_for(column_type: sqltypes.TypeEngine[Any]) -> Callable[[Any], Any]:
    """`make_coercer` for a column, plus the column's own rule: a DateTime column without a time
    zone takes only values without an offset (drivers disagree on what an offset means there:
    SQLite drops it, psycopg converts it to the session's zone, asyncpg refuses it)."""
    pt = python_type(column_type)
    coerce = make_coercer(pt)
    if pt is dt.datetime and isinstance(column_type, sqltypes.DateTime) and not column_type.timezone:

        def naive(value: Any) -> Any:
            out = coerce(value)
            if out.tzinfo is not None:
                raise ValueError("expected a date-time without a time zone offset")
            return out

        return naive
    return coerce


def json_type_name(pt: type | None) -> str:
    """A short type name for messages and schemas ("string", "integer", "date-time", ...)."""
    if pt is None:
        return "value"
    if issubclass(pt, enum.Enum):
        return "enum"
    for base, name in _JSON_TYPES.items():
        if issubclass(pt, base):
            return name
    return _JSON_FORMATS.get(pt, "value")


def json_schema_for(pt: type | None, column_type: sqltypes.TypeEngine[Any] | None = None) -> dict[str, Any]:
    """A JSON schema fragment for a column's values (used by describe_schema and tool schemas)."""
    if pt is None:
        return {}
    if issubclass(pt, enum.Enum):
        values = [m.value for m in pt]
        kinds = {json_type_name(type(v)) for v in values}
        # Strict schema dialects want a type on every node.
        return {"type": kinds.pop() if len(kinds) == 1 else "string", "enum": values}
    if isinstance(column_type, sqltypes.Enum) and column_type.enums:
        return {"type": "string", "enum": list(column_type.enums)}
    if issubclass(pt, bool):
        return {"type": "boolean"}
    for base, name in _JSON_TYPES.items():
        if issubclass(pt, base):
            return {"type": name}
    fmt = _JSON_FORMATS.get(pt)
    if fmt:
        return {"type": "string", "format": fmt}
    return {}
