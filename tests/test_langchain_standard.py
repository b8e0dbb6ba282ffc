"""LangChain's own standard tool suites (`langchain-tests`: `ToolsUnitTests`, `ToolsIntegrationTests`)
over every tool of both layouts, bound to a principal on a seeded database.

One test class per tool and suite is generated below; each test gets a fresh in-memory shop.
The example arguments are what a strict model sends for the tool (every argument present, null
where nothing is meant), and each is also run once here and must succeed."""

from __future__ import annotations

import json
from typing import Any

import pytest
from langchain_core.messages import ToolCall, ToolMessage
from langchain_core.tools import BaseTool
from langchain_tests.integration_tests import ToolsIntegrationTests
from langchain_tests.unit_tests import ToolsUnitTests
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from ormai_agents import Principal, Toolset
from ormai_agents.langchain import OrmAIToolkit
from tests import shop
from tests.writes_support import write_policy

ACME = Principal(tenant_id="acme", user_id="u1")
LAYOUTS = ("generic", "per_model")


def _toolkit(layout: str, engine: Any = None) -> OrmAIToolkit:
    toolset = Toolset(shop.Base, write_policy(), secret_key=b"t" * 32)
    return OrmAIToolkit(toolset=toolset, session_factory=sessionmaker(engine), layout=layout)  # type: ignore[arg-type]


def _seeded_engine() -> Any:
    engine = create_engine("sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False})
    shop.Base.metadata.create_all(engine)
    with Session(engine) as s:
        s.add_all(shop.seed_rows())
        s.commit()
    return engine


def _acme_ids() -> dict[str, Any]:
    engine = _seeded_engine()
    with Session(engine) as s:
        orders = list(s.scalars(select(shop.Order.id).where(shop.Order.tenant_id == "acme").order_by(shop.Order.id)))
        customer = s.scalars(select(shop.Customer.id).where(shop.Customer.tenant_id == "acme")).first()
    engine.dispose()
    return {"Order": orders, "Customer": customer, "Tenant": "acme"}


IDS = _acme_ids()


def example(tool: BaseTool) -> dict[str, Any]:
    """Arguments a strict model would send: every argument, null where none is meant."""
    spec = tool.spec  # type: ignore[attr-defined]
    model = spec.model or "Order"
    args: dict[str, Any] = dict.fromkeys(spec.argument_names)
    if "model" in args:
        args["model"] = model
    key = IDS[model][-1] if model == "Order" else IDS[model]  # the last acme order: deleted only by delete
    if "id" in args:
        args["id"] = IDS["Order"][0] if (spec.method, model) == ("update", "Order") else key
    if spec.method == "query":
        args["limit"] = 5
    if spec.method == "create":
        data = dict.fromkeys(spec.args_model.model_fields["data"].annotation.model_fields)
        data.update({"total": 9.5, "status": "new"} if model == "Order" else {"name": "New"})
        args["data"] = data
    if spec.method in ("update", "bulk_update"):
        data = dict.fromkeys(spec.args_model.model_fields["data"].annotation.model_fields)
        data["status" if model == "Order" else "name"] = "changed"
        args["data"] = data
    if spec.method == "bulk_update":
        args["filters"] = [{"field": "id", "op": "in", "value": IDS["Order"][:2]}]
    return args


def _suite(base: type, layout: str, name: str) -> type:
    def tool_constructor(self: Any) -> BaseTool:
        tools = {t.name: t for t in _toolkit(layout, _seeded_engine()).get_tools(ACME)}
        return tools[name]

    def tool_invoke_params_example(self: Any) -> dict[str, Any]:
        tool = {t.name: t for t in _toolkit(layout).get_tools(ACME)}[name]
        return example(tool)

    return type(
        f"Test{base.__name__}_{layout}_{name}",
        (base,),
        {
            "tool_constructor": property(tool_constructor),
            "tool_invoke_params_example": property(tool_invoke_params_example),
            "__module__": __name__,
        },
    )


TOOL_NAMES = {layout: [t.name for t in _toolkit(layout).get_tools(ACME)] for layout in LAYOUTS}
for _layout, _names in TOOL_NAMES.items():
    for _name in _names:
        for _base in (ToolsUnitTests, ToolsIntegrationTests):
            _cls = _suite(_base, _layout, _name)
            globals()[_cls.__name__] = _cls


def test_both_layouts_are_covered() -> None:
    assert set(TOOL_NAMES["generic"]) >= {
        "describe_schema",
        "query",
        "get",
        "aggregate",
        "create_order",
        "update_order",
        "delete_order",
        "bulk_update_order",
    }
    assert {"query_order", "get_customer", "aggregate_tenant"} <= set(TOOL_NAMES["per_model"])
    generated = [n for n in globals() if n.startswith("TestTools")]
    assert len(generated) == 2 * (len(TOOL_NAMES["generic"]) + len(TOOL_NAMES["per_model"]))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_example_call_succeeds(layout: str) -> None:
    """The standard suites only check that a call does not raise: here each example must succeed."""
    for name in TOOL_NAMES[layout]:
        tool = {t.name: t for t in _toolkit(layout, _seeded_engine()).get_tools(ACME)}[name]
        message = tool.invoke(ToolCall(name=name, args=example(tool), id="call-1", type="tool_call"))
        assert isinstance(message, ToolMessage)
        if name == "create_tenant":  # the new tenant's id is set to acme's, which exists
            assert json.loads(message.content)["error"] == "constraint_violation"
            continue
        assert message.status == "success", (name, message.content)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_input_schema_is_the_policy_model(layout: str) -> None:
    for tool in _toolkit(layout).get_tools(ACME):
        schema = tool.get_input_schema()
        assert schema is tool.spec.args_model  # type: ignore[attr-defined]
        assert list(tool.args) == list(tool.spec.argument_names)  # type: ignore[attr-defined]
        # No argument is hidden in a generic wrapper: the model's fields are the tool's arguments.
        assert set(schema.model_fields) == set(tool.spec.parameters["properties"])  # type: ignore[attr-defined]


@pytest.mark.parametrize("layout", LAYOUTS)
async def test_to_fastmcp_serves_every_tool(layout: str) -> None:
    """`langchain_mcp_adapters.tools.to_fastmcp` converts every tool, and each converted tool,
    served by FastMCP and called through the official `mcp` client, gives the tool's own answer:
    FastMCP validates a call into the tool's argument models before the tool sees it."""
    from langchain_mcp_adapters.tools import to_fastmcp
    from mcp.server.fastmcp import FastMCP
    from mcp.shared.memory import create_connected_server_and_client_session

    from ormai_agents import page_records

    engine = _seeded_engine()
    with Session(engine) as s:  # the rows the query should return, read before anything is written
        expected = list(
            s.scalars(
                select(shop.Order.id)
                .where(shop.Order.tenant_id == "acme", shop.Order.status.in_(["pending", "shipped"]))
                .order_by(shop.Order.id)
                .limit(50)
            )
        )
    tools = _toolkit(layout, engine).get_tools(ACME)
    server = FastMCP(tools=[to_fastmcp(t) for t in tools], log_level="WARNING")
    async with create_connected_server_and_client_session(server._mcp_server) as client:
        listed = {t.name: t.inputSchema for t in (await client.list_tools()).tools}
        assert list(listed) == [t.name for t in tools]
        answers = {}
        for tool in tools:
            assert list(listed[tool.name]["properties"]) == list(tool.spec.parameters["properties"])  # type: ignore[attr-defined]
            args = example(tool)
            if tool.spec.method == "query" and (tool.spec.model or args["model"]) == "Order":  # type: ignore[attr-defined]
                args["filters"] = [{"field": "status", "op": "in", "value": ["pending", "shipped"]}]
                args["select"], args["order_by"], args["limit"] = ["id", "tenant_id", "status"], ["id"], 50
            result = await client.call_tool(tool.name, args)
            (content,) = result.content
            answers[tool.name] = json.loads(content.text)  # type: ignore[union-attr]
    for name, answer in answers.items():
        # to_fastmcp returns the tool's text as a result: a refusal is the tool's JSON error.
        if name == "create_tenant":
            assert answer["error"] == "constraint_violation"
        else:
            assert "error" not in answer, (name, answer)
    with Session(engine) as s:
        changed = s.scalars(select(shop.Order.status).where(shop.Order.id.in_(IDS["Order"][:2]))).all()
    query = answers["query" if layout == "generic" else "query_order"]
    assert [r["id"] for r in page_records(query)] == expected and expected
    assert set(changed) == {"changed"}  # bulk_update's filters and data reached the toolset as objects
