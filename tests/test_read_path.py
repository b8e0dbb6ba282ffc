"""The scoped read path on SQLite and PostgreSQL, with sync and async sessions."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Column, Integer, String, insert, select
from sqlalchemy.orm import DeclarativeBase

from ormai_agents import (
    AccessDeniedError,
    FieldAction,
    FieldNotAllowedError,
    InvalidCursorError,
    ModelNotAllowedError,
    ModelPolicy,
    Policy,
    Principal,
    RecordNotFoundError,
    RunContext,
    Toolset,
    ValidationError,
)
from ormai_agents.audit import MemoryAuditStore
from tests import shop
from tests.conftest import ACME, GLOBEX


@pytest.fixture(scope="module")
def toolset() -> Toolset:
    return Toolset(shop.Base, shop.shop_policy(), secret_key=b"k" * 32)




async def truth(db: Any, stmt: Any) -> list[Any]:
    result = db.execute(stmt)
    if hasattr(result, "__await__"):
        result = await result
    return list(result.scalars())


async def test_query_sees_only_own_tenant(toolset: Toolset, shop_db: Any) -> None:
    result = await toolset.query(RunContext(ACME, shop_db), model="Order", limit=50)
    expected = await truth(shop_db, select(shop.Order.id).where(shop.Order.tenant_id == "acme").order_by(shop.Order.id))
    assert [r["id"] for r in result.rows] == expected[:50]
    assert expected, "seed must give acme some orders"
    assert {r["tenant_id"] for r in result.rows} == {"acme"}


async def test_pagination_walks_every_row_once(toolset: Toolset, shop_db: Any) -> None:
    ctx = RunContext(ACME, shop_db)
    seen: list[int] = []
    cursor = None
    for _ in range(100):
        page = await toolset.query(ctx, model="Order", order_by=["-created_at", "status"], limit=7, cursor=cursor)
        seen += [r["id"] for r in page.rows]
        cursor = page.next_cursor
        if cursor is None:
            break
    expected = await truth(shop_db, select(shop.Order.id).where(shop.Order.tenant_id == "acme"))
    assert sorted(seen) == sorted(expected)
    assert len(seen) == len(set(seen))


async def test_cursor_is_bound_to_principal_and_query(toolset: Toolset, shop_db: Any) -> None:
    page = await toolset.query(RunContext(ACME, shop_db), model="Order", limit=3)
    assert page.next_cursor
    with pytest.raises(InvalidCursorError):
        await toolset.query(RunContext(GLOBEX, shop_db), model="Order", limit=3, cursor=page.next_cursor)
    with pytest.raises(InvalidCursorError):
        await toolset.query(
            RunContext(ACME, shop_db),
            model="Order",
            limit=3,
            cursor=page.next_cursor,
            filters=[{"field": "status", "op": "eq", "value": "pending"}],
        )
    tampered = page.next_cursor[:-2] + ("A" if page.next_cursor[-2] != "A" else "B") + page.next_cursor[-1]
    with pytest.raises(InvalidCursorError):
        await toolset.query(RunContext(ACME, shop_db), model="Order", limit=3, cursor=tampered)
    other = Toolset(shop.Base, shop.shop_policy(), secret_key=b"z" * 32)
    with pytest.raises(InvalidCursorError):
        await other.query(RunContext(ACME, shop_db), model="Order", limit=3, cursor=page.next_cursor)


async def test_get_missing_and_out_of_scope_are_identical(toolset: Toolset, shop_db: Any) -> None:
    foreign = (await truth(shop_db, select(shop.Order.id).where(shop.Order.tenant_id == "globex")))[0]
    errors = []
    for oid in (foreign, 999_999):
        with pytest.raises(RecordNotFoundError) as info:
            await toolset.get(RunContext(ACME, shop_db), model="Order", id=oid)
        errors.append((type(info.value), str(info.value), info.value.code))
    assert errors[0] == errors[1]
    own = (await truth(shop_db, select(shop.Order.id).where(shop.Order.tenant_id == "acme")))[0]
    got = await toolset.get(RunContext(ACME, shop_db), model="Order", id=str(own))
    assert got.data["id"] == own and got.data["tenant_id"] == "acme"


async def test_field_actions(toolset: Toolset, shop_db: Any) -> None:
    rows = (await toolset.query(RunContext(ACME, shop_db), model="Customer")).rows
    assert rows
    for row in rows:
        assert "password_hash" not in row
        assert row["email"] == "****"
        assert row["phone"].startswith("****") and len(row["phone"]) == 6
        assert len(row["ssn"]) == 32 and "-" not in row["ssn"]
    # A keyed hash: another key gives other values, so it can't be reversed from a table of SHAs.
    other = Toolset(shop.Base, shop.shop_policy(), secret_key=b"q" * 32)
    rows2 = (await other.query(RunContext(ACME, shop_db), model="Customer")).rows
    assert {r["ssn"] for r in rows}.isdisjoint({r["ssn"] for r in rows2})


@pytest.mark.parametrize("field", ["email", "ssn", "password_hash", "nope"])
@pytest.mark.parametrize("use", ["filter", "order", "group", "aggregate"])
async def test_protected_fields_are_unusable(toolset: Toolset, shop_db: Any, field: str, use: str) -> None:
    ctx = RunContext(ACME, shop_db)
    with pytest.raises(FieldNotAllowedError) as info:
        if use == "filter":
            await toolset.query(ctx, model="Customer", filters=[{"field": field, "op": "startswith", "value": "$"}])
        elif use == "order":
            await toolset.query(ctx, model="Customer", order_by=[field])
        elif use == "group":
            await toolset.aggregate(ctx, model="Customer", group_by=[field])
        else:
            await toolset.aggregate(ctx, model="Customer", function="max", field=field)
    assert "password_hash" not in str(info.value)
    assert "password_hash" not in str(info.value.to_dict())


async def test_denied_field_never_selected(toolset: Toolset, shop_db: Any) -> None:
    with pytest.raises(FieldNotAllowedError) as info:
        await toolset.query(RunContext(ACME, shop_db), model="Customer", select=["id", "password_hash"])
    assert "password_hash" not in str(info.value)
    schema = (await toolset.describe_schema(RunContext(ACME, shop_db))).to_dict()
    assert "password_hash" not in repr(schema)
    assert "Document" not in schema["models"]
    assert "internal_note" not in repr(schema)


async def test_unknown_and_unlisted_models_are_the_same(toolset: Toolset, shop_db: Any) -> None:
    messages = set()
    for model in ("Document", "Nope", None, 3):
        with pytest.raises(ModelNotAllowedError) as info:
            await toolset.query(RunContext(ACME, shop_db), model=model)  # type: ignore[arg-type]
        messages.add(str(info.value))
    assert len(messages) == 1
    assert "Document" not in messages.pop()


@pytest.mark.parametrize(
    "principal",
    [
        Principal(tenant_id=None),
        Principal(tenant_id=""),
        Principal(tenant_id=0),  # does not fit the String column
        Principal(metadata={"tenant_id": "acme"}),
    ],
)
async def test_missing_or_empty_tenant_denies(toolset: Toolset, shop_db: Any, principal: Principal) -> None:
    ctx = RunContext(principal, shop_db)
    calls = (
        lambda: toolset.query(ctx, model="Order"),
        lambda: toolset.get(ctx, model="Order", id=1),
        lambda: toolset.aggregate(ctx, model="Order"),
    )
    for call in calls:
        with pytest.raises(AccessDeniedError):
            await call()


async def test_limits(toolset: Toolset, shop_db: Any) -> None:
    ctx = RunContext(ACME, shop_db)
    assert len((await toolset.query(ctx, model="Order", limit=10**9)).rows) <= 50
    for bad in (0, -1, "ten", 1.5, True, [3]):
        with pytest.raises(ValidationError):
            await toolset.query(ctx, model="Order", limit=bad)


async def test_like_wildcards_are_literal(toolset: Toolset, shop_db: Any) -> None:
    ctx = RunContext(ACME, shop_db)
    for needle, expected_status in (("%", "100%"), ("_", "a_b"), ("\\", "back\\slash")):
        rows = (await toolset.query(ctx, model="Order", filters=[{"field": "status", "op": "contains", "value": needle}])).rows
        assert rows, needle
        assert all(needle in r["status"] for r in rows), needle
        assert any(r["status"] in (expected_status, "x%_\\y") for r in rows)


async def test_aggregates_are_scoped(toolset: Toolset, shop_db: Any) -> None:
    ctx = RunContext(ACME, shop_db)
    count = (await toolset.aggregate(ctx, model="Order")).value
    expected = await truth(shop_db, select(shop.Order.id).where(shop.Order.tenant_id == "acme"))
    assert count == len(expected)
    total = (await toolset.aggregate(ctx, model="Order", function="sum", field="total")).value
    rows = (await toolset.query(ctx, model="Order", limit=50)).rows
    if len(expected) <= 50:
        assert Decimal(str(total)) == sum((r["total"] for r in rows), Decimal(0))
    groups = (await toolset.aggregate(ctx, model="Order", group_by=["status"])).groups
    assert groups is not None and sum(g["value"] for g in groups) == count


async def test_include_applies_related_policy(toolset: Toolset, shop_db: Any) -> None:
    ctx = RunContext(ACME, shop_db)
    rows = (await toolset.query(ctx, model="Order", include=["customer"], limit=50)).rows
    crossing = 0
    for row in rows:
        customer = row["customer"]
        if customer is not None:
            assert customer["tenant_id"] == "acme"
            assert "password_hash" not in customer and customer["email"] == "****"
        elif row["customer_id"] is not None:
            crossing += 1  # the customer belongs to another tenant: invisible
    customers = (await toolset.query(ctx, model="Customer", include=["orders"])).rows
    for c in customers:
        assert all(o["tenant_id"] == "acme" for o in c["orders"])
    assert crossing > 0, "seed should contain orders pointing at other tenants' customers"


async def test_audit_record_per_call(shop_db: Any) -> None:
    store = MemoryAuditStore()
    toolset = Toolset(shop.Base, shop.shop_policy(), store)
    ctx = RunContext(ACME, shop_db)
    await toolset.query(ctx, model="Order", filters=[{"field": "status", "op": "eq", "value": "pending"}])
    with pytest.raises(FieldNotAllowedError):
        await toolset.query(ctx, model="Customer", filters=[{"field": "ssn", "op": "eq", "value": "123-45-6789"}])
    with pytest.raises(RecordNotFoundError):
        await toolset.get(ctx, model="Order", id=999_999)
    records = store.records
    assert [r.outcome for r in records] == ["success", "denied", "error"]
    assert records[0].scopes_injected == ["tenant_id = 'acme'"]
    assert records[0].tenant_id == "acme" and records[0].row_count is not None
    assert "123-45-6789" not in repr([r.to_dict() for r in records])


async def test_grouped_aggregate_says_when_groups_were_cut(shop_db: Any) -> None:
    base = shop.shop_policy()
    models = dict(base.models)
    models["Order"] = models["Order"].model_copy(update={"max_rows": 3})
    toolset = Toolset(shop.Base, base.model_copy(update={"models": models}))
    ctx = RunContext(ACME, shop_db)
    cut = await toolset.aggregate(ctx, model="Order", group_by=["status"])
    assert cut.groups is not None and len(cut.groups) == 3 and cut.truncated
    assert cut.to_dict()["truncated"] is True
    whole = await toolset.aggregate(ctx, model="Order", group_by=["customer_id"],
                                    filters=[{"field": "customer_id", "op": "in", "value": [1, 2]}])  # fmt: skip
    assert whole.groups is not None and len(whole.groups) <= 2 and not whole.truncated
    assert "truncated" not in whole.to_dict()



class _Meters(DeclarativeBase):
    pass


class Reading(_Meters):
    # Fields named like the grouped statement's own labels (its derived table must not clash).
    __tablename__ = "readings"
    id = Column(Integer, primary_key=True)
    tenant_id = Column(String(40), nullable=False)
    ormai_g0 = Column(String(20))
    ormai_g1 = Column(Integer)
    ormai_value = Column(Integer)


READINGS = [
    {"id": i, "tenant_id": t, "ormai_g0": g, "ormai_g1": k, "ormai_value": n}
    for i, (t, g, k, n) in enumerate(
        [("acme", "b", 1, 1), ("acme", "a", 2, 2), ("acme", "b", 1, 3), ("acme", "a", 1, 4), ("globex", "a", 2, 100)], 1
    )
]


@pytest.mark.parametrize("empty_backend", ["sqlite", "postgres", "mysql"], indirect=True)
async def test_grouped_aggregates_over_fields_named_like_their_labels(empty_backend: Any) -> None:
    with empty_backend.sync_engine.begin() as conn:
        _Meters.metadata.create_all(conn)
        conn.execute(insert(Reading), READINGS)
    fields = dict.fromkeys(("id", "tenant_id", "ormai_g0", "ormai_g1", "ormai_value"), FieldAction.Allow)
    policy = Policy(models={"Reading": ModelPolicy(fields=fields, scoping={"tenant_id": "principal.tenant_id"})})
    toolset = Toolset(_Meters, policy)
    with empty_backend.session() as db:
        ctx = RunContext(ACME, db)
        one = await toolset.aggregate(ctx, model="Reading", function="sum", field="ormai_value", group_by=["ormai_g0"])
        two = await toolset.aggregate(ctx, model="Reading", function="max", field="ormai_value",
                                      group_by=["ormai_g1", "ormai_g0"])  # fmt: skip
        three = await toolset.aggregate(ctx, model="Reading", group_by=["ormai_value"])
    # acme's rows only, one group per value, ordered by the grouped fields.
    assert one.groups == [{"ormai_g0": "a", "value": 6}, {"ormai_g0": "b", "value": 4}] and not one.truncated
    assert two.groups == [
        {"ormai_g1": 1, "ormai_g0": "a", "value": 4},
        {"ormai_g1": 1, "ormai_g0": "b", "value": 3},
        {"ormai_g1": 2, "ormai_g0": "a", "value": 2},
    ]
    assert three.groups == [{"ormai_value": n, "value": 1} for n in (1, 2, 3, 4)]
