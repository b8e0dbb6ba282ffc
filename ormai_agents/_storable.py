"""Values every audit store can keep, whatever an agent or a host put in them.

An audit record carries values the agent chose (in any argument of any call, valid or not) and
values the host chose (principal ids, request ids). Each store has limits of its own: UTF-8 has
no lone surrogates, PostgreSQL text has no NUL, JSON has no infinity, serializers recurse. One
walk here makes a value storable everywhere, cheaply for the small values calls usually carry:

- text is kept as is, except that lone surrogates and NUL become the six visible characters of
  their JSON escape (`\\ud800`, `\\u0000`), and text longer than `MAX_TEXT` is cut, ending
  with a `[TRUNCATED: n characters]` marker giving its original length;
- non-finite floats become the strings "inf", "-inf" and "nan"; huge integers a marker;
- containers deeper than `MAX_DEPTH`, with more than `MAX_ITEMS` items, or past the size budget
  of one value (`MAX_BUDGET` characters and items) are cut with a marker;
- dict keys become text; anything else that is not JSON becomes text (dates in ISO 8601).

An optional `secret(key)` predicate replaces the value under every matching key, at any depth.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from datetime import date, datetime, time
from decimal import Decimal
from enum import Enum
from typing import Any

REDACTED = "[REDACTED]"
TRUNCATED = "[TRUNCATED]"
MAX_DEPTH = 20
MAX_ITEMS = 256
MAX_TEXT = 4096
MAX_KEY = 200
MAX_BUDGET = 65_536
_MAX_INT_BITS = 1024
_SMALL_INT = 2**63
_TOO_DEEP = "[TRUNCATED: nested too deep]"

_UNSTORABLE_CHARS = re.compile("[\x00\ud800-\udfff]")


def _escape_char(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


def clean_text(value: str, limit: int = MAX_TEXT) -> str:
    """`value` as storable text: lone surrogates and NUL escaped, at most `limit` characters
    (a cut text ends with a marker giving the original length)."""
    size = len(value)
    text = value[:limit] if size > limit else value
    if text.isascii():
        if "\x00" in text:
            text = text.replace("\x00", "\\u0000")
    else:
        try:
            text.encode("utf-8")
            if "\x00" in text:
                text = text.replace("\x00", "\\u0000")
        except UnicodeEncodeError:
            text = _UNSTORABLE_CHARS.sub(_escape_char, text)
    if size > limit or len(text) > limit:
        marker = f"…[TRUNCATED: {size} characters]"
        text = text[: max(0, limit - len(marker))] + marker
    return text


def clean(value: Any, secret: Callable[[str], bool] | None = None, budget: int = MAX_BUDGET) -> Any:
    """`value` made storable (see the module docstring); `secret` names keys whose values are redacted."""
    kind = type(value)
    # Fast paths for what most records carry: ids, short ASCII text, lists of such text.
    if kind is str:
        if len(value) <= MAX_TEXT and value.isascii() and "\x00" not in value:
            return value
    elif value is None or kind is bool or (kind is int and -_SMALL_INT <= value <= _SMALL_INT):
        return value
    elif kind is list and not value:
        return []
    elif kind is list and len(value) <= MAX_ITEMS and all(_plain_text(v) for v in value):
        return list(value)
    elif kind is dict and budget == MAX_BUDGET:
        flat = _flat_dict(value, secret)
        if flat is not None:
            return flat
    return _clean(value, secret, 0, [budget])


# A flat row (what before/after snapshots are) whose text stays this far inside the budget is
# kept exactly as the walk would keep it: no value is cut and every text gets MAX_TEXT.
_FLAT_LIMIT = MAX_BUDGET - MAX_TEXT


def _flat_dict(value: dict[Any, Any], secret: Callable[[str], bool] | None) -> dict[str, Any] | None:
    """What `_clean` gives for a dict of short ASCII keys and plain scalars, in one loop; None
    for anything else (the walk then decides)."""
    if len(value) > MAX_ITEMS:
        return None
    out: dict[str, Any] = {}
    used = 0
    for key, item in value.items():
        if type(key) is not str or not _plain_key(key):
            return None
        used += len(key) + 1
        if secret is not None and secret(key):
            out[key] = REDACTED
            continue
        kept = _flat_value(item)
        if kept is _NOT_FLAT:
            return None
        used += len(kept) if type(kept) is str else 1
        if used > _FLAT_LIMIT:
            return None
        out[key] = kept
    return out


_NOT_FLAT = object()


def _flat_value(item: Any) -> Any:
    kind = type(item)
    if kind is str or kind is Decimal or kind is datetime or kind is date:
        text = item if kind is str else (str(item) if kind is Decimal else item.isoformat())
        return text if _plain_text(text) else _NOT_FLAT
    if kind is int:
        return item if -_SMALL_INT <= item <= _SMALL_INT else _NOT_FLAT
    if kind is float:
        return item if math.isfinite(item) else _NOT_FLAT
    return item if item is None or kind is bool else _NOT_FLAT


def _plain_key(key: str) -> bool:
    return len(key) <= MAX_KEY and key.isascii() and "\x00" not in key


def _clean(value: Any, secret: Callable[[str], bool] | None, depth: int, budget: list[int]) -> Any:
    kind = type(value)
    if kind is str:
        if budget[0] <= 0:
            return TRUNCATED
        out = clean_text(value, min(MAX_TEXT, max(budget[0], 64)))
        budget[0] -= len(out)
        return out
    if value is None or kind is bool:
        return value
    if kind is int:
        budget[0] -= 1
        if value.bit_length() > _MAX_INT_BITS:
            return f"[TRUNCATED: an integer of {value.bit_length()} bits]"
        return value
    if kind is float:
        budget[0] -= 1
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, Mapping):
        return _TOO_DEEP if depth >= MAX_DEPTH else _clean_mapping(value, secret, depth, budget)
    if isinstance(value, (list, tuple, set, frozenset)):
        return _TOO_DEEP if depth >= MAX_DEPTH else _clean_items(value, secret, depth, budget)
    return _clean(_plain(value), secret, depth, budget) if isinstance(value, (Enum, Decimal)) else _other(value, budget)


def _plain_text(v: Any) -> bool:
    return type(v) is str and len(v) <= MAX_TEXT and v.isascii() and "\x00" not in v


def _clean_mapping(
    value: Mapping[Any, Any], secret: Callable[[str], bool] | None, depth: int, budget: list[int]
) -> Any:
    out_map: dict[str, Any] = {}
    try:
        items = list(value.items())
    except Exception:  # noqa: BLE001 - a host's odd mapping: record that there was one
        return f"<{type(value).__name__}>"
    for count, (key, item) in enumerate(items):
        if count >= MAX_ITEMS or budget[0] <= 0:
            out_map[TRUNCATED] = f"[TRUNCATED: {len(items) - count} more keys]"
            break
        name = key if type(key) is str else _key_text(key)
        plain = len(name) <= MAX_KEY and name.isascii() and "\x00" not in name
        stored = name if plain else clean_text(name, MAX_KEY)
        budget[0] -= len(stored) + 1
        out_map[stored] = REDACTED if secret is not None and secret(name) else _clean(item, secret, depth + 1, budget)
    return out_map


def _clean_items(value: Any, secret: Callable[[str], bool] | None, depth: int, budget: list[int]) -> list[Any]:
    out_list: list[Any] = []
    total = len(value)
    for item in value:
        if len(out_list) >= MAX_ITEMS or budget[0] <= 0:
            out_list.append(f"[TRUNCATED: {total - len(out_list)} more items]")
            break
        budget[0] -= 1
        out_list.append(_clean(item, secret, depth + 1, budget))
    return out_list


def _plain(value: Enum | Decimal) -> Any:
    if isinstance(value, Enum):
        inner = value.value
        return inner if not isinstance(inner, (Enum, Decimal)) else str(inner)
    return str(value)  # Decimal: exact text, also for NaN and Infinity


def _other(value: Any, budget: list[int]) -> str:
    if isinstance(value, (datetime, date, time)):
        text = value.isoformat()
    elif isinstance(value, (bytes, bytearray, memoryview)):
        text = f"<{len(value)} bytes>"
    else:
        try:
            text = str(value)
        except Exception:  # noqa: BLE001 - an object whose str() fails: name its type only
            text = f"<{type(value).__name__}>"
        if type(text) is not str:
            text = f"<{type(value).__name__}>"
    out = clean_text(text, min(MAX_TEXT, max(budget[0], 64)))
    budget[0] -= len(out)
    return out


def _key_text(key: Any) -> str:
    if key is None or isinstance(key, (bool, int, float)):
        return str(key) if not isinstance(key, float) or math.isfinite(key) else repr(key)
    return _other(key, [MAX_KEY])


# --- JSON lines ---------------------------------------------------------------------------------

# Characters a JSON encoder may leave raw that some readers take as a line break (U+0085,
# U+2028, U+2029), plus the other C1 controls and DEL: written as \\u escapes, one line per record.
_LINE_UNSAFE = re.compile("[\x7f-\x9f\u2028\u2029]")


def escape_line(text: str) -> str:
    """JSON text with every character a line reader could split on written as a \\u escape."""
    if text.isascii() and "\x7f" not in text:
        return text
    return _LINE_UNSAFE.sub(_escape_char, text)


# What a JSON encoder leaves raw that changes how the text around it reads where a person sees it
# (a prompt, a dialog): C1 controls and DEL, bidirectional and zero-width marks, line and
# paragraph separators, the byte-order mark, lone surrogates. (JSON escapes C0 controls itself.)
_MISLEADING = re.compile("[\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff\ud800-\udfff]")


def escape_misleading(text: str) -> str:
    """JSON text an agent chose, for a person to read literally: every character that could start
    a line, reverse or hide text written as a \\u escape."""
    if text.isascii() and "\x7f" not in text:
        return text
    return _MISLEADING.sub(_escape_char, text)


__all__ = [
    "MAX_DEPTH", "MAX_ITEMS", "MAX_TEXT", "REDACTED", "TRUNCATED", "clean", "clean_text", "escape_line",
    "escape_misleading",
]  # fmt: skip
