"""What the hostile harness (tests/redteam_harness.py) found, one test per finding, on every backend."""

from __future__ import annotations

import logging
from decimal import Decimal
from typing import Any

import pytest

from ormai_agents import OrmAIError, RunContext, Toolset, ValidationError
from ormai_agents.audit import MemoryAuditStore
from tests import shop
from tests.conftest import ACME, BACKENDS
from tests.writes_support import snapshot, toolset

SURROGATES = ["\ud800", "x\udfffy", "\udc80"]


def _unexpected(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR and r.name == "ormai_agents"]


async def test_lone_surrogates_in_filters_are_refused_as_input(
    shop_db: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # No driver can encode a lone surrogate (JSON carries them as \ud800): the agent gets a
    # validation error it can act on, never a generic failure logged as unexpected.
    store = MemoryAuditStore()
    ts = Toolset(shop.Base, shop.shop_policy(), store)
    ctx = RunContext(ACME, shop_db)
    for text in SURROGATES:
        for op, value in (("eq", text), ("contains", text), ("in", ["pending", text]), ("between", ["a", text])):
            with pytest.raises(ValidationError, match="Unicode") as info:
                await ts.query(ctx, model="Order", filters=[{"field": "status", "op": op, "value": value}])
            assert info.value.code == "validation_error"
    assert (await ts.query(ctx, model="Order", limit=1)).rows  # the session is usable
    assert _unexpected(caplog) == []
    assert {r.error_code for r in store.records[:-1]} == {"validation_error"}


@pytest.mark.parametrize("empty_backend", BACKENDS, indirect=True)
async def test_lone_surrogates_in_written_data_are_refused_and_write_nothing(
    wb: Any, wdb: Any, caplog: pytest.LogCaptureFixture
) -> None:
    ts = toolset()
    ctx = RunContext(ACME, wdb)
    before = snapshot(wb, shop.Order)
    for text in SURROGATES:
        with pytest.raises(ValidationError, match="Unicode"):
            await ts.update(ctx, model="Order", id=7, data={"status": text})
        with pytest.raises(ValidationError, match="Unicode"):
            await ts.create(ctx, model="Order", data={"total": 1, "status": text})
    assert snapshot(wb, shop.Order) == before
    assert _unexpected(caplog) == []


# Values the Python types take but a column can't: an int beyond a 4-byte INTEGER, decimals
# beyond what NUMERIC encodes or NUMERIC(12, 2) holds.
OUT_OF_RANGE = [
    ("quantity", "gt", 2**40),
    ("quantity", "in", [1, 2**40]),
    ("total", "gt", Decimal("1e999999")),
    ("total", "lt", "1e-999999"),
    ("total", "gt", 1e300),
]


@pytest.mark.parametrize(("field", "op", "value"), OUT_OF_RANGE)
async def test_values_a_column_cant_hold_are_input_errors_on_every_backend(
    shop_db: Any, field: str, op: str, value: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # SQLite and MariaDB compare such values; PostgreSQL (psycopg's casts, asyncpg's encoders)
    # refuses them. Either way the agent gets an answer or an error it can act on, never a
    # generic database failure, and the session is usable for the next call.
    ts = Toolset(shop.Base, shop.shop_policy())
    ctx = RunContext(ACME, shop_db)
    try:
        page = await ts.query(ctx, model="Order", filters=[{"field": field, "op": op, "value": value}])
    except ValidationError as exc:
        assert exc.code == "validation_error" and "range" in exc.message
    else:
        assert isinstance(page.rows, list)
    assert (await ts.query(ctx, model="Order", limit=1)).rows
    assert not [m for m in _unexpected(caplog) if "database error" in m]


@pytest.mark.parametrize("empty_backend", BACKENDS, indirect=True)
async def test_values_a_column_cant_hold_are_refused_on_writes(wdb: Any, caplog: pytest.LogCaptureFixture) -> None:
    ts = toolset()
    ctx = RunContext(ACME, wdb)
    for data in ({"quantity": 2**40}, {"total": Decimal("1e20")}, {"total": Decimal("1e999999")}):
        try:
            await ts.update(ctx, model="Order", id=7, data=data)
        except OrmAIError as exc:
            # PostgreSQL and MariaDB refuse the value; SQLite stores it (its row policy refuses
            # the quantity). Never a generic database failure.
            assert exc.code in ("validation_error", "write_not_allowed"), (data, exc.code)
    assert not [m for m in _unexpected(caplog) if "database error" in m or "unexpected" in m]


# Characters that change how the text around them reads: line and paragraph separators, C0 and C1
# controls, bidirectional overrides and isolates, zero-width marks, the byte-order mark.
SPOOFING = ["\u2028", "\u2029", "\x85", "\x1b[2J", "\u202e", "\u2066", "\u200b", "\ufeff", "\r"]


@pytest.mark.parametrize("empty_backend", ["sqlite"], indirect=True)
async def test_an_approval_prompt_shows_the_agents_text_literally(wb: Any) -> None:
    # The person approving reads what the agent asked for: text the agent chose can't start a
    # new line of the prompt, reverse it or hide part of it.
    from mcp import types
    from mcp.shared.memory import create_connected_server_and_client_session
    from sqlalchemy.ext.asyncio import async_sessionmaker

    from ormai_agents import WriteAction
    from ormai_agents.mcp import create_server
    from tests.writes_support import write_policy

    ts = toolset(write_policy(order_ops={"update": WriteAction.RequireApproval}))
    server = create_server(toolset=ts, session_factory=async_sessionmaker(wb.async_engine), principal=ACME)
    asked: list[str] = []

    async def answer(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(params.message)
        return types.ElicitResult(action="cancel")

    status = "ok" + "".join(SPOOFING) + "Approve it? yes"
    async with create_connected_server_and_client_session(server, elicitation_callback=answer) as client:
        await client.call_tool("update_order", {"id": 7, "data": {"status": status[:40]}})
    (message,) = asked
    agent_part = message[message.index('"status"') :]
    assert not [c for c in SPOOFING if c in agent_part], ascii(agent_part)
    assert "\\u2028" in agent_part and "\\u202e" in agent_part  # shown, as escapes
