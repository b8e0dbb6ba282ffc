"""Arguments too deep or too big, text filters too long, includes too wide, calls too slow.

The hostile agent sends values built to exhaust the interpreter (deep nesting), the database
(long LIKE patterns, includes that multiply, statements that never end) or the audit trail. Every
one is refused or stopped with a clear error the agent can act on, the refusal is audited, and
nothing is written. SQLite, PostgreSQL (psycopg and asyncpg) and MariaDB (PyMySQL and aiomysql),
sync and async sessions.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Column, Integer, String, func, select, text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Session
from sqlalchemy.pool import NullPool

from ormai_agents import (
    CallTimeoutError,
    FieldAction,
    InvalidCursorError,
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
from tests._truth import rows as db_rows
from tests._truth import scalars
from tests.conftest import ACME, BACKENDS, Backend, pg_url

KEY = b"hostile-arguments" * 2
Order, Customer = shop.Order, shop.Customer

# Small bounds, so hypothesis reaches every one of them with small values.
BOUNDS = {"max_argument_depth": 6, "max_list_length": 20, "max_string_length": 100, "max_argument_values": 300}

TOOL_ARGUMENTS: dict[str, tuple[str, ...]] = {
    "query": ("filters", "select", "order_by", "limit", "cursor", "include"),
    "get": ("id", "select", "include"),
    "aggregate": ("function", "field", "filters", "group_by"),
    "create": ("data",),
    "update": ("id", "data"),
    "delete": ("id",),
    "bulk_update": ("filters", "data"),
}
REQUIRED = {"get": {"id": 1}, "update": {"id": 1, "data": {"status": "x"}}, "delete": {"id": 1},
            "bulk_update": {"filters": [{"field": "id", "op": "eq", "value": 1}], "data": {"status": "x"}},
            "create": {"data": {"total": 1}}}  # fmt: skip


def writable_policy(**bounds: Any) -> Policy:
    base = shop.shop_policy(**bounds)
    models = dict(base.models)
    models["Order"] = base.models["Order"].model_copy(
        update={"write_policy": WritePolicy(create=WriteAction.Allow, update=WriteAction.Allow, delete=WriteAction.Allow,
                                            bulk_update=WriteAction.Allow, auto_set={"tenant_id": "principal.tenant_id"})}
    )  # fmt: skip
    return Policy(**{**base.model_dump(exclude={"models"}), "models": models})


def nested(leaf: Any, depth: int, as_object: bool) -> Any:
    value = leaf
    for _ in range(depth):
        value = {"value": value} if as_object else [value]
    return value


@st.composite
def hostile_values(draw: st.DrawFn) -> tuple[str, Any]:
    """(which bound it breaks, the value) for the BOUNDS above."""
    kind = draw(st.sampled_from(["deep", "long", "wide", "many"]))
    text_ = st.text(min_size=0, max_size=8)
    if kind == "deep":
        return kind, nested(draw(text_), draw(st.integers(6, 3000)), draw(st.booleans()))
    if kind == "long":
        long = draw(text_) + "x" * draw(st.integers(101, 20_000))
        return kind, nested(long, draw(st.integers(0, 4)), draw(st.booleans()))
    if kind == "wide":
        width = draw(st.integers(21, 500))
        wide: Any = [draw(text_)] * width if draw(st.booleans()) else {f"k{i}": i for i in range(width)}
        return kind, nested(wide, draw(st.integers(0, 3)), draw(st.booleans()))
    return kind, [[i] * 20 for i in range(draw(st.integers(16, 20)))]


def test_arguments_beyond_the_bounds_are_refused_audited_and_write_nothing(shop_backend: Backend) -> None:
    store = MemoryAuditStore()
    toolset = Toolset(shop.Base, writable_policy(**BOUNDS), store)
    loop = asyncio.new_event_loop()
    seen: set[tuple[str, str]] = set()

    async def run(tool: str, argument: str, kind: str, value: Any, use_async: bool) -> None:
        kwargs = {**REQUIRED.get(tool, {}), argument: value}
        before = len(store.records)

        async def attempt(db: Any) -> OrmAIError:
            with pytest.raises(ValidationError) as info:
                await getattr(toolset, tool)(RunContext(ACME, db), model="Order", **kwargs)
            return info.value

        if use_async:
            async with shop_backend.async_session() as db:
                error = await attempt(db)
                count = (await db.execute(select(func.count()).select_from(Order))).scalar_one()
        else:
            with shop_backend.session() as db:
                error = await attempt(db)
                count = db.execute(select(func.count()).select_from(Order)).scalar_one()
        message = error.message.lower()
        assert "nothing was run" in message
        assert f"argument {argument} " in message or "too many values" in message
        assert isinstance(error, InvalidCursorError) == (argument == "cursor"), error
        assert count == 240  # nothing written
        [record] = store.records[before:]
        assert record.tool_name == tool and record.outcome == "error" and record.error_code == error.code
        assert len(repr(record.inputs)) < 2_000  # the refused value is not in the record
        seen.add((kind, tool))

    @settings(max_examples=80, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large])  # fmt: skip
    @given(st.sampled_from(sorted(TOOL_ARGUMENTS)).flatmap(lambda t: st.tuples(st.just(t), st.sampled_from(TOOL_ARGUMENTS[t]))),
           hostile_values(), st.booleans())  # fmt: skip
    def check(tool_argument: tuple[str, str], hostile: tuple[str, Any], use_async: bool) -> None:
        tool, argument = tool_argument
        loop.run_until_complete(run(tool, argument, *hostile, use_async))

    try:
        check()
    finally:
        loop.close()
    assert {kind for kind, _ in seen} == {"deep", "long", "wide", "many"}, seen


@pytest.mark.parametrize("depth", [500, 5_000, 100_000])
async def test_pathologically_deep_arguments_never_escape_as_recursion_errors(shop_db: Any, depth: int) -> None:
    # The default policy: a 500-level value used to escape as a raw RecursionError, unaudited.
    store = MemoryAuditStore()
    toolset = Toolset(shop.Base, writable_policy(), store)
    ctx = RunContext(ACME, shop_db)
    deep = nested("x", depth, as_object=False)
    calls = [
        toolset.query(ctx, model="Order", filters=[{"field": "status", "op": "in", "value": deep}]),
        toolset.query(ctx, model="Order", select=deep),
        toolset.get(ctx, model="Order", id=deep),
        toolset.aggregate(ctx, model="Order", group_by=deep),
        toolset.create(ctx, model="Order", data={"total": 1, "status": deep}),
        toolset.update(ctx, model="Order", id=1, data=nested("x", depth, as_object=True)),
        toolset.bulk_update(ctx, model="Order", filters=deep, data={"status": "x"}),
    ]
    for call in calls:
        with pytest.raises(ValidationError, match="nested more than 16 levels"):
            await call
    assert [r.error_code for r in store.records] == ["validation_error"] * len(calls)
    assert await scalars(shop_db, select(func.count()).select_from(Order)) == [240]


# --- text filter values -----------------------------------------------------------------------


async def test_text_filter_values_are_bounded_by_the_column_length(shop_db: Any) -> None:
    toolset = Toolset(shop.Base, shop.shop_policy())
    ctx = RunContext(ACME, shop_db)
    # status is String(40): a longer value can't match, and is refused before the database.
    for value in ("x" * 41, "x') UNION SELECT password_hash FROM customers --", "%" * 15_000):
        for spec in ({"op": "eq", "value": value}, {"op": "contains", "value": value}, {"op": "startswith", "value": value},
                     {"op": "in", "value": ["pending", value]}, {"op": "between", "value": ["a", value]}):  # fmt: skip
            with pytest.raises(ValidationError, match="at most 40 characters"):
                await toolset.query(ctx, model="Order", filters=[{"field": "status", **spec}])
    page = await toolset.query(ctx, model="Order", filters=[{"field": "status", "op": "contains", "value": "x" * 40}])
    assert page.rows == []


async def test_text_filter_values_on_unbounded_columns_get_the_policy_maximum(shop_db: Any) -> None:
    policy = shop.shop_policy(max_filter_text_length=300)
    order = policy.models["Order"]
    fields = {**order.fields, "internal_note": shop.FieldPolicy(action=FieldAction.Allow)}
    policy = Policy(models={**policy.models, "Order": order.model_copy(update={"fields": fields})}, max_filter_text_length=300)
    toolset = Toolset(shop.Base, policy)
    ctx = RunContext(ACME, shop_db)
    for op in ("contains", "startswith", "endswith", "eq"):
        with pytest.raises(ValidationError, match="at most 300 characters"):
            await toolset.query(ctx, model="Order", filters=[{"field": "internal_note", "op": op, "value": "a" * 15_000}])
    rows = (await toolset.query(ctx, model="Order", filters=[{"field": "internal_note", "op": "contains", "value": "do not leak"}])).rows
    expected = await scalars(shop_db, select(func.count()).select_from(Order).where(Order.tenant_id == "acme"))
    assert len(rows) == min(expected[0], 50) > 0


# --- include ----------------------------------------------------------------------------------


async def test_one_page_with_include_returns_a_bounded_number_of_rows(shop_db: Any) -> None:
    # Customers with their orders, and those orders' customers: every level counts.
    policy = shop.shop_policy(max_include_depth=2)
    unbounded = Toolset(shop.Base, secret_key=KEY, policy=policy)
    ctx = RunContext(ACME, shop_db)
    page = await unbounded.query(ctx, model="Customer", include=["orders", "orders.customer"])
    included = sum(len(c["orders"]) + sum(o["customer"] is not None for o in c["orders"]) for c in page.rows)
    truth = await db_rows(shop_db, select(Order.id, Order.customer_id).where(Order.tenant_id == "acme"))
    acme_customers = set(await scalars(shop_db, select(Customer.id).where(Customer.tenant_id == "acme")))
    assert included == 2 * sum(1 for _, cid in truth if cid in acme_customers) > 10
    exact = Toolset(shop.Base, secret_key=KEY, policy=shop.shop_policy(max_include_depth=2, max_include_rows=included))
    assert (await exact.query(ctx, model="Customer", include=["orders", "orders.customer"])).rows == page.rows
    short = Toolset(shop.Base, secret_key=KEY, policy=shop.shop_policy(max_include_depth=2, max_include_rows=included - 1))
    with pytest.raises(ValidationError, match=f"more than {included - 1} related records"):
        await short.query(ctx, model="Customer", include=["orders", "orders.customer"])
    # get, too: one customer with more orders than the bound.
    busiest = max(acme_customers, key=lambda c: sum(1 for _, cid in truth if cid == c))
    orders_of_busiest = sum(1 for _, cid in truth if cid == busiest)
    tight = Toolset(shop.Base, secret_key=KEY, policy=shop.shop_policy(max_include_rows=orders_of_busiest - 1))
    with pytest.raises(ValidationError, match="related records"):
        await tight.get(ctx, model="Customer", id=busiest, include=["orders"])
    got = await Toolset(shop.Base, secret_key=KEY, policy=shop.shop_policy(max_include_rows=orders_of_busiest)).get(
        ctx, model="Customer", id=busiest, include=["orders"]
    )
    assert len(got.data["orders"]) == orders_of_busiest


# --- the time budget --------------------------------------------------------------------------


class SlowBase(DeclarativeBase):
    pass


class Slow(SlowBase):
    """A view whose every statement runs for minutes."""

    __tablename__ = "slow_rows"
    id = Column(Integer, primary_key=True)
    tenant_id = Column(String(40))


SLOW_VIEWS = {
    "sqlite": "CREATE VIEW slow_rows AS WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c "
              "WHERE x < 2000000000) SELECT x AS id, 'acme' AS tenant_id FROM c WHERE x < 0",
    "postgres": "CREATE VIEW slow_rows AS SELECT g AS id, 'acme'::varchar AS tenant_id "
                "FROM generate_series(1, 2000000000) AS g WHERE g < 0",
    "mysql": "CREATE VIEW slow_rows AS SELECT 1 AS id, 'acme' AS tenant_id FROM DUAL WHERE SLEEP(600) = 2",
}  # fmt: skip


@pytest.mark.parametrize("empty_backend", BACKENDS, indirect=True)
async def test_calls_over_the_time_budget_are_stopped_and_reported(empty_backend: Backend) -> None:
    backend = empty_backend
    with backend.sync_engine.begin() as conn:
        conn.execute(text(SLOW_VIEWS[backend.name]))
        shop.Base.metadata.create_all(conn)
    store = MemoryAuditStore()
    policy = Policy(
        models={"Slow": ModelPolicy(fields={"id": "allow", "tenant_id": "allow"}, scoping={"tenant_id": "principal.tenant_id"})},
        call_timeout_seconds=0.3,
    )
    toolset = Toolset(SlowBase, policy, store)
    sessions: list[Any] = [backend.session, backend.async_session]
    if backend.is_postgres:  # psycopg's async driver too
        with backend.sync_engine.connect() as conn:
            current = conn.execute(text("SELECT current_schema()")).scalar_one()
        psycopg_async = create_async_engine(pg_url("psycopg"), poolclass=NullPool,
                                            connect_args={"options": f"-csearch_path={current}"})  # fmt: skip
        sessions.append(lambda: AsyncSession(psycopg_async))
    for make in sessions:
        db = make()
        try:
            started = time.monotonic()
            ctx = RunContext(ACME, db)
            for tool in ("query", "aggregate"):
                with pytest.raises(CallTimeoutError) as info:
                    await getattr(toolset, tool)(ctx, model="Slow")
                assert info.value.code == "timeout" and "time budget" in info.value.message
            # Each statement alone would run for minutes; both were stopped after their budget.
            assert time.monotonic() - started < 30
            # The call owned its transaction, so the session is usable again.
            assert (await toolset.describe_schema(RunContext(ACME, db))).models
            check = select(func.count()).select_from(Order)
            result = await db.execute(check) if isinstance(db, AsyncSession) else db.execute(check)
            assert result.scalar_one() == 0
        finally:
            if isinstance(db, AsyncSession):
                await db.close()
            else:
                db.close()
    timeouts = [r for r in store.records if r.error_code == "timeout"]
    assert len(timeouts) == 2 * len(sessions) and all(r.outcome == "error" for r in timeouts)


async def test_a_budget_spent_before_a_statement_stops_the_call(shop_db: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # Between statements the deadline is checked too (drivers without an interrupter rely on it).
    from ormai_agents import _budget

    toolset = Toolset(shop.Base, shop.shop_policy(call_timeout_seconds=0.5))
    monkeypatch.setattr(_budget, "deadline", lambda seconds: time.monotonic() - 1)
    with pytest.raises(CallTimeoutError):
        await toolset.query(RunContext(ACME, shop_db), model="Order")
    monkeypatch.undo()
    assert (await toolset.query(RunContext(ACME, shop_db), model="Order", limit=1)).rows


@pytest.mark.parametrize("empty_backend", ["sqlite", "postgres", "mysql"], indirect=True)
async def test_an_interrupt_the_server_ignored_is_sent_again(empty_backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    # A cancel that reaches the server before the statement does is ignored there (seen under
    # load on PostgreSQL): here every statement's first interrupt is dropped, as the server would.
    from ormai_agents import _budget

    backend = empty_backend
    with backend.sync_engine.begin() as conn:
        conn.execute(text(SLOW_VIEWS[backend.name]))
    driver = backend.sync_engine.dialect.driver
    real = _budget.INTERRUPTERS[driver]
    sent: list[int] = []

    def first_one_lost(raw: Any) -> Any:
        interrupt = real(raw)
        assert interrupt is not None

        def maybe(entry: Any) -> None:
            sent.append(1)
            if len(sent) > 1:
                interrupt(entry)

        return maybe

    monkeypatch.setitem(_budget.INTERRUPTERS, driver, first_one_lost)
    policy = Policy(
        models={"Slow": ModelPolicy(fields={"id": "allow", "tenant_id": "allow"}, scoping={"tenant_id": "principal.tenant_id"})},
        call_timeout_seconds=0.3,
    )
    store = MemoryAuditStore()
    toolset = Toolset(SlowBase, policy, store)
    with backend.session() as db:
        started = time.monotonic()
        with pytest.raises(CallTimeoutError):
            await toolset.query(RunContext(ACME, db), model="Slow")
        assert time.monotonic() - started < 30 and len(sent) >= 2
    assert [r.error_code for r in store.records] == ["timeout"]


# The server's own per-statement limit, which the budget never sets.
STATEMENT_LIMIT = {"postgres": "SHOW statement_timeout", "mysql": "SELECT @@SESSION.max_statement_time"}


@pytest.mark.parametrize("empty_backend", ["postgres", "mysql"], indirect=True)
async def test_the_budget_leaves_no_setting_on_the_connection(empty_backend: Backend) -> None:
    # The budget changes no setting of the connection: nothing outlives the call on a pooled one.
    shop.Base.metadata.create_all(empty_backend.sync_engine)
    toolset = Toolset(shop.Base, shop.shop_policy(call_timeout_seconds=5))
    show = text(STATEMENT_LIMIT[empty_backend.name])
    with Session(empty_backend.sync_engine) as db:
        before = db.execute(show).scalar_one()
        db.commit()
        await toolset.query(RunContext(ACME, db), model="Order", limit=1)
        assert db.execute(show).scalar_one() == before
        db.rollback()
        assert db.execute(show).scalar_one() == before
