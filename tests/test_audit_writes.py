"""Audit records of writes in every store: one per call, snapshots, no secrets, fail closed."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from ormai_agents import OrmAIError, RunContext
from ormai_agents.audit import JsonlAuditStore, MemoryAuditStore, SqlAuditStore
from ormai_agents.eval import outcome_of
from tests import shop
from tests.conftest import ACME, BACKENDS, Backend
from tests.writes_support import count, ids, toolset

SECRET = "S3CR3T-wr1te"
KINDS = ["memory", "jsonl", "sql-in-caller-tx", "sql-own-connection"]


async def make_store(kind: str, backend: Backend, tmp_path: Path) -> Any:
    if kind == "memory":
        return MemoryAuditStore()
    if kind == "jsonl":
        return JsonlAuditStore(tmp_path / "audit.jsonl")
    if kind == "sql-in-caller-tx":  # the application's own database, in the write's transaction
        store = SqlAuditStore(backend.async_engine, in_caller_transaction=True)
    elif backend.is_postgres:  # the same database through the store's own connections
        store = SqlAuditStore(
            create_engine(backend.sync_engine.url, connect_args={"options": _search_path(backend)}, poolclass=NullPool),
            in_caller_transaction=False,
        )
    elif backend.is_mysql:
        store = SqlAuditStore(create_engine(backend.sync_engine.url, poolclass=NullPool))
    else:  # SQLite: a second connection can't write while the write holds the file, so another file
        store = SqlAuditStore(create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'audit.db'}", poolclass=NullPool))
    await store.create_table()
    return store


def _search_path(backend: Backend) -> str:
    with backend.sync_engine.connect() as conn:
        return f"-csearch_path={conn.exec_driver_sql('show search_path').scalar()}"


async def contents(store: Any) -> str:
    await store.flush()
    if isinstance(store, JsonlAuditStore):
        return store.path.read_text()
    if isinstance(store, SqlAuditStore):
        engine = store.engine
        if hasattr(engine, "sync_engine"):
            async with engine.connect() as conn:
                return repr((await conn.execute(select(store.table))).all())
        with engine.connect() as conn:
            return repr(conn.execute(select(store.table)).all())
    return repr([r.to_dict() for r in store.records])


@pytest.mark.parametrize("empty_backend", BACKENDS, indirect=True)
@pytest.mark.parametrize("kind", KINDS)
async def test_one_record_per_write_and_no_secrets(wb: Backend, wdb1: Any, tmp_path: Path, kind: str) -> None:
    store = await make_store(kind, wb, tmp_path)
    ts = toolset(audit_store=store)
    ctx = RunContext(ACME, wdb1)
    own = ids(wb, shop.Order, shop.Order.tenant_id == "acme")
    expected: list[tuple[str, str, str | None]] = []

    created = await ts.create(ctx, "Order", {"total": 5, "status": "new"})
    expected.append(("create", "success", None))
    await ts.update(ctx, "Order", own[0], {"status": "changed"})
    expected.append(("update", "success", None))
    await ts.delete(ctx, "Order", created.data["id"])
    expected.append(("delete", "success", None))
    await ts.bulk_update(ctx, "Order", [{"field": "id", "op": "in", "value": own[1:3]}], {"status": "bulk"})
    expected.append(("bulk_update", "success", None))
    attempts = [
        ("create", lambda: ts.create(ctx, "Customer", {"name": "x", "email": SECRET})),  # masked: not writable
        ("create", lambda: ts.create(ctx, "Customer", {"name": "x", "password_hash": SECRET})),  # denied
        ("update", lambda: ts.update(ctx, "Order", own[0], {"status": "ok", "api_token": SECRET})),  # unknown key
        ("update", lambda: ts.update(ctx, "Order", own[0], {"tenant_id": "globex"})),  # server-set
        ("delete", lambda: ts.delete(ctx, "Customer", 1)),  # delete not allowed on Customer
        ("bulk_update", lambda: ts.bulk_update(ctx, "Customer", [{"field": "ssn", "op": "eq", "value": SECRET}], {"name": "y"})),
        ("update", lambda: ts.update(ctx, "Order", 987_654, {"status": "x"})),  # not found
    ]
    for tool, attempt in attempts:
        with pytest.raises(OrmAIError) as info:
            await attempt()
        expected.append((tool, outcome_of(info.value), info.value.code))
    assert {o for _, o, _ in expected[4:]} == {"denied", "error"}

    records = list(reversed(await store.query(limit=1000)))
    assert [(r.tool_name, r.outcome, r.error_code) for r in records] == expected
    update = records[1]
    assert update.before is not None and update.after is not None
    assert update.before["status"] != "changed" and update.after["status"] == "changed"
    assert update.scopes_injected == ["tenant_id = 'acme'"] and update.tenant_id == "acme"
    assert SECRET not in await contents(store)
    # A refused value on a readable field is not a secret: it stays, as evidence of the attempt.
    assert records[7].inputs["data"] == {"tenant_id": "globex"}
    assert count(wb, shop.Order, shop.Order.status == "bulk") == 2
    await store.aclose()


@pytest.mark.parametrize("empty_backend", BACKENDS, indirect=True)
async def test_in_caller_transaction_rolls_back_with_a_failed_write(wb: Backend, tmp_path: Path) -> None:
    store = SqlAuditStore(wb.async_engine, table_name=f"audit_{uuid.uuid4().hex[:8]}", in_caller_transaction=True)
    await store.create_table()
    ts = toolset(audit_store=store)
    n = count(wb, shop.Order)
    async with wb.async_session() as session:
        await session.begin()
        await ts.create(RunContext(ACME, session), "Order", {"total": 1})  # in the host's transaction
        await session.rollback()  # the host changes its mind: the order and its record go together
    assert count(wb, shop.Order) == n
    assert await store.query() == []
    async with wb.async_session() as session:
        await ts.create(RunContext(ACME, session), "Order", {"total": 1})  # the call's own transaction
    assert count(wb, shop.Order) == n + 1
    assert [r.tool_name for r in await store.query(tenant_id="acme")] == ["create"]
