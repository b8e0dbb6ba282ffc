"""What of an agent's inputs may be logged.

Redaction is by field policy first (a value compared with, or written to, a field the policy
does not plainly allow is replaced), then by key patterns (`Policy.redact_keys`), applied at
every depth so a secret nested inside a JSON value or an unexpected key never reaches a store.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any

from ormai_agents._operations import FILTER_OPS
from ormai_agents._plan import ModelPlan

REDACTED = "[REDACTED]"
_FILTER_KEYS = ("field", "op", "value", "values")
_MAX_NAME = 200


def redact_inputs(plan: ModelPlan | None, inputs: Mapping[str, Any], patterns: list[str]) -> dict[str, Any]:
    """The inputs as they may be logged.

    - filter values on fields that are not plainly allowed (denied, masked, hashed, unknown, or
      matching a key pattern) are replaced; unknown keys inside a filter are dropped;
    - `data` values on such fields are replaced;
    - `id` is kept only when every primary-key field is plainly allowed;
    - anything under a key matching `patterns` is replaced, at any depth.
    """
    lowered = _lowered(tuple(patterns))

    def secret_key(key: Any) -> bool:
        return _matches(str(key), lowered)

    def plain(name: Any) -> bool:
        info = plan.fields.get(name) if plan is not None and isinstance(name, str) else None
        return info is not None and info.plain and not secret_key(name)

    def scrub(value: Any) -> Any:
        # Key-pattern redaction at every depth of an allowed value.
        if value is None or isinstance(value, (str, int, float)):
            return value
        if isinstance(value, Mapping):
            return {str(k): (REDACTED if secret_key(k) else scrub(v)) for k, v in value.items()}
        if isinstance(value, (list, tuple, set, frozenset)):
            return [scrub(v) for v in value]
        return value

    out: dict[str, Any] = {}
    for key, value in inputs.items():
        if value is None:
            continue
        if key == "filters":
            items = value if isinstance(value, list) else [value]
            out[key] = [_redact_filter(f, plain, scrub) for f in items]
        elif key == "data":
            if isinstance(value, Mapping):
                out[key] = {str(k): (scrub(v) if plain(k) else REDACTED) for k, v in value.items()}
            else:
                out[key] = REDACTED
        elif key == "id":
            pk_plain = plan is not None and bool(plan.pk) and all(f is not None and f.plain for f in plan.pk)
            out[key] = scrub(value) if pk_plain else REDACTED
        elif key == "cursor":
            out[key] = "<cursor>"
        elif secret_key(key):
            out[key] = REDACTED
        else:
            out[key] = scrub(value)
    return out


@lru_cache(maxsize=64)
def _lowered(patterns: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(p.lower() for p in patterns)


@lru_cache(maxsize=4096)
def _matches(key: str, patterns: tuple[str, ...]) -> bool:
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
        out["field"] = field if isinstance(field, str) and len(field) <= _MAX_NAME else REDACTED
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


__all__ = ["REDACTED", "redact_inputs"]
