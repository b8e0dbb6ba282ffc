"""What the hostile harness (tests/redteam_harness.py) found, one test per finding, on every backend."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, Integer, String, create_engine, insert, select
from sqlalchemy import text as sql_text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.pool import NullPool

from ormai_agents import (
    ModelPolicy,
    OrmAIError,
    Policy,
    RunContext,
    Toolset,
    ValidationError,
    WriteAction,
    WritePolicy,
)
from ormai_agents.audit import MemoryAuditStore
from tests import shop
from tests.conftest import ACME, BACKENDS, mysql_url, require_mysql
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


@pytest.fixture(params=["latin1", "utf8mb3"])
def narrow_notes(request: pytest.FixtureRequest) -> Iterator[tuple[str, Engine, AsyncEngine]]:
    """Notes in a MariaDB database whose character set can't hold every character."""
    require_mysql()
    database = f"ormai_t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(mysql_url("pymysql"), poolclass=NullPool)
    with admin.begin() as conn:
        conn.execute(sql_text(f"CREATE DATABASE `{database}` CHARACTER SET {request.param}"))
    sync_engine = create_engine(mysql_url("pymysql", database))
    async_engine = create_async_engine(mysql_url("aiomysql", database), poolclass=NullPool)
    NoteBase.metadata.create_all(sync_engine)
    with sync_engine.begin() as conn:
        conn.execute(insert(Note), [{"id": i, "tenant_id": t, "title": v} for i, (t, v) in enumerate(NOTES, 1)])
    yield request.param, sync_engine, async_engine
    sync_engine.dispose()
    with admin.begin() as conn:
        conn.execute(sql_text(f"DROP DATABASE `{database}`"))
    admin.dispose()


class NoteBase(DeclarativeBase):
    pass


class Note(NoteBase):
    __tablename__ = "narrow_notes"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(40), index=True)
    title: Mapped[str | None] = mapped_column(String(200))


NOTES = [("acme", "café"), ("acme", "plain"), ("globex", "café")]
NOTE_POLICY = Policy(models={"Note": ModelPolicy(
    fields={"id": "allow", "tenant_id": "allow", "title": "allow"}, scoping={"tenant_id": "principal.tenant_id"},
    write_policy=WritePolicy(create=WriteAction.Allow, update=WriteAction.Allow, bulk_update=WriteAction.Allow,
                             auto_set={"tenant_id": "principal.tenant_id"}),
)})  # fmt: skip
# Beyond the BMP (what utf8mb3 lacks) or beyond Latin-1, in any text an agent sends.
WIDE = st.one_of(*(st.text(st.characters(min_codepoint=low, exclude_categories=["Cs"]), min_size=1, max_size=4)
                   for low in (0x100, 0x10000)))  # fmt: skip
def holds(charset: str, value: str) -> bool:
    """Whether a column in `charset` can hold `value` (MariaDB's latin1 is cp1252)."""
    if charset == "utf8mb3":
        return all(ord(c) <= 0xFFFF for c in value)
    try:
        value.encode("cp1252")
    except UnicodeEncodeError:
        return False
    return True


TEXT_OPS = ["eq", "ne", "in", "not_in", "contains", "startswith", "endswith", "gt", "between"]


@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisWarning")
def test_text_a_columns_character_set_cant_hold_is_an_input_error(
    narrow_notes: tuple[str, Engine, AsyncEngine], caplog: pytest.LogCaptureFixture
) -> None:
    # MariaDB refuses to compare a latin1 or utf8mb3 column with such text ("illegal mix of
    # collations"): the agent gets a validation error, reads and writes nothing, never a
    # generic database failure logged as unexpected.
    charset, sync_engine, async_engine = narrow_notes
    ts = Toolset(NoteBase, NOTE_POLICY, secret_key=b"n" * 32)
    loop = asyncio.new_event_loop()
    with sync_engine.connect() as conn:
        before = conn.execute(select(Note.__table__).order_by(Note.id)).all()

    async def run(op: str, wide: str, use_async: bool) -> None:
        value: Any = [wide, "café"] if op in ("in", "not_in", "between") else wide
        if holds(charset, wide):
            return  # an ordinary value there
        flt = [{"field": "title", "op": op, "value": value}]
        async with AsyncSession(async_engine) if use_async else _sync(sync_engine) as db:
            ctx = RunContext(ACME, db)
            for call in (ts.query(ctx, "Note", filters=flt), ts.aggregate(ctx, "Note", filters=flt),
                         ts.bulk_update(ctx, "Note", flt, {"title": "x"})):  # fmt: skip
                with pytest.raises(ValidationError, match="character set"):
                    await call
            # The session is usable; text the column holds still compares as before.
            page = await ts.query(ctx, "Note", filters=[{"field": "title", "op": "eq", "value": "café"}])
            assert [r["id"] for r in page.rows] == [1]

    @settings(max_examples=30, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(st.sampled_from(TEXT_OPS), WIDE, st.booleans())
    def check(op: str, wide: str, use_async: bool) -> None:
        loop.run_until_complete(run(op, wide, use_async))

    try:
        check()
        loop.run_until_complete(run("contains", "😀", True))
        loop.run_until_complete(run("in", "😀", False))
    finally:
        loop.close()
    with sync_engine.connect() as conn:
        assert conn.execute(select(Note.__table__).order_by(Note.id)).all() == before
    assert _unexpected(caplog) == []


@asynccontextmanager
async def _sync(engine: Engine) -> AsyncIterator[Session]:
    with Session(engine) as db:
        yield db


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
