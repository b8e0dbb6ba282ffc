"""The scripted LangChain model drives real agents: streaming, one model for every tenant, and the
trace metadata that tools bound with `get_tools(principal)` put on their events."""

from __future__ import annotations

import json
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, AIMessageChunk, ToolMessage
from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from ormai_agents import Principal, Toolset, page_records
from ormai_agents.langchain import AUDIT_EVENT, OrmAIToolkit, principal_config
from ormai_agents.testing import ScriptedChatModel, tool_call
from tests import shop
from tests.conftest import Backend

ACME = Principal(tenant_id="acme", user_id="u1")
GLOBEX = Principal(tenant_id="globex", user_id="u2")
QUERY = {"model": "Order", "select": ["id", "tenant_id"], "limit": 50}
USER = {"messages": [("user", "show me my orders")]}
ANSWER = "Here are your orders, newest first."


def _script() -> list[Any]:
    return [AIMessage("", tool_calls=[tool_call("query", dict(QUERY))]), ANSWER]


def _agent(backend: Backend, principal: Principal | None = None) -> tuple[Any, ScriptedChatModel]:
    toolset = Toolset(shop.Base, shop.shop_policy(), secret_key=b"k" * 32)
    toolkit = OrmAIToolkit(toolset=toolset, session_factory=sessionmaker(backend.sync_engine))
    model = ScriptedChatModel(_script())
    return create_agent(model, tools=toolkit.get_tools(principal)), model


def _ids(backend: Backend, tenant: str) -> list[int]:
    with backend.session() as s:
        return list(s.scalars(select(shop.Order.id).where(shop.Order.tenant_id == tenant).order_by(shop.Order.id)))[:50]


async def test_one_scripted_model_serves_every_tenant(shop_backend: Backend) -> None:
    # The README's pattern: one agent (one model, unbound tools) for every tenant, principal per run.
    agent, model = _agent(shop_backend)
    for principal in (ACME, GLOBEX, ACME):
        state = await agent.ainvoke(USER, config=principal_config(principal))
        (msg,) = [m for m in state["messages"] if isinstance(m, ToolMessage)]
        rows = page_records(msg.content)
        assert [r["id"] for r in rows] == _ids(shop_backend, str(principal.tenant_id))
        assert {r["tenant_id"] for r in rows} == {principal.tenant_id}
        assert state["messages"][-1].content == ANSWER  # the script restarted with the run
    assert "query" in model.tool_names


async def test_agent_streams_messages_with_tool_calls_and_text(shop_backend: Backend) -> None:
    agent, _ = _agent(shop_backend, ACME)
    chunks = []
    for message, meta in agent.stream(USER, stream_mode="messages"):
        chunks.append((message, meta))
    model_chunks = [m for m, _ in chunks if isinstance(m, AIMessageChunk)]
    calls = [c for m in model_chunks for c in m.tool_call_chunks]
    assert [(c["name"], json.loads(c["args"] or "{}")) for c in calls] == [("query", QUERY)]
    text = "".join(str(m.content) for m in model_chunks)
    assert text == ANSWER
    assert len([m for m in model_chunks if m.content]) > 1  # the answer came word by word
    (result,) = [m for m, _ in chunks if isinstance(m, ToolMessage)]
    assert {r["tenant_id"] for r in page_records(result.content)} == {"acme"}


async def test_astream_events_sees_tokens_tool_run_and_audit_event(shop_backend: Backend) -> None:
    agent, _ = _agent(shop_backend, ACME)
    events = [e async for e in agent.astream_events(USER, version="v2")]
    kinds = [e["event"] for e in events]
    tokens = "".join(str(e["data"]["chunk"].content) for e in events if e["event"] == "on_chat_model_stream")
    assert tokens == ANSWER
    assert "on_tool_start" in kinds and "on_tool_end" in kinds
    (audit,) = [e for e in events if e["event"] == "on_custom_event" and e["name"] == AUDIT_EVENT]
    assert (audit["data"]["tenant_id"], audit["data"]["outcome"]) == ("acme", "success")
    # The tools bound to a principal put its tenant and user on their run and on the audit event.
    assert audit["metadata"]["ormai_tenant_id"] == "acme" and audit["metadata"]["ormai_user_id"] == "u1"


class _Seen(BaseCallbackHandler):
    def __init__(self) -> None:
        self.custom: list[dict[str, Any]] = []
        self.tools: list[dict[str, Any]] = []

    def on_custom_event(
        self, name: str, data: Any, *, run_id: Any, tags: Any = None, metadata: Any = None, **kw: Any
    ) -> None:
        if name == AUDIT_EVENT:
            self.custom.append(dict(metadata or {}))

    def on_tool_start(self, serialized: Any, input_str: str, *, metadata: Any = None, **kw: Any) -> None:
        self.tools.append(dict(metadata or {}))


@pytest.mark.parametrize("style", ["bound", "config"])
@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_audit_events_carry_the_principal_metadata_both_ways(
    shop_backend: Backend, style: str, kind: str
) -> None:
    """`get_tools(principal)` and `principal_config` give the tool runs and the `ormai_audit`
    events the same tenant and user metadata."""
    agent, _ = _agent(shop_backend, GLOBEX if style == "bound" else None)
    seen = _Seen()
    config: dict[str, Any] = principal_config(GLOBEX) if style == "config" else {}
    config["callbacks"] = [seen]
    if kind == "sync":
        agent.invoke(USER, config=config)
    else:
        await agent.ainvoke(USER, config=config)
    expected = {"ormai_tenant_id": "globex", "ormai_user_id": "u2"}
    assert len(seen.custom) == 1 and len(seen.tools) == 1
    for metadata in (*seen.custom, *seen.tools):
        assert {k: metadata.get(k) for k in expected} == expected


def test_a_direct_tool_call_of_a_bound_tool_carries_the_metadata(shop_backend: Backend) -> None:
    toolset = Toolset(shop.Base, shop.shop_policy(), secret_key=b"k" * 32)
    (query,) = [
        t
        for t in OrmAIToolkit(toolset=toolset, session_factory=sessionmaker(shop_backend.sync_engine)).get_tools(ACME)
        if t.name == "query"
    ]
    seen = _Seen()
    query.invoke(dict(QUERY), config={"callbacks": [seen]})
    assert (
        seen.custom and seen.custom[0].get("ormai_tenant_id") == "acme" and seen.custom[0].get("ormai_user_id") == "u1"
    )
