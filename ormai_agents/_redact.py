"""What of an agent's inputs may be logged.

Redaction is by field policy first (a value compared with, or written to, a field the policy
does not plainly allow is replaced), then by key patterns (`Policy.redact_keys`), applied at
every depth so a secret nested inside a JSON value or an unexpected key never reaches a store.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from typing import Any

from ormai_agents._operations import FILTER_OPS
from ormai_agents._plan import ModelPlan
from ormai_agents._storable import MAX_BUDGET, MAX_ITEMS, MAX_KEY, REDACTED, TRUNCATED, _clean, clean, clean_text

_FILTER_KEYS = ("field", "op", "value", "values")
_MAX_NAME = 200


def redact_inputs(plan: ModelPlan | None, inputs: Mapping[str, Any], patterns: Sequence[str]) -> dict[str, Any]:
    """The inputs as they may be logged, and as every audit store can keep them.

    - filter values on fields that are not plainly allowed (denied, masked, hashed, unknown, or
      matching a key pattern) are replaced; unknown keys inside a filter are dropped;
    - `data` values on such fields are replaced;
    - `id` is kept only when every primary-key field is plainly allowed;
    - anything under a key matching `patterns` is replaced, at any depth;
    - what is kept is made storable and bounded (`ormai_agents._storable`).
    """
    lowered = _lowered(tuple(patterns))
    budget = [MAX_BUDGET]

    def secret_key(key: Any) -> bool:
        return _matches(key, lowered) if type(key) is str else _matches(str(key), lowered)

    def plain(name: Any) -> bool:
        info = plan.fields.get(name) if plan is not None and type(name) is str else None
        return info is not None and info.plain and not secret_key(name)

    def scrub(value: Any) -> Any:
        # Key-pattern redaction at every depth of an allowed value, bounded and storable.
        return _clean(value, secret_key, 2, budget)

    def redact(key: str, value: Any) -> Any:
        if key == "filters":
            return _redact_filters(value, plain, scrub)
        if key == "data":
            return _redact_data(value, plain, scrub) if isinstance(value, Mapping) else REDACTED
        if key == "id":
            return scrub(value) if _pk_plain(plan) else REDACTED
        if key == "cursor":
            return "<cursor>"
        return REDACTED if secret_key(key) else scrub(value)

    return {key: redact(key, value) for key, value in inputs.items() if value is not None}


def _pk_plain(plan: ModelPlan | None) -> bool:
    """Whether every primary-key field is plainly readable (so an `id` may be logged)."""
    return plan is not None and bool(plan.pk) and plan.keyed


def _redact_filters(value: Any, plain: Callable[[Any], bool], scrub: Callable[[Any], Any]) -> list[Any]:
    items = value if isinstance(value, list) else [value]
    kept = [_redact_filter(f, plain, scrub) for f in items[:MAX_ITEMS]]
    if len(items) > MAX_ITEMS:
        kept.append(f"[TRUNCATED: {len(items) - MAX_ITEMS} more items]")
    return kept


def _redact_data(
    value: Mapping[Any, Any], plain: Callable[[Any], bool], scrub: Callable[[Any], Any]
) -> dict[str, Any]:
    data = {}
    for k, v in list(value.items())[:MAX_ITEMS]:
        name = clean_text(k, MAX_KEY) if type(k) is str else clean(k)
        data[name if type(name) is str else str(name)] = scrub(v) if plain(k) else REDACTED
    if len(value) > MAX_ITEMS:
        data[TRUNCATED] = f"[TRUNCATED: {len(value) - MAX_ITEMS} more keys]"
    return data


def redact_snapshot(row: Mapping[str, Any] | None, patterns: Sequence[str]) -> dict[str, Any] | None:
    """A before/after snapshot as it may be logged: values under keys matching `patterns`
    (a column name, or a key inside a JSON value) replaced at any depth; storable and bounded."""
    if row is None:
        return None
    lowered = _lowered(tuple(patterns))
    if not lowered:
        out = clean(row)
    else:
        out = clean(row, lambda key: _matches(key, lowered))
    return out if isinstance(out, dict) else {"value": out}


@lru_cache(maxsize=64)
def _lowered(patterns: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(p.lower() for p in patterns)


def _matches(key: str, patterns: tuple[str, ...]) -> bool:
    if not patterns:
        return False
    if len(key) > MAX_KEY:  # an agent's long key: checked in full, not remembered
        lowered = key.lower()
        return any(p in lowered for p in patterns)
    return _matches_cached(key, patterns)


@lru_cache(maxsize=4096)
def _matches_cached(key: str, patterns: tuple[str, ...]) -> bool:
    # Input keys repeat from call to call (argument and field names): remember the verdicts.
    lowered = key.lower()
    return any(p in lowered for p in patterns)


def _redact_filter(spec: Any, plain: Callable[[Any], bool], scrub: Callable[[Any], Any]) -> Any:
    # The field name stays (an attempt on a denied field is worth seeing); its value goes.
    if not isinstance(spec, Mapping):
        return REDACTED
    field = spec.get("field")
    out: dict[str, Any] = {}
    if "field" in spec:
        out["field"] = clean_text(field) if isinstance(field, str) and len(field) <= _MAX_NAME else REDACTED
    if "op" in spec:
        op = spec.get("op")
        out["op"] = op if isinstance(op, str) and op in FILTER_OPS else REDACTED
    for key in ("value", "values"):
        if key in spec:
            out[key] = scrub(spec[key]) if plain(field) else REDACTED
    extra = [k for k in spec if k not in _FILTER_KEYS]
    if extra:
        out["unknown_keys"] = len(extra)  # how many, never their names or values
    return out


__all__ = ["REDACTED", "redact_inputs", "redact_snapshot"]
