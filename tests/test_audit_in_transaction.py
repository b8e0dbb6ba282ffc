"""A toolset write audited by `SqlAuditStore(in_caller_transaction=True)`: the record commits
or rolls back with the change it describes, on the application's own database."""

from __future__ import annotations

from typing import Any

import pytest

from ormai_agents import RowPolicy, RunContext, WriteNotAllowedError
from ormai_agents.audit import SqlAuditStore
from tests import shop
from tests.conftest import ACME, BACKENDS, Backend
from tests.writes_support import count, toolset, write_policy

pytestmark = pytest.mark.parametrize("empty_backend", BACKENDS, indirect=True)


async def test_write_record_commits_with_the_change(wb: Backend) -> None:
    store = SqlAuditStore(wb.async_engine, in_caller_transaction=True)
    await store.create_table()
    tools = toolset(audit_store=store)
    before = count(wb, shop.Order)
    with wb.session() as session:  # sync session on the same database (and SQLite file)
        ctx = RunContext(ACME, session)
        created = await tools.create(ctx, model="Order", data={"status": "new", "total": "5.00"})
    assert count(wb, shop.Order) == before + 1
    records = await store.query(tenant_id="acme", tool_name="create")
    assert [(r.outcome, r.after["id"] if r.after else None) for r in records] == [("success", created.data["id"])]
    await store.aclose()


async def test_rolled_back_write_leaves_only_the_attempt(wb: Backend) -> None:
    store = SqlAuditStore(wb.async_engine, in_caller_transaction=True, batch_size=1)
    await store.create_table()
    base = write_policy()
    models = dict(base.models)
    # A restrict policy the new row breaks: WITH CHECK rolls the create back.
    models["Order"] = models["Order"].model_copy(update={"row_policies": [RowPolicy("not_new", "status != 'new'")]})
    tools = toolset(base.model_copy(update={"models": models}), audit_store=store)
    before = count(wb, shop.Order)
    async with wb.async_session() as session:
        ctx: Any = RunContext(ACME, session)
        with pytest.raises(WriteNotAllowedError):
            await tools.create(ctx, model="Order", data={"status": "new", "total": "5.00"})
    assert count(wb, shop.Order) == before
    records = await store.query(tenant_id="acme", tool_name="create")
    assert [(r.outcome, r.error_code) for r in records] == [("denied", "write_not_allowed")]
    await store.aclose()
