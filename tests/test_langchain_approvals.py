"""`WriteAction.RequireApproval` through the LangChain adapter: a LangGraph interrupt the host
resumes with a decision, on SQLite and PostgreSQL, sync and async."""

from __future__ import annotations

import json
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, ToolMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.types import Command
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlalchemy.orm import sessionmaker

from ormai_agents import Principal, RunContext, WriteAction
from ormai_agents.approvals import ApprovalStatus
from ormai_agents.audit import MemoryAuditStore
from ormai_agents.langchain import OrmAIToolkit
from ormai_agents.testing import ScriptedChatModel, tool_call
from tests import shop
from tests.conftest import ACME, BACKENDS, Backend
from tests.writes_support import ids, snapshot, toolset, write_policy

pytestmark = pytest.mark.parametrize("empty_backend", BACKENDS, indirect=True)

Order = shop.Order
USER = {"messages": [("user", "mark my order as shipped")]}


def approval_toolset() -> Any:
    return toolset(write_policy(order_ops={"update": WriteAction.RequireApproval}), audit_store=MemoryAuditStore())


def agent_for(backend: Backend, ts: Any, kind: str, order_id: int, principal: Principal = ACME) -> Any:
    factory = sessionmaker(backend.sync_engine) if kind == "sync" else async_sessionmaker(backend.async_engine)
    toolkit = OrmAIToolkit(toolset=ts, session_factory=factory)
    call = tool_call("update_order", {"id": order_id, "data": {"status": "shipped-by-agent"}})
    model = ScriptedChatModel([AIMessage("", tool_calls=[call]), "done"])
    return create_agent(model, tools=toolkit.get_tools(principal), checkpointer=InMemorySaver())


async def step(agent: Any, kind: str, value: Any, thread: str) -> dict[str, Any]:
    config = {"configurable": {"thread_id": thread}}
    if kind == "sync":
        return agent.invoke(value, config)  # type: ignore[no-any-return]
    return await agent.ainvoke(value, config)  # type: ignore[no-any-return]


def status_of(backend: Backend, order_id: int) -> Any:
    return {row[0]: row for row in snapshot(backend, Order)}[order_id]


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_approved_write_pauses_then_runs(wb: Backend, kind: str) -> None:
    ts = approval_toolset()
    order_id = ids(wb, Order, Order.tenant_id == "acme")[0]
    before = snapshot(wb, Order)
    agent = agent_for(wb, ts, kind, order_id)

    paused = await step(agent, kind, USER, "t1")
    (request,) = paused["__interrupt__"]
    assert request.value["type"] == "ormai_approval"
    assert request.value["tool"] == "update_order" and request.value["model"] == "Order"
    assert request.value["arguments"] == {"id": order_id, "data": {"status": "shipped-by-agent"}}
    assert (request.value["tenant_id"], request.value["user_id"]) == ("acme", "u1")
    assert snapshot(wb, Order) == before  # nothing written while waiting
    assert not [m for m in paused["messages"] if isinstance(m, ToolMessage)]

    done = await step(agent, kind, Command(resume={"approve": True, "decided_by": "alice"}), "t1")
    (msg,) = [m for m in done["messages"] if isinstance(m, ToolMessage)]
    assert msg.status == "success"
    assert json.loads(msg.content)["data"]["status"] == "shipped-by-agent"
    assert done["messages"][-1].content == "done"
    changed = [a for a, b in zip(snapshot(wb, Order), before) if a != b]
    assert [row[0] for row in changed] == [order_id]
    (approval,) = await ts.approval_store.list(tenant_id="acme")
    assert (approval.status, approval.decided_by, approval.tool) == (ApprovalStatus.Executed, "alice", "update")
    audit = [(r.tool_name, r.outcome, r.error_code) for r in ts.audit_store.records]
    assert audit == [("update", "denied", "approval_required"), ("update", "success", None)]


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_rejected_write_tells_the_model_and_writes_nothing(wb: Backend, kind: str) -> None:
    ts = approval_toolset()
    order_id = ids(wb, Order, Order.tenant_id == "acme")[0]
    before = snapshot(wb, Order)
    agent = agent_for(wb, ts, kind, order_id)
    await step(agent, kind, USER, "t2")
    done = await step(agent, kind, Command(resume={"approve": False, "decided_by": "bob", "reason": "not paid yet"}), "t2")
    (msg,) = [m for m in done["messages"] if isinstance(m, ToolMessage)]
    assert msg.status == "error"
    error = json.loads(msg.content)
    assert error["error"] == "approval_invalid" and "rejected: not paid yet" in error["message"]
    assert done["messages"][-1].content == "done"
    assert snapshot(wb, Order) == before
    (approval,) = await ts.approval_store.list(tenant_id="acme")
    assert (approval.status, approval.decided_by) == (ApprovalStatus.Rejected, "bob")


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_write_on_a_record_the_principal_cant_change_is_never_put_to_a_person(wb: Backend, kind: str) -> None:
    # The agent asks to change another tenant's order, then one that does not exist: nobody is
    # asked to approve either; the model hears not_found at once, the same for both.
    ts = approval_toolset()
    before = snapshot(wb, Order)
    for n, target in enumerate([ids(wb, Order, Order.tenant_id == "globex")[0], 10_000]):
        agent = agent_for(wb, ts, kind, target)
        done = await step(agent, kind, USER, f"t3-{n}")
        assert "__interrupt__" not in done
        (msg,) = [m for m in done["messages"] if isinstance(m, ToolMessage)]
        assert msg.status == "error" and json.loads(msg.content)["error"] == "not_found"
        assert "globex" not in msg.content
        assert done["messages"][-1].content == "done"
    assert snapshot(wb, Order) == before
    assert await ts.approval_store.list(tenant_id="acme") == []
    audit = [(r.tool_name, r.outcome, r.error_code) for r in ts.audit_store.records]
    assert audit == [("update", "error", "not_found")] * 2  # both refusals are audited


async def test_outside_a_graph_the_model_hears_the_approval_id(wb: Backend) -> None:
    ts = approval_toolset()
    order_id = ids(wb, Order, Order.tenant_id == "acme")[0]
    toolkit = OrmAIToolkit(toolset=ts, session_factory=sessionmaker(wb.sync_engine))
    update = {t.name: t for t in toolkit.get_tools(ACME)}["update_order"]
    msg = update.invoke(tool_call("update_order", {"id": order_id, "data": {"status": "later"}}))
    error = json.loads(msg.content)
    assert msg.status == "error" and error["error"] == "approval_required"
    approval_id = error["details"]["approval_id"]
    assert status_of(wb, order_id)[4] != "later"
    # The host's own approval flow finishes it.
    await ts.approval_store.approve(approval_id, decided_by="carol")
    with wb.session() as s:
        result = await ts.execute_approved(RunContext(ACME, s), approval_id)
    assert result.data["status"] == "later" and status_of(wb, order_id)[4] == "later"


async def test_a_resume_value_that_is_not_a_decision_is_the_hosts_error(wb: Backend) -> None:
    ts = approval_toolset()
    order_id = ids(wb, Order, Order.tenant_id == "acme")[0]
    before = snapshot(wb, Order)
    agent = agent_for(wb, ts, "async", order_id)
    await step(agent, "async", USER, "t4")
    with pytest.raises(RuntimeError, match="approve"):
        await step(agent, "async", Command(resume={"approved": True}), "t4")
    assert snapshot(wb, Order) == before
    assert await ts.approval_store.list(tenant_id="acme") == []


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_invalid_request_is_never_put_to_a_person(wb: Backend, kind: str) -> None:
    """A write that would fail its checks doesn't pause the graph: the model gets the error at once."""
    ts = approval_toolset()
    order_id = ids(wb, Order, Order.tenant_id == "acme")[0]
    before = snapshot(wb, Order)
    factory = sessionmaker(wb.sync_engine) if kind == "sync" else async_sessionmaker(wb.async_engine)
    toolkit = OrmAIToolkit(toolset=ts, session_factory=factory)
    # Mass assignment of the tenant: refused by the write checks, so there is nothing to approve.
    call = tool_call("update_order", {"id": order_id, "data": {"tenant_id": "globex"}})
    agent = create_agent(
        ScriptedChatModel([AIMessage("", tool_calls=[call]), "done"]),
        tools=toolkit.get_tools(ACME),
        checkpointer=InMemorySaver(),
    )
    done = await step(agent, kind, USER, "t-invalid")
    assert "__interrupt__" not in done
    (msg,) = [m for m in done["messages"] if isinstance(m, ToolMessage)]
    assert msg.status == "error" and json.loads(msg.content)["error"] == "field_not_allowed"
    assert done["messages"][-1].content == "done"
    assert snapshot(wb, Order) == before
    assert await ts.approval_store.list(tenant_id="acme") == []
    audit = [(r.tool_name, r.outcome, r.error_code) for r in ts.audit_store.records]
    assert audit == [("update", "denied", "field_not_allowed")]  # the refusal is audited


async def test_check_write_needs_no_database(wb: Backend) -> None:
    from ormai_agents import FieldNotAllowedError, ModelNotAllowedError, ValidationError, WriteNotAllowedError

    ts = approval_toolset()
    ts.check_write("Order", "update", {"id": 1, "data": {"status": "ok"}})  # passes: nothing raised
    with pytest.raises(FieldNotAllowedError):
        ts.check_write("Order", "update", {"id": 1, "data": {"tenant_id": "globex"}})
    with pytest.raises(ValidationError):
        ts.check_write("Order", "update", {"id": "not-a-number", "data": {"status": "ok"}})
    with pytest.raises(WriteNotAllowedError):
        ts.check_write("Tenant", "delete", {"id": "acme"})
    with pytest.raises(ModelNotAllowedError):
        ts.check_write("Document", "create", {"data": {}})
    with pytest.raises(ValidationError):
        ts.check_write("Order", "drop", {})
