"""A write never needs a second connection while it holds the first, with the default stores.

Concurrent writes and reads on a small pool, with a `SqlAuditStore` on the same database (and on
the same engine): every call completes, every write is audited in the transaction that made the
change, and every read's record is stored, well before the pool would time out.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from sqlalchemy import create_engine, select, text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import Session

from ormai_agents import RunContext
from ormai_agents.audit import SqlAuditStore
from tests import shop
from tests.conftest import ACME, BACKENDS, GLOBEX, Backend, sqlite_savepoints
from tests.writes_support import ids, toolset

CALLS = 12  # concurrent calls, three times the pool


def small_pool(backend: Backend) -> tuple[Any, Any]:
    """A sync and an async engine on the backend's database, each with a pool of 4 and no overflow."""
    options: dict[str, Any] = {"pool_size": 4, "max_overflow": 0, "pool_timeout": 20}
    sync_kw, async_kw = dict(options), dict(options)
    if backend.is_postgres:
        with backend.sync_engine.connect() as conn:
            schema = conn.exec_driver_sql("show search_path").scalar()
        sync_kw["connect_args"] = {"options": f"-csearch_path={schema}"}
        async_kw["connect_args"] = {"server_settings": {"search_path": schema}}
    sync_engine = create_engine(backend.sync_engine.url, **sync_kw)
    async_engine = create_async_engine(backend.async_engine.url, **async_kw)
    if backend.name == "sqlite":
        sqlite_savepoints(sync_engine)
        sqlite_savepoints(async_engine.sync_engine)
    return sync_engine, async_engine


# SQLite serializes writers on its file lock: the pool is not what bounds it.
@pytest.mark.parametrize("empty_backend", [b for b in BACKENDS if b != "sqlite"], indirect=True)
async def test_concurrent_writes_on_a_small_pool_never_wait_for_a_second_connection(wb: Backend) -> None:
    sync_engine, engine = small_pool(wb)
    store = SqlAuditStore(engine, batch_size=3)  # the application's engine; defaults otherwise
    await store.create_table()
    tools = toolset(audit_store=store)
    acme, globex = ids(wb, shop.Order, shop.Order.tenant_id == "acme"), ids(wb, shop.Order, shop.Order.tenant_id == "globex")

    async def one(i: int) -> None:
        principal, rows = (ACME, acme) if i % 2 else (GLOBEX, globex)
        # The read leaves the session holding its connection; the write then runs in a savepoint
        # of that transaction, and the host commits.
        async with AsyncSession(engine) as session:
            ctx = RunContext(principal, session, request_id=f"call-{i}")
            await tools.query(ctx, model="Order", limit=5)
            await tools.update(ctx, model="Order", id=rows[i % len(rows)], data={"status": f"s{i}"})
            await session.commit()
        with Session(sync_engine) as sync_session:  # and a sync session, its own transaction
            await tools.update(RunContext(principal, sync_session), model="Order", id=rows[(i + 1) % len(rows)], data={"status": f"t{i}"})

    await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(CALLS))), timeout=15)
    await store.flush()
    records = await store.query(limit=1000)
    assert sorted((r.tool_name, r.outcome) for r in records) == sorted([("query", "success"), ("update", "success"), ("update", "success")] * CALLS)
    with wb.session() as s:  # every change is in the database, and audited with its new value
        statuses = {row.status for row in s.execute(select(shop.Order.status)).all()}
    assert {r.after["status"] for r in records if r.tool_name == "update"} <= statuses
    await store.aclose()
    await engine.dispose()
    sync_engine.dispose()


@pytest.mark.parametrize("empty_backend", BACKENDS, indirect=True)
async def test_a_writes_record_joins_the_callers_transaction_when_the_table_is_in_its_database(wb: Backend, tmp_path: Any) -> None:
    sync_engine, engine = small_pool(wb)
    twin = SqlAuditStore(engine)  # another engine object, the same database
    await twin.create_table()
    assert twin.in_caller_transaction is None
    tools = toolset(audit_store=twin)
    acme = ids(wb, shop.Order, shop.Order.tenant_id == "acme")
    with Session(sync_engine) as session:
        assert twin.uses_caller_transaction(session)
        session.begin()
        await tools.update(RunContext(ACME, session), model="Order", id=acme[0], data={"status": "rolled back"})
        session.rollback()  # the host changes its mind: the change and its record go together
    assert await twin.query() == []
    with Session(sync_engine) as session:
        await tools.update(RunContext(ACME, session), model="Order", id=acme[0], data={"status": "kept"})
    assert [(r.tool_name, r.after["status"]) for r in await twin.query()] == [("update", "kept")]

    # Another database: the record goes through the store's own engine.
    if wb.is_postgres:
        other = create_engine(wb.sync_engine.url.set(database="postgres"))
    else:
        other = create_engine(f"sqlite:///{tmp_path / 'audit.db'}")
    elsewhere = SqlAuditStore(other)
    await elsewhere.create_table()
    with Session(sync_engine) as session:
        assert not elsewhere.uses_caller_transaction(session)
        tools = toolset(audit_store=elsewhere)
        await tools.update(RunContext(ACME, session), model="Order", id=acme[0], data={"status": "elsewhere"})
    assert [r.after["status"] for r in await elsewhere.query(tenant_id="acme", limit=1)] == ["elsewhere"]
    if wb.is_postgres:
        elsewhere.table.drop(other)
    other.dispose()
    await engine.dispose()
    sync_engine.dispose()


@pytest.mark.parametrize("empty_backend", ["postgres"], indirect=True)
async def test_a_store_whose_search_path_finds_another_schema_uses_its_own_connection(wb: Backend) -> None:
    schema = f"audit_{uuid.uuid4().hex[:8]}"
    with wb.sync_engine.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    store_engine = create_engine(wb.sync_engine.url, connect_args={"options": f"-csearch_path={schema}"})
    store = SqlAuditStore(store_engine)
    await store.create_table()  # in its own schema, found through its own search_path
    try:
        with wb.session() as session:
            await toolset(audit_store=store).create(RunContext(ACME, session), model="Order", data={"total": "1.00"})
            assert not store.uses_caller_transaction(session)
        assert [r.tool_name for r in await store.query(tenant_id="acme")] == ["create"]
        # Named explicitly, the schema is found from any search_path: the caller's transaction.
        assert SqlAuditStore(store_engine, schema=schema).uses_caller_transaction(wb.session())
    finally:
        store_engine.dispose()
        with wb.sync_engine.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
