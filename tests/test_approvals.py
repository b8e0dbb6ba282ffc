"""WriteAction.RequireApproval end to end: submit, decide, execute once, refuse tampering and replay."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from sqlalchemy import update

from ormai_agents import (
    ApprovalError,
    ApprovalRequiredError,
    FieldNotAllowedError,
    Principal,
    RecordNotFoundError,
    RunContext,
    WriteAction,
    WriteNotAllowedError,
)
from ormai_agents.approvals import ApprovalStatus, MemoryApprovalStore, SqlApprovalStore
from ormai_agents.audit import MemoryAuditStore
from tests import shop
from tests.conftest import ACME, BACKENDS, GLOBEX, Backend
from tests.writes_support import count, ids, snapshot, toolset, write_policy

pytestmark = pytest.mark.parametrize("empty_backend", BACKENDS, indirect=True)

Order = shop.Order
APPROVAL = write_policy(WriteAction.RequireApproval)


@pytest.fixture(params=["memory", "sql"])
def store(request: pytest.FixtureRequest, wb: Backend) -> Any:
    if request.param == "memory":
        return MemoryApprovalStore()
    # The SQL store on the same database: the sync engine on SQLite, the async one on PostgreSQL.
    return SqlApprovalStore(wb.sync_engine if wb.is_sqlite else wb.async_engine)


async def tamper(store: Any, approval_id: str, arguments: dict[str, Any]) -> None:
    """Change the stored arguments behind the toolset's back."""
    if isinstance(store, MemoryApprovalStore):
        store._approvals[approval_id].arguments = arguments
        return
    stmt = update(store.table).where(store.table.c.id == approval_id).values(arguments=json.dumps(arguments))
    engine = store.engine
    if hasattr(engine, "sync_engine"):
        async with engine.begin() as conn:
            await conn.execute(stmt)
    else:
        with engine.begin() as conn:
            conn.execute(stmt)


async def test_approval_flow_end_to_end(wb: Backend, store: Any) -> None:
    audit = MemoryAuditStore()
    ts = toolset(APPROVAL, approval_store=store, audit_store=audit)
    target = ids(wb, Order, Order.tenant_id == "acme")[0]
    before = snapshot(wb, Order)
    async with wb.async_session() as db:
        ctx = RunContext(ACME, db)
        with pytest.raises(ApprovalRequiredError) as pending:
            await ts.update(ctx, "Order", target, {"status": "approved-change"})
        approval_id = pending.value.approval_id
        assert pending.value.to_dict()["details"]["approval_id"] == approval_id
        assert snapshot(wb, Order) == before, "a call that needs approval writes nothing"
        record = audit.records[-1]
        assert (record.tool_name, record.outcome, record.error_code) == ("update", "denied", "approval_required")

        approval = await store.get(approval_id)
        assert approval.status is ApprovalStatus.Pending and approval.model == "Order" and approval.tool == "update"
        assert approval.arguments == {"id": target, "data": {"status": "approved-change"}}
        assert [a.id for a in await store.list(tenant_id="acme", status=ApprovalStatus.Pending)] == [approval_id]
        assert await store.list(tenant_id="globex") == []

        with pytest.raises(ApprovalError, match="waiting"):
            await ts.execute_approved(ctx, approval_id)
        with pytest.raises(ApprovalError):  # another principal can't run it, approved or not
            await ts.execute_approved(RunContext(GLOBEX, db), approval_id)

        decided = await store.approve(approval_id, decided_by="alice")
        assert decided.status is ApprovalStatus.Approved and decided.decided_by == "alice"
        with pytest.raises(ApprovalError):
            await store.approve(approval_id)  # only a pending approval can be decided
        with pytest.raises(ApprovalError):
            await ts.execute_approved(RunContext(GLOBEX, db), approval_id)

        result = await ts.execute_approved(ctx, approval_id)
        assert result.data["id"] == target and result.data["status"] == "approved-change"
        assert count(wb, Order, Order.id == target, Order.status == "approved-change") == 1
        done = audit.records[-1]
        assert (done.tool_name, done.outcome, done.inputs.get("approval_id")) == ("update", "success", approval_id)
        assert done.before is not None and done.after is not None and done.after["status"] == "approved-change"
        assert (await store.get(approval_id)).status is ApprovalStatus.Executed

        # Replay: the same approval never runs twice.
        with pytest.raises(ApprovalError, match="already been used"):
            await ts.execute_approved(ctx, approval_id)


async def test_an_approved_create_runs_exactly_once_even_when_raced(wb: Backend, store: Any) -> None:
    ts = toolset(APPROVAL, approval_store=store)
    n = count(wb, Order)
    async with wb.async_session() as db:
        with pytest.raises(ApprovalRequiredError) as pending:
            await ts.create(RunContext(ACME, db), "Order", {"total": 9, "status": "once"})
    approval_id = pending.value.approval_id
    await store.approve(approval_id)

    async def run() -> Any:
        async with wb.async_session() as db:
            try:
                return await ts.execute_approved(RunContext(ACME, db), approval_id)
            except ApprovalError as exc:
                return exc

    outcomes = await asyncio.gather(*(run() for _ in range(4)))
    assert sum(not isinstance(o, ApprovalError) for o in outcomes) == 1
    assert count(wb, Order) == n + 1
    assert count(wb, Order, Order.status == "once", Order.tenant_id == "acme") == 1


async def test_tampered_and_rejected_approvals_do_not_run(wb: Backend, store: Any) -> None:
    ts = toolset(APPROVAL, approval_store=store)
    mine = ids(wb, Order, Order.tenant_id == "acme")
    theirs = ids(wb, Order, Order.tenant_id == "globex")[0]
    before = snapshot(wb, Order)
    async with wb.async_session() as db:
        ctx = RunContext(ACME, db)
        with pytest.raises(ApprovalRequiredError) as a:
            await ts.update(ctx, "Order", mine[0], {"status": "harmless"})
        await store.approve(a.value.approval_id)
        # Someone with access to the store swaps in another row and value after approval.
        await tamper(store, a.value.approval_id, {"id": theirs, "data": {"status": "pwned"}})
        with pytest.raises(ApprovalError, match="altered"):
            await ts.execute_approved(ctx, a.value.approval_id)

        with pytest.raises(ApprovalRequiredError) as r:
            await ts.delete(ctx, "Order", mine[1])
        await store.reject(r.value.approval_id, decided_by="bob", reason="keep it")
        with pytest.raises(ApprovalError, match="rejected"):
            await ts.execute_approved(ctx, r.value.approval_id)

        with pytest.raises(ApprovalError):
            await ts.execute_approved(ctx, "apr-does-not-exist")

        # An approval signed under another toolset's secret does not verify here.
        with pytest.raises(ApprovalRequiredError) as o:
            await ts.update(ctx, "Order", mine[2], {"status": "elsewhere"})
        await store.approve(o.value.approval_id)
        other = toolset(APPROVAL, approval_store=store, secret_key=b"x" * 32)
        with pytest.raises(ApprovalError, match="altered"):
            await other.execute_approved(ctx, o.value.approval_id)
    assert snapshot(wb, Order) == before


async def test_approved_writes_are_rechecked_against_the_current_policy(wb: Backend, store: Any) -> None:
    ts = toolset(APPROVAL, approval_store=store)
    mine = ids(wb, Order, Order.tenant_id == "acme")
    before = snapshot(wb, Order)
    async with wb.async_session() as db:
        ctx = RunContext(ACME, db)
        pending = []
        for call in (
            ts.update(ctx, "Order", mine[0], {"status": "s1"}),
            ts.update(ctx, "Order", mine[1], {"quantity": 500}),  # breaks the row policy when run
            ts.delete(ctx, "Order", mine[2]),
        ):
            with pytest.raises(ApprovalRequiredError) as p:
                await call
            await store.approve(p.value.approval_id)
            pending.append(p.value.approval_id)

        # The policy changed since: updates are now denied.
        stricter = toolset(
            write_policy(WriteAction.RequireApproval, order_ops={"update": WriteAction.Deny}), approval_store=store
        )
        with pytest.raises(WriteNotAllowedError):
            await stricter.execute_approved(ctx, pending[0])
        with pytest.raises(WriteNotAllowedError):  # WITH CHECK still holds for approved writes
            await ts.execute_approved(ctx, pending[1])
        assert (await store.get(pending[1])).status is ApprovalStatus.Failed

        # The row left the principal's scope after approval: the approved delete finds nothing.
        with wb.sync_engine.begin() as conn:
            conn.execute(update(Order).where(Order.id == mine[2]).values(tenant_id="globex"))
        with pytest.raises(RecordNotFoundError):
            await ts.execute_approved(ctx, pending[2])
        with wb.sync_engine.begin() as conn:
            conn.execute(update(Order).where(Order.id == mine[2]).values(tenant_id="acme"))
    assert snapshot(wb, Order) == before


async def test_invalid_requests_are_refused_before_anyone_is_asked(wb: Backend, store: Any) -> None:
    ts = toolset(APPROVAL, approval_store=store)
    async with wb.async_session() as db:
        with pytest.raises(FieldNotAllowedError):
            await ts.create(RunContext(ACME, db), "Order", {"total": 1, "tenant_id": "globex"})
        with pytest.raises(Exception) as denied:
            await ts.create(RunContext(Principal(user_id="nobody"), db), "Order", {"total": 1})
        assert denied.value.code == "access_denied"
    assert await store.list() == []


@pytest.mark.parametrize("session_kind", ["sync", "async"])
async def test_a_write_that_cant_happen_is_never_put_to_a_person(wb: Backend, session_kind: str) -> None:
    """The record an update or delete names must be one the principal may change before anyone is
    asked: another tenant's record and a missing one give the same not_found, and no approval."""
    audit = MemoryAuditStore()
    ts = toolset(APPROVAL, audit_store=audit)
    foreign = ids(wb, Order, Order.tenant_id == "globex")[0]
    own = ids(wb, Order, Order.tenant_id == "acme")[0]
    before = snapshot(wb, Order)
    session = wb.session() if session_kind == "sync" else wb.async_session()
    async with session if session_kind == "async" else _sync(session) as db:
        ctx = RunContext(ACME, db)
        messages = []
        for target in (foreign, 10_000):
            with pytest.raises(RecordNotFoundError) as refused:
                await ts.update(ctx, "Order", target, {"status": "x"})
            messages.append(refused.value.message)
            with pytest.raises(RecordNotFoundError):
                await ts.delete(ctx, "Order", target)
            assert not await ts.write_target_exists(ctx, "Order", "update", {"id": target, "data": {"status": "x"}})
        assert messages[0] == messages[1]  # nothing tells another tenant's record from a missing one
        # A bulk update matching no record the principal may change changes nothing: no approval.
        nothing = await ts.bulk_update(ctx, "Order", [{"field": "id", "op": "eq", "value": foreign}], {"status": "x"})
        assert nothing.data == {"updated_count": 0}
        assert await ts.approval_store.list(tenant_id="acme") == []
        # The principal's own record still needs a person's approval.
        assert await ts.write_target_exists(ctx, "Order", "update", {"id": own, "data": {"status": "x"}})
        with pytest.raises(ApprovalRequiredError):
            await ts.update(ctx, "Order", own, {"status": "x"})
        assert db.in_transaction() is False  # the check left no transaction open in the host's session
    assert snapshot(wb, Order) == before
    assert len(await ts.approval_store.list(tenant_id="acme")) == 1
    outcomes = [(r.tool_name, r.error_code) for r in audit.records]
    assert outcomes == [("update", "not_found"), ("delete", "not_found")] * 2 + [
        ("bulk_update", None),
        ("update", "approval_required"),
    ]


class _sync:
    """`async with` over a sync Session."""

    def __init__(self, session: Any) -> None:
        self.session = session

    async def __aenter__(self) -> Any:
        return self.session.__enter__()

    async def __aexit__(self, *exc: Any) -> None:
        self.session.__exit__(*exc)
