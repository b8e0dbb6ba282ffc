"""`RunContext.on_audit`: the per-call audit hook the framework adapters forward to their tracing."""

from __future__ import annotations

from typing import Any

import pytest

from ormai_agents import FieldNotAllowedError, RunContext, Toolset
from ormai_agents.audit import AuditRecord, MemoryAuditStore
from tests import shop
from tests.conftest import ACME



async def test_sync_and_async_sinks_see_every_outcome(shop_db: Any) -> None:
    store = MemoryAuditStore()
    toolset = Toolset(shop.Base, shop.shop_policy(), audit_store=store)
    seen: list[AuditRecord] = []

    async def async_sink(record: AuditRecord) -> None:
        seen.append(record)

    ok = await toolset.query(RunContext(ACME, shop_db, on_audit=seen.append), model="Order", limit=3)
    with pytest.raises(FieldNotAllowedError):
        await toolset.query(
            RunContext(ACME, shop_db, on_audit=async_sink), model="Customer", filters=[{"field": "password_hash", "op": "eq", "value": "x"}]
        )
    assert [(r.tool_name, r.outcome, r.row_count) for r in seen] == [("query", "success", len(ok.rows)), ("query", "denied", None)]
    assert seen[1].error_code == "field_not_allowed" and seen[1].tenant_id == "acme"
    # The sink gets the very records the store keeps.
    assert [r.id for r in store.records] == [r.id for r in seen]


async def test_sink_without_store_and_failing_sink(shop_db: Any) -> None:
    toolset = Toolset(shop.Base, shop.shop_policy())
    seen: list[AuditRecord] = []
    await toolset.aggregate(RunContext(ACME, shop_db, on_audit=seen.append), model="Order")
    assert [(r.tool_name, r.model, r.scopes_injected != []) for r in seen] == [("aggregate", "Order", True)]

    def broken(record: AuditRecord) -> None:
        raise RuntimeError("tracing backend down")

    # An observer's failure never changes the call's outcome.
    got = await toolset.aggregate(RunContext(ACME, shop_db, on_audit=broken), model="Order")
    assert got.value == (await toolset.aggregate(RunContext(ACME, shop_db), model="Order")).value
