"""The LangChain adapter driven by `create_agent` and a scripted model, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, BaseMessage, ToolMessage
from langchain_core.utils.function_calling import convert_to_openai_tool
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import sessionmaker

from ormai_agents import Policy, Principal, Toolset, WriteAction, WritePolicy, page_records
from ormai_agents.audit import AuditRecord, MemoryAuditStore
from ormai_agents.langchain import AUDIT_EVENT, OrmAICallbackHandler, OrmAIToolkit, principal_config
from ormai_agents.testing import ScriptedChatModel, tool_call
from tests import shop
from tests.conftest import ACME, GLOBEX, INITECH, Backend, pg_url

NAME_RULE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
DENIED = ("password_hash", "internal_note", "secret_plan", "Document", "is_public", "documents")
LEAKS = ("select ", "SELECT", "Traceback", "sqlite", "psycopg", "asyncpg", "File \"")
USER = {"messages": [("user", "show me my orders")]}


@pytest.fixture(scope="module")
def toolset() -> Toolset:
    return Toolset(shop.Base, shop.shop_policy(), secret_key=b"k" * 32)


def factory(backend: Backend, kind: str) -> Any:
    if kind == "sync":
        return sessionmaker(backend.sync_engine)
    return async_sessionmaker(backend.async_engine)


def tool_messages(state: dict[str, Any]) -> list[ToolMessage]:
    return [m for m in state["messages"] if isinstance(m, ToolMessage)]


def order_ids(backend: Backend, tenant: str) -> list[int]:
    with backend.session() as s:
        return list(s.scalars(select(shop.Order.id).where(shop.Order.tenant_id == tenant).order_by(shop.Order.id)))


def query_script(*calls: dict[str, Any]) -> list[Any]:
    return [AIMessage("", tool_calls=[tool_call(c.pop("tool", "query"), c) for c in calls]), "done"]


async def run(agent: Any, kind: str, config: dict[str, Any] | None = None) -> dict[str, Any]:
    if kind == "sync":
        return agent.invoke(USER, config=config)  # type: ignore[no-any-return]
    return await agent.ainvoke(USER, config=config)  # type: ignore[no-any-return]


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_bound_principal(shop_backend: Backend, toolset: Toolset, kind: str) -> None:
    toolkit = OrmAIToolkit(toolset=toolset, session_factory=factory(shop_backend, kind))
    model = ScriptedChatModel(query_script({"model": "Order", "limit": 50, "select": ["id", "tenant_id"]}))
    agent = create_agent(model, tools=toolkit.get_tools(ACME))
    # A principal in the config can't override the one the tools are bound to.
    state = await run(agent, kind, principal_config(GLOBEX))
    (msg,) = tool_messages(state)
    assert msg.status == "success"
    rows = page_records(msg.content)
    assert [r["id"] for r in rows] == order_ids(shop_backend, "acme")[:50]
    assert {r["tenant_id"] for r in rows} == {"acme"}
    assert state["messages"][-1].content == "done"


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_principal_from_config(shop_backend: Backend, toolset: Toolset, kind: str) -> None:
    toolkit = OrmAIToolkit(toolset=toolset, session_factory=factory(shop_backend, kind))
    script = query_script({"model": "Order", "limit": 50}, {"tool": "aggregate", "model": "Order"})
    agent = create_agent(ScriptedChatModel(script), tools=toolkit.get_tools())
    state = await run(agent, kind, principal_config(GLOBEX))
    rows_msg, count_msg = tool_messages(state)
    expected = order_ids(shop_backend, "globex")
    assert [r["id"] for r in page_records(rows_msg.content)] == expected[:50]
    assert json.loads(count_msg.content) == {"value": len(expected)}


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_refused_without_a_principal(shop_backend: Backend, toolset: Toolset, kind: str) -> None:
    toolkit = OrmAIToolkit(toolset=toolset, session_factory=factory(shop_backend, kind))
    tools = toolkit.get_tools()
    # No principal; a dict that looks like one; and the agent claiming one in its arguments.
    for config in (None, {"configurable": {"principal": {"tenant_id": "acme"}}}, {"configurable": {"tenant_id": "acme"}}):
        agent = create_agent(ScriptedChatModel(query_script({"model": "Order", "principal": {"tenant_id": "acme"}})), tools=tools)
        state = await run(agent, kind, config)
        (msg,) = tool_messages(state)
        assert msg.status == "error"
        assert json.loads(msg.content)["error"] == "access_denied"
        assert state["messages"][-1].content == "done"  # the loop went on
    # With a principal, an identity in the arguments is an unknown argument, nothing more.
    agent = create_agent(ScriptedChatModel(query_script({"model": "Order", "principal": {"tenant_id": "globex"}})), tools=tools)
    (msg,) = tool_messages(await run(agent, kind, principal_config(ACME)))
    assert msg.status == "error" and json.loads(msg.content)["error"] == "validation_error"
    assert "globex" not in msg.content


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_bad_argument_then_corrected_call(shop_backend: Backend, toolset: Toolset, kind: str) -> None:
    attempts = [
        {"model": "Customer", "filters": [{"field": "password_hash", "op": "startswith", "value": "$2b"}]},
        {"model": "Order", "filters": [{"field": "total", "op": "like", "value": 1}]},
        {"model": "Order", "limit": "lots"},
        {"model": "Order", "order_by": ["internal_note"]},
        {"model": "Nope"},
        {"model": "Order", "filters": [{"field": "status", "op": "eq", "value": "shipped"}], "select": ["id", "status"]},
    ]

    def script(messages: list[BaseMessage]) -> AIMessage | str:
        done = [m for m in messages if isinstance(m, ToolMessage)]
        if done and done[-1].status == "success":
            return "done"
        return AIMessage("", tool_calls=[tool_call("query", attempts[len(done)])])

    toolkit = OrmAIToolkit(toolset=toolset, session_factory=factory(shop_backend, kind))
    agent = create_agent(ScriptedChatModel(script), tools=toolkit.get_tools(ACME))
    state = await run(agent, kind)
    msgs = tool_messages(state)
    assert [m.status for m in msgs] == ["error"] * 5 + ["success"]
    codes = [json.loads(m.content)["error"] for m in msgs[:5]]
    assert codes == ["field_not_allowed", "validation_error", "validation_error", "field_not_allowed", "model_not_allowed"]
    for m in msgs[:5]:
        assert not any(leak in m.content for leak in LEAKS + DENIED), m.content
    rows = page_records(msgs[-1].content)
    with shop_backend.session() as s:
        expected = list(
            s.scalars(
                select(shop.Order.id)
                .where(shop.Order.tenant_id == "acme", shop.Order.status == "shipped")
                .order_by(shop.Order.id)
            )
        )
    assert expected and [r["id"] for r in rows] == expected
    assert state["messages"][-1].content == "done"


class Recorder(BaseCallbackHandler):
    """Collects what a run's handlers see."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self.tool_metadata: list[dict[str, Any]] = []

    def on_custom_event(self, name: str, data: Any, **kwargs: Any) -> None:
        self.events.append((name, data))

    def on_tool_start(self, serialized: dict[str, Any], input_str: str, **kwargs: Any) -> None:
        self.tool_metadata.append(dict(kwargs.get("metadata") or {}))


@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize("bound", [True, False])
async def test_audit_events_reach_handlers(shop_backend: Backend, kind: str, bound: bool) -> None:
    own_store = MemoryAuditStore()
    toolset = Toolset(shop.Base, shop.shop_policy(), audit_store=own_store)
    toolkit = OrmAIToolkit(toolset=toolset, session_factory=factory(shop_backend, kind))
    recorder = Recorder()
    forwarded = MemoryAuditStore()
    seen: list[AuditRecord] = []
    handler = OrmAICallbackHandler(audit_store=forwarded, on_record=seen.append)
    script = query_script(
        {"model": "Order", "limit": 3},
        {"model": "Customer", "filters": [{"field": "ssn", "op": "eq", "value": "001-00-0001"}]},
    )
    agent = create_agent(ScriptedChatModel(script), tools=toolkit.get_tools(GLOBEX if bound else None))
    config = {"callbacks": [recorder, handler]}
    await run(agent, kind, config if bound else principal_config(GLOBEX, config))

    audit = [data for name, data in recorder.events if name == AUDIT_EVENT]
    assert sorted((a["model"], a["outcome"]) for a in audit) == [("Customer", "denied"), ("Order", "success")]
    assert {(a["tenant_id"], a["user_id"]) for a in audit} == {("globex", "u2")}
    # The ssn value (a hashed field) is redacted in the event, as in the store.
    assert "001-00-0001" not in json.dumps(audit)
    # The same records: the toolset's store, the handler's callback and the store it forwards to.
    assert sorted(r.id for r in own_store.records) == sorted(a["id"] for a in audit)
    assert sorted(r.id for r in seen) == sorted(r.id for r in forwarded.records) == sorted(a["id"] for a in audit)
    assert all(isinstance(r, AuditRecord) and r.tenant_id == "globex" for r in forwarded.records)
    # The tool runs are traced under the principal.
    assert recorder.tool_metadata and all(
        m.get("ormai_tenant_id") == "globex" and m.get("ormai_user_id") == "u2" for m in recorder.tool_metadata
    )


def pooled_async_engine(backend: Backend) -> Any:
    """An async engine with a small pool: 96 concurrent tool calls share 8 connections (the
    shared test server has a connection limit)."""
    if backend.is_sqlite:
        return backend.async_engine
    if backend.is_mysql:
        return create_async_engine(backend.async_engine.url, pool_size=8, max_overflow=0)
    with backend.session() as s:
        schema = s.scalar(text("select current_schema()"))
    return create_async_engine(
        pg_url("asyncpg"), pool_size=8, max_overflow=0, connect_args={"server_settings": {"search_path": schema}}
    )


@pytest.mark.parametrize("shop_backend", ["postgres", "sqlite", "mysql"], indirect=True)
async def test_concurrent_runs_on_one_toolkit_never_mix(shop_backend: Backend, toolset: Toolset) -> None:
    engine = pooled_async_engine(shop_backend)
    try:
        await _concurrent_runs(shop_backend, toolset, engine)
    finally:
        if engine is not shop_backend.async_engine:
            await engine.dispose()


async def _concurrent_runs(shop_backend: Backend, toolset: Toolset, engine: Any) -> None:
    toolkit = OrmAIToolkit(toolset=toolset, session_factory=async_sessionmaker(engine))

    def script(messages: list[BaseMessage]) -> AIMessage | str:
        if any(isinstance(m, ToolMessage) for m in messages):
            return "done"
        return AIMessage(
            "",
            tool_calls=[
                tool_call("query", {"model": "Order", "limit": 50, "select": ["id", "tenant_id"]}),
                tool_call("aggregate", {"model": "Customer"}),
                tool_call("get", {"model": "Tenant", "id": "acme"}),
            ],
        )

    shared = create_agent(ScriptedChatModel(script), tools=toolkit.get_tools())
    handler_records = MemoryAuditStore()
    handler = OrmAICallbackHandler(audit_store=handler_records)  # one handler shared by every run
    principals = [(ACME, GLOBEX, INITECH)[i % 3] for i in range(32)]

    async def one(i: int, principal: Principal) -> tuple[Principal, dict[str, Any], list[Any]]:
        recorder = Recorder()
        config: dict[str, Any] = {"callbacks": [recorder, handler]}
        if i % 2:  # half the runs read the principal from the config, half use bound tools
            state = await shared.ainvoke(USER, config=principal_config(principal, config))
        else:
            agent = create_agent(ScriptedChatModel(script), tools=toolkit.get_tools(principal))
            state = await agent.ainvoke(USER, config=config)
        return principal, state, recorder.events

    results = await asyncio.gather(*(one(i, p) for i, p in enumerate(principals)))
    with shop_backend.session() as s:
        customers = dict(
            [tuple(r) for r in s.execute(select(shop.Customer.tenant_id, func.count()).group_by(shop.Customer.tenant_id))]
        )
    for principal, state, events in results:
        tenant = principal.tenant_id
        rows_msg, count_msg, get_msg = tool_messages(state)
        rows = page_records(rows_msg.content)
        assert [r["id"] for r in rows] == order_ids(shop_backend, tenant)[:50]
        assert {r["tenant_id"] for r in rows} == {tenant}
        assert json.loads(count_msg.content) == {"value": customers[tenant]}
        if tenant == "acme":
            assert json.loads(get_msg.content) == {"data": {"id": "acme", "name": "Acme"}}
        else:  # another tenant's row is "not found", exactly like a missing one
            assert json.loads(get_msg.content)["error"] == "not_found"
        audit = [d for n, d in events if n == AUDIT_EVENT]
        assert len(audit) == 3 and {(a["tenant_id"], a["user_id"]) for a in audit} == {(tenant, principal.user_id)}
    assert len(handler_records.records) == 32 * 3
    for principal in (ACME, GLOBEX, INITECH):
        mine = await handler_records.query(tenant_id=principal.tenant_id, limit=1000)
        assert len(mine) == 3 * principals.count(principal)


def _policy_with_writes() -> Policy:
    models = dict(shop.shop_policy().models)
    models["Order"] = models["Order"].model_copy(
        update={
            "write_policy": WritePolicy(
                create=WriteAction.Allow,
                update=WriteAction.Allow,
                auto_set={"tenant_id": "principal.tenant_id"},
                immutable_fields=["customer_id"],
            )
        }
    )
    return Policy(models=models)


@pytest.mark.parametrize("layout", ["generic", "per_model"])
def test_schemas_the_model_sees(layout: str) -> None:
    toolset = Toolset(shop.Base, _policy_with_writes())
    toolkit = OrmAIToolkit(toolset=toolset, session_factory=sessionmaker(), layout=layout)  # type: ignore[arg-type]
    model = ScriptedChatModel(["done"])
    create_agent(model, tools=toolkit.get_tools(ACME)).invoke(USER)
    schemas = model.tool_schemas
    assert schemas == [convert_to_openai_tool(t) for t in toolkit.get_tools()]
    names = [s["function"]["name"] for s in schemas]
    assert all(NAME_RULE.match(n) for n in names) and len(set(names)) == len(names)
    assert {"create_order", "update_order"} <= set(names) and "delete_order" not in names
    text = json.dumps(schemas)
    for denied in DENIED:
        assert denied not in text
    for s in schemas:  # neither the principal nor the injected config is an argument
        props = s["function"]["parameters"].get("properties", {})
        assert not {"principal", "config", "tenant", "run_manager"} & set(props)
    by_name = {s["function"]["name"]: s["function"]["parameters"] for s in schemas}
    data = by_name["create_order"]["properties"]["data"]
    assert set(data["properties"]) == {"customer_id", "owner_id", "status", "total", "quantity", "created_at"}
    if layout == "generic":
        assert by_name["query"]["properties"]["model"]["enum"] == ["Tenant", "Customer", "Order"]
    else:
        assert "model" not in by_name["query_order"]["properties"]


def test_prefix_and_unknown_options(toolset: Toolset) -> None:
    toolkit = OrmAIToolkit(toolset=toolset, session_factory=sessionmaker(), prefix="shop.")
    bound = toolkit.get_tools(ACME)
    assert all(t.principal == ACME and t.metadata == {"ormai_tenant_id": "acme", "ormai_user_id": "u1"} for t in bound)
    bound[0].metadata["ormai_tenant_id"] = "globex"  # a host mutating one tool changes no other
    tools = toolkit.get_tools()
    assert [t.name for t in tools] == ["shop_describe_schema", "shop_query", "shop_get", "shop_aggregate"]
    assert all(t.principal is None and not t.metadata for t in tools)
    assert [t.metadata["ormai_tenant_id"] for t in toolkit.get_tools(ACME)] == ["acme"] * 4
    with pytest.raises(ValueError):
        OrmAIToolkit(toolset=toolset, session_factory=sessionmaker(), layuot="per_model")
    with pytest.raises(TypeError):
        OrmAIToolkit(toolset=toolset, session_factory=sessionmaker()).get_tools({"tenant_id": "acme"})  # type: ignore[arg-type]


async def test_sync_invoke_with_async_factory_is_refused(shop_backend: Backend, toolset: Toolset) -> None:
    toolkit = OrmAIToolkit(toolset=toolset, session_factory=async_sessionmaker(shop_backend.async_engine))
    agent = create_agent(ScriptedChatModel(query_script({"model": "Order"})), tools=toolkit.get_tools(ACME))
    with pytest.raises(RuntimeError, match="ainvoke"):
        agent.invoke(USER)


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_each_call_has_its_own_closed_session(shop_backend: Backend, toolset: Toolset, kind: str) -> None:
    opened: list[Any] = []
    base = factory(shop_backend, kind)

    def tracking() -> Any:
        session = base()
        opened.append(session)
        return session

    toolkit = OrmAIToolkit(toolset=toolset, session_factory=tracking)
    tools = {t.name: t for t in toolkit.get_tools(ACME)}
    call = tool_call("aggregate", {"model": "Order"})
    for _ in range(3):
        msg = tools["aggregate"].invoke(call) if kind == "sync" else await tools["aggregate"].ainvoke(call)
        assert json.loads(msg.content) == {"value": len(order_ids(shop_backend, "acme"))}
    assert len({id(s) for s in opened}) == 3
    sessions = [s.sync_session if kind == "async" else s for s in opened]
    assert not any(s.in_transaction() for s in sessions)
    if kind == "sync":
        assert shop_backend.sync_engine.pool.checkedout() == 0


async def test_unexpected_errors_reach_the_model_as_a_generic_message(toolset: Toolset) -> None:
    def broken() -> Any:
        raise RuntimeError("could not connect to postgresql://admin:hunter2@db/prod")

    tools = {t.name: t for t in OrmAIToolkit(toolset=toolset, session_factory=broken).get_tools(ACME)}
    for msg in (tools["query"].invoke(tool_call("query", {"model": "Order"})),
                await tools["query"].ainvoke(tool_call("query", {"model": "Order"}))):  # fmt: skip
        assert msg.status == "error"
        assert "hunter2" not in msg.content and "postgresql" not in msg.content
        assert json.loads(msg.content)["error"] == "error"


def test_tools_outside_a_run_still_work(shop_backend: Backend, toolset: Toolset) -> None:
    # Called directly (no agent, no callbacks), the audit event has no run to go to: no error.
    tools = {t.name: t for t in OrmAIToolkit(toolset=toolset, session_factory=sessionmaker(shop_backend.sync_engine)).get_tools(INITECH)}
    out = tools["get"].invoke({"model": "Tenant", "id": "initech"})
    assert json.loads(out) == {"data": {"id": "initech", "name": "Initech"}}


@pytest.mark.slow
def test_testing_package_imports_no_framework() -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    code = (
        "import sys, ormai_agents.testing as t; assert 'ScriptedChatModel' in dir(t);"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('langchain', 'langchain_core', 'langgraph', 'llama_index')))"
    )
    env = {**os.environ, "PYTHONPATH": str(root)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root, env=env)
    assert out.stdout.strip() == "[]"
