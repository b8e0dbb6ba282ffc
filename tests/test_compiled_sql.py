"""Every statement the toolset sends carries the scope, with the principal's values bound.

The statements are captured as the driver receives them (`before_cursor_execute`), on SQLite and
PostgreSQL (psycopg for sync sessions, asyncpg for async ones).
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from ormai_agents import FieldAction, ModelPolicy, Policy, Principal, RowPolicy, RunContext, Toolset
from tests import shop
from tests._truth import captured

# A tenant value that appears nowhere in the SQL text unless it was inlined.
TENANT = "acme"
PRINCIPAL = Principal(tenant_id=TENANT, user_id="u1", metadata={"orgs": ["org-1", "org-2"]})
_PARAM = r"(?:\?|%\(\w+\)s|%s|\$\d+)(?:::VARCHAR(?:\(\d+\))?)?"


@pytest.fixture(scope="module")
def toolset() -> Toolset:
    return Toolset(shop.Base, shop.shop_policy())


def assert_scoped(statement: str, params: list[Any], table: str, value: Any = TENANT, column: str = "tenant_id") -> None:
    assert re.search(rf"\b{table}\.{column} = {_PARAM}", statement), statement
    assert value in params, (statement, params)
    assert str(value) not in statement, f"{value!r} was inlined: {statement}"


async def test_query_and_cursor(toolset: Toolset, shop_db: Any, shop_backend: Any) -> None:
    ctx = RunContext(PRINCIPAL, shop_db)
    filters = [{"field": "status", "op": "ne", "value": "shipped"}]
    with captured(shop_backend) as statements:
        page = await toolset.query(ctx, model="Order", filters=filters, order_by=["-created_at"], limit=5)
        assert page.next_cursor
        last = page.rows[-1]["id"]
        await toolset.query(ctx, model="Order", filters=filters, order_by=["-created_at"], limit=5, cursor=page.next_cursor)
    assert len(statements) == 2
    for statement, params in statements:
        assert_scoped(statement, params, "orders")
        assert re.search(rf"orders\.status != {_PARAM}", statement)
        assert "shipped" in params and "shipped" not in statement
    # The second page's keyset values are parameters too.
    assert last in statements[1][1] and last not in statements[0][1]


async def test_get(toolset: Toolset, shop_db: Any, shop_backend: Any) -> None:
    with captured(shop_backend) as statements:
        await toolset.get(RunContext(PRINCIPAL, shop_db), model="Customer", id=2)
    [(statement, params)] = statements
    assert_scoped(statement, params, "customers")
    assert re.search(rf"customers\.id = {_PARAM}", statement) and 2 in params


async def test_aggregates(toolset: Toolset, shop_db: Any, shop_backend: Any) -> None:
    ctx = RunContext(PRINCIPAL, shop_db)
    with captured(shop_backend) as statements:
        await toolset.aggregate(ctx, model="Order")
        await toolset.aggregate(ctx, model="Order", function="sum", field="total", filters=[{"field": "quantity", "op": "gt", "value": 1}])
        await toolset.aggregate(ctx, model="Order", function="max", field="total", group_by=["status"])
        await toolset.aggregate(ctx, model="Tenant")
    assert len(statements) == 4
    for statement, params in statements[:3]:
        assert_scoped(statement, params, "orders")
    assert "GROUP BY" in statements[2][0]
    assert_scoped(*statements[3], "tenants", column="id")


@pytest.mark.parametrize(
    ("model", "include", "parent", "child"),
    [("Customer", "orders", "customers", "orders"), ("Order", "customer", "orders", "customers")],
    ids=["one-to-many", "many-to-one"],
)
async def test_includes(
    toolset: Toolset, shop_db: Any, shop_backend: Any, model: str, include: str, parent: str, child: str
) -> None:
    ctx = RunContext(PRINCIPAL, shop_db)
    with captured(shop_backend) as statements:
        result = await toolset.query(ctx, model=model, include=[include], limit=20)
        assert any(r[include] for r in result.rows)
        await toolset.get(ctx, model=model, id=result.rows[0]["id"], include=[include])
    assert len(statements) == 4
    for (statement, params), table in zip(statements, (parent, child, parent, child)):
        assert re.match(r"\s*SELECT\b", statement)
        assert_scoped(statement, params, table)


async def test_describe_schema_runs_no_statement(toolset: Toolset, shop_db: Any, shop_backend: Any) -> None:
    with captured(shop_backend) as statements:
        schema = await toolset.describe_schema(RunContext(PRINCIPAL, shop_db))
    assert schema.models and statements == []


async def test_row_policies_and_scoping_paths_are_bound(shop_db: Any, shop_backend: Any) -> None:
    fields = {f: FieldAction.Allow for f in ("id", "tenant_id", "owner_id", "status", "quantity")}
    policy = Policy(
        models={
            "Order": ModelPolicy(
                fields=fields,
                scoping={"tenant_id": "principal.tenant_id", "owner_id": "principal.user_id"},
                row_policies=[
                    RowPolicy("live", "status NOT IN ('cancelled-x') AND quantity >= 0"),
                    RowPolicy("shared", "owner_id = principal.metadata.partner", mode="permit"),
                    RowPolicy("root", "'root-x' IN principal.roles", bypass=True),
                ],
            ),
            "Customer": ModelPolicy(fields={"id": FieldAction.Allow}, scoping={"org_id": "principal.metadata.orgs"}),
        }
    )
    toolset = Toolset(shop.Base, policy)
    principal = Principal(tenant_id=TENANT, user_id="u1-x", metadata={"partner": "partner-x", "orgs": ["org-1", "org-2"]})
    with captured(shop_backend) as statements:
        await toolset.query(RunContext(principal, shop_db), model="Order")
        await toolset.query(RunContext(principal, shop_db), model="Customer")
        await toolset.query(RunContext(Principal(roles=("root-x",)), shop_db), model="Order")
    (order_sql, order_params), (customer_sql, customer_params), (bypass_sql, bypass_params) = statements
    assert_scoped(order_sql, order_params, "orders")
    assert_scoped(order_sql, order_params, "orders", "u1-x", "owner_id")
    assert_scoped(order_sql, order_params, "orders", "partner-x", "owner_id")
    for value in ("cancelled-x", 0):
        assert value in order_params
    assert "cancelled-x" not in order_sql and " OR " in order_sql
    assert re.search(r"customers\.org_id IN \(", customer_sql)
    assert {"org-1", "org-2"} <= set(customer_params) and "org-1" not in customer_sql
    # Bypass lifts the scoping, not the restrict policy.
    assert "orders.tenant_id =" not in bypass_sql and "cancelled-x" in bypass_params
    assert "root-x" not in bypass_sql and "root-x" not in bypass_params
