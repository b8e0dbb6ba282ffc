"""The framework-neutral tool specs both adapters build on."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from ormai_agents import FieldAction, ModelPolicy, Policy, Principal, RunContext, Toolset, ValidationError, WriteAction, WritePolicy
from ormai_agents._toolspecs import build_tool_specs, render, tool_name
from tests import shop

ACME = Principal(tenant_id="acme")


def _policy_with_writes() -> Policy:
    base = shop.shop_policy()
    models = dict(base.models)
    order = models["Order"]
    models["Order"] = order.model_copy(
        update={
            "write_policy": WritePolicy(
                create=WriteAction.Allow,
                update=WriteAction.RequireApproval,
                auto_set={"tenant_id": "principal.tenant_id"},
                immutable_fields=["customer_id"],
                required_fields=["status"],
            )
        }
    )
    return Policy(models=models)


@pytest.mark.parametrize("layout", ["generic", "per_model"])
def test_names_and_denied_names(layout: str) -> None:
    toolset = Toolset(shop.Base, _policy_with_writes())
    specs = build_tool_specs(toolset, layout=layout)  # type: ignore[arg-type]
    text = json.dumps([[s.name, s.description, s.parameters] for s in specs])
    for name in ("password_hash", "internal_note", "secret_plan", "Document", "is_public"):
        assert name not in text
    assert all(re.match(r"^[a-zA-Z0-9_-]{1,64}$", s.name) for s in specs)
    assert len({s.name for s in specs}) == len(specs)
    names = {s.name for s in specs}
    assert {"create_order", "update_order"} <= names
    assert "delete_order" not in names and "create_customer" not in names


def test_write_schema_lists_exactly_the_writable_fields() -> None:
    toolset = Toolset(shop.Base, _policy_with_writes())
    specs = {s.name: s for s in build_tool_specs(toolset)}
    create = specs["create_order"].parameters["properties"]["data"]
    # tenant_id is auto-set by the server; id is generated; denied internal_note absent.
    assert set(create["properties"]) == {"customer_id", "owner_id", "status", "total", "quantity", "created_at"}
    assert "status" in create["required"] and "total" in create["required"]
    assert create["properties"]["total"]["type"] == "number"
    # Optional fields admit null ("not given"); required ones don't.
    assert create["properties"]["created_at"] == {"anyOf": [{"type": "string", "format": "date-time"}, {"type": "null"}]}
    update = specs["update_order"]
    assert update.requires_approval and "approve" in update.description
    assert set(update.parameters["properties"]["data"]["properties"]) == {"owner_id", "status", "total", "quantity", "created_at"}


def test_tool_name_rule() -> None:
    long = tool_name("x" * 30, "bulk_update", "VeryLongModelNameThatGoesOnAndOnForeverAndEver")
    assert re.match(r"^[a-zA-Z0-9_-]{1,64}$", long)
    assert tool_name("", "query", "OrderItem") == "query_order_item"


async def test_spec_runs_and_validates(shop_db: Any) -> None:
    toolset = Toolset(shop.Base, shop.shop_policy())
    specs = {s.name: s for s in build_tool_specs(toolset)}
    ctx = RunContext(ACME, shop_db)
    result = await specs["query"].run(toolset, ctx, {"model": "Order", "limit": 2, "select": ["id", "tenant_id"]})
    assert [set(r) for r in result.rows] == [{"id", "tenant_id"}] * 2
    assert all(r["tenant_id"] == "acme" for r in result.rows)
    with pytest.raises(ValidationError):
        await specs["query"].run(toolset, ctx, {"model": "Order", "principal": {"tenant_id": "globex"}})
    with pytest.raises(ValidationError):
        await specs["query"].run(toolset, ctx, {})
    per_model = {s.name: s for s in build_tool_specs(toolset, layout="per_model")}
    got = await per_model["aggregate_order"].run(toolset, ctx, {"function": "count"})
    assert got.value == (await toolset.aggregate(ctx, model="Order")).value
    with pytest.raises(ValidationError):
        await per_model["aggregate_order"].run(toolset, ctx, {"model": "Customer"})
    schema = await specs["describe_schema"].run(toolset, ctx, None)
    assert set(json.loads(render(schema))["models"]) == {"Tenant", "Customer", "Order"}


def test_render_is_plain_json() -> None:
    import datetime as dt
    from decimal import Decimal

    text = render({"a": Decimal("12.50"), "b": dt.datetime(2026, 1, 2, 3, 4), "c": Decimal("0.1000000000000000055511151231257827")})
    assert json.loads(text) == {"a": 12.5, "b": "2026-01-02T03:04:00", "c": "0.1000000000000000055511151231257827"}


def test_model_with_only_denied_fields_still_hides_names() -> None:
    policy = Policy(models={"Tenant": ModelPolicy(fields={"secret_plan": FieldAction.Deny}, default_field_action=FieldAction.Deny)})
    specs = build_tool_specs(Toolset(shop.Base, policy))
    assert "secret_plan" not in json.dumps([s.parameters for s in specs])
