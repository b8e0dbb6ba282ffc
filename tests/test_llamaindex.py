"""The LlamaIndex adapter, driven by real `FunctionAgent` / `AgentWorkflow` runs with a scripted LLM.

Every run reads the seeded shop on SQLite and PostgreSQL through sync and async session
factories; results are compared with the database truth read by unscoped statements.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from llama_index.core.agent.workflow import AgentWorkflow, FunctionAgent
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events import BaseEvent
from llama_index.core.instrumentation.span_handlers import SimpleSpanHandler
from llama_index.core.workflow import Context
from pydantic import Field
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import Session, sessionmaker

from ormai_agents import Principal, Toolset, page_records
from ormai_agents.audit import MemoryAuditStore
from ormai_agents._toolspecs import _inline_refs
from ormai_agents.llamaindex import OrmAIAuditEvent, OrmAIToolSpec, get_principal, set_principal
from ormai_agents.testing import ScriptedFunctionCallingLLM
from tests import shop
from tests.conftest import Backend, pg_url

ROOT = Path(__file__).resolve().parents[1]
DENIED = ("password_hash", "internal_note", "secret_plan", "org_id", "Document", "is_public")
# A principal whose metadata and ids must never reach the model, a tool output or a trace.
SECRET = "tok-5ecret-9f3e"
ACME = Principal(tenant_id="acme", user_id="user-7731", roles=("analyst",), metadata={"api_token": SECRET})
GLOBEX = Principal(tenant_id="globex", user_id="user-4410")
ORDERS = ("query", {"model": "Order", "select": ["id", "tenant_id"], "order_by": ["id"], "limit": 50})


# --- helpers -------------------------------------------------------------------------------


class _Events(BaseEventHandler):
    events: list[BaseEvent] = Field(default_factory=list)

    @classmethod
    def class_name(cls) -> str:
        return "TestEvents"

    def handle(self, event: BaseEvent, **kwargs: Any) -> None:
        self.events.append(event)


class _Spans(SimpleSpanHandler):
    """Keeps what span handlers are shown: the span's bound arguments and its result."""

    seen: list[str] = Field(default_factory=list)

    def new_span(self, id_: str, bound_args: Any, instance: Any = None, parent_span_id: Any = None,
                 tags: Any = None, **kwargs: Any) -> Any:  # fmt: skip
        self.seen.append(f"{id_} {bound_args.arguments!r}")
        return super().new_span(id_, bound_args, instance, parent_span_id, tags, **kwargs)

    def prepare_to_exit_span(self, id_: str, bound_args: Any, instance: Any = None, result: Any = None, **kwargs: Any) -> Any:
        self.seen.append(f"{id_} -> {result!r}")
        return super().prepare_to_exit_span(id_, bound_args, instance, result, **kwargs)


@pytest.fixture
def traced() -> Iterator[tuple[_Events, _Spans]]:
    """Handlers on the ROOT dispatcher, as an observability integration would add them."""
    root = get_dispatcher()
    events, spans = _Events(), _Spans()
    root.add_event_handler(events)
    root.add_span_handler(spans)
    yield events, spans
    root.event_handlers.remove(events)
    root.span_handlers.remove(spans)


class _Factory:
    """A session factory that remembers the sessions it made, to check each was closed."""

    def __init__(self, backend: Backend, kind: str) -> None:
        self.kind = kind
        self.inner: Any = (
            sessionmaker(backend.sync_engine) if kind == "sync" else async_sessionmaker(backend.async_engine)
        )
        self.sessions: list[Session | AsyncSession] = []

    def __call__(self) -> Session | AsyncSession:
        session = self.inner()
        self.sessions.append(session)
        return session

    def all_closed(self) -> bool:
        sync = [s if isinstance(s, Session) else s.sync_session for s in self.sessions]
        return all(not s.in_transaction() and not s.identity_map for s in sync)


@pytest.fixture(params=["sync", "async"])
def factory(request: pytest.FixtureRequest, shop_backend: Backend) -> _Factory:
    return _Factory(shop_backend, request.param)


def _truth(backend: Backend, tenant: str) -> list[int]:
    with backend.session() as s:
        return list(s.scalars(select(shop.Order.id).where(shop.Order.tenant_id == tenant).order_by(shop.Order.id).limit(50)))


def _outputs(response: Any) -> list[Any]:
    return [call.tool_output for call in response.tool_calls]


def _by_tool(response: Any) -> dict[str, Any]:
    """Tool outputs by tool name (parallel calls finish in any order)."""
    return {call.tool_name: call.tool_output for call in response.tool_calls}


def _spec(factory: Any, store: MemoryAuditStore | None = None, **kwargs: Any) -> OrmAIToolSpec:
    toolset = Toolset(shop.Base, shop.shop_policy(), audit_store=store, secret_key=b"llamaindex-test-key-32-bytes-ok!")
    return OrmAIToolSpec(toolset=toolset, session_factory=factory, **kwargs)


# --- schemas -------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["generic", "per_model"])
def test_schemas_show_enums_and_no_denied_names(layout: str) -> None:
    spec = _spec(sessionmaker(), layout=layout)
    for tools in (spec.get_tools(ACME), spec.to_tool_list()):
        shown = [t.metadata.to_openai_tool() for t in tools]  # raises on descriptions over 1024 chars
        text = json.dumps(shown)
        for name in DENIED:
            assert name not in text
        # Neither the principal nor the injected Context is an argument the model could fill.
        assert "principal" not in text and "workflow_ctx" not in text and "tenant_id\": {\"type" not in text
        assert all(re.match(r"^[a-zA-Z0-9_-]{1,64}$", t["function"]["name"]) for t in shown)
        # The fn_schema is the tool spec's own arguments model, its JSON schema unchanged.
        assert [t.metadata.fn_schema for t in tools] == [s.args_model for s in spec.tool_specs]
        assert [_inline_refs(t["function"]["parameters"]) for t in shown] == [
            {k: v for k, v in s.parameters.items() if k != "additionalProperties"} for s in spec.tool_specs
        ]
    by_name = {
        t.metadata.name: _inline_refs(t.metadata.to_openai_tool()["function"]["parameters"]) for t in spec.to_tool_list()
    }
    if layout == "generic":
        assert by_name["query"]["properties"]["model"]["enum"] == ["Tenant", "Customer", "Order"]
        fields = by_name["query"]["properties"]["filters"]["items"]["properties"]["field"]["enum"]
    else:
        assert "model" not in by_name["query_order"]["properties"]
        fields = by_name["query_customer"]["properties"]["filters"]["items"]["properties"]["field"]["enum"]
    # Masked and hashed fields can't be filtered on: they are not offered.
    assert "email" not in fields and "ssn" not in fields and "id" in fields


def test_spec_conventions() -> None:
    spec = _spec(sessionmaker(), prefix="shop_")
    assert spec.spec_functions == ["shop_describe_schema", "shop_query", "shop_get", "shop_aggregate"]
    assert [t.metadata.name for t in spec.to_tool_list(["shop_query"])] == ["shop_query"]
    with pytest.raises(ValueError, match="unknown tools"):
        spec.to_tool_list(["drop_tables"])
    with pytest.raises(TypeError):
        spec.get_tools({"tenant_id": "acme"})  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        OrmAIToolSpec(toolset=spec.toolset, session_factory=None)  # type: ignore[arg-type]


# --- agent runs ----------------------------------------------------------------------------


async def test_bound_principal_bad_call_then_good_call(
    shop_backend: Backend, factory: _Factory, traced: tuple[_Events, _Spans]
) -> None:
    store = MemoryAuditStore()
    spec = _spec(factory, store)
    attack = ("query", {"model": "Customer", "filters": [{"field": "password_hash", "op": "startswith", "value": "$2b"}]})
    llm = ScriptedFunctionCallingLLM([[attack], [ORDERS]])
    agent = FunctionAgent(tools=spec.get_tools(ACME), llm=llm)

    response = await agent.run("Which orders do we have?")

    bad, good = _outputs(response)
    assert bad.is_error and json.loads(bad.content)["error"] == "field_not_allowed"
    assert "password_hash" not in bad.content and "$2b" not in bad.content
    assert not good.is_error
    rows = page_records(good.content)
    assert [r["id"] for r in rows] == _truth(shop_backend, "acme") and {r["tenant_id"] for r in rows} == {"acme"}
    # The model saw the error as a tool message and carried on; the final answer is the last result.
    assert any(m.role.value == "tool" and "field_not_allowed" in (m.content or "") for m in llm.seen_messages[1])
    assert page_records(str(response)) == rows
    assert [(r.outcome, r.tenant_id, r.user_id) for r in store.records] == [("denied", "acme", "user-7731"), ("success", "acme", "user-7731")]
    assert len(factory.sessions) == 2 and factory.all_closed()

    events, spans = traced
    audit = [e for e in events.events if isinstance(e, OrmAIAuditEvent)]
    assert [(e.tool_name, e.record["outcome"], e.record["row_count"]) for e in audit] == [
        ("query", "denied", None),
        ("query", "success", len(rows)),
    ]
    assert [e.record["id"] for e in audit] == [r.id for r in store.records]
    # Each event belongs to its own tool-call span.
    assert all(e.span_id and e.span_id.startswith("_tool_call-") for e in audit)
    assert len({e.span_id for e in audit}) == 2
    assert json.loads(audit[0].model_dump_json())["record"]["error_code"] == "field_not_allowed"


async def test_principal_never_leaves_the_host(shop_backend: Backend, traced: tuple[_Events, _Spans]) -> None:
    spec = _spec(async_sessionmaker(shop_backend.async_engine))
    llm = ScriptedFunctionCallingLLM([[ORDERS, ("aggregate", {"model": "Order", "principal": {"tenant_id": "globex"}})], "done"])
    agent = FunctionAgent(tools=spec.get_tools(ACME), llm=llm)
    handler = agent.run("orders?")
    streamed = [ev async for ev in handler.stream_events()]
    response = await handler

    by_tool = _by_tool(response)
    outputs = [by_tool["query"], by_tool["aggregate"]]
    assert [o.raw_input for o in outputs] == [
        {"args": (), "kwargs": ORDERS[1]},
        {"args": (), "kwargs": {"model": "Order", "principal": {"tenant_id": "globex"}}},
    ]
    # A principal in the model's arguments is refused, never used.
    assert outputs[1].is_error and json.loads(outputs[1].content)["error"] == "validation_error"
    assert "globex" not in outputs[0].content

    events, spans = traced
    ours = sorted((e for e in events.events if isinstance(e, OrmAIAuditEvent)), key=lambda e: e.record["tool_name"])
    # Both calls are audited, the refused one included; who did it is in the audit record.
    assert [(e.record["tool_name"], e.record["outcome"], e.record["user_id"]) for e in ours] == [
        ("aggregate", "error", "user-7731"),
        ("query", "success", "user-7731"),
    ]
    assert ours[0].record["inputs"] == {"unknown_arguments": 1}  # the model was fixed by the tool
    visible = [
        *(o.model_dump_json() for o in outputs),
        *(repr(o.raw_input) + repr(o.raw_output) for o in outputs),
        *(repr(ev) for ev in streamed),
        *(e.model_dump_json(fallback=repr) + repr(e) for e in events.events),
        *spans.seen,
        *(json.dumps(t) for t in llm.seen_tools),
        *(m.model_dump_json() for ms in llm.seen_messages for m in ms),
    ]
    assert any("_tool_call-" in s for s in spans.seen)
    assert not [s for s in visible if SECRET in s or "api_token" in s]
    # The user id is in the audit event only, not in anything the model or the agent loop holds.
    others = [*(o.model_dump_json() for o in outputs), *(repr(ev) for ev in streamed)]
    others += [e.model_dump_json(fallback=repr) + repr(e) for e in events.events if not isinstance(e, OrmAIAuditEvent)]
    assert not [s for s in others if "user-7731" in s]


def _pooled_async_engine(backend: Backend) -> AsyncEngine:
    """A small pooled engine on the backend's data: runs share (and reuse) four connections, as
    in a deployment, and the shared PostgreSQL server is not flooded with connections."""
    if not backend.is_postgres:
        return create_async_engine(backend.async_engine.url, pool_size=4, max_overflow=0)
    with backend.sync_engine.connect() as conn:
        search_path = conn.exec_driver_sql("show search_path").scalar_one()
    return create_async_engine(
        pg_url("asyncpg"), pool_size=4, max_overflow=0, connect_args={"server_settings": {"search_path": search_path}}
    )


@pytest.fixture(params=["sync", "async"])
async def pooled_factory(request: pytest.FixtureRequest, shop_backend: Backend) -> AsyncIterator[_Factory]:
    factory = _Factory(shop_backend, request.param)
    if request.param == "sync":
        yield factory
        return
    engine = _pooled_async_engine(shop_backend)
    factory.inner = async_sessionmaker(engine)
    yield factory
    assert engine.sync_engine.pool.checkedout() == 0  # every session gave its connection back
    await engine.dispose()


async def test_concurrent_runs_keep_principals_apart(shop_backend: Backend, pooled_factory: _Factory) -> None:
    factory = pooled_factory
    store = MemoryAuditStore()
    spec = _spec(factory, store)
    llm = ScriptedFunctionCallingLLM([[ORDERS, ("aggregate", {"model": "Order"})], "done"])
    shared = FunctionAgent(tools=spec.to_tool_list(), llm=llm)  # one agent, principal per run Context
    tenants = [shop.TENANTS[i % 3] for i in range(16)]

    async def run(i: int, tenant: str) -> tuple[str, Any]:
        principal = Principal(tenant_id=tenant, user_id=f"u{i}")
        if i % 2:
            return tenant, await FunctionAgent(tools=spec.get_tools(principal), llm=llm).run("orders?")
        ctx = Context(shared)
        await set_principal(ctx, principal)
        return tenant, await shared.run("orders?", ctx=ctx)

    results = await asyncio.gather(*(run(i, t) for i, t in enumerate(tenants)))

    for tenant, response in results:
        rows_out, count_out = _by_tool(response)["query"], _by_tool(response)["aggregate"]
        rows = page_records(rows_out.content)
        truth = _truth(shop_backend, tenant)
        assert [r["id"] for r in rows] == truth and {r["tenant_id"] for r in rows} == {tenant}
        with shop_backend.session() as s:
            total = len(s.scalars(select(shop.Order.id).where(shop.Order.tenant_id == tenant)).all())
        assert json.loads(count_out.content) == {"value": total}
    assert len(store.records) == 32
    assert sorted((r.tenant_id, r.user_id) for r in store.records) == sorted(
        (t, f"u{i}") for i, t in enumerate(tenants) for _ in range(2)
    )
    assert len(factory.sessions) == 32 and factory.all_closed()


async def test_agent_workflow_reads_principal_from_context(shop_backend: Backend, factory: _Factory) -> None:
    spec = _spec(factory)
    llm = ScriptedFunctionCallingLLM([[ORDERS]])
    db_agent = FunctionAgent(name="db", description="Answers questions from the shop database.", tools=spec.to_tool_list(), llm=llm)
    workflow = AgentWorkflow(agents=[db_agent], root_agent="db")
    ctx = Context(workflow)
    await set_principal(ctx, GLOBEX)
    assert await get_principal(ctx) == GLOBEX

    response = await workflow.run(user_msg="orders?", ctx=ctx)

    rows = page_records(str(response))
    assert [r["id"] for r in rows] == _truth(shop_backend, "globex") and {r["tenant_id"] for r in rows} == {"globex"}
    assert [o.raw_input for o in _outputs(response)] == [{"args": (), "kwargs": ORDERS[1]}]


@pytest.mark.parametrize(
    "stored",
    [None, {"tenant_id": "acme", "is_admin": True}, {}, "acme", ["acme"]],
    ids=["missing", "unknown-key", "empty", "string", "list"],
)
async def test_refuses_without_a_principal(shop_backend: Backend, stored: Any) -> None:
    store = MemoryAuditStore()
    spec = _spec(async_sessionmaker(shop_backend.async_engine), store)
    # The model claims an identity in its arguments: it must not count.
    llm = ScriptedFunctionCallingLLM([[("query", {"model": "Order"})], [("query", {"model": "Order", "tenant_id": "acme"})]])
    workflow = AgentWorkflow(agents=[FunctionAgent(name="db", description="db", tools=spec.to_tool_list(), llm=llm)])
    ctx = Context(workflow)
    if stored is not None:
        await ctx.store.set("principal", stored)

    response = await workflow.run(user_msg="orders?", ctx=ctx)

    outputs = _outputs(response)
    assert [(o.is_error, json.loads(o.content)["error"]) for o in outputs] == [(True, "access_denied")] * 2
    assert "on whose behalf" in json.loads(outputs[0].content)["message"]
    assert store.records == []  # nothing reached the toolset
    # Outside any workflow (no Context at all) the tool refuses the same way instead of raising.
    direct = await spec.to_tool_list(["query"])[0].acall(model="Order")
    assert direct.is_error and json.loads(direct.content)["error"] == "access_denied"


async def test_sync_call_and_failures_stay_generic(shop_backend: Backend) -> None:
    spec = _spec(sessionmaker(shop_backend.sync_engine))
    query = next(t for t in spec.get_tools(ACME) if t.metadata.name == "query")
    out = await asyncio.to_thread(query.call, **ORDERS[1])  # the sync entry point, from a worker thread
    assert [r["id"] for r in page_records(out.content)] == _truth(shop_backend, "acme")

    def broken() -> Session:
        raise RuntimeError("connect failed: password=hunter2 SELECT * FROM orders")

    for tools in (_spec(broken).get_tools(ACME), _spec(lambda: "not a session").get_tools(ACME)):
        failed = await next(t for t in tools if t.metadata.name == "query").acall(model="Order")
        assert failed.is_error and json.loads(failed.content) == {"error": "error", "message": "The request could not be completed."}
        assert "hunter2" not in failed.model_dump_json() and "Traceback" not in failed.model_dump_json()


def test_scripted_llm_rejects_malformed_scripts() -> None:
    with pytest.raises(TypeError):
        ScriptedFunctionCallingLLM("done")  # type: ignore[arg-type]
    for bad in ([[]], [[("query",)]], [[{"name": "query", "argz": {}}]], [[("query", "Order")]]):
        with pytest.raises(ValueError):
            ScriptedFunctionCallingLLM(bad)  # type: ignore[arg-type]


@pytest.mark.slow
def test_imports_stay_lazy() -> None:
    code = (
        "import sys, ormai_agents, ormai_agents.testing;"
        "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in ('llama_index', 'langchain', 'langchain_core'))))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT, env=env)
    assert out.stdout.strip() == ""


async def test_scripted_llm_from_a_function_and_hostile_context_argument(shop_backend: Backend) -> None:
    spec = _spec(async_sessionmaker(shop_backend.async_engine))

    def brain(messages: list[Any]) -> Any:
        done = [m for m in messages if m.role.value == "tool"]
        return [ORDERS] if not done else f"{len(json.loads(done[-1].content)['rows'])} orders"

    response = await FunctionAgent(tools=spec.get_tools(GLOBEX), llm=ScriptedFunctionCallingLLM(brain)).run("orders?")
    assert str(response) == f"{len(_truth(shop_backend, 'globex'))} orders"
    # The sync entry point can't share an async engine's connections: refused, loudly, for the host.
    query = next(t for t in spec.get_tools(GLOBEX) if t.metadata.name == "query")
    with pytest.raises(RuntimeError, match="acall"):
        query.call(model="Order")
    # A caller that forwards model arguments verbatim can't smuggle a "context" holding a principal.
    unbound = spec.to_tool_list(["query"])[0]
    out = await unbound.acall(model="Order", workflow_ctx={"principal": GLOBEX.to_dict()})
    assert out.is_error and json.loads(out.content)["error"] == "access_denied"


async def test_events_follow_handlers_added_after_the_tools(shop_backend: Backend) -> None:
    spec = _spec(async_sessionmaker(shop_backend.async_engine))
    query = next(t for t in spec.get_tools(ACME) if t.metadata.name == "query")
    assert not (await query.acall(**ORDERS[1])).is_error  # nobody listens: no event is built
    ours = get_dispatcher("ormai_agents")
    handler = _Events()
    ours.add_event_handler(handler)
    try:
        await query.acall(**ORDERS[1])
    finally:
        ours.event_handlers.remove(handler)
    await query.acall(**ORDERS[1])
    assert [(type(e).__name__, e.record["tenant_id"]) for e in handler.events] == [("OrmAIAuditEvent", "acme")]
