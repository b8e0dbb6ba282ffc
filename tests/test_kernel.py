"""The adapter kernel: one call path for LangChain and LlamaIndex (and the MCP server), so the
same call gets the same answer and the same audit record whichever framework made it."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlalchemy.orm import sessionmaker

from ormai_agents import Toolset, WriteAction, page_records
from ormai_agents._kernel import Decision, ToolRunner
from ormai_agents._toolspecs import build_tool_specs
from ormai_agents.approvals import Approval, ApprovalDecisions, ApprovalStatus, ApprovalStore
from ormai_agents.audit import MemoryAuditStore
from ormai_agents.langchain import OrmAIToolkit
from ormai_agents.llamaindex import OrmAIToolSpec
from ormai_agents.testing import tool_call
from tests import shop
from tests.conftest import ACME, BACKENDS, Backend
from tests.writes_support import snapshot, toolset, write_policy

SSN = "001-00-0001"

# Calls a hostile or confused model makes: refused before the toolset (unknown arguments, no
# model), by the toolset (denied and masked fields, bad values), and a good one.
CALLS: list[tuple[str, Any]] = [
    ("query", {"model": "Order", "limit": 3, "select": ["id", "tenant_id"], "order_by": ["id"]}),
    ("query", {"model": "Order", "principal": {"tenant_id": "globex"}}),
    ("query", {"model": "Customer", "filters": [{"field": "ssn", "op": "eq", "value": SSN}], "tenant": "globex"}),
    ("query", {"filters": []}),
    ("query", {"model": "Customer", "filters": [{"field": "password_hash", "op": "startswith", "value": "$2b"}]}),
    ("aggregate", {"model": "Order", "function": "sum", "field": "internal_note"}),
    ("get", {"model": "Tenant", "id": "globex"}),
    ("get", {"model": "Tenant", "id": "acme"}),
    ("describe_schema", {"model": "Order"}),
    ("aggregate", {"model": "Order", "self": 1}),  # LlamaIndex's base tool binds `self` by name
]


def _toolset(store: MemoryAuditStore) -> Toolset:
    return Toolset(shop.Base, shop.shop_policy(), audit_store=store, secret_key=b"kernel-test-key-32-bytes-long!!!")


async def _langchain(backend: Backend, kind: str) -> tuple[list[str], MemoryAuditStore]:
    store = MemoryAuditStore()
    factory: Any = sessionmaker(backend.sync_engine) if kind == "sync" else async_sessionmaker(backend.async_engine)
    tools = {t.name: t for t in OrmAIToolkit(toolset=_toolset(store), session_factory=factory).get_tools(ACME)}
    out = []
    for name, args in CALLS:
        call = tool_call(name, args)
        msg = tools[name].invoke(call) if kind == "sync" else await tools[name].ainvoke(call)
        out.append(("error " if msg.status == "error" else "") + msg.content)
    return out, store


async def _llamaindex(backend: Backend, kind: str) -> tuple[list[str], MemoryAuditStore]:
    store = MemoryAuditStore()
    factory: Any = sessionmaker(backend.sync_engine) if kind == "sync" else async_sessionmaker(backend.async_engine)
    tools = {t.metadata.name: t for t in OrmAIToolSpec(toolset=_toolset(store), session_factory=factory).get_tools(ACME)}
    out = []
    for name, args in CALLS:
        result = await tools[name].acall(**args)
        out.append(("error " if result.is_error else "") + result.content)
    return out, store


def same(texts: list[str]) -> list[str]:
    """The texts with cursors (random nonces, so never equal twice) replaced by a marker."""
    out = []
    for text in texts:
        value = json.loads(text.removeprefix("error "))
        if isinstance(value, dict) and value.get("next_cursor"):
            value["next_cursor"] = "<cursor>"
        out.append(("error " if text.startswith("error ") else "") + json.dumps(value))
    return out


def _records(store: MemoryAuditStore) -> list[tuple[Any, ...]]:
    return [(r.tool_name, r.model, r.outcome, r.error_code, r.tenant_id, r.user_id) for r in store.records]


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_same_answers_and_audit_through_both_adapters(shop_backend: Backend, kind: str) -> None:
    lc, lc_store = await _langchain(shop_backend, kind)
    li, li_store = await _llamaindex(shop_backend, kind)
    assert same(lc) == same(li)
    errors = [json.loads(text.removeprefix("error "))["error"] for text in lc if text.startswith("error ")]
    assert errors == [
        "validation_error", "validation_error", "validation_error", "field_not_allowed", "field_not_allowed",
        "not_found", "validation_error", "validation_error",
    ]  # fmt: skip
    with shop_backend.session() as s:
        first_ids = list(s.scalars(select(shop.Order.id).where(shop.Order.tenant_id == "acme").order_by(shop.Order.id).limit(3)))
    assert [r["id"] for r in page_records(lc[0])] == first_ids
    assert json.loads(lc[7]) == {"data": {"id": "acme", "name": "Acme"}}
    # Every call is audited, the malformed ones included, under the bound principal.
    assert _records(lc_store) == _records(li_store)
    assert [(r[0], r[1], r[3]) for r in _records(lc_store)] == [
        ("query", "Order", None),
        ("query", "Order", "validation_error"),
        ("query", "Customer", "validation_error"),
        ("query", None, "validation_error"),
        ("query", "Customer", "field_not_allowed"),
        ("aggregate", "Order", "field_not_allowed"),
        ("get", "Tenant", "not_found"),
        ("get", "Tenant", None),
        ("describe_schema", "Order", "validation_error"),
        ("aggregate", "Order", "validation_error"),
    ]
    assert {(r[4], r[5]) for r in _records(lc_store)} == {("acme", "u1")}
    # A refused call's inputs are redacted by the model's field policy like any other.
    refused = lc_store.records[2]
    assert SSN not in json.dumps(refused.to_dict(), default=str)
    assert refused.inputs["filters"] == [{"field": "ssn", "op": "eq", "value": "[REDACTED]"}]
    # What the model hears names only what it may use.
    assert "globex" not in "".join(lc) and "password_hash" not in "".join(lc) and SSN not in "".join(lc)


async def test_arguments_that_are_not_an_object_are_refused_and_audited(shop_backend: Backend) -> None:
    store = MemoryAuditStore()
    ts = _toolset(store)
    runner = ToolRunner(ts, sessionmaker(shop_backend.sync_engine))
    query = next(s for s in build_tool_specs(ts) if s.name == "query")
    for bad in (["Order"], "Order", 7):
        reply = await runner.call(query, ACME, bad)
        assert reply.is_error and json.loads(reply.text)["error"] == "validation_error"
    empty = await runner.call(query, ACME, None)  # no arguments at all: the model is missing
    assert empty.is_error and "needs a model" in json.loads(empty.text)["message"]
    assert [(r.tool_name, r.error_code) for r in store.records] == [("query", "validation_error")] * 4


async def test_no_principal_is_refused_before_anything_runs(shop_backend: Backend) -> None:
    store = MemoryAuditStore()
    opened: list[Any] = []
    ts = _toolset(store)
    runner = ToolRunner(ts, lambda: opened.append(1))
    query = next(s for s in build_tool_specs(ts) if s.name == "query")
    for principal in (None, {"tenant_id": "acme"}, "acme"):
        reply = await runner.call(query, principal, {"model": "Order"})  # type: ignore[arg-type]
        assert reply.is_error and json.loads(reply.text)["error"] == "access_denied"
    assert opened == [] and store.records == []


@pytest.mark.parametrize("adapter", ["langchain", "llamaindex"])
async def test_unexpected_errors_are_logged_for_the_host_and_hidden_from_the_model(
    adapter: str, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> Any:
        raise RuntimeError("could not connect to postgresql://admin:hunter2@db/prod")

    ts = _toolset(MemoryAuditStore())
    with caplog.at_level(logging.ERROR, logger="ormai_agents"):
        if adapter == "langchain":
            tool = next(t for t in OrmAIToolkit(toolset=ts, session_factory=broken).get_tools(ACME) if t.name == "query")
            msg = await tool.ainvoke(tool_call("query", {"model": "Order"}))
            text, is_error = msg.content, msg.status == "error"
        else:
            tool = next(t for t in OrmAIToolSpec(toolset=ts, session_factory=broken).get_tools(ACME) if t.metadata.name == "query")
            out = await tool.acall(model="Order")
            text, is_error = out.content, out.is_error
    assert is_error and json.loads(text) == {"error": "error", "message": "The request could not be completed."}
    assert "hunter2" not in text
    assert any("hunter2" in str(r.exc_info[1]) for r in caplog.records if r.exc_info)  # the host sees why


class DictApprovalStore(ApprovalDecisions):
    """A store of the host's own: the four storage methods; approve/reject from ApprovalDecisions."""

    def __init__(self) -> None:
        self.items: dict[str, Approval] = {}

    async def add(self, approval: Approval) -> None:
        self.items[approval.id] = approval

    async def get(self, approval_id: str) -> Approval | None:
        return self.items.get(approval_id)

    async def transition(self, approval_id: str, expected: ApprovalStatus, new: ApprovalStatus, **kw: Any) -> bool:
        found = self.items.get(approval_id)
        if found is None or found.status is not expected:
            return False
        found.status = new
        found.decided_by = kw.get("decided_by") or found.decided_by
        return True

    async def list(self, *, tenant_id: Any = None, status: ApprovalStatus | None = None, limit: int = 100) -> list[Approval]:
        return list(self.items.values())[:limit]


@pytest.mark.parametrize("empty_backend", BACKENDS, indirect=True)
@pytest.mark.parametrize("approve", [True, False])
async def test_a_decision_runs_or_refuses_the_write_through_the_store_protocol(wb: Backend, approve: bool) -> None:
    store = DictApprovalStore()
    assert isinstance(store, ApprovalStore)  # the protocol names approve and reject too
    audit = MemoryAuditStore()
    ts = toolset(write_policy(order_ops={"update": WriteAction.RequireApproval}), audit_store=audit, approval_store=store)
    runner = ToolRunner(ts, async_sessionmaker(wb.async_engine))
    update = next(s for s in build_tool_specs(ts) if s.name == "update_order")
    with wb.session() as s:
        order_id = s.scalar(select(func.min(shop.Order.id)).where(shop.Order.tenant_id == "acme"))
    args = {"id": order_id, "data": {"status": "approved-by-kernel"}}
    request = runner.approval_request(update, ACME, args)
    assert request is not None and request["arguments"] == args and request["tenant_id"] == "acme"
    assert runner.approval_request(update, ACME, {"id": order_id, "data": {"tenant_id": "globex"}}) is None
    before = snapshot(wb, shop.Order)

    reply = await runner.call(update, ACME, args, decision=Decision(approve, decided_by="dana"))

    (approval,) = store.items.values()
    if approve:
        assert not reply.is_error and json.loads(reply.text)["data"]["status"] == "approved-by-kernel"
        assert approval.status is ApprovalStatus.Executed and approval.decided_by == "dana"
        assert [row[0] for row, old in zip(snapshot(wb, shop.Order), before) if row != old] == [order_id]
    else:
        assert reply.is_error and json.loads(reply.text)["error"] == "approval_invalid"
        assert approval.status is ApprovalStatus.Rejected
        assert snapshot(wb, shop.Order) == before
