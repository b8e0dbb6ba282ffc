"""PostgreSQL: the audit record of an update or a create inserted by the write's own statement.

With `SqlAuditStore` keeping records in the caller's transaction, an update on PostgreSQL is one
data-modifying statement: the locked old row, the change, the new row with its WITH CHECK, and
the INSERT of the record, whose before and after snapshots the database writes from the returned
rows; a create likewise, with its INSERT ... RETURNING. These tests play both paths against each
other: the record a folded write stores must be the record the toolset would have built and
stored itself (the unfolded path, taken when the call has an `on_audit` callback), for generated
values, hostile text among them; a write the check refuses, a missing row and a failing
statement leave no record of success and change nothing.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import Boolean, CheckConstraint, Column, Date, DateTime, Integer, Numeric, String, Text, insert, select
from sqlalchemy.orm import DeclarativeBase

from ormai_agents import (
    AuditUnavailableError,
    FieldAction,
    IntegrityConstraintError,
    ModelPolicy,
    Policy,
    Principal,
    RecordNotFoundError,
    RowPolicy,
    RunContext,
    Toolset,
    WriteAction,
    WriteNotAllowedError,
    WritePolicy,
)
from ormai_agents._storable import MAX_TEXT  # noqa: PLC2701 - the length the record cuts text at
from ormai_agents.audit import AuditRecord, SqlAuditStore
from tests._truth import captured
from tests.conftest import Backend

pytestmark = pytest.mark.parametrize("empty_backend", ["postgres"], indirect=True)


class Base(DeclarativeBase):
    pass


class Ticket(Base):
    __tablename__ = "tickets"
    __table_args__ = (CheckConstraint("priority IS NULL OR priority >= 0", name="ck_tickets_priority"),)
    id = Column(Integer, primary_key=True)
    tenant_id = Column(String(40), nullable=False)
    title = Column(String(200))
    priority = Column(Integer)
    amount = Column(Numeric(10, 2))
    done = Column(Boolean)
    due = Column(Date)
    seen_at = Column(DateTime)
    note = Column(Text)


FIELDS = ("id", "tenant_id", "title", "priority", "amount", "done", "due", "seen_at", "note")
POLICY = Policy(
    models={
        "Ticket": ModelPolicy(
            fields=dict.fromkeys(FIELDS, FieldAction.Allow),
            scoping={"tenant_id": "principal.tenant_id"},
            row_policies=[RowPolicy("low", "priority IS NULL OR priority < 100")],
            write_policy=WritePolicy(
                create=WriteAction.Allow,
                update=WriteAction.Allow,
                auto_set={"tenant_id": "principal.tenant_id"},
                immutable_fields=["tenant_id"],
            ),
        )
    }
)
ACME = Principal(tenant_id="acme", user_id="u1")
START = {
    "title": "start", "priority": 1, "amount": Decimal("1.00"), "done": False,
    "due": dt.date(2026, 1, 2), "seen_at": dt.datetime(2026, 1, 2, 3, 4, 5), "note": None,
}  # fmt: skip
# Text an agent may send, or a row may hold, to break out of a JSON document built as text.
HOSTILE = ['","tenant_id":"globex', '"}', "\\", "\\u0000", "ü ß 東京 🎉", "a'b\"c", "{}", "null", " ", ""]
titles = st.one_of(
    st.sampled_from(HOSTILE),
    st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=200),
    st.none(),
)
amounts = st.one_of(st.none(), st.decimals(min_value=-10**7, max_value=10**7, places=2, allow_nan=False))
changes = st.fixed_dictionaries(
    {},
    optional={
        "title": titles,
        "priority": st.one_of(st.none(), st.integers(0, 99)),
        "amount": amounts,
        "done": st.one_of(st.none(), st.booleans()),
        # Dates of every year Python has; times with and without microseconds.
        "due": st.one_of(st.none(), st.dates()),
        "seen_at": st.one_of(
            st.none(), st.datetimes(), st.datetimes().map(lambda t: t.replace(microsecond=0))
        ),
        # Text without a bound: short, and around the length where the record cuts it.
        "note": st.one_of(
            titles,
            st.tuples(st.sampled_from(["x", "é", "東", "🎉"]), st.integers(4060, 4140)).map(lambda t: t[0] * t[1]),
        ),
    },
).filter(bool)


@pytest.fixture
def tickets(empty_backend: Backend) -> Backend:
    with empty_backend.sync_engine.begin() as conn:
        Base.metadata.create_all(conn)
    return empty_backend


async def _store(backend: Backend, **options: Any) -> SqlAuditStore:
    store = SqlAuditStore(backend.async_engine, in_caller_transaction=True, **options)
    if "table_name" not in options:
        await store.create_table()
    return store


def _seed(backend: Backend, *rows: dict[str, Any]) -> None:
    with backend.sync_engine.begin() as conn:
        conn.execute(insert(Ticket), list(rows))


def _row(backend: Backend, id_: int) -> dict[str, Any]:
    with backend.sync_engine.connect() as conn:
        return dict(conn.execute(select(Ticket.__table__).where(Ticket.id == id_)).mappings().one())


def _comparable(record: AuditRecord) -> dict[str, Any]:
    """A record without what differs between two calls: its id, time, duration and row id."""
    data = record.to_dict()
    for key in ("id", "timestamp", "duration_ms"):
        data.pop(key)
    for snapshot in ("before", "after"):
        if data[snapshot] is not None:
            data[snapshot] = {k: v for k, v in data[snapshot].items() if k != "id"}
    data["inputs"] = {k: v for k, v in data["inputs"].items() if k != "id"}
    return data


def _ctx(db: Any, *, fold: bool) -> RunContext:
    # A call with an on_audit callback builds its record in Python and stores it the usual way.
    return RunContext(ACME, db) if fold else RunContext(ACME, db, on_audit=lambda record: None)


async def _update(toolset: Toolset, db: Any, id_: int, data: dict[str, Any], *, fold: bool) -> Any:
    return await toolset.update(_ctx(db, fold=fold), model="Ticket", id=id_, data=data)


async def _written(backend: Backend, use_async: bool, write: Callable[[Any], Awaitable[Any]]) -> dict[str, Any]:
    """What `write(db)` returns, on a sync or an async session."""
    if use_async:
        async with backend.async_session() as db:
            return dict((await write(db)).data)
    with backend.session() as db:
        return dict((await write(db)).data)


# Always among the examples: text just past and well past the length the record cuts at, and
# times with and without microseconds.
EDGES = [
    {"note": "é" * (MAX_TEXT + 1)},
    {"note": "🎉" * MAX_TEXT, "title": '","tenant_id":"globex'},
    {"note": "x" * (2 * MAX_TEXT), "seen_at": dt.datetime(1, 1, 1)},
    {"seen_at": dt.datetime(9999, 12, 31, 23, 59, 59, 999999), "due": dt.date(1, 1, 1)},
]


def _for_generated_changes(loop: asyncio.AbstractEventLoop, store: SqlAuditStore, both: Any, examples: int) -> None:
    @settings(max_examples=examples, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(changes)
    def check(data: dict[str, Any]) -> None:
        loop.run_until_complete(both(data))

    for edge in EDGES:
        check = example(edge)(check)

    try:
        check()
    finally:
        loop.run_until_complete(store.aclose())
        loop.close()


@pytest.mark.parametrize("use_async", [False, True])
def test_a_folded_record_is_the_record_the_toolset_builds(tickets: Backend, use_async: bool) -> None:
    loop = asyncio.new_event_loop()
    store = loop.run_until_complete(_store(tickets))
    toolset = Toolset(Base, POLICY, store)
    ids = iter(range(1, 10**6, 2))

    async def both(data: dict[str, Any]) -> None:
        folded = next(ids)
        plain = folded + 1
        _seed(tickets, {"id": folded, "tenant_id": "acme", **START}, {"id": plain, "tenant_id": "acme", **START})
        results = {}
        for id_, fold in ((folded, True), (plain, False)):
            with captured(tickets, tables="tickets|ormai_audit_log") as statements:
                results[fold] = await _written(
                    tickets, use_async, lambda db, id_=id_, fold=fold: _update(toolset, db, id_, data, fold=fold)
                )
            # The folded update is one statement; the other reads, writes and inserts apart.
            assert (len(statements) == 1) is fold, statements
            results[fold].pop("id")
        assert results[True] == results[False]
        records = {r.before["id"]: r for r in await store.query(tenant_id="acme", tool_name="update", limit=2)}
        assert set(records) == {folded, plain}
        assert _comparable(records[folded]) == _comparable(records[plain])
        assert records[folded].after == {**records[folded].before, **_as_stored(data)}

    _for_generated_changes(loop, store, both, 60)


@pytest.mark.parametrize("use_async", [False, True])
def test_a_folded_create_records_what_the_toolset_would(tickets: Backend, use_async: bool) -> None:
    loop = asyncio.new_event_loop()
    store = loop.run_until_complete(_store(tickets))
    toolset = Toolset(Base, POLICY, store)

    async def both(data: dict[str, Any]) -> None:
        results, made = {}, {}
        for fold in (True, False):
            with captured(tickets, tables="tickets|ormai_audit_log") as statements:

                def create(db: Any, fold: bool = fold) -> Any:
                    return toolset.create(_ctx(db, fold=fold), model="Ticket", data=data)

                results[fold] = await _written(tickets, use_async, create)
            assert (len(statements) == 1) is fold, statements
            made[fold] = results[fold].pop("id")
        assert results[True] == results[False]
        records = {r.after["id"]: r for r in await store.query(tenant_id="acme", tool_name="create", limit=2)}
        assert set(records) == set(made.values())
        assert _comparable(records[made[True]]) == _comparable(records[made[False]])
        assert records[made[True]].before is None
        assert records[made[True]].after == _as_stored({**results[True], "id": made[True]})

    _for_generated_changes(loop, store, both, 40)


async def test_a_create_the_check_or_the_database_refuses_leaves_no_row_and_no_success(tickets: Backend) -> None:
    store = await _store(tickets)
    toolset = Toolset(Base, POLICY, store)
    with tickets.session() as db, pytest.raises(WriteNotAllowedError):
        await toolset.create(RunContext(ACME, db), model="Ticket", data={"priority": 150})
    with (
        tickets.session() as db,
        captured(tickets, tables="tickets") as statements,
        pytest.raises(IntegrityConstraintError),
    ):
        await toolset.create(RunContext(ACME, db), model="Ticket", data={"priority": -1})
    assert ["ormai_audit_log" in sql for sql, _ in statements] == [True, False]
    with tickets.sync_engine.connect() as conn:
        assert conn.execute(select(Ticket.id)).all() == []
    records = await store.query(tenant_id="acme")
    assert sorted((r.outcome, r.error_code) for r in records) == [
        ("denied", "write_not_allowed"), ("error", "constraint_violation"),
    ]  # fmt: skip
    await store.aclose()


def _as_stored(data: dict[str, Any]) -> dict[str, Any]:
    # The record's JSON: decimals as their text, dates and times in ISO 8601, long text cut.
    def stored(value: Any) -> Any:
        if isinstance(value, (dt.date, dt.datetime)):
            return value.isoformat()
        if isinstance(value, str) and len(value) > MAX_TEXT:
            marker = f"…[TRUNCATED: {len(value)} characters]"
            return value[: MAX_TEXT - len(marker)] + marker
        return str(value) if isinstance(value, Decimal) else value

    return {k: stored(v) for k, v in data.items()}


async def test_a_change_the_check_refuses_rolls_back_with_its_record(tickets: Backend) -> None:
    store = await _store(tickets)
    toolset = Toolset(Base, POLICY, store)
    _seed(tickets, {"id": 1, "tenant_id": "acme", **START})
    with tickets.session() as db, pytest.raises(WriteNotAllowedError):
        await _update(toolset, db, 1, {"priority": 150}, fold=True)  # leaves the row policy
    assert _row(tickets, 1)["priority"] == 1
    records = await store.query(tenant_id="acme")
    assert [(r.outcome, r.error_code) for r in records] == [("denied", "write_not_allowed")]
    await store.aclose()


async def test_a_row_of_another_tenant_is_not_found_and_not_recorded_as_changed(tickets: Backend) -> None:
    store = await _store(tickets)
    toolset = Toolset(Base, POLICY, store)
    _seed(tickets, {"id": 1, "tenant_id": "globex", **START}, {"id": 2, "tenant_id": "ACME", **START})
    for id_ in (1, 2, 3):
        with tickets.session() as db, pytest.raises(RecordNotFoundError):
            await _update(toolset, db, id_, {"title": "taken"}, fold=True)
    assert _row(tickets, 1)["title"] == _row(tickets, 2)["title"] == "start"
    records = await store.query(tenant_id="acme")
    assert [r.outcome for r in records] == ["error"] * 3 and all(r.after is None for r in records)
    await store.aclose()


async def test_a_failing_statement_is_run_again_without_the_record_in_it(tickets: Backend) -> None:
    # The agent is told what the unfolded write finds: the change the database refuses, or the
    # record it can't store; nothing is written either way.
    store = await _store(tickets)
    _seed(tickets, {"id": 1, "tenant_id": "acme", **START})
    with (
        tickets.session() as db,
        captured(tickets, tables="tickets") as statements,
        pytest.raises(IntegrityConstraintError),
    ):
        await _update(Toolset(Base, POLICY, store), db, 1, {"priority": -1}, fold=True)
    # The statement with the record in it, then the UPDATE alone (the record would follow it).
    assert ["ormai_audit_log" in sql for sql, _ in statements] == [True, False]
    missing = await _store(tickets, table_name="no_such_audit_table")
    with tickets.session() as db, pytest.raises(AuditUnavailableError):
        await _update(Toolset(Base, POLICY, missing), db, 1, {"title": "lost"}, fold=True)
    assert _row(tickets, 1) == {"id": 1, "tenant_id": "acme", **START}
    records = await store.query(tenant_id="acme")
    assert [(r.outcome, r.error_code) for r in records] == [("error", "constraint_violation")]
    await store.aclose()
