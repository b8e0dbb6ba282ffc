"""Audit stores: one record per call, no secrets, queries, rotation, batching, retention."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Column, Integer, MetaData, Table, insert, inspect, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from ormai_agents import FieldNotAllowedError, ModelNotAllowedError, Principal, RecordNotFoundError, RunContext, Toolset, ValidationError
from ormai_agents._redact import REDACTED, redact_inputs
from ormai_agents.audit import AuditRecord, JsonlAuditStore, MemoryAuditStore, SqlAuditStore, deliver
from ormai_agents.core import AccessDeniedError
from tests import shop
from tests.conftest import BACKENDS, GLOBEX, Backend

ACME = Principal(tenant_id="acme", user_id="u1", roles=("agent",))
SECRET = "S3CR3T-9f2c"

STORE_KINDS = ["memory", "jsonl", "sql-sync", "sql-async"]


def make_store(kind: str, backend: Backend, tmp_path: Path, **options: Any) -> Any:
    if kind == "memory":
        return MemoryAuditStore()
    if kind == "jsonl":
        return JsonlAuditStore(tmp_path / f"audit-{uuid.uuid4().hex[:6]}.jsonl", **options)
    engine = backend.sync_engine if kind == "sql-sync" else backend.async_engine
    return SqlAuditStore(engine, table_name=f"audit_{uuid.uuid4().hex[:10]}", **options)


@pytest.fixture(params=STORE_KINDS)
async def store(request: pytest.FixtureRequest, shop_backend: Backend, tmp_path: Path) -> Any:
    """Each store; the SQL ones keep their table in the shop's own database."""
    s = make_store(request.param, shop_backend, tmp_path)
    if isinstance(s, SqlAuditStore):
        await s.create_table()
    yield s
    await s.aclose()


async def stored(store: Any) -> list[AuditRecord]:
    """Everything the store holds, newest first, as read back from its medium."""
    await store.flush()
    return await store.query(limit=10_000)


async def raw_contents(store: Any) -> str:
    """The store's medium as text: the file bytes, the table rows, the objects in memory."""
    await store.flush()
    if isinstance(store, JsonlAuditStore):
        return "".join(p.read_text() for p in store.path.parent.glob(store.path.name + "*"))
    if isinstance(store, SqlAuditStore):
        engine = store.engine
        if hasattr(engine, "sync_engine"):
            async with engine.connect() as conn:
                rows = (await conn.execute(select(store.table))).all()
        else:
            with engine.connect() as conn:
                rows = conn.execute(select(store.table)).all()
        return repr([tuple(r) for r in rows])
    return repr([r.to_dict() for r in store.records]) + repr(store.records)


async def test_one_record_per_call_for_every_outcome(store: Any, shop_db: Any) -> None:
    toolset = Toolset(shop.Base, shop.shop_policy(), store)
    ctx = RunContext(ACME, shop_db, request_id="req-1")
    expected: list[tuple[str, str, str | None]] = []

    result = await toolset.query(ctx, model="Order", filters=[{"field": "status", "op": "ne", "value": "pending"}])
    expected.append(("query", "success", None))
    await toolset.get(ctx, model="Order", id=result.rows[0]["id"])
    expected.append(("get", "success", None))
    await toolset.aggregate(ctx, model="Order")
    expected.append(("aggregate", "success", None))
    await toolset.describe_schema(ctx)
    expected.append(("describe_schema", "success", None))
    with pytest.raises(FieldNotAllowedError):
        await toolset.query(ctx, model="Customer", filters=[{"field": "ssn", "op": "eq", "value": "1"}])
    expected.append(("query", "denied", "field_not_allowed"))
    with pytest.raises(AccessDeniedError):
        await toolset.query(RunContext(Principal(tenant_id=None), shop_db), model="Order")
    expected.append(("query", "denied", "access_denied"))
    with pytest.raises(RecordNotFoundError):
        await toolset.get(ctx, model="Order", id=999_999)
    expected.append(("get", "error", "not_found"))
    with pytest.raises(ValidationError):
        await toolset.query(ctx, model="Order", limit=-1)
    expected.append(("query", "error", "validation_error"))

    records = await stored(store)
    assert [(r.tool_name, r.outcome, r.error_code) for r in reversed(records)] == expected
    assert len({r.id for r in records}) == len(expected)
    first = records[-1]
    assert first.tenant_id == "acme" and first.user_id == "u1" and first.roles == ["agent"]
    assert first.model == "Order" and first.request_id == "req-1"
    assert first.scopes_injected == ["tenant_id = 'acme'"]
    assert first.row_count == len(result.rows) and first.duration_ms > 0
    assert first.inputs == {"filters": [{"field": "status", "op": "ne", "value": "pending"}]}
    assert first.timestamp.tzinfo is not None
    assert [r.timestamp for r in records] == sorted((r.timestamp for r in records), reverse=True)


async def test_no_secret_from_inputs_reaches_any_store(store: Any, shop_db: Any) -> None:
    toolset = Toolset(shop.Base, shop.shop_policy(), store)
    ctx = RunContext(ACME, shop_db)
    hostile = [
        {"field": "email", "op": "eq", "value": SECRET},  # masked
        {"field": "ssn", "op": "startswith", "value": SECRET},  # hashed
        {"field": "password_hash", "op": "eq", "value": SECRET},  # denied
        {"field": "nope", "op": "eq", "value": SECRET},  # unknown
        {"field": "name", "op": "in", "value": [{"api_key": SECRET}]},  # nested secret key on a plain field
        {"field": "name", "op": "eq", "value": "Ann", "token": SECRET},  # smuggled key
        {"field": "name", "op": SECRET, "value": "Ann"},  # bad operator
    ]
    for spec in hostile:
        with pytest.raises((FieldNotAllowedError, ValidationError)):
            await toolset.query(ctx, model="Customer", filters=[spec])
    with pytest.raises(ValidationError):
        await toolset.query(ctx, model="Customer", filters=f"ssn = '{SECRET}'")
    with pytest.raises(ModelNotAllowedError):
        await toolset.query(ctx, model="Document", filters=[{"field": "title", "op": "eq", "value": SECRET}])
    with pytest.raises(ValidationError):
        await toolset.get(ctx, model="Customer", id={"password": SECRET})
    records = await stored(store)
    assert len(records) == len(hostile) + 3
    assert SECRET not in await raw_contents(store)
    # The attempt stays visible: the field names are kept, their values are not.
    fields = [f.get("field") for r in records for f in r.inputs.get("filters", []) if isinstance(f, dict)]
    assert "password_hash" in fields and "ssn" in fields


def test_redaction_of_nested_and_write_inputs() -> None:
    toolset = Toolset(shop.Base, shop.shop_policy(redact_keys=["password", "pin"]), None)
    plan = toolset.plan("Customer")
    data = {
        "name": {"first": "Ann", "PIN_code": SECRET, "deep": [{"password": SECRET}]},
        "email": SECRET,
        "password_hash": SECRET,
        "tenant_id": "acme",
    }
    out = redact_inputs(plan, {"data": data, "filters": [{"field": "name", "op": "eq", "value": "x"}]}, ["password", "pin"])
    assert SECRET not in json.dumps(out)
    assert out["data"]["name"] == {"first": "Ann", "PIN_code": REDACTED, "deep": [{"password": REDACTED}]}
    assert out["data"]["email"] == REDACTED and out["data"]["password_hash"] == REDACTED
    assert out["data"]["tenant_id"] == "acme"
    assert toolset.redact(None, {"data": {"name": SECRET}, "id": SECRET}) == {"data": {"name": REDACTED}, "id": REDACTED}


def _rec(tenant: str, user: str, tool: str, ts: datetime, **kw: Any) -> AuditRecord:
    return AuditRecord(tool_name=tool, model="Order", tenant_id=tenant, user_id=user, timestamp=ts, **kw)


async def test_queries_by_tenant_user_tool_and_time(store: Any) -> None:
    t0 = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
    written = []
    for i in range(12):
        tenant = ["acme", "globex", "initech"][i % 3]
        record = _rec(tenant, f"u{i % 2}", "get" if i % 4 == 0 else "query", t0 + timedelta(minutes=i))
        written.append(record)
        await store.write(record)
    # Written out of time order: queries still sort by timestamp.
    late = _rec("acme", "u9", "query", t0 - timedelta(days=1))
    await store.write(late)

    acme = await store.query(tenant_id="acme")
    assert [r.id for r in acme] == [r.id for r in sorted((*written, late), key=lambda r: r.timestamp, reverse=True) if r.tenant_id == "acme"]
    assert {r.tenant_id for r in acme} == {"acme"}
    assert [r.id for r in await store.query(tenant_id="acme", limit=2)] == [r.id for r in acme[:2]]
    window = await store.query(since=t0 + timedelta(minutes=3), until=t0 + timedelta(minutes=7))
    assert [r.id for r in window] == [r.id for r in reversed(written[3:7])]
    gets = await store.query(tool_name="get", user_id="u0")
    assert [r.id for r in gets] == [r.id for r in reversed(written) if r.tool_name == "get" and r.user_id == "u0"]
    naive = await store.query(tenant_id="globex", since=(t0 + timedelta(minutes=5)).replace(tzinfo=None))
    assert [r.id for r in naive] == [r.id for r in reversed(written[5:]) if r.tenant_id == "globex"]
    with pytest.raises(ValueError):
        await store.query(limit=0)

    assert await store.delete_before(t0 + timedelta(minutes=4)) == 5
    left = await store.query(limit=100)
    assert len(left) == 8 and min(r.timestamp for r in left) == t0 + timedelta(minutes=4)
    assert await store.delete_before(t0) == 0


async def test_record_round_trip_keeps_types(store: Any) -> None:
    record = AuditRecord(
        tool_name="update",
        model="Order",
        tenant_id=42,
        user_id=("a", "b"),
        inputs={"filters": [{"field": "total", "op": "gt", "value": 1.5}], "n": None},
        before={"status": "pending", "total": "9.99"},
        after={"status": "shipped"},
        policies_applied=["tenant_required"],
        bypass_used=True,
        outcome="denied",
        error_code="write_not_allowed",
        row_count=0,
    )
    await store.write(record)
    (back,) = await store.query(tenant_id=42)
    assert back.to_dict() == record.to_dict()


async def test_jsonl_rotation_and_concurrent_writers(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "audit.jsonl"
    line = len(json.dumps(_rec("acme", "u", "query", datetime.now(timezone.utc)).to_dict(), separators=(",", ":"))) + 1
    store = JsonlAuditStore(path, max_bytes=line * 10, backup_count=3)
    twin = JsonlAuditStore(path, max_bytes=line * 10, backup_count=3)  # a second writer on the same file
    base = datetime(2026, 1, 1, tzinfo=timezone.utc)
    records = [_rec("acme", "u", "query", base + timedelta(seconds=i)) for i in range(100)]

    async def put(i: int) -> None:
        await (store if i % 2 else twin).write(records[i])

    for start in range(0, 100, 20):  # concurrent groups, in time order between groups
        await asyncio.gather(*(put(i) for i in range(start, start + 20)))

    files = sorted(path.parent.iterdir())
    assert [f.name for f in files] == ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2", "audit.jsonl.3"]
    total = 0
    for f in files:
        lines = f.read_text().splitlines()
        total += len(lines)
        assert f.stat().st_size <= line * 10 + 20  # a few bytes of slack for wider ids/timestamps
        assert all(json.loads(x)["tenant_id"] == "acme" for x in lines)  # never interleaved
    assert 30 < total <= 40  # the current file and three backups; older ones were dropped
    kept = await store.query(limit=1000)
    assert len(kept) == total
    assert [r.timestamp for r in kept] == sorted((r.timestamp for r in kept), reverse=True)
    assert kept[0].id == records[-1].id
    assert await store.delete_before(base + timedelta(seconds=90)) == total - 10
    assert len(await twin.query(limit=1000)) == 10

    with pytest.raises(ValueError):
        JsonlAuditStore(path, max_bytes=10, backup_count=0)


async def test_jsonl_concurrent_threads(tmp_path: Path) -> None:
    store = JsonlAuditStore(tmp_path / "a.jsonl", max_bytes=None)

    async def burst(n: int) -> None:
        await asyncio.gather(*(store.write(_rec(f"t{n}", "u", "get", datetime.now(timezone.utc))) for _ in range(25)))

    def worker(n: int) -> None:
        asyncio.run(burst(n))  # each thread with its own event loop

    await asyncio.gather(*(asyncio.to_thread(worker, n) for n in range(4)))
    lines = (tmp_path / "a.jsonl").read_text().splitlines()
    assert len(lines) == 100
    assert sorted(json.loads(x)["tenant_id"] for x in lines) == sorted(f"t{n}" for n in range(4) for _ in range(25))


@pytest.mark.parametrize("empty_backend", BACKENDS, indirect=True)
@pytest.mark.parametrize("engine_kind", ["sync", "async"])
async def test_sql_store_in_a_separate_database(empty_backend: Backend, engine_kind: str, shop_backend: Backend) -> None:
    engine = empty_backend.sync_engine if engine_kind == "sync" else empty_backend.async_engine
    store = SqlAuditStore(engine, batch_size=1)
    await store.create_table()
    await store.create_table()  # idempotent
    names = inspect(empty_backend.sync_engine).get_indexes("ormai_audit_log")
    assert {tuple(ix["column_names"]) for ix in names} >= {("tenant_id", "timestamp"), ("timestamp",)}
    toolset = Toolset(shop.Base, shop.shop_policy(), store)
    with shop_backend.session() as session:
        await toolset.query(RunContext(GLOBEX, session), model="Order", limit=3)
        with pytest.raises(RecordNotFoundError):
            await toolset.get(RunContext(GLOBEX, session), model="Order", id=-5)
    (last, first) = await store.query(tenant_id="globex")
    assert (first.outcome, last.outcome, last.error_code) == ("success", "error", "not_found")
    assert first.scopes_injected == ["tenant_id = 'globex'"] and first.row_count == 3
    await store.aclose()


async def test_sql_batching_and_flush_paths(shop_backend: Backend, shop_db: Any, caplog: pytest.LogCaptureFixture) -> None:
    store = SqlAuditStore(shop_backend.async_engine, table_name=f"audit_{uuid.uuid4().hex[:10]}", batch_size=4, flush_interval=30)
    toolset = Toolset(shop.Base, shop.shop_policy(), store)
    ctx = RunContext(ACME, shop_db)

    async def in_table() -> int:
        async with shop_backend.async_engine.connect() as conn:
            return len((await conn.execute(select(store.table.c.id))).all())

    async def soon(check: Any) -> bool:
        # A full batch is stored by a background task: the call that filled it never waits.
        for _ in range(200):
            if await check():
                return True
            await asyncio.sleep(0.01)
        return False

    async def logged() -> bool:
        return any("audit" in r.getMessage() for r in caplog.records)

    # The table does not exist yet: reads still answer, the failure is logged, records stay queued.
    with caplog.at_level(logging.ERROR, logger="ormai_agents"):
        for _ in range(4):
            await toolset.aggregate(ctx, model="Order")
        assert await soon(logged)
    assert store.pending == 4
    await store.create_table()

    await toolset.aggregate(ctx, model="Order")  # 5 queued, a full batch: stored in the background

    async def five() -> bool:
        return await in_table() == 5

    assert await soon(five) and store.pending == 0
    for _ in range(3):
        await toolset.aggregate(ctx, model="Order")
    assert store.pending == 3 and await in_table() == 5  # batched, not yet stored
    # A durable write stores the queued records with it, in one transaction.
    await deliver(store, AuditRecord(tool_name="delete", model="Order", tenant_id="acme"), durable=True)
    assert store.pending == 0 and await in_table() == 9
    await deliver(store, AuditRecord(tool_name="query", model="Order", tenant_id="acme"), durable=False)
    assert store.pending == 1
    await store.aclose()
    assert store.pending == 0 and await in_table() == 10
    assert [r.tool_name for r in await store.query(limit=2)] == ["query", "delete"]


async def test_sql_interval_flush(shop_backend: Backend) -> None:
    store = SqlAuditStore(shop_backend.async_engine, table_name=f"audit_{uuid.uuid4().hex[:10]}", batch_size=100, flush_interval=0.05)
    await store.create_table()
    await store.write_buffered(AuditRecord(tool_name="query", model="Order", tenant_id="acme"))
    assert store.pending == 1
    for _ in range(200):
        if store.pending == 0:
            break
        await asyncio.sleep(0.01)
    assert store.pending == 0
    async with shop_backend.async_engine.connect() as conn:
        assert len((await conn.execute(select(store.table.c.id))).all()) == 1
    await store.aclose()


async def test_durable_write_failure_raises(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    store = JsonlAuditStore(blocker / "audit.jsonl")  # a directory that can't exist
    with pytest.raises(OSError):
        await deliver(store, AuditRecord(tool_name="create", model="Order"), durable=True)


async def test_write_in_callers_transaction(empty_backend: Backend) -> None:
    store = SqlAuditStore(empty_backend.async_engine)
    await store.create_table()
    async with empty_backend.async_session() as session:
        await store.write_in(session, AuditRecord(tool_name="create", model="Order", tenant_id="acme"))
        await session.rollback()  # the audited change was rolled back: so is its record
        assert await store.query() == []
        await store.write_in(session, AuditRecord(tool_name="create", model="Order", tenant_id="acme"))
        await session.commit()
    assert [r.tool_name for r in await store.query(tenant_id="acme")] == ["create"]



@pytest.mark.parametrize("empty_backend", BACKENDS, indirect=True)
async def test_sql_json_columns_hold_the_records_json_and_sql_null(empty_backend: Backend) -> None:
    # The store serialises the JSON columns itself, once: the table holds the record's JSON, and
    # SQL NULL (not JSON null) where there is no snapshot, in a caller's transaction and a batch.
    store = SqlAuditStore(empty_backend.async_engine, batch_size=1)
    await store.create_table()
    record = AuditRecord(
        tool_name="update",
        model="Order",
        tenant_id="acme",
        roles=["agent"],
        inputs={"when": datetime(2024, 1, 2, tzinfo=timezone.utc), "text": "é✓\u2028", "n": None},
        after={"total": "9.99", "tags": ["a", None]},
    )
    async with empty_backend.async_session() as session:
        await store.write_in(session, record)
        await session.commit()
    await store.write(AuditRecord(tool_name="get", model="Order", tenant_id="acme", inputs={"id": 1}))
    t = store.table
    snapshots = (t.c.before, t.c.after, t.c.before.is_(None), t.c.after.is_(None))
    columns = (t.c.principal, t.c.inputs, t.c.scopes_injected, *snapshots)
    async with empty_backend.async_engine.connect() as conn:
        written, batched = (await conn.execute(select(*columns).order_by(t.c.seq))).all()
    principal = {"tenant_id": "acme", "user_id": None, "roles": ["agent"]}
    assert written[:5] == (principal, record.to_dict()["inputs"], [], None, record.after)
    assert written[5:] == (True, False)
    assert batched[1] == {"id": 1} and batched[5:] == (True, True)


async def test_sqlite_same_file_writes_audit_in_the_callers_transaction(empty_backend: Backend) -> None:
    """On SQLite a second connection can't write while the caller holds the write lock: a write's
    record must go through the caller's transaction (`in_caller_transaction=True`)."""
    items = Table("items", MetaData(), Column("id", Integer, primary_key=True))
    items.create(empty_backend.sync_engine)
    url = empty_backend.async_engine.url
    impatient = create_async_engine(url, connect_args={"timeout": 0.2}, poolclass=NullPool)
    separate = SqlAuditStore(impatient, batch_size=1, in_caller_transaction=False)
    joined = SqlAuditStore(impatient)  # the caller's database: its transaction, by default
    await separate.create_table()
    record = AuditRecord(tool_name="create", model="Item", tenant_id="acme")
    with empty_backend.session() as session:
        session.execute(insert(items).values(id=1))  # the caller's write holds the file's write lock
        with pytest.raises(OperationalError):
            await deliver(separate, record, durable=True, db=session)
        await deliver(joined, record, durable=True, db=session)
        session.rollback()  # the change is undone, and so is its record
        assert await joined.query() == []
        session.execute(insert(items).values(id=2))
        await deliver(joined, record, durable=True, db=session)
        session.commit()
    # Denied attempts bypass the caller's transaction: a rollback can't erase them.
    with empty_backend.session() as session:
        denied = AuditRecord(tool_name="delete", model="Item", tenant_id="acme", outcome="denied", error_code="write_not_allowed")
        await deliver(joined, denied, durable=True, db=session)
        session.rollback()
    assert [(r.tool_name, r.outcome) for r in await joined.query(tenant_id="acme")] == [("delete", "denied"), ("create", "success")]
    await impatient.dispose()
