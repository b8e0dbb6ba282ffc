"""The tool schemas through the converters real users' clients run, offline: OpenAI strict mode
(LangChain, `ChatOpenAI.bind_tools`, LlamaIndex `OpenAI(strict=True)`), Gemini
(`langchain_google_genai`), Anthropic (`langchain_anthropic`), and the frameworks' limits. The
arguments each converted schema forces a model to send are then run through the real tools."""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from langchain_anthropic import ChatAnthropic
from langchain_anthropic.chat_models import convert_to_anthropic_tool
from langchain_core.messages import ToolCall, ToolMessage
from langchain_core.utils.function_calling import convert_to_openai_tool
from langchain_google_genai import ChatGoogleGenerativeAI
from langchain_google_genai._function_utils import (
    convert_to_genai_function_declarations,
)
from langchain_openai import ChatOpenAI
from sqlalchemy import Integer, String, create_engine, select
from sqlalchemy.orm import DeclarativeBase, Session, mapped_column, sessionmaker

from ormai_agents import (
    FieldAction,
    ModelPolicy,
    Policy,
    Principal,
    RunContext,
    Toolset,
    WriteAction,
    WritePolicy,
    page_records,
)
from ormai_agents._operations import FILTER_OPERATORS, FILTER_OPS
from ormai_agents._toolspecs import MAX_DESCRIPTION, build_tool_specs
from ormai_agents.langchain import OrmAIToolkit
from ormai_agents.llamaindex import OrmAIToolSpec
from tests import shop
from tests.writes_support import write_policy

ACME = Principal(tenant_id="acme", user_id="u1")
LAYOUTS = ["generic", "per_model"]
# Keywords OpenAI's strict mode refuses (or that Azure's refuses); `default` included.
STRICT_FORBIDDEN = {
    "allOf", "oneOf", "not", "if", "then", "else", "patternProperties", "unevaluatedProperties",
    "propertyNames", "minProperties", "maxProperties", "dependentRequired", "dependentSchemas", "default",
}  # fmt: skip
JSON_TYPES = {"string", "number", "integer", "boolean", "object", "array", "null"}

logging.getLogger("langchain_google_genai._function_utils").setLevel(logging.ERROR)


@pytest.fixture
def db_path(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "shop.db"
    engine = create_engine(f"sqlite:///{path}")
    shop.Base.metadata.create_all(engine)
    with Session(engine) as s:
        s.add_all(shop.seed_rows())
        s.commit()
    engine.dispose()
    yield path


def _toolset() -> Toolset:
    return Toolset(shop.Base, write_policy(), secret_key=b"s" * 32)


def _tools(db_path: Path | None, layout: str) -> list[Any]:
    factory = sessionmaker(create_engine(f"sqlite:///{db_path}")) if db_path else sessionmaker()
    return OrmAIToolkit(toolset=_toolset(), session_factory=factory, layout=layout).get_tools(ACME)  # type: ignore[arg-type]


def assert_strict_valid(schema: dict[str, Any]) -> None:
    """OpenAI's strict-mode rules: typed nodes, closed objects listing every property as required."""
    assert schema.get("type") == "object" and "anyOf" not in schema
    defs = schema.get("$defs", {})

    def walk(node: dict[str, Any], depth: int) -> None:
        assert depth <= 10, "nested too deep"
        assert not (STRICT_FORBIDDEN & set(node)), sorted(STRICT_FORBIDDEN & set(node))
        if "$ref" in node:
            walk(defs[node["$ref"].rsplit("/", 1)[-1]], depth)
            return
        assert "type" in node or "anyOf" in node, f"untyped node {node}"
        types = node.get("type", [])
        assert set(types if isinstance(types, list) else [types]) <= JSON_TYPES
        if "enum" in node:
            assert "type" in node and node["enum"]
        if node.get("type") == "object":
            assert node.get("additionalProperties") is False, node
            assert node.get("required", []) == list(node.get("properties", {})), node
            for child in node.get("properties", {}).values():
                walk(child, depth + 1)
        for child in node.get("anyOf", []):
            walk(child, depth)
        if "items" in node:
            walk(node["items"], depth + 1)

    walk(schema, 0)


def admits_null(node: dict[str, Any]) -> bool:
    types = node.get("type")
    return (
        types == "null"
        or (isinstance(types, list) and "null" in types)
        or any(admits_null(n) for n in node.get("anyOf", []))
    )


SAMPLES = {"integer": 3, "number": 12.5, "boolean": True, "string": "forced"}


def forced_arguments(tool: Any, schema: dict[str, Any], ids: dict[str, Any]) -> dict[str, Any]:
    """What a strict model must send when it wants only the essentials: every property present,
    null wherever null is allowed, and a real value where it is not."""
    model = tool.spec.model or "Order"

    def value(name: str, node: dict[str, Any]) -> Any:
        if admits_null(node):
            return None
        if name == "model":
            return model
        if name == "id":
            return ids[model]
        if name == "filters":
            return [{"field": "id", "op": "eq", "value": ids[model]}]
        if node.get("type") == "array":
            return []  # an optional list: [] means none
        if node.get("type") == "object":
            return {k: value(k, v) for k, v in node["properties"].items()}
        kind = node.get("type") or node["anyOf"][0]["type"]
        return node["enum"][0] if "enum" in node else SAMPLES[kind]

    args = {name: value(name, node) for name, node in schema["properties"].items()}
    if tool.spec.method in ("update", "bulk_update"):  # a change names one field at least
        first, node = next(iter(schema["properties"]["data"]["properties"].items()))
        kind = node.get("type") or node["anyOf"][0]["type"]
        args["data"][first] = SAMPLES[kind]
    return args


def _invoke(tool: Any, args: dict[str, Any]) -> ToolMessage:
    message = tool.invoke(ToolCall(name=tool.name, args=args, id="call-1", type="tool_call"))
    assert isinstance(message, ToolMessage)
    return message


def _ids(db_path: Path) -> dict[str, Any]:
    engine = create_engine(f"sqlite:///{db_path}")
    with Session(engine) as s:
        out = {
            "Order": s.scalars(
                select(shop.Order.id).where(shop.Order.tenant_id == "acme").order_by(shop.Order.id)
            ).first(),
            "Customer": s.scalars(select(shop.Customer.id).where(shop.Customer.tenant_id == "acme")).first(),
            "Tenant": "acme",
        }
    engine.dispose()
    return out


def _order(db_path: Path, order_id: int) -> Any:
    engine = create_engine(f"sqlite:///{db_path}")
    with Session(engine) as s:
        row = s.execute(
            select(shop.Order.status, shop.Order.total, shop.Order.quantity).where(shop.Order.id == order_id)
        ).one()
    engine.dispose()
    return tuple(row)


# --- OpenAI strict mode -------------------------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
def test_strict_conversions_are_strict_valid(layout: str) -> None:
    tools = _tools(None, layout)
    for tool in tools:
        converted = convert_to_openai_tool(tool, strict=True)
        assert converted["function"]["strict"] is True
        assert_strict_valid(converted["function"]["parameters"])
        # The schema is strict-ready as generated (what an MCP client or LlamaIndex gets).
        assert_strict_valid({**tool.spec.parameters})
    bound = ChatOpenAI(api_key="sk-offline", model="gpt-4o").bind_tools(tools, strict=True)
    sent = bound.kwargs["tools"]  # type: ignore[attr-defined]
    assert [t["function"]["name"] for t in sent] == [t.name for t in tools]
    for spec in sent:
        assert spec["function"]["strict"] is True
        assert_strict_valid(spec["function"]["parameters"])


@pytest.mark.parametrize("layout", LAYOUTS)
def test_llamaindex_openai_strict_sends_strict_valid_schemas(layout: str) -> None:
    from llama_index.llms.openai import OpenAI

    spec = OrmAIToolSpec(toolset=_toolset(), session_factory=sessionmaker(), layout=layout)  # type: ignore[arg-type]
    tools = spec.get_tools(ACME)
    request = OpenAI(api_key="sk-offline", model="gpt-4o", strict=True)._prepare_chat_with_tools(tools)
    assert len(request["tools"]) == len(tools)
    for sent in request["tools"]:
        assert sent["function"]["strict"] is True
        assert_strict_valid(sent["function"]["parameters"])


@pytest.mark.parametrize("layout", LAYOUTS)
def test_what_strict_mode_forces_a_model_to_send_works(db_path: Path, layout: str) -> None:
    """Every tool, called with the arguments its strict schema forces (nulls wherever allowed),
    succeeds: nothing is refused for a null that means "not given"."""
    ids = _ids(db_path)
    for tool in _tools(db_path, layout):
        schema = convert_to_openai_tool(tool, strict=True)["function"]["parameters"]
        args = forced_arguments(tool, schema, ids)
        jsonschema.validate(args, schema)  # a strict model could send exactly this
        message = _invoke(tool, args)
        if tool.name == "create_tenant":  # the policy sets the new tenant's id to acme's, which exists
            assert json.loads(message.content)["error"] == "constraint_violation"
            continue
        assert message.status == "success", (tool.name, args, message.content)


def test_strict_first_page_partial_update_and_clear(db_path: Path) -> None:
    tools = {t.name: t for t in _tools(db_path, "generic")}
    nulls = {"filters": None, "select": None, "order_by": None, "limit": None, "cursor": None, "include": None}
    page = _invoke(tools["query"], {"model": "Order", **nulls})
    rows = page_records(page.content)
    assert page.status == "success" and rows and {r["tenant_id"] for r in rows} == {"acme"}

    order_id = _ids(db_path)["Order"]
    _, total, quantity = _order(db_path, order_id)
    data = {"status": "partly-changed", "total": None, "quantity": None}
    changed = _invoke(tools["update_order"], {"id": order_id, "data": data, "clear": None})
    assert changed.status == "success", changed.content
    assert _order(db_path, order_id) == ("partly-changed", total, quantity)  # only the given field
    cleared = _invoke(
        tools["update_order"],
        {"id": order_id, "data": {"status": None, "total": None, "quantity": None}, "clear": ["quantity"]},
    )
    assert cleared.status == "success", cleared.content
    assert _order(db_path, order_id) == ("partly-changed", total, None)
    both = _invoke(
        tools["update_order"],
        {"id": order_id, "data": {"status": "x", "total": None, "quantity": None}, "clear": ["status"]},
    )
    assert both.status == "error" and json.loads(both.content)["error"] == "validation_error"


# --- Gemini ----------------------------------------------------------------------------------------


def _gemini_schemas(tools: list[Any]) -> dict[str, dict[str, Any]]:
    (converted,) = convert_to_genai_function_declarations(tools)
    return {
        fd.name: fd.parameters.json_schema.model_dump(mode="json", exclude_none=True)  # type: ignore[union-attr]
        for fd in converted.function_declarations or []
    }


def _find_filter(schema: dict[str, Any]) -> dict[str, Any]:
    item: dict[str, Any] = schema["properties"]["filters"]["items"]
    return item


# One filter per operator, in the shapes Gemini's converted schema allows (its `value` keeps
# every alternative: number, boolean, text, list), numbers sometimes as text.
GEMINI_FILTERS: dict[str, tuple[str, Any]] = {
    "eq": ("status", "pending"),
    "ne": ("status", "pending"),
    "lt": ("total", "250"),
    "lte": ("total", 250),
    "gt": ("quantity", 3),
    "gte": ("quantity", "3"),
    "in": ("status", ["pending", "shipped"]),
    "not_in": ("status", ["pending", "shipped"]),
    "is_null": ("quantity", True),
    "contains": ("status", "ipp"),
    "startswith": ("status", "pen"),
    "endswith": ("status", "ed"),
    "between": ("total", [100, "300.5"]),
}
NATIVE = {"lt": 250, "gte": 3, "between": [100, 300.5]}


@pytest.mark.parametrize("layout", LAYOUTS)
async def test_every_filter_operation_survives_gemini_conversion(db_path: Path, layout: str) -> None:
    assert set(GEMINI_FILTERS) == set(FILTER_OPS)
    tools = {t.name: t for t in _tools(db_path, layout)}
    schemas = _gemini_schemas(list(tools.values()))
    name = "query" if layout == "generic" else "query_order"
    query = schemas[name]
    if layout == "generic":
        assert query["properties"]["model"]["enum"] == ["Tenant", "Customer", "Order"]
    item = _find_filter(query)
    assert item["properties"]["op"]["enum"] == list(FILTER_OPS)
    assert {"status", "total", "quantity"} <= set(item["properties"]["field"]["enum"])
    assert "email" not in item["properties"]["field"]["enum"]  # masked: not filterable
    kinds = {alt["type"] for alt in item["properties"]["value"]["any_of"]}
    assert kinds == {"number", "boolean", "string", "array"}  # every shape of value survives
    toolset = _toolset()
    engine = create_engine(f"sqlite:///{db_path}")
    for op, (field, value) in GEMINI_FILTERS.items():
        args: dict[str, Any] = {"filters": [{"field": field, "op": op, "value": value}], "select": ["id"]}
        if layout == "generic":
            args["model"] = "Order"
        strict_args = {**dict.fromkeys(query["properties"]), **args}
        strict_args = {
            k: [] if v is None and query["properties"][k].get("type") == "array" else v for k, v in strict_args.items()
        }
        jsonschema.validate(strict_args, query)  # what the Gemini-converted schema allows
        message = _invoke(tools[name], strict_args)
        assert message.status == "success", (op, message.content)
        # The same filter written natively gives the same rows.
        native = NATIVE.get(op, value)
        with Session(engine) as s:
            expected = await toolset.query(
                RunContext(ACME, s), "Order", filters=[{"field": field, "op": op, "value": native}], select=["id"]
            )
        assert [r["id"] for r in page_records(message.content)] == [r["id"] for r in expected.rows], op
    engine.dispose()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_gemini_keeps_model_and_field_enums_and_every_tool_converts(layout: str) -> None:
    tools = _tools(None, layout)
    schemas = _gemini_schemas(tools)
    assert list(schemas) == [t.name for t in tools]
    bound = ChatGoogleGenerativeAI(api_key="offline", model="gemini-2.5-flash").bind_tools(tools)
    assert bound.kwargs["tools"]  # type: ignore[attr-defined]
    for tool in tools:
        ours = tool.spec.parameters["properties"]
        theirs = schemas[tool.name].get("properties", {})
        assert list(theirs) == list(ours)
        for arg in ("model", "select", "order_by", "group_by", "include", "field"):
            if arg in ours:
                mine = ours[arg].get("anyOf", [ours[arg]])[0]
                kept = theirs[arg].get("items", theirs[arg]) if mine.get("type") == "array" else theirs[arg]
                assert kept.get("enum") == mine.get("items", mine).get("enum"), (tool.name, arg)


# --- Anthropic -------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
def test_anthropic_conversion_is_exact(layout: str) -> None:
    tools = _tools(None, layout)
    for tool in tools:
        converted = convert_to_anthropic_tool(tool)
        assert converted["input_schema"] == tool.spec.parameters
        assert converted["description"] == tool.description
    sent = ChatAnthropic(api_key="sk-offline", model="claude-sonnet-4-5").bind_tools(tools).kwargs["tools"]  # type: ignore[attr-defined]
    assert [t["input_schema"] for t in sent] == [t.spec.parameters for t in tools]


# --- limits: description length and tool count ------------------------------------------------------


def _many_models(n: int, description: str = "", writes: bool = True) -> Toolset:
    class Base(DeclarativeBase):
        pass

    models = {}
    classes = []
    for i in range(n):
        name = f"Entity{i:03d}"
        classes += type(name, (Base,), {
            "__tablename__": f"entity_{i:03d}",
            "id": mapped_column(Integer, primary_key=True),
            "tenant_id": mapped_column(String(40)),
            "name": mapped_column(String(100)),
        }),  # fmt: skip
        models[name] = ModelPolicy(
            fields={"id": FieldAction.Allow, "tenant_id": FieldAction.Allow, "name": FieldAction.Allow},
            scoping={"tenant_id": "principal.tenant_id"},
            description=description,
            write_policy=WritePolicy(
                create=WriteAction.Allow, update=WriteAction.Allow, auto_set={"tenant_id": "principal.tenant_id"}
            )
            if writes
            else WritePolicy(),
        )
    return Toolset(classes, Policy(models=models))


def test_llamaindex_to_openai_tool_with_60_models() -> None:
    toolset = _many_models(60, description="Records of one kind. " * 100)
    for layout in LAYOUTS:
        with pytest.warns(UserWarning) if layout == "per_model" else _nothing():
            spec = OrmAIToolSpec(toolset=toolset, session_factory=sessionmaker(), layout=layout)  # type: ignore[arg-type]
        tools = spec.get_tools(ACME)
        shown = [t.metadata.to_openai_tool() for t in tools]  # raises on a description over 1,024 characters
        assert all(len(t["function"]["description"]) < MAX_DESCRIPTION for t in shown)
        if layout == "generic":
            query = next(t for t in shown if t["function"]["name"] == "query")
            assert len(query["function"]["parameters"]["properties"]["model"]["enum"]) == 60


@pytest.mark.parametrize("count", [1, 60, 200])
def test_descriptions_stay_short_at_any_model_count(count: int) -> None:
    toolset = _many_models(count, description="x" * 3000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # past 128 tools: tested below
        layouts = [build_tool_specs(toolset), build_tool_specs(toolset, layout="per_model")]
    for specs in layouts:
        assert max(len(s.description) for s in specs) < MAX_DESCRIPTION
        # Model names are in enums, not in the text of the tools shared by every model.
        assert not any("Entity000" in s.description for s in specs if s.model is None)


def test_too_many_tools_for_openai_says_so_and_points_to_the_generic_layout(caplog: pytest.LogCaptureFixture) -> None:
    toolset = _many_models(43)  # 1 describe + 3 read tools x 43 + 2 write tools x 43
    with pytest.warns(UserWarning, match=r"more than the 128 tools OpenAI accepts.*layout='generic'") as caught:
        OrmAIToolkit(toolset=toolset, session_factory=sessionmaker(), layout="per_model").get_tools(ACME)  # type: ignore[arg-type]
    assert "216 tools for 43 models" in str(caught[0].message)
    assert "layout='generic'" in caplog.text
    # Read-only, 43 models: 130 tools per model, 4 in the generic layout, which warns of nothing.
    read_only = _many_models(43, writes=False)
    with pytest.warns(UserWarning, match="130 tools"):
        build_tool_specs(read_only, layout="per_model")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(build_tool_specs(read_only)) == 4


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def test_every_operator_has_schema_text() -> None:
    assert all(op.text for op in FILTER_OPERATORS.values())


# --- malformed calls still reach the toolset -------------------------------------------------------


MALFORMED = [
    {"model": "Order", "limit": "lots"},  # a type pydantic would refuse before the tool ran
    {"model": "Order", "select": "id", "order_by": 7},
    {"model": "Order", "principal": {"tenant_id": "globex"}},  # an argument the tool does not take
    {"model": "Nope"},
    {},
]


async def test_malformed_calls_reach_the_toolset_and_are_audited(db_path: Path) -> None:
    """The precise args_schema is for the model's eyes: LangChain never validates (and refuses)
    a call against it first, so every call, malformed or not, is the toolset's to refuse, with
    an error the model can act on, and to audit. The same through LlamaIndex."""
    from langchain.agents import create_agent
    from langchain_core.messages import AIMessage

    from ormai_agents.audit import MemoryAuditStore
    from ormai_agents.testing import ScriptedChatModel, tool_call

    store = MemoryAuditStore()
    toolset = Toolset(shop.Base, write_policy(), audit_store=store, secret_key=b"s" * 32)
    factory = sessionmaker(create_engine(f"sqlite:///{db_path}"))
    query = {t.name: t for t in OrmAIToolkit(toolset=toolset, session_factory=factory).get_tools(ACME)}["query"]
    for args in MALFORMED:
        message = _invoke(query, args)
        error = json.loads(message.content)
        assert message.status == "error" and error["error"] in ("validation_error", "model_not_allowed"), args
        assert "globex" not in message.content and "Traceback" not in message.content
    assert [r.tool_name for r in store.records] == ["query"] * len(MALFORMED)
    assert all(r.outcome in ("error", "denied") and r.tenant_id == "acme" for r in store.records)

    # Inside an agent loop: the model hears the toolset's error and the loop goes on.
    model = ScriptedChatModel([AIMessage("", tool_calls=[tool_call("query", dict(MALFORMED[0]))]), "Sorry."])
    tools = OrmAIToolkit(toolset=toolset, session_factory=factory).get_tools(ACME)
    state = create_agent(model, tools=tools).invoke({"messages": [("user", "orders?")]})
    (message,) = [m for m in state["messages"] if isinstance(m, ToolMessage)]
    assert message.status == "error" and "limit" in json.loads(message.content)["message"]
    assert len(store.records) == len(MALFORMED) + 1

    spec = OrmAIToolSpec(toolset=toolset, session_factory=factory)
    (li_query,) = [t for t in spec.get_tools(ACME) if t.metadata.name == "query"]
    for args in MALFORMED:
        output = await li_query.acall(**args)
        assert output.is_error and json.loads(output.content)["error"] in ("validation_error", "model_not_allowed")
    assert len(store.records) == 2 * len(MALFORMED) + 1
