"""A write never needs a second connection while it holds the first, with the default stores.

Concurrent writes and reads on a small pool, with a `SqlAuditStore` on the same database (and on
the same engine): every call completes, every write is audited in the transaction that made the
change, and every read's record is stored, well before the pool would time out. On a pool of ONE
connection, every store the library ships (memory, JSON lines, SQL on the same engine, on a twin
engine, on another database) and both kinds of handle: a write that asked for a second
connection while holding the only one would wait out the pool's timeout and fail.
"""

from __future__ import annotations

import asyncio
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import Session

from ormai_agents import RunContext, WriteAction
from ormai_agents.approvals import SqlApprovalStore
from ormai_agents.audit import JsonlAuditStore, MemoryAuditStore, SqlAuditStore
from tests import shop
from tests.conftest import ACME, BACKENDS, GLOBEX, Backend, sqlite_savepoints
from tests.writes_support import ids, toolset, write_policy

CALLS = 12  # concurrent calls, three times the pool


def small_pool(backend: Backend, size: int = 4, timeout: float = 20) -> tuple[Any, Any]:
    """A sync and an async engine on the backend's database, each with a pool of `size` and no overflow."""
    options: dict[str, Any] = {"pool_size": size, "max_overflow": 0, "pool_timeout": timeout}
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


STORES = ["memory", "jsonl", "jsonl-batched", "sql-same-engine", "sql-twin-engine", "sql-other-database"]


@pytest.mark.parametrize("empty_backend", ["postgres"], indirect=True)
@pytest.mark.parametrize("handle", ["async", "sync"])
@pytest.mark.parametrize("store_kind", STORES)
async def test_every_store_by_default_lets_writes_run_on_a_pool_of_one(wb: Backend, store_kind: str, handle: str, tmp_path: Path) -> None:
    """Eight callers at once on a pool of one connection, each keeping its session (and the
    connection) across a read, an update and a create, then a write in a session of its own.
    `async`: tasks of one event loop with async sessions. `sync`: threads with sync sessions, each
    call on an event loop of its own (as the LangChain adapter runs sync tools). A SQL store uses
    an engine of the callers' kind: the same engine, another engine on the same database, or an
    engine (and a pool of one) on another database."""
    sync_engine, async_engine = small_pool(wb, size=1, timeout=5)
    engine = async_engine if handle == "async" else sync_engine
    other: Any = None
    if store_kind == "memory":
        store: Any = MemoryAuditStore()
    elif store_kind.startswith("jsonl"):
        store = JsonlAuditStore(tmp_path / "audit.jsonl", batch_size=5 if store_kind == "jsonl-batched" else 1)
    elif store_kind == "sql-same-engine":
        store = SqlAuditStore(engine, batch_size=3)
    else:
        if store_kind == "sql-twin-engine":  # on the test's schema, as the callers' engines
            other = small_pool(wb, size=1, timeout=5)[0 if handle == "sync" else 1]
        else:
            url = engine.url.set(database="postgres")
            options: dict[str, Any] = {"pool_size": 1, "max_overflow": 0, "pool_timeout": 5}
            other = create_async_engine(url, **options) if handle == "async" else create_engine(url, **options)
        store = SqlAuditStore(other, table_name=f"audit_{uuid.uuid4().hex[:8]}", batch_size=3)
    if isinstance(store, SqlAuditStore):
        await store.create_table()
    tools = toolset(audit_store=store)
    acme, globex = ids(wb, shop.Order, shop.Order.tenant_id == "acme"), ids(wb, shop.Order, shop.Order.tenant_id == "globex")

    def who(i: int) -> tuple[Any, list[Any]]:
        return (ACME, acme) if i % 2 else (GLOBEX, globex)

    async def async_calls(i: int) -> None:
        principal, rows = who(i)
        async with AsyncSession(async_engine) as session:
            ctx = RunContext(principal, session, request_id=f"a{i}")
            await tools.query(ctx, model="Order", limit=5)  # the session now holds the connection
            await tools.update(ctx, model="Order", id=rows[i % len(rows)], data={"status": f"a{i}"})
            await tools.create(ctx, model="Order", data={"status": f"ac{i}", "total": "1.00"})
            await session.commit()
        async with AsyncSession(async_engine) as session:  # the call begins and commits its own transaction
            await tools.update(RunContext(principal, session), model="Order", id=rows[(i + 2) % len(rows)], data={"status": f"af{i}"})

    def sync_calls(i: int) -> None:
        principal, rows = who(i)
        with Session(sync_engine) as session:
            ctx = RunContext(principal, session, request_id=f"s{i}")
            asyncio.run(tools.query(ctx, model="Order", limit=5))
            asyncio.run(tools.update(ctx, model="Order", id=rows[i % len(rows)], data={"status": f"s{i}"}))
            asyncio.run(tools.create(ctx, model="Order", data={"status": f"sc{i}", "total": "1.00"}))
            session.commit()
        with Session(sync_engine) as session:
            asyncio.run(tools.update(RunContext(principal, session), model="Order", id=rows[(i + 2) % len(rows)], data={"status": f"sf{i}"}))

    try:
        if handle == "async":
            await asyncio.wait_for(asyncio.gather(*(async_calls(i) for i in range(8))), timeout=30)
        else:
            with ThreadPoolExecutor(8) as pool:
                await asyncio.wait_for(asyncio.gather(*(asyncio.wrap_future(pool.submit(sync_calls, i)) for i in range(8))), timeout=30)
        await store.flush()
        records = await store.query(limit=1000)
        expected = [("query", "success"), ("update", "success"), ("create", "success"), ("update", "success")] * 8
        assert sorted((r.tool_name, r.outcome) for r in records) == sorted(expected)
        with wb.session() as s:  # every audited create is in the database, every updated row holds an audited update
            now = dict(s.execute(select(shop.Order.id, shop.Order.status)).all())
        assert all(now[r.after["id"]] == r.after["status"] for r in records if r.tool_name == "create")
        updates = [r for r in records if r.tool_name == "update"]
        assert all(now[r.after["id"]] in {u.after["status"] for u in updates if u.after["id"] == r.after["id"]} for r in updates)
    finally:
        await store.aclose()
        if isinstance(other, AsyncEngine):
            if store_kind == "sql-other-database":
                async with other.begin() as conn:
                    await conn.run_sync(store.table.drop)
            await other.dispose()
        elif other is not None:
            if store_kind == "sql-other-database":
                store.table.drop(other)
            other.dispose()
        await async_engine.dispose()
        sync_engine.dispose()


@pytest.mark.parametrize("empty_backend", ["postgres"], indirect=True)
@pytest.mark.parametrize("rls", [False, True])
async def test_approvals_and_audit_on_the_applications_engine_run_on_a_pool_of_one(wb: Backend, rls: bool) -> None:
    """Calls in sessions of their own (as the adapters make them): a delete submitted for approval,
    approved, then executed by two callers at once, with the approval and audit stores on the
    application's engine of one connection. With `rls=True` the settings begin the call's
    transaction: it is ended before the approval store is reached, and begun again for the write."""
    _, engine = small_pool(wb, size=1, timeout=5)
    store = SqlAuditStore(engine)
    await store.create_table()
    approvals = SqlApprovalStore(engine)
    policy = write_policy(order_ops={"delete": WriteAction.RequireApproval})
    tools = toolset(policy, audit_store=store, approval_store=approvals, rls=rls)
    targets = ids(wb, shop.Order, shop.Order.tenant_id == "acme")[:4]

    async def fresh(tool: str, **kwargs: Any) -> Any:
        async with AsyncSession(engine) as session:
            try:
                return await getattr(tools, tool)(RunContext(ACME, session), **kwargs)
            except Exception as exc:  # noqa: BLE001 - the outcome is what is checked
                return exc

    try:
        submitted = await asyncio.wait_for(asyncio.gather(*(fresh("delete", model="Order", id=t) for t in targets)), timeout=20)
        approval_ids = [getattr(e, "approval_id", None) for e in submitted]
        assert all(approval_ids), submitted
        for a in approval_ids:
            await approvals.approve(str(a), decided_by="alice")
        runs = await asyncio.wait_for(
            asyncio.gather(*(fresh("execute_approved", approval_id=a) for a in approval_ids for _ in range(2))), timeout=20
        )
        assert sum(1 for r in runs if not isinstance(r, Exception)) == len(targets)  # each exactly once
        assert ids(wb, shop.Order, shop.Order.id.in_(targets)) == []
        await store.flush()
        deletes = [r for r in await store.query(tool_name="delete", limit=100) if r.outcome == "success"]
        assert sorted(r.before["id"] for r in deletes) == sorted(targets)
    finally:
        await store.aclose()
        await engine.dispose()
