"""The MCP server through the official `mcp` client, in memory: the same tools, answers, errors
and audit records as the LangChain and LlamaIndex adapters; principals; approvals by elicitation;
agents of both frameworks reaching the tools through their MCP integrations.

The stdio and streamable HTTP transports (against the CLI) are in tests/test_mcp_transports.py.
"""

from __future__ import annotations

import asyncio
import json
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.utils.function_calling import convert_to_openai_tool
from mcp import ClientSession, types
from mcp.shared.memory import create_connected_server_and_client_session
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlalchemy.orm import sessionmaker

from ormai_agents import Principal, Toolset, WriteAction, page_records
from ormai_agents._operations import OPERATIONS, READ_OPERATIONS
from ormai_agents._toolspecs import build_tool_specs
from ormai_agents.approvals import ApprovalStatus
from ormai_agents.audit import MemoryAuditStore
from ormai_agents.langchain import OrmAIToolkit
from ormai_agents.llamaindex import OrmAIToolSpec
from ormai_agents.mcp import OrmAIMCPServer, create_server
from ormai_agents.testing import ScriptedChatModel, ScriptedFunctionCallingLLM, tool_call
from tests import shop
from tests.conftest import ACME, BACKENDS, GLOBEX, Backend
from tests.test_kernel import CALLS, same
from tests.writes_support import snapshot, toolset, write_policy

KEY = b"mcp-test-key-32-bytes-long-okay!"


def _toolset(store: MemoryAuditStore | None = None, **kwargs: Any) -> Toolset:
    return Toolset(shop.Base, shop.shop_policy(), audit_store=store, secret_key=KEY, **kwargs)


@asynccontextmanager
async def connected(server: OrmAIMCPServer, **kwargs: Any) -> AsyncIterator[ClientSession]:
    async with create_connected_server_and_client_session(server, **kwargs) as client:
        yield client


def text_of(result: types.CallToolResult) -> str:
    (content,) = result.content
    assert isinstance(content, types.TextContent)
    return ("error " if result.isError else "") + content.text


def order_ids(backend: Backend, tenant: str, limit: int = 50) -> list[int]:
    with backend.session() as s:
        stmt = select(shop.Order.id).where(shop.Order.tenant_id == tenant).order_by(shop.Order.id).limit(limit)
        return list(s.scalars(stmt))


# --- one builder: the same tools ------------------------------------------------------------


@pytest.mark.parametrize(("layout", "prefix"), [("generic", ""), ("per_model", "shop_")])
async def test_the_tools_are_the_adapters_tools(layout: str, prefix: str) -> None:
    ts = _toolset()
    server = create_server(toolset=ts, session_factory=sessionmaker(), principal=ACME, layout=layout, prefix=prefix)  # type: ignore[arg-type]
    async with connected(server) as client:
        listed = (await client.list_tools()).tools
    specs = build_tool_specs(ts, layout=layout, prefix=prefix)  # type: ignore[arg-type]
    assert [(t.name, t.description, t.inputSchema) for t in listed] == [(s.name, s.description, s.parameters) for s in specs]
    lc = [convert_to_openai_tool(t)["function"] for t in OrmAIToolkit(toolset=ts, session_factory=sessionmaker(), layout=layout, prefix=prefix).get_tools()]  # type: ignore[arg-type]
    assert [(f["name"], f["parameters"]) for f in lc] == [(t.name, t.inputSchema) for t in listed]
    li = OrmAIToolSpec(toolset=ts, session_factory=sessionmaker(), layout=layout, prefix=prefix).to_tool_list()  # type: ignore[arg-type]
    assert [t.metadata.name for t in li] == [t.name for t in listed]
    text = json.dumps([t.model_dump(mode="json") for t in listed])
    for denied in ("password_hash", "internal_note", "secret_plan", "Document", "org_id"):
        assert denied not in text
    reads = {t.name: t.annotations for t in listed}
    assert all(a is not None and a.readOnlyHint for a in reads.values())  # this policy allows no writes


# --- one call path: the same answers, errors and audit records --------------------------------


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_same_answers_and_audit_as_the_adapters(shop_backend: Backend, kind: str) -> None:
    factory: Any = sessionmaker(shop_backend.sync_engine) if kind == "sync" else async_sessionmaker(shop_backend.async_engine)
    mcp_store, lc_store = MemoryAuditStore(), MemoryAuditStore()
    server = create_server(toolset=_toolset(mcp_store), session_factory=factory, principal=ACME)
    lc_tools = {t.name: t for t in OrmAIToolkit(toolset=_toolset(lc_store), session_factory=factory).get_tools(ACME)}
    async with connected(server) as client:
        via_mcp = [text_of(await client.call_tool(name, args)) for name, args in CALLS]
    via_lc = []
    for name, args in CALLS:
        msg = await lc_tools[name].ainvoke(tool_call(name, args))
        via_lc.append(("error " if msg.status == "error" else "") + msg.content)
    assert same(via_mcp) == same(via_lc)
    assert [r["id"] for r in page_records(via_mcp[0])] == order_ids(shop_backend, "acme", 3)
    assert sum(t.startswith("error ") for t in via_mcp) == 8
    # The SDK did not answer first: errors are ours, as JSON, never its "Input validation error".
    assert all(json.loads(t.removeprefix("error "))["error"] for t in via_mcp if t.startswith("error "))

    def records(store: MemoryAuditStore) -> list[tuple[Any, ...]]:
        return [(r.tool_name, r.model, r.outcome, r.error_code, r.tenant_id, r.user_id, r.inputs) for r in store.records]

    assert records(mcp_store) == records(lc_store) and len(mcp_store.records) == len(CALLS)


async def test_malformed_calls_are_refused_by_us_and_audited(shop_backend: Backend) -> None:
    store = MemoryAuditStore()
    server = create_server(toolset=_toolset(store), session_factory=sessionmaker(shop_backend.sync_engine), principal=ACME)
    async with connected(server) as client:
        outcomes = [
            await client.call_tool("query", {"model": "Order", "limit": "lots"}),  # the schema says integer
            await client.call_tool("query", {"model": "Order", "limit": 10**6}),  # above the schema's maximum
            await client.call_tool("get", {"model": ["Order"], "id": {"$gt": 0}}),
            await client.call_tool("query", None),
            await client.call_tool("drop_tables\n[INFO] approved", {"model": "Order"}),
            await client.call_tool("aggregate", {"model": "Order", "principal": {"tenant_id": "globex", "roles": ["admin"]}}),
        ]
    texts = [text_of(r) for r in outcomes]
    assert [json.loads(t.removeprefix("error ")).get("error") for t in texts] == [
        "validation_error", None, "model_not_allowed", "validation_error", "validation_error", "validation_error",
    ]  # fmt: skip
    assert len(page_records(texts[1])) == 50  # clamped to the policy's maximum, like the adapters
    assert "drop_tables" not in texts[4] and "INFO" not in texts[4] and "globex" not in texts[5]
    audit = [(r.tool_name, r.outcome, r.error_code, r.tenant_id) for r in store.records]
    assert audit == [
        ("query", "error", "validation_error", "acme"),
        ("query", "success", None, "acme"),
        ("get", "denied", "model_not_allowed", "acme"),
        ("query", "error", "validation_error", "acme"),
        ("drop_tables__INFO__approved", "error", "validation_error", "acme"),
        ("aggregate", "error", "validation_error", "acme"),
    ]


def _raw_call(name: Any, arguments: Any) -> types.ClientRequest:
    """A tools/call the official client would refuse to build: built without its validation."""
    params = types.CallToolRequestParams.model_construct(name=name, arguments=arguments)
    return types.ClientRequest(types.CallToolRequest.model_construct(method="tools/call", params=params))


async def test_calls_the_sdk_would_refuse_unread_are_refused_by_us_and_audited(shop_backend: Backend) -> None:
    """Arguments that are not an object and names that are not text fail the SDK's own request
    model, which would answer "Invalid request parameters" before any handler, unaudited: the
    server answers them itself, as tool errors in our JSON, and audits them."""
    store = MemoryAuditStore()
    server = create_server(toolset=_toolset(store), session_factory=sessionmaker(shop_backend.sync_engine), principal=ACME)
    calls = [("query", ["Order"]), ("get", "model=Order id=1"), ("aggregate", 7), (["query"], {"model": "Order"}), (None, None)]
    async with connected(server) as client:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydantic warns while serialising the unvalidated request
            results = [await client.send_request(_raw_call(*call), types.CallToolResult) for call in calls]
        after = await client.call_tool("query", {"model": "Order", "select": ["id"], "order_by": ["id"], "limit": 3})
    assert all(r.isError for r in results)
    errors = [json.loads(text_of(r).removeprefix("error ")) for r in results]
    assert [e["error"] for e in errors] == ["validation_error"] * len(calls)
    assert "takes an object" in errors[0]["message"] and "no tool of that name" in errors[3]["message"]
    assert not any("model=Order" in text_of(r) for r in results)  # nothing the model sent is echoed
    assert [r["id"] for r in page_records(text_of(after))] == order_ids(shop_backend, "acme", 3)  # the session goes on
    audit = [(r.tool_name, r.outcome, r.error_code, r.tenant_id, r.user_id) for r in store.records]
    assert audit[:3] == [(name, "error", "validation_error", "acme", ACME.user_id) for name, _ in calls[:3]]
    assert [a[1:3] for a in audit[3:5]] == [("error", "validation_error")] * 2 and audit[5][1] == "success"


async def test_a_transport_closing_its_stream_ends_the_server_cleanly() -> None:
    """The streamable HTTP transport closes the stream it reads from when a session ends (its
    receiving end, under the server): `run` returns, no error escapes."""
    import anyio
    from mcp.shared.message import SessionMessage

    server = create_server(toolset=_toolset(), session_factory=sessionmaker(), principal=ACME)
    to_server, read_stream = anyio.create_memory_object_stream[SessionMessage | Exception](0)
    write_stream, from_server = anyio.create_memory_object_stream[SessionMessage](10)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.run, read_stream, write_stream, server.create_initialization_options())
            await anyio.sleep(0.05)
            await read_stream.aclose()  # what StreamableHTTPServerTransport.terminate does
    await to_server.aclose()
    await from_server.aclose()


async def test_before_initialize_every_request_is_the_sdks_to_refuse() -> None:
    """The screen of unparsable calls starts with the session: before `initialize` the SDK
    refuses every request, ours included; after it, the same call is our audited refusal."""
    import anyio
    from mcp.shared.message import SessionMessage

    store = MemoryAuditStore()
    server = create_server(toolset=_toolset(store), session_factory=sessionmaker(), principal=ACME)
    to_server, read_stream = anyio.create_memory_object_stream[SessionMessage | Exception](0)
    write_stream, from_server = anyio.create_memory_object_stream[SessionMessage](10)

    def request(id_: int, method: str, params: dict[str, Any]) -> SessionMessage:
        return SessionMessage(types.JSONRPCMessage(types.JSONRPCRequest(jsonrpc="2.0", id=id_, method=method, params=params)))

    call = {"name": "query", "arguments": ["Order"]}
    init = {"protocolVersion": types.LATEST_PROTOCOL_VERSION, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.run, read_stream, write_stream, server.create_initialization_options())
            await to_server.send(request(1, "tools/call", call))
            early = (await from_server.receive()).message.root
            await to_server.send(request(2, "initialize", init))
            await from_server.receive()
            await to_server.send(request(3, "tools/call", call))
            late = (await from_server.receive()).message.root
            await to_server.aclose()
    assert isinstance(early, types.JSONRPCError) and early.id == 1
    assert isinstance(late, types.JSONRPCResponse) and late.id == 3 and late.result["isError"] is True
    assert [(r.tool_name, r.error_code) for r in store.records] == [("query", "validation_error")]
    await from_server.aclose()


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
FIELDS = st.sampled_from(["id", "status", "total", "tenant_id", "name", "ssn", "email", "password_hash", "internal_note", "nope", "-id"])
FILTER = st.fixed_dictionaries(
    {"field": FIELDS | JSON, "op": st.sampled_from(["eq", "ne", "in", "contains", "between", "is_null", "like", "raw"]) | JSON},
    optional={"value": JSON, "or": JSON},
)
ARGUMENTS = st.fixed_dictionaries(
    {},
    optional={
        "model": st.sampled_from(["Order", "Customer", "Tenant", "Document", "order", ""]) | JSON,
        "filters": st.lists(FILTER | JSON, max_size=3) | JSON,
        "select": st.lists(FIELDS, max_size=3) | JSON,
        "order_by": st.lists(FIELDS, max_size=2) | JSON,
        "limit": st.integers(-3, 400) | JSON,
        "id": st.integers(0, 300) | st.sampled_from(["acme", "globex"]) | JSON,
        "function": st.sampled_from(["count", "sum", "avg", "min", "max", "median"]) | JSON,
        "field": FIELDS | JSON,
        "group_by": st.lists(FIELDS, max_size=2) | JSON,
        "include": st.lists(st.sampled_from(["customer", "orders", "documents"]), max_size=2) | JSON,
        "cursor": st.text(max_size=40),
        "principal": st.just({"tenant_id": "globex", "roles": ["admin"]}),
        "tenant_id": st.just("globex"),
        "data": JSON,
        "self": JSON,
    },
)
CALL = st.tuples(st.sampled_from(["describe_schema", "query", "get", "aggregate"]), ARGUMENTS)


def test_hostile_arguments_get_the_same_answers_as_through_the_adapters(shop_backend: Backend) -> None:
    """Arguments a hostile model could send: the MCP server answers (and audits) exactly as the
    LangChain and LlamaIndex tools do, and no answer carries another tenant's rows or a hidden name."""
    loop = asyncio.new_event_loop()
    factory = sessionmaker(shop_backend.sync_engine)
    seen: dict[str, int] = {"ok": 0, "error": 0}

    async def run(calls: list[tuple[str, dict[str, Any]]]) -> None:
        stores = [MemoryAuditStore() for _ in range(3)]
        server = create_server(toolset=_toolset(stores[0]), session_factory=factory, principal=ACME)
        lc = {t.name: t for t in OrmAIToolkit(toolset=_toolset(stores[1]), session_factory=factory).get_tools(ACME)}
        li = {t.metadata.name: t for t in OrmAIToolSpec(toolset=_toolset(stores[2]), session_factory=factory).get_tools(ACME)}
        async with connected(server) as client:
            for name, args in calls:
                via_mcp = text_of(await client.call_tool(name, args))
                msg = await lc[name].ainvoke(tool_call(name, args))
                via_lc = ("error " if msg.status == "error" else "") + msg.content
                out = await li[name].acall(**args)
                via_li = ("error " if out.is_error else "") + out.content
                assert same([via_mcp]) == same([via_lc]) == same([via_li]), (name, args)
                for leak in ("password_hash", "internal_note", "secret_plan", "Traceback", "SELECT", "sqlite", "psycopg"):
                    assert leak not in via_mcp
                body = json.loads(via_mcp.removeprefix("error "))
                for row in page_records(body) if isinstance(body, dict) and "rows" in body else []:
                    assert row.get("tenant_id", "acme") == "acme" and row.get("id") != "globex"
                seen["error" if via_mcp.startswith("error ") else "ok"] += 1
        records = [[(r.tool_name, r.model, r.outcome, r.error_code, r.inputs) for r in s.records] for s in stores]
        assert records[0] == records[1] == records[2]
        assert len(records[0]) == len(calls)  # every call audited, the malformed ones included

    @settings(max_examples=25, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])  # fmt: skip
    @given(st.lists(CALL, min_size=1, max_size=4))
    def check(calls: list[tuple[str, dict[str, Any]]]) -> None:
        loop.run_until_complete(run(calls))

    try:
        check()
    finally:
        loop.close()
    assert seen["ok"] + seen["error"] >= 25  # every example ran (each makes one call or more)
    assert seen["error"] > 0


# --- principals -----------------------------------------------------------------------------


async def test_a_principal_never_comes_from_the_call(shop_backend: Backend) -> None:
    store = MemoryAuditStore()

    def resolve(token: str) -> Principal | None:
        return GLOBEX if token == "t" * 20 else None

    # A resolver server reached without an HTTP request (so without a token): refused.
    server = create_server(toolset=_toolset(store), session_factory=sessionmaker(shop_backend.sync_engine), principal_resolver=resolve)
    async with connected(server) as client:
        out = await client.call_tool("query", {"model": "Order", "principal": {"tenant_id": "globex"}, "token": "t" * 20})
    assert out.isError and json.loads(text_of(out).removeprefix("error "))["error"] == "access_denied"
    assert store.records == []
    with pytest.raises(RuntimeError, match="principal="):
        await server.run_stdio()
    stdio = create_server(toolset=_toolset(), session_factory=sessionmaker(), principal=ACME)
    with pytest.raises(RuntimeError, match="principal_resolver="):
        stdio.streamable_http_app()


def test_create_server_refuses_ambiguous_or_wrong_arguments() -> None:
    ts = _toolset()
    for kwargs in ({}, {"principal": ACME, "principal_resolver": lambda t: ACME}):
        with pytest.raises(ValueError, match="either"):
            create_server(toolset=ts, session_factory=sessionmaker(), **kwargs)
    with pytest.raises(TypeError):
        create_server(toolset=ts, session_factory=sessionmaker(), principal={"tenant_id": "acme"})  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        create_server(toolset=object(), session_factory=sessionmaker(), principal=ACME)  # type: ignore[arg-type]


# --- approvals ------------------------------------------------------------------------------


def _elicitation(action: str, content: dict[str, Any] | None, asked: list[str]) -> Any:
    async def answer(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(params.message)
        return types.ElicitResult(action=action, content=content)  # type: ignore[arg-type]

    return answer


@pytest.mark.parametrize("empty_backend", BACKENDS, indirect=True)
@pytest.mark.parametrize(
    ("action", "content", "expected"),
    [
        ("accept", {"approve": True, "reason": "ok by me"}, "executed"),
        ("accept", {"approve": False}, "rejected"),
        ("decline", None, "rejected"),
        ("cancel", None, "pending"),
        (None, None, "pending"),  # a client without elicitation
    ],
)
async def test_require_approval_writes_ask_through_elicitation(
    wb: Backend, action: str | None, content: dict[str, Any] | None, expected: str
) -> None:
    audit = MemoryAuditStore()
    ts = toolset(write_policy(order_ops={"update": WriteAction.RequireApproval}), audit_store=audit)
    server = create_server(toolset=ts, session_factory=async_sessionmaker(wb.async_engine), principal=ACME)
    asked: list[str] = []
    kwargs = {} if action is None else {"elicitation_callback": _elicitation(action, content, asked)}
    with wb.session() as s:
        order_id = s.scalar(select(func.min(shop.Order.id)).where(shop.Order.tenant_id == "acme"))
        foreign_id = s.scalar(select(func.min(shop.Order.id)).where(shop.Order.tenant_id == "globex"))
    before = snapshot(wb, shop.Order)
    async with connected(server, **kwargs) as client:
        # A request that would fail anyway is refused at once; nobody is asked about it: a field
        # the agent may not write, another tenant's order, an order that does not exist.
        refused = await client.call_tool("update_order", {"id": order_id, "data": {"tenant_id": "globex"}})
        unseen = [
            await client.call_tool("update_order", {"id": target, "data": {"status": "ok-by-person"}})
            for target in (foreign_id, 10_000)
        ]
        out = await client.call_tool("update_order", {"id": order_id, "data": {"status": "ok-by-person"}})
    assert refused.isError and json.loads(text_of(refused).removeprefix("error "))["error"] == "field_not_allowed"
    assert [json.loads(text_of(r).removeprefix("error "))["error"] for r in unseen] == ["not_found"] * 2
    assert text_of(unseen[0]) == text_of(unseen[1])  # another tenant's order reads as a missing one
    assert len(asked) == (0 if action is None else 1)
    if asked:
        assert "update_order" in asked[0] and "ok-by-person" in asked[0] and '"acme"' in asked[0]
    (approval,) = await ts.approval_store.list(tenant_id="acme")
    body = json.loads(text_of(out).removeprefix("error "))
    changed = [row[0] for row, old in zip(snapshot(wb, shop.Order), before) if row != old]
    if expected == "executed":
        assert not out.isError and body["data"]["status"] == "ok-by-person" and changed == [order_id]
        assert (approval.status, approval.decided_by, approval.reason) == (ApprovalStatus.Executed, "mcp-elicitation", "ok by me")
    elif expected == "rejected":
        assert out.isError and body["error"] == "approval_invalid" and changed == []
        assert approval.status is ApprovalStatus.Rejected
    else:  # the model hears the approval id; the host decides later through the store
        assert out.isError and body["error"] == "approval_required" and changed == []
        assert body["details"]["approval_id"] == approval.id and approval.status is ApprovalStatus.Pending
    codes = [(r.tool_name, r.error_code) for r in audit.records]
    assert codes[:4] == [
        ("update", "field_not_allowed"), ("update", "not_found"), ("update", "not_found"), ("update", "approval_required"),
    ]  # fmt: skip


# --- agents through their frameworks' MCP integrations -----------------------------------------


def _text(content: Any) -> str:
    """A ToolMessage's text: langchain-mcp-adapters gives content blocks."""
    if isinstance(content, str):
        return content
    return "".join(block["text"] for block in content if block.get("type") == "text")


async def test_langchain_agent_over_load_mcp_tools(shop_backend: Backend) -> None:
    from langchain_mcp_adapters.tools import load_mcp_tools

    store = MemoryAuditStore()
    server = create_server(toolset=_toolset(store), session_factory=async_sessionmaker(shop_backend.async_engine), principal=GLOBEX)
    script = [
        AIMessage("", tool_calls=[
            tool_call("query", {"model": "Customer", "filters": [{"field": "password_hash", "op": "startswith", "value": "$2b"}]}),
            tool_call("query", {"model": "Order", "select": ["id", "tenant_id"], "order_by": ["id"], "limit": 50}),
            tool_call("get", {"model": "Tenant", "id": "acme"}),
        ]),
        "done",
    ]  # fmt: skip
    async with connected(server) as client:
        tools = await load_mcp_tools(client)
        model = ScriptedChatModel(script)
        state = await create_agent(model, tools=tools).ainvoke({"messages": [("user", "my orders?")]})
    assert [s["function"]["name"] for s in model.tool_schemas] == ["describe_schema", "query", "get", "aggregate"]
    denied, orders, other = [(m.status, _text(m.content)) for m in state["messages"] if isinstance(m, ToolMessage)]
    assert denied[0] == "error" and json.loads(denied[1])["error"] == "field_not_allowed"
    assert "password_hash" not in denied[1] and "$2b" not in denied[1]
    assert [r["id"] for r in page_records(orders[1])] == order_ids(shop_backend, "globex")
    assert other[0] == "error" and json.loads(other[1])["error"] == "not_found"
    assert state["messages"][-1].content == "done"
    assert sorted((r.tenant_id, r.model, str(r.error_code)) for r in store.records) == [  # parallel calls: any order
        ("globex", "Customer", "field_not_allowed"), ("globex", "Order", "None"), ("globex", "Tenant", "not_found"),
    ]  # fmt: skip


async def test_llamaindex_function_agent_over_mcp_tool_spec(shop_backend: Backend) -> None:
    from llama_index.core.agent.workflow import FunctionAgent
    from llama_index.tools.mcp import McpToolSpec

    server = create_server(toolset=_toolset(), session_factory=async_sessionmaker(shop_backend.async_engine), principal=ACME)
    llm = ScriptedFunctionCallingLLM([
        [("aggregate", {"model": "Order", "function": "sum", "field": "internal_note"})],
        [("query", {"model": "Order", "select": ["id", "tenant_id"], "order_by": ["id"], "limit": 50})],
    ])  # fmt: skip
    async with connected(server) as client:
        tools = await McpToolSpec(client=client).to_tool_list_async()
        response = await FunctionAgent(tools=tools, llm=llm).run("orders?")
    # llama-index-tools-mcp hands the agent the CallToolResult itself (it does not set is_error).
    bad, good = [c.tool_output.raw_output for c in response.tool_calls]
    assert isinstance(bad, types.CallToolResult) and bad.isError and not good.isError
    assert json.loads(text_of(bad).removeprefix("error "))["error"] == "field_not_allowed"
    assert "internal_note" not in text_of(bad)
    rows = page_records(text_of(good))
    assert [r["id"] for r in rows] == order_ids(shop_backend, "acme") and {r["tenant_id"] for r in rows} == {"acme"}


async def test_unexpected_errors_are_the_hosts_to_see(caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> Any:
        raise RuntimeError("could not connect to postgresql://admin:hunter2@db/prod")

    server = create_server(toolset=_toolset(), session_factory=broken, principal=ACME)
    async with connected(server) as client:
        out = await client.call_tool("query", {"model": "Order"})
    assert out.isError and json.loads(text_of(out).removeprefix("error ")) == {
        "error": "error", "message": "The request could not be completed."
    }  # fmt: skip
    assert any("hunter2" in str(r.exc_info[1]) for r in caplog.records if r.exc_info)


@pytest.mark.slow
def test_importing_ormai_agents_or_its_command_loads_no_mcp() -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    code = (
        "import sys, ormai_agents, ormai_agents.cli;"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'mcp', 'starlette', 'uvicorn', 'langchain_mcp_adapters'}))"
    )
    env = {**os.environ, "PYTHONPATH": str(root)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root, env=env)
    assert out.stdout.strip() == "[]"


async def test_token_verification_through_the_hosts_resolver(caplog: pytest.LogCaptureFixture) -> None:
    from ormai_agents.mcp import _PrincipalToken, _TokenVerifier

    async def lookup(token: str) -> Principal | None:  # async resolvers are awaited
        return GLOBEX if token == "g" * 20 else None

    def broken(token: str) -> Principal | None:
        raise RuntimeError("key store down")

    good = await _TokenVerifier(lookup).verify_token("g" * 20)
    assert isinstance(good, _PrincipalToken) and good._principal == GLOBEX
    assert "g" * 20 not in good.model_dump_json()  # the token is not kept
    other = await _TokenVerifier(lambda t: GLOBEX).verify_token("h" * 20)
    assert other is not None and other.client_id != good.client_id  # sessions bind to their token
    assert await _TokenVerifier(lookup).verify_token("nope") is None
    assert await _TokenVerifier(lambda t: {"tenant_id": "globex"}).verify_token("g" * 20) is None  # type: ignore[arg-type,return-value]
    assert await _TokenVerifier(broken).verify_token("g" * 20) is None
    assert any("key store down" in str(r.exc_info[1]) for r in caplog.records if r.exc_info)


async def test_annotations_follow_the_operations_table() -> None:
    ts = toolset(write_policy())
    server = create_server(toolset=ts, session_factory=sessionmaker(), principal=ACME)
    async with connected(server) as client:
        listed = (await client.list_tools()).tools
    methods = {s.name: s.method for s in build_tool_specs(ts)}
    assert set(methods.values()) == set(OPERATIONS)  # every operation has a tool here
    for tool in listed:
        method, hints = methods[tool.name], tool.annotations
        assert hints is not None
        assert hints.readOnlyHint is (method in READ_OPERATIONS), tool.name
        # Only create adds without changing or removing what is there.
        assert hints.destructiveHint == (None if method in READ_OPERATIONS else method != "create"), tool.name
