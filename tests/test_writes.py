"""The write path on SQLite and PostgreSQL, sync and async sessions, played by a hostile agent."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import event
from ormai_agents import (
    AuditUnavailableError,
    FieldNotAllowedError,
    IntegrityConstraintError,
    ModelNotAllowedError,
    OrmAIError,
    PolicyError,
    RecordNotFoundError,
    RunContext,
    Toolset,
    ValidationError,
    WriteAction,
    WriteNotAllowedError,
    WritePolicy,
)
from ormai_agents.audit import MemoryAuditStore
from tests import shop
from tests._truth import captured
from tests.conftest import ACME, BACKENDS, GLOBEX, Backend
from tests.writes_support import count, ids, snapshot, toolset, write_policy

pytestmark = pytest.mark.parametrize("empty_backend", BACKENDS, indirect=True)

Order, Customer = shop.Order, shop.Customer


def acme_customer(backend: Backend) -> int:
    return ids(backend, Customer, Customer.tenant_id == "acme")[0]


async def test_create_fills_server_fields_and_commits(wb: Backend, wdb: Any) -> None:
    ts = toolset()
    cid = acme_customer(wb)
    result = await ts.create(RunContext(ACME, wdb), "Order", {"status": "new", "total": "12.50", "quantity": 2, "customer_id": cid})
    data = result.data
    assert data["tenant_id"] == "acme" and data["owner_id"] == "u1" and data["customer_id"] == cid
    assert data["total"] == Decimal("12.50") and isinstance(data["created_at"], dt.datetime)
    assert "internal_note" not in data
    assert not wdb.in_transaction(), "the toolset began the transaction, so it ends it"
    rows = snapshot(wb, Order)
    row = next(r for r in rows if r[0] == data["id"])
    assert row[1:5] == ("acme", cid, "u1", "new")


HOSTILE_CREATES = [
    {"status": "x", "total": 1, "tenant_id": "globex"},  # scoping column
    {"status": "x", "total": 1, "owner_id": "u9"},  # auto-set
    {"status": "x", "total": 1, "created_at": "2020-01-01T00:00:00"},  # auto-set now()
    {"status": "x", "total": 1, "internal_note": "x"},  # denied (not in the policy)
    {"status": "x", "total": 1, "id": 99_999},  # generated key
    {"status": "x", "total": 1, "no_such_field": 1},
]


async def test_mass_assignment_on_create_writes_nothing(wb: Backend, wdb1: Any) -> None:
    ts = toolset()
    before = snapshot(wb, Order)
    for data in HOSTILE_CREATES:
        with pytest.raises(FieldNotAllowedError) as err:
            await ts.create(RunContext(ACME, wdb1), "Order", data)
        assert "internal_note" not in str(err.value) and "no_such_field" not in str(err.value)
        assert err.value.details["allowed_fields"] == ["customer_id", "status", "total", "quantity"]
    assert snapshot(wb, Order) == before


async def test_masked_hashed_and_denied_fields_are_not_writable(wb: Backend, wdb1: Any) -> None:
    ts = toolset()
    ctx = RunContext(ACME, wdb1)
    before = snapshot(wb, Customer)
    for data in ({"email": "a@b.c"}, {"ssn": "1"}, {"password_hash": "x"}, {"org_id": "o"}):
        with pytest.raises(FieldNotAllowedError) as err:
            await ts.create(ctx, "Customer", {"name": "Eve", **data})
        assert "password_hash" not in str(err.value) and "org_id" not in str(err.value)
        with pytest.raises(FieldNotAllowedError):
            await ts.update(ctx, "Customer", acme_customer(wb), data)
    assert snapshot(wb, Customer) == before


async def test_mass_assignment_on_update_and_bulk_update_writes_nothing(wb: Backend, wdb1: Any) -> None:
    ts = toolset()
    ctx = RunContext(ACME, wdb1)
    target = ids(wb, Order, Order.tenant_id == "acme")[0]
    before = snapshot(wb, Order)
    for data in ({"tenant_id": "globex"}, {"customer_id": None}, {"id": 5}, {"owner_id": "u9"}, {"internal_note": "x"}):
        with pytest.raises(FieldNotAllowedError):
            await ts.update(ctx, "Order", target, {"status": "ok", **data})
        with pytest.raises(FieldNotAllowedError):
            await ts.bulk_update(ctx, "Order", [{"field": "id", "op": "eq", "value": target}], {"status": "ok", **data})
    assert snapshot(wb, Order) == before


async def test_values_are_validated_before_anything_is_written(wb: Backend, wdb1: Any) -> None:
    ts = toolset()
    ctx = RunContext(ACME, wdb1)
    before = snapshot(wb, Order)
    for data in (
        {"total": "lots"},  # not a number
        {"status": "x" * 41, "total": 1},  # longer than String(40)
        {"status": "x"},  # required total missing
        {"total": None},  # required total null
        "status=x",  # not an object
    ):
        with pytest.raises(ValidationError):
            await ts.create(ctx, "Order", data)
    with pytest.raises(ValidationError):
        await ts.update(ctx, "Order", ids(wb, Order, Order.tenant_id == "acme")[0], {})
    assert snapshot(wb, Order) == before


async def test_writes_are_denied_by_default(wb: Backend, wdb1: Any) -> None:
    ctx = RunContext(ACME, wdb1)
    ts = toolset()
    before = snapshot(wb, shop.Tenant)
    with pytest.raises(WriteNotAllowedError):
        await ts.update(ctx, "Tenant", "acme", {"name": "Pwned"})
    with pytest.raises(WriteNotAllowedError):
        await ts.delete(ctx, "Customer", acme_customer(wb))
    with pytest.raises(ModelNotAllowedError):
        await ts.create(ctx, "Document", {"title": "x"})
    read_only = Toolset(shop.Base, shop.shop_policy(), secret_key=b"k" * 32)
    with pytest.raises(WriteNotAllowedError):
        await read_only.create(ctx, "Order", {"total": 1})
    assert snapshot(wb, shop.Tenant) == before


async def test_cross_tenant_update_and_delete_look_like_missing_rows(wb: Backend, wdb: Any) -> None:
    ts = toolset()
    ctx = RunContext(ACME, wdb)
    foreign = ids(wb, Order, Order.tenant_id != "acme") + ids(wb, Order, Order.tenant_id.is_(None))
    assert foreign
    before = snapshot(wb, Order)
    with pytest.raises(RecordNotFoundError) as missing:
        await ts.update(ctx, "Order", 10_000, {"status": "x"})
    for oid in foreign[:8]:
        with pytest.raises(RecordNotFoundError) as err:
            await ts.update(ctx, "Order", oid, {"status": "pwned"})
        assert str(err.value) == str(missing.value)
        with pytest.raises(RecordNotFoundError) as err:
            await ts.delete(ctx, "Order", oid)
        assert str(err.value) == str(missing.value)
    assert snapshot(wb, Order) == before


async def test_cross_tenant_bulk_update_changes_nothing(wb: Backend, wdb1: Any) -> None:
    ts = toolset()
    foreign = ids(wb, Order, Order.tenant_id == "globex")[:5]
    before = snapshot(wb, Order)
    result = await ts.bulk_update(
        RunContext(ACME, wdb1), "Order", [{"field": "id", "op": "in", "value": foreign}], {"status": "pwned"}
    )
    assert result.data == {"updated_count": 0}
    assert snapshot(wb, Order) == before


async def test_update_delete_and_bulk_update_own_rows(wb: Backend, wdb: Any) -> None:
    ts = toolset()
    ctx = RunContext(ACME, wdb)
    mine = ids(wb, Order, Order.tenant_id == "acme")
    result = await ts.update(ctx, "Order", mine[0], {"status": "packed", "quantity": 7})
    assert (result.data["id"], result.data["status"], result.data["quantity"]) == (mine[0], "packed", 7)
    result = await ts.bulk_update(ctx, "Order", [{"field": "id", "op": "in", "value": mine[1:4]}], {"status": "bulk"})
    assert result.data == {"updated_count": 3}
    assert ids(wb, Order, Order.status == "bulk") == mine[1:4]
    deleted = await ts.delete(ctx, "Order", mine[4])
    assert deleted.data["id"] == mine[4]
    assert ids(wb, Order, Order.tenant_id == "acme") == [mine[0], *mine[1:4], *mine[5:]]
    assert count(wb, Order, Order.id == mine[0], Order.status == "packed", Order.quantity == 7) == 1


async def test_with_check_rolls_back_creates_and_updates(wb: Backend, wdb: Any) -> None:
    # The restrict policy small_quantity admits quantity < 100: a write that leaves it is undone.
    ts = toolset()
    ctx = RunContext(ACME, wdb)
    mine = ids(wb, Order, Order.tenant_id == "acme", (Order.quantity.is_(None)) | (Order.quantity < 100))
    before = snapshot(wb, Order)
    with pytest.raises(WriteNotAllowedError) as err:
        await ts.create(ctx, "Order", {"status": "big", "total": 1, "quantity": 500})
    assert "rolled back" in str(err.value)
    with pytest.raises(WriteNotAllowedError):
        await ts.update(ctx, "Order", mine[0], {"quantity": 500})
    with pytest.raises(WriteNotAllowedError):
        await ts.bulk_update(ctx, "Order", [{"field": "id", "op": "in", "value": mine[:3]}], {"quantity": 500})
    assert snapshot(wb, Order) == before
    assert not wdb.in_transaction()


async def test_bulk_update_over_the_limit_writes_nothing(wb: Backend, wdb1: Any) -> None:
    ts = toolset()  # max_affected_rows=5
    ctx = RunContext(ACME, wdb1)
    mine = ids(wb, Order, Order.tenant_id == "acme")
    assert len(mine) > 6
    before = snapshot(wb, Order)
    with pytest.raises(ValidationError) as err:
        await ts.bulk_update(ctx, "Order", [{"field": "id", "op": "in", "value": mine[:6]}], {"status": "many"})
    assert "more than 5" in str(err.value) and "Nothing was written" in str(err.value)
    with pytest.raises(ValidationError):
        await ts.bulk_update(ctx, "Order", [], {"status": "all"})
    assert snapshot(wb, Order) == before
    exact = await ts.bulk_update(ctx, "Order", [{"field": "id", "op": "in", "value": mine[:5]}], {"status": "five"})
    assert exact.data == {"updated_count": 5}
    assert ids(wb, Order, Order.status == "five") == mine[:5]


async def test_foreign_keys_must_point_at_visible_rows(wb: Backend, wdb1: Any) -> None:
    ts = toolset()
    ctx = RunContext(ACME, wdb1)
    theirs = ids(wb, Customer, Customer.tenant_id == "globex")[0]
    before = snapshot(wb, Order)
    with pytest.raises(ValidationError) as missing:
        await ts.create(ctx, "Order", {"total": 1, "customer_id": 10_000})
    with pytest.raises(ValidationError) as foreign:
        await ts.create(ctx, "Order", {"total": 1, "customer_id": theirs})
    assert str(missing.value) == str(foreign.value)
    assert snapshot(wb, Order) == before


async def test_integrity_errors_carry_no_sql_or_values(wb: Backend, wdb1: Any) -> None:
    # Tenant ids are a global key: creating "acme" again breaks the primary key.
    with pytest.raises(IntegrityConstraintError) as err:
        await toolset().create(RunContext(ACME, wdb1), "Tenant", {"name": "Again"})
    text = str(err.value).lower()
    assert "acme" not in text and "insert" not in text and "tenants" not in text and "again" not in text
    assert err.value.to_dict() == {
        "error": "constraint_violation",
        "message": "A record with the same value already exists (a unique constraint). Nothing was written.",
        "details": {"constraint": "unique"},
    }
    assert not wdb1.in_transaction()
    assert count(wb, shop.Tenant) == 3


async def test_audit_snapshots_follow_field_policy(wb: Backend, wdb1: Any) -> None:
    audit = MemoryAuditStore()
    ts = toolset(audit_store=audit)
    cid = acme_customer(wb)
    await ts.update(RunContext(ACME, wdb1), "Customer", cid, {"name": "Renamed"})
    record = (await audit.query(tenant_id="acme", tool_name="update"))[0]
    assert record.outcome == "success" and record.row_count == 1
    assert record.before is not None and record.after is not None
    assert record.after["name"] == "Renamed" and record.before["name"] != "Renamed"
    for snap in (record.before, record.after):
        assert "password_hash" not in snap and "org_id" not in snap
        assert snap["email"].startswith("****") and "@" not in snap["email"]
        assert snap["ssn"] != f"{cid:03d}-00-{cid:04d}" and len(snap["ssn"]) == 32
    assert len(audit.records) == 1


class BrokenAuditStore(MemoryAuditStore):
    async def write(self, record: Any) -> None:
        raise OSError("disk full")


async def test_a_write_whose_audit_fails_is_rolled_back(wb: Backend, wdb1: Any) -> None:
    ts = toolset(audit_store=BrokenAuditStore())
    ctx = RunContext(ACME, wdb1)
    before = snapshot(wb, Order)
    with pytest.raises(AuditUnavailableError):
        await ts.create(ctx, "Order", {"total": 3})
    with pytest.raises(AuditUnavailableError):
        await ts.update(ctx, "Order", ids(wb, Order, Order.tenant_id == "acme")[0], {"status": "x"})
    assert snapshot(wb, Order) == before
    page = await ts.query(ctx, "Order", limit=3)  # reads keep answering
    assert len(page.rows) == 3


async def test_the_hosts_transaction_gets_a_savepoint_and_keeps_the_commit(wb: Backend, wdb: Any) -> None:
    ts = toolset()
    ctx = RunContext(ACME, wdb)
    n = count(wb, Order)
    sync = not hasattr(wdb, "sync_session")

    async def run(fn: Any) -> Any:
        out = fn()
        return out if sync else await out

    await run(wdb.begin)
    wdb.add(shop.Order(id=9001, tenant_id="acme", total=Decimal(1)))  # the host's own work
    created = await ts.create(ctx, "Order", {"total": 2, "status": "in-host-tx"})
    with pytest.raises(WriteNotAllowedError):  # a failed write undoes only its savepoint
        await ts.update(ctx, "Order", created.data["id"], {"quantity": 500})
    assert wdb.in_transaction()
    assert count(wb, Order) == n, "nothing is committed before the host commits"
    await run(wdb.rollback)
    assert count(wb, Order) == n, "the host's rollback undoes the toolset's write too"

    await run(wdb.begin)
    wdb.add(shop.Order(id=9002, tenant_id="acme", total=Decimal(1)))
    created = await ts.create(ctx, "Order", {"total": 2, "status": "in-host-tx"})
    with pytest.raises(WriteNotAllowedError):
        await ts.update(ctx, "Order", created.data["id"], {"quantity": 500})
    await run(wdb.commit)
    assert count(wb, Order) == n + 2
    assert count(wb, Order, Order.id == created.data["id"], Order.quantity.is_(None)) == 1


async def test_policy_errors_at_build_time(wb: Backend) -> None:
    base = write_policy()
    models = dict(base.models)
    models["Order"] = base.models["Order"].model_copy(update={"write_policy": WritePolicy(create=WriteAction.Allow)})
    with pytest.raises(PolicyError, match="auto_set"):
        Toolset(shop.Base, base.model_copy(update={"models": models}))


async def test_errors_are_ormai_errors_with_codes(wb: Backend, wdb1: Any) -> None:
    ts = toolset()
    with pytest.raises(OrmAIError) as err:
        await ts.delete(RunContext(GLOBEX, wdb1), "Order", ids(wb, Order, Order.tenant_id == "acme")[0])
    assert err.value.code == "not_found"
    assert ts.writable_fields("Order", "update") == ["status", "total", "quantity"]
    assert ts.writable_fields("Order", "create") == ["customer_id", "status", "total", "quantity"]
    assert ts.writable_fields("Customer", "bulk_update") == []
    got = await ts.get(RunContext(GLOBEX, wdb1), "Order", ids(wb, Order, Order.tenant_id == "globex")[0])
    assert got.data["tenant_id"] == "globex"


async def test_write_statements_carry_scope_and_row_policies(wb: Backend, wdb1: Any) -> None:
    engine = wb.sync_engine if wb.is_sqlite else wb.async_engine.sync_engine
    seen: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
        if statement.lstrip().upper().startswith(("UPDATE", "DELETE")):
            seen.append((" ".join(statement.split()), parameters))

    ts = toolset()
    ctx = RunContext(ACME, wdb1)
    mine = ids(wb, Order, Order.tenant_id == "acme")
    event.listen(engine, "before_cursor_execute", capture)
    try:
        await ts.update(ctx, "Order", mine[0], {"status": "s"})
        await ts.bulk_update(ctx, "Order", [{"field": "status", "op": "eq", "value": "s"}], {"quantity": 1})
        await ts.delete(ctx, "Order", mine[0])
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    assert [s.split()[0] for s, _ in seen] == ["UPDATE", "UPDATE", "DELETE"]
    for statement, parameters in seen:
        where = statement.split(" WHERE ", 1)[1]
        # One statement: key or filters, the tenant scope and the restrict policy, values bound.
        assert "orders.tenant_id = " in where and "orders.quantity" in where
        assert "acme" not in statement and "acme" in str(parameters)


async def test_connections_work_like_sessions(wb: Backend) -> None:
    ts = toolset()
    n = count(wb, Order)
    with wb.sync_engine.connect() as conn:  # no transaction open: the toolset commits
        await ts.create(RunContext(ACME, conn), "Order", {"total": 1, "status": "via-connection"})
        assert not conn.in_transaction()
    assert count(wb, Order, Order.status == "via-connection") == 1
    async with wb.async_engine.connect() as aconn:
        await aconn.begin()  # the host's transaction: a savepoint, the host decides
        await ts.create(RunContext(ACME, aconn), "Order", {"total": 1, "status": "via-async-connection"})
        assert aconn.in_transaction()
        await aconn.rollback()
    assert count(wb, Order) == n + 1


async def test_update_reads_no_before_snapshot_that_nobody_sees(wb: Backend, wdb1: Any) -> None:
    # The locked before-read feeds only the audit record: without a store or callback an update
    # is the UPDATE and its WITH CHECK (one statement with RETURNING), with the same outcomes.
    mine = ids(wb, Order, Order.tenant_id == "acme", (Order.quantity.is_(None)) | (Order.quantity < 100))
    theirs = ids(wb, Order, Order.tenant_id == "globex")[0]
    ctx = RunContext(ACME, wdb1)
    with captured(wb, tables="orders") as statements:
        result = await toolset().update(ctx, "Order", mine[0], {"status": "unread"})
    kinds = [s.split()[0].upper() for s, _ in statements]
    assert kinds == (["UPDATE"] if wb.is_postgres else ["UPDATE", "SELECT"])
    assert result.data["status"] == "unread" and result.data["tenant_id"] == "acme"
    assert count(wb, Order, Order.id == mine[0], Order.status == "unread") == 1
    before = snapshot(wb, Order)
    with pytest.raises(RecordNotFoundError):
        await toolset().update(ctx, "Order", theirs, {"status": "stolen"})
    with pytest.raises(WriteNotAllowedError):
        await toolset().update(ctx, "Order", mine[1], {"quantity": 500})
    assert snapshot(wb, Order) == before and not wdb1.in_transaction()
    # With a store the before snapshot is read, locked, and recorded.
    audit = MemoryAuditStore()
    with captured(wb, tables="orders") as statements:
        await toolset(audit_store=audit).update(ctx, "Order", mine[0], {"status": "read"})
    if not wb.is_postgres:
        assert statements[0][0].split()[0].upper() == "SELECT" and len(statements) == 3
    (record,) = audit.records
    assert record.before is not None and record.after is not None
    assert (record.before["status"], record.after["status"]) == ("unread", "read")
