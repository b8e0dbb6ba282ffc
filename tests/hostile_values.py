"""Hypothesis strategies for values no audit store can keep as they are, and for calls carrying them.

Lone surrogates, NUL, non-finite and huge numbers, deep nesting, huge strings and containers,
line separators a reader could split on, control characters, rich markup, ANSI and OSC escapes.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

SPECIALS = [
    "\ud800", "\udfff", "x\udc80y", "\x00", "a\x00b", "\u2028", "\u2029", "\x85", "line\u2028break",
    "\x1b[31mred\x1b[0m", "\x1b]8;;https://127.0.0.1/\x07link\x1b]8;;\x07", "\x1b]0;title\x07", "\x07\x08\x7f",
    "[bold red]markup[/]", "[link=file:///etc/passwd]x[/link]", "[/]", "\u202eevil", "\ufeff", "\r\n", "\x0b\x0c\x1c\x1d\x1e",
    "}\n{\"tool_name\": \"forged\"}", "\"", "\\", "",
]  # fmt: skip


def nest(depth: int, leaf: Any = "deep") -> Any:
    value: Any = leaf
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


special_text = st.sampled_from(SPECIALS)
any_text = st.text(st.characters(exclude_categories=()), max_size=12)  # surrogates and controls included
texts = st.one_of(
    special_text,
    any_text,
    st.lists(st.one_of(special_text, any_text), min_size=2, max_size=4).map("".join),
    st.integers(5_000, 150_000).map(lambda n: "\u2028x\x00" * (n // 3)),
)
numbers = st.one_of(
    st.sampled_from([float("inf"), float("-inf"), float("nan"), 1e308, -0.0, 2**64, -(2**70), 2**2000, 10**400]),
    st.floats(),
    st.integers(),
)
leaves = st.one_of(texts, numbers, st.none(), st.booleans())
nested = st.recursive(
    leaves,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.one_of(texts, st.integers()), inner, max_size=4)),
    max_leaves=12,
)
hostile = st.one_of(
    leaves,
    nested,
    st.integers(30, 3_000).flatmap(lambda d: leaves.map(lambda leaf: nest(d, leaf))),
    st.integers(300, 20_000).map(lambda n: list(range(n))),
    st.integers(300, 5_000).map(lambda n: {f"k{i}\u2028": i for i in range(n)}),
)

# Each tool with a valid call on the `Note` model of `tests/test_audit_hostile.py`, then any
# argument replaced by a hostile value or carrying one inside a well-formed structure.
_BASE: dict[str, dict[str, Any]] = {
    "describe_schema": {},
    "query": {"model": "Note", "filters": [{"field": "title", "op": "eq", "value": "a"}], "select": ["id", "title"],
              "order_by": ["-id"], "limit": 5, "cursor": None, "include": None},
    "get": {"model": "Note", "id": 1, "select": ["id"], "include": None},
    "aggregate": {"model": "Note", "function": "count", "field": None, "filters": None, "group_by": None},
    "create": {"model": "Note", "data": {"title": "t", "body": "b"}},
    "update": {"model": "Note", "id": 1, "data": {"title": "t"}},
    "delete": {"model": "Note", "id": 1},
    "bulk_update": {"model": "Note", "filters": [{"field": "title", "op": "eq", "value": "none"}], "data": {"body": "x"}},
}  # fmt: skip


@st.composite
def hostile_calls(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    tool = draw(st.sampled_from(sorted(_BASE)))
    kwargs = dict(_BASE[tool])
    if not kwargs:
        return tool, kwargs
    for arg in draw(st.lists(st.sampled_from(sorted(kwargs)), min_size=1, max_size=3, unique=True)):
        value = draw(hostile)
        if arg in ("filters",) and draw(st.booleans()):
            where = draw(st.sampled_from(["field", "op", "value"]))
            kwargs[arg] = [{"field": "title", "op": "eq", "value": "a", where: value}]
        elif arg == "data" and draw(st.booleans()):
            key = draw(st.one_of(st.sampled_from(["title", "body"]), texts))
            kwargs[arg] = {**kwargs[arg], key: value} if isinstance(key, str) else kwargs[arg]
        else:
            kwargs[arg] = value
    return tool, kwargs
