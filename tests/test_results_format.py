"""What the model reads of a query page: a lean table (columns once, one array per row, shared
values once) that a program turns back into the records exactly; the Python results keep their
shape."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ormai_agents import Principal, QueryResult, RunContext, Toolset, page_records
from ormai_agents._toolspecs import build_tool_specs, jsonable, model_view, render
from tests import shop

ACME = Principal(tenant_id="acme")

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**53), max_value=2**53),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
)
values = st.one_of(scalars, st.lists(scalars, max_size=3), st.dictionaries(st.text(max_size=3), scalars, max_size=2))


@st.composite
def pages(draw: Any) -> list[dict[str, Any]]:
    columns = draw(st.lists(st.text(min_size=1, max_size=6), unique=True, max_size=6))
    count = draw(st.integers(min_value=0, max_value=6))
    constant = {c: draw(values) for c in columns if draw(st.booleans())}
    return [{c: constant[c] if c in constant else draw(values) for c in columns} for _ in range(count)]


@given(pages(), st.one_of(st.none(), st.text(min_size=1, max_size=10)))
def test_a_program_gets_the_records_back_exactly(rows: list[dict[str, Any]], cursor: str | None) -> None:
    text = render(QueryResult(rows, cursor))
    page = json.loads(text)
    back = page_records(text)
    assert back == json.loads(json.dumps(jsonable(rows)))
    # Same values with the same JSON types: 1, 1.0 and true are never folded into one another.
    typed = [{k: (type(v), v) for k, v in r.items()} for r in back]
    assert typed == [{k: (type(v), v) for k, v in json.loads(json.dumps(r)).items()} for r in rows]
    assert page.get("next_cursor") == cursor and ("next_cursor" in page) == (cursor is not None)
    assert len(page["rows"]) == len(rows)


def test_shared_values_are_written_once_and_nothing_else_changes() -> None:
    rows = [
        {"id": 1, "tenant_id": "acme", "status": "paid", "note": None, "flag": 1},
        {"id": 2, "tenant_id": "acme", "status": "open", "note": None, "flag": True},
    ]
    page = model_view(QueryResult(rows, "abc"))
    assert page == {
        "columns": ["id", "status", "flag"],
        "rows": [[1, "paid", 1], [2, "open", True]],
        "same_for_all_rows": {"tenant_id": "acme", "note": None},
        "next_cursor": "abc",
    }
    # One row, or none: nothing to share.
    assert model_view(QueryResult(rows[:1])) == {"columns": list(rows[0]), "rows": [list(rows[0].values())]}
    assert model_view(QueryResult([])) == {"columns": [], "rows": []}


def test_values_are_plain_json() -> None:
    rows = [
        {
            "at": dt.datetime(2026, 1, 2, 3, 4, 5),
            "total": Decimal("12.50"),
            "exact": Decimal("0.1000000000000000055511151231257827"),
        }
    ]
    assert json.loads(render(QueryResult(rows * 2))) == {
        "columns": [],
        "rows": [[], []],
        "same_for_all_rows": {
            "at": "2026-01-02T03:04:05",
            "total": 12.5,
            "exact": "0.1000000000000000055511151231257827",
        },
    }


async def test_python_results_keep_their_shape_and_the_tool_text_is_the_table(shop_db: Any) -> None:
    toolset = Toolset(shop.Base, shop.shop_policy(), secret_key=b"r" * 32)
    ctx = RunContext(ACME, shop_db)
    result = await toolset.query(ctx, model="Order", select=["id", "tenant_id", "status"], limit=5)
    assert isinstance(result.rows, list) and all(isinstance(r, dict) for r in result.rows)
    assert [set(r) for r in result.rows] == [{"id", "tenant_id", "status"}] * len(result.rows)
    assert result.to_dict() == {"rows": result.rows, "next_cursor": result.next_cursor}
    spec = {s.name: s for s in build_tool_specs(toolset)}["query"]
    text = render(await spec.run(toolset, ctx, {"model": "Order", "select": ["id", "tenant_id", "status"], "limit": 5}))
    assert page_records(text) == result.rows
    assert json.loads(text)["same_for_all_rows"] == {"tenant_id": "acme"}
    assert '"tenant_id"' in text and text.count("acme") == 1  # the tenant once, not once a row


def test_page_records_refuses_what_is_not_a_page() -> None:
    with pytest.raises(TypeError):
        page_records('{"data": {"id": 1}}')
    assert page_records({"rows": [{"id": 1}]}) == [{"id": 1}]  # records as objects are read as they are
