"""The hostile agent: every known way to read past the policy, against the hostile seed data.

Runs on SQLite and PostgreSQL, with sync and async sessions (`shop_db`). Outcomes are compared
with the database truth, read by unscoped statements on the same session.
"""

from __future__ import annotations

import base64
import json
import re
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import func, select

from ormai_agents import (
    AccessDeniedError,
    FieldAction,
    FieldNotAllowedError,
    InvalidCursorError,
    ModelNotAllowedError,
    ModelPolicy,
    OrmAIError,
    Policy,
    Principal,
    RecordNotFoundError,
    RunContext,
    Toolset,
    ValidationError,
)
from ormai_agents.audit import MemoryAuditStore
from tests import shop
from tests._collation import for_backend
from tests.conftest import ACME, ACME_OTHER_USER, GLOBEX
from tests._truth import rows as db_rows
from tests._truth import scalars, walk

Order, Customer, Tenant, Document = shop.Order, shop.Customer, shop.Tenant, shop.Document

# Names the policy denies (password_hash, internal_note and secret_plan explicitly or by omission,
# org_id by omission): they must appear in no error.
DENIED_NAMES = ("password_hash", "internal_note", "secret_plan", "org_id")
MASKED = ("email", "phone", "ssn")  # readable only transformed
HIDDEN = (*MASKED, "password_hash", "org_id")
_LEAK_PATTERNS = [
    re.compile(r"\b(SELECT|FROM|WHERE|INSERT|UPDATE|DELETE|UNION|JOIN|ESCAPE|LIKE)\b"),
    re.compile(r"Traceback|File \"|line \d+"),
    re.compile(r"psycopg|asyncpg|sqlite3|sqlalchemy|OverflowError|DataError", re.I),
    re.compile(r"globex|initech|plan-|@none\.example|\$2b\$", re.I),  # other tenants' / hidden values
    re.compile("|".join(DENIED_NAMES)),
]


@pytest.fixture(scope="module")
def toolset() -> Toolset:
    return Toolset(shop.Base, shop.shop_policy(), secret_key=b"attack-suite-key" * 2)


def assert_clean(error: OrmAIError) -> None:
    """The error says nothing an acme agent may not know."""
    texts = [str(error), repr(error.to_dict())]
    for text in texts:
        for pattern in _LEAK_PATTERNS:
            assert not pattern.search(text), f"error leaks {pattern.pattern!r}: {text}"


async def expect(exc: type[OrmAIError], call: Any) -> OrmAIError:
    with pytest.raises(exc) as info:
        await call
    assert_clean(info.value)
    return info.value


# --- oracles: filters on hidden fields ------------------------------------------------------

ORACLE_OPS: list[tuple[str, Any]] = [
    ("startswith", "$2b$"),
    ("contains", "secret"),
    ("endswith", "1"),
    ("eq", "user1@acme.example"),
    ("ne", "x"),
    ("lt", "m"),
    ("gte", "a"),
    ("between", ["a", "z"]),
    ("in", ["001-00-0001", "002-00-0002"]),
    ("not_in", ["x"]),
    ("is_null", False),
]


@pytest.mark.parametrize("field", HIDDEN)
@pytest.mark.parametrize(("op", "value"), ORACLE_OPS)
async def test_filter_on_hidden_customer_field_is_refused(
    toolset: Toolset, shop_db: Any, field: str, op: str, value: Any
) -> None:
    ctx = RunContext(ACME, shop_db)
    oracle = {"field": field, "op": op, "value": value}
    harmless = {"field": "name", "op": "ne", "value": "nobody"}
    # Alone, first, last, buried in a list, as a single dict, and inside an aggregate.
    for filters in ([oracle], [harmless, oracle], [harmless, harmless, oracle, harmless], oracle):
        await expect(FieldNotAllowedError, toolset.query(ctx, model="Customer", filters=filters))
        await expect(FieldNotAllowedError, toolset.aggregate(ctx, model="Customer", filters=filters))


@pytest.mark.parametrize("field", ["internal_note", "nope", "customer.ssn", "customer", "__class__", "id;--"])
async def test_filter_on_denied_or_unknown_order_field_is_refused(toolset: Toolset, shop_db: Any, field: str) -> None:
    ctx = RunContext(ACME, shop_db)
    errors = []
    for op, value in ORACLE_OPS:
        err = await expect(
            FieldNotAllowedError, toolset.query(ctx, model="Order", filters=[{"field": field, "op": op, "value": value}])
        )
        errors.append(str(err))
    # A denied field and a field that does not exist are refused with the same words.
    unknown = await expect(
        FieldNotAllowedError, toolset.query(ctx, model="Order", filters=[{"field": "zzz", "op": "eq", "value": 1}])
    )
    assert set(errors) == {str(unknown)}


async def test_filters_nested_in_values_are_not_evaluated(toolset: Toolset, shop_db: Any) -> None:
    ctx = RunContext(ACME, shop_db)
    nested = {"field": "ssn", "op": "startswith", "value": "0"}
    for filters in (
        [{"field": "name", "op": "in", "value": [nested]}],
        [{"field": "name", "op": "eq", "value": nested}],
        [{"field": "name", "op": "between", "value": [nested, nested]}],
        [{"and": [nested]}],
        [{"or": [{"field": "name", "op": "eq", "value": "Ann"}, nested]}],
        [[nested]],
        {"filters": [nested]},
    ):
        await expect(ValidationError, toolset.query(ctx, model="Customer", filters=filters))


# --- sorting, grouping and aggregating hidden fields ---------------------------------------


@pytest.mark.parametrize("field", HIDDEN)
async def test_sort_and_group_on_hidden_fields_are_refused(toolset: Toolset, shop_db: Any, field: str) -> None:
    ctx = RunContext(ACME, shop_db)
    for order_by in ([field], [f"-{field}"], [f"+{field}"], ["name", field], f"-{field}"):
        await expect(FieldNotAllowedError, toolset.query(ctx, model="Customer", order_by=order_by))
    for group_by in ([field], ["name", field], field):
        await expect(FieldNotAllowedError, toolset.aggregate(ctx, model="Customer", group_by=group_by))


@pytest.mark.parametrize("function", ["min", "max", "sum", "avg", "count"])
@pytest.mark.parametrize("field", HIDDEN)
async def test_aggregates_over_hidden_fields_are_refused(
    toolset: Toolset, shop_db: Any, function: str, field: str
) -> None:
    await expect(
        FieldNotAllowedError,
        toolset.aggregate(RunContext(ACME, shop_db), model="Customer", function=function, field=field),
    )


async def test_order_denied_fields_are_unusable_everywhere(toolset: Toolset, shop_db: Any) -> None:
    ctx = RunContext(ACME, shop_db)
    await expect(FieldNotAllowedError, toolset.query(ctx, model="Order", order_by=["internal_note"]))
    await expect(FieldNotAllowedError, toolset.query(ctx, model="Order", select=["internal_note"]))
    await expect(FieldNotAllowedError, toolset.get(ctx, model="Order", id=1, select=["id", "internal_note"]))
    await expect(FieldNotAllowedError, toolset.aggregate(ctx, model="Order", function="max", field="internal_note"))
    await expect(FieldNotAllowedError, toolset.aggregate(ctx, model="Order", group_by=["internal_note"]))
    await expect(FieldNotAllowedError, toolset.query(ctx, model="Tenant", select=["secret_plan"]))
    rows = (await toolset.query(ctx, model="Order", limit=50)).rows
    assert rows and all("internal_note" not in r for r in rows)
    assert "do not leak" not in repr(rows)


async def test_masked_values_never_come_back_in_clear(toolset: Toolset, shop_db: Any) -> None:
    ctx = RunContext(ACME, shop_db)
    truth = await db_rows(shop_db, select(Customer.email, Customer.phone, Customer.ssn, Customer.password_hash))
    secrets = {v for row in truth for v in row if v}
    returned = await walk(toolset, ctx, "Customer")
    returned += [o["customer"] for o in await walk(toolset, ctx, "Order", include=["customer"]) if o["customer"]]
    assert returned
    for row in returned:
        assert secrets.isdisjoint(str(v) for v in row.values())
        assert "password_hash" not in row and "org_id" not in row


# --- cursors ---------------------------------------------------------------------------------


async def _first_cursor(toolset: Toolset, ctx: RunContext, **kwargs: Any) -> str:
    page = await toolset.query(ctx, model=kwargs.pop("model", "Order"), limit=3, **kwargs)
    assert page.next_cursor, "the seed must give more than one page"
    return page.next_cursor


async def test_cursor_replay_is_refused(toolset: Toolset, shop_db: Any) -> None:
    acme = RunContext(ACME, shop_db)
    pending = [{"field": "status", "op": "ne", "value": "pending"}]
    cursor = await _first_cursor(toolset, acme, filters=pending, order_by=["-total"])
    # The cursor works for exactly the query it came from.
    page = await toolset.query(acme, model="Order", limit=3, filters=pending, order_by=["-total"], cursor=cursor)
    assert page.rows
    replays = [
        (RunContext(GLOBEX, shop_db), {"filters": pending, "order_by": ["-total"]}),
        (RunContext(ACME_OTHER_USER, shop_db), {"filters": pending, "order_by": ["-total"]}),
        (RunContext(Principal(tenant_id="acme", user_id="u1", roles=("admin",)), shop_db),
         {"filters": pending, "order_by": ["-total"]}),
        (acme, {"order_by": ["-total"]}),
        (acme, {"filters": [{"field": "status", "op": "ne", "value": "shipped"}], "order_by": ["-total"]}),
        (acme, {"filters": pending, "order_by": ["total"]}),
        (acme, {"filters": pending, "order_by": ["-total", "id"]}),
        (acme, {"filters": pending}),
    ]  # fmt: skip
    for ctx, kwargs in replays:
        await expect(InvalidCursorError, toolset.query(ctx, model="Order", limit=3, cursor=cursor, **kwargs))
    # Another model with the same arguments.
    await expect(
        InvalidCursorError,
        toolset.query(acme, model="Customer", limit=3, cursor=await _first_cursor(toolset, acme)),
    )


async def test_tampered_truncated_and_garbage_cursors_are_refused(toolset: Toolset, shop_db: Any) -> None:
    ctx = RunContext(ACME, shop_db)
    cursor = await _first_cursor(toolset, ctx)
    raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    bad: list[Any] = []
    for i in range(0, len(raw), max(1, len(raw) // 12)):  # flip one bit at a dozen positions
        flipped = bytearray(raw)
        flipped[i] ^= 0x01
        bad.append(base64.urlsafe_b64encode(bytes(flipped)).decode().rstrip("="))
    bad += [cursor[:-1], cursor[:-8], cursor[: len(cursor) // 2], cursor[:4], cursor + "A", cursor + "AAAA"]
    bad += ["", " ", "null", "garbage!", "====", "%00", "' OR 1=1 --", "eyJ2IjpbMV19", "A" * 8192, "A" * 8193]
    bad += ["A" * 1_000_000, "\u0000" * 64, "ü" * 40, 123, 1.5, True, ["x"], {"v": [1]}]
    for value in bad:
        await expect(InvalidCursorError, toolset.query(ctx, model="Order", limit=3, cursor=value))


async def test_cursor_carries_only_the_last_rows_sort_keys(toolset: Toolset, shop_db: Any) -> None:
    # Signed, not encrypted: it holds the sort keys of the last row the agent was given (readable
    # fields), and nothing of the principal, the filters or another row.
    ctx = RunContext(ACME, shop_db)
    page = await toolset.query(ctx, model="Order", limit=3, order_by=["status", "created_at"],
                               filters=[{"field": "total", "op": "gte", "value": "1"}])  # fmt: skip
    assert page.next_cursor
    raw = base64.urlsafe_b64decode(page.next_cursor + "=" * (-len(page.next_cursor) % 4))
    last = page.rows[-1]
    created = last["created_at"].isoformat(sep=" ") if last["created_at"] else None
    assert json.loads(raw[:-16])["v"] == [last["status"], created, last["id"]]
    for absent in (b"acme", b"total", b"u1"):
        assert absent not in raw


# --- NULL and empty tenants ------------------------------------------------------------------


@pytest.mark.parametrize("tenant", shop.TENANTS)
async def test_null_and_empty_tenant_rows_are_never_visible(toolset: Toolset, shop_db: Any, tenant: str) -> None:
    ctx = RunContext(Principal(tenant_id=tenant), shop_db)
    for model, cls in (("Order", Order), ("Customer", Customer)):
        seen = await walk(toolset, ctx, model, limit=17)
        expected = await scalars(shop_db, select(cls.id).where(cls.tenant_id == tenant))
        assert sorted(r["id"] for r in seen) == sorted(expected)
        assert {r["tenant_id"] for r in seen} == {tenant}
        for filters in (
            [{"field": "tenant_id", "op": "is_null", "value": True}],
            [{"field": "tenant_id", "op": "eq", "value": ""}],
            [{"field": "tenant_id", "op": "in", "value": ["", tenant]}, {"field": "tenant_id", "op": "ne", "value": tenant}],
            [{"field": "tenant_id", "op": "lt", "value": tenant}],
        ):
            assert (await toolset.query(ctx, model=model, filters=filters)).rows == []
            assert (await toolset.aggregate(ctx, model=model, filters=filters)).value == 0
    ghosts = await scalars(shop_db, select(Order.id).where((Order.tenant_id.is_(None)) | (Order.tenant_id == "")))
    assert ghosts, "the seed must hold orders with a NULL or empty tenant"
    for oid in ghosts[:5]:
        await expect(RecordNotFoundError, toolset.get(ctx, model="Order", id=oid))
    groups = (await toolset.aggregate(ctx, model="Order", group_by=["tenant_id"])).groups
    assert groups is not None and [g["tenant_id"] for g in groups] == [tenant]


@pytest.mark.parametrize(
    "principal",
    [Principal(), Principal(tenant_id=None, user_id="u1", roles=("admin",)), Principal(tenant_id=""),
     Principal(tenant_id=" ".strip()), Principal(tenant_id=0),
     Principal(metadata={"tenant_id": "acme"})],  # fmt: skip
)
async def test_principal_without_tenant_sees_nothing(toolset: Toolset, shop_db: Any, principal: Principal) -> None:
    ctx = RunContext(principal, shop_db)
    for call in (
        toolset.query(ctx, model="Order"),
        toolset.query(ctx, model="Customer", include=["orders"]),
        toolset.get(ctx, model="Order", id=1),
        toolset.aggregate(ctx, model="Order"),
        toolset.aggregate(ctx, model="Order", group_by=["tenant_id"]),
    ):
        await expect(AccessDeniedError, call)


# --- foreign keys that cross tenants --------------------------------------------------------


@pytest.mark.parametrize("tenant", shop.TENANTS)
async def test_include_never_crosses_tenants(toolset: Toolset, shop_db: Any, tenant: str) -> None:
    ctx = RunContext(Principal(tenant_id=tenant), shop_db)
    customer_tenant = dict(await db_rows(shop_db, select(Customer.id, Customer.tenant_id)))
    # Many-to-one: an order pointing at another tenant's customer shows no customer.
    orders = await walk(toolset, ctx, "Order", include=["customer"])
    crossing = 0
    for row in orders:
        cid = row["customer_id"]
        if cid is None:
            assert row["customer"] is None
        elif customer_tenant[cid] == tenant:
            assert row["customer"] is not None and row["customer"]["id"] == cid
            assert row["customer"]["tenant_id"] == tenant
        else:
            crossing += 1
            assert row["customer"] is None
    assert crossing, "the seed must hold orders pointing at other tenants' customers"
    # One-to-many: a customer's orders are exactly the orders of the principal's tenant.
    customers = await walk(toolset, ctx, "Customer", include=["orders"])
    assert customers
    truth = await db_rows(shop_db, select(Order.customer_id, Order.id, Order.tenant_id))
    foreign_orders_of_own_customers = 0
    for c in customers:
        got = sorted(o["id"] for o in c["orders"])
        assert got == sorted(oid for cid, oid, t in truth if cid == c["id"] and t == tenant)
        foreign_orders_of_own_customers += sum(1 for cid, _, t in truth if cid == c["id"] and t != tenant)
        assert all(o["tenant_id"] == tenant and "internal_note" not in o for o in c["orders"])
    assert foreign_orders_of_own_customers, "the seed must hold other tenants' orders of these customers"
    # get with include: same rules.
    crossing_rows = [r for r in orders if r["customer"] is None and r["customer_id"] is not None]
    got = await toolset.get(ctx, model="Order", id=crossing_rows[0]["id"], include=["customer"])
    assert got.data["customer"] is None
    orphans = [r for r in orders if r["customer_id"] is None]
    assert orphans, "the seed must hold orders without a customer"
    got = await toolset.get(ctx, model="Order", id=orphans[0]["id"], include=["customer"])
    assert got.data["customer"] is None and got.data["customer_id"] is None
    lonely = [c for c in customers if not c["orders"]]
    if lonely:
        got = await toolset.get(ctx, model="Customer", id=lonely[0]["id"], include=["orders"])
        assert got.data["orders"] == []


async def test_relationships_to_denied_models_do_not_exist(shop_db: Any) -> None:
    # Customer is not in this policy: Order.customer does not exist for the agent.
    models = {k: v for k, v in shop.shop_policy().models.items() if k != "Customer"}
    toolset = Toolset(shop.Base, Policy(models=models))
    ctx = RunContext(ACME, shop_db)
    err = await expect(FieldNotAllowedError, toolset.query(ctx, model="Order", include=["customer"]))
    assert "customer" not in str(err).split("Relationships you can include:")[1]
    schema = (await toolset.describe_schema(ctx)).to_dict()
    assert "Customer" not in repr(schema)
    await expect(ModelNotAllowedError, toolset.query(ctx, model="Customer"))


# --- LIKE wildcards and unicode -------------------------------------------------------------

LIKE_NEEDLES = ["%", "_", "\\", "/", "%_", "x%_\\y", "100%", "a_b", "\\s", "ünï", "ø", "é", "'", "O'B", "%off", "_s"]


@pytest.mark.parametrize("needle", LIKE_NEEDLES)
async def test_like_operators_treat_wildcards_literally(toolset: Toolset, shop_db: Any, shop_backend: Any, needle: str) -> None:
    # Wildcards match only themselves; letters fold as the backend's LIKE folds them (MariaDB:
    # case and accents; SQLite: ASCII case), see tests/_collation.py.
    fold = for_backend(shop_backend).like
    ctx = RunContext(ACME, shop_db)
    for model, cls, field in (("Order", Order, "status"), ("Customer", Customer, "name")):
        values = await db_rows(shop_db, select(cls.id, getattr(cls, field)).where(cls.tenant_id == "acme"))
        for op, test in (("contains", str.__contains__), ("startswith", str.startswith), ("endswith", str.endswith)):
            got = await walk(toolset, ctx, model, filters=[{"field": field, "op": op, "value": needle}])
            expected = sorted(i for i, v in values if v is not None and test(fold(v), fold(needle)))
            assert sorted(r["id"] for r in got) == expected, (model, op, needle)


async def test_agent_filters_fold_as_documented_per_backend_but_never_the_scope(
    toolset: Toolset, shop_db: Any, shop_backend: Any
) -> None:
    ctx = RunContext(ACME, shop_db)
    mine = await scalars(shop_db, select(Order.id).where(Order.tenant_id == "acme").order_by(Order.id))
    folds_case = shop_backend.is_mysql
    # `=` on the scoped column itself: the filter folds on MariaDB, but never widens the scope.
    for value in ("ACME", "Acme", "acmé", "acme ", "ACMÉ "):
        got = await walk(toolset, ctx, "Order", filters=[{"field": "tenant_id", "op": "eq", "value": value}])
        assert [r["id"] for r in got] == (mine if folds_case else []), value
        assert {r["tenant_id"] for r in got} <= {"acme"}
    # LIKE: case on SQLite (ASCII) and MariaDB; accents on MariaDB only; never on PostgreSQL.
    pending = await scalars(
        shop_db, select(Order.id).where(Order.tenant_id == "acme", Order.status == "pending").order_by(Order.id)
    )
    assert pending
    for needle, folds in (("PEND", not shop_backend.is_postgres), ("pénd", shop_backend.is_mysql)):
        got = await walk(toolset, ctx, "Order", filters=[{"field": "status", "op": "startswith", "value": needle}])
        assert [r["id"] for r in got] == (pending if folds else []), needle


async def test_wildcard_needles_do_match_something(toolset: Toolset, shop_db: Any) -> None:
    # Guards the test above against passing on empty results only.
    ctx = RunContext(ACME, shop_db)
    for needle in ("%", "_", "\\", "ünï"):
        rows = await walk(toolset, ctx, "Order", filters=[{"field": "status", "op": "contains", "value": needle}])
        everything = await scalars(shop_db, select(func.count()).select_from(Order).where(Order.tenant_id == "acme"))
        assert 0 < len(rows) < everything[0], needle


async def test_unicode_and_quotes_in_eq_and_in(toolset: Toolset, shop_db: Any) -> None:
    ctx = RunContext(ACME, shop_db)
    for value in ("ünïcødé", "O'Brien", "back\\slash", "50%off", "x%_\\y", "Zoë"):
        for model, cls, field in (("Order", Order, "status"), ("Customer", Customer, "name")):
            expected = await scalars(
                shop_db, select(cls.id).where(cls.tenant_id == "acme", getattr(cls, field) == value)
            )
            for filters in (
                [{"field": field, "op": "eq", "value": value}],
                [{"field": field, "op": "in", "value": [value, "nothing"]}],
            ):
                got = await walk(toolset, ctx, model, filters=filters)
                assert sorted(r["id"] for r in got) == sorted(expected)


# --- limits ----------------------------------------------------------------------------------


@pytest.mark.parametrize("limit", [1, 7, "7", " 7 ", 7.0, 50, 51, 10**6, 10**100, "99999", 1e300])
async def test_good_limits_are_clamped(toolset: Toolset, shop_db: Any, limit: Any) -> None:
    rows = (await toolset.query(RunContext(ACME, shop_db), model="Order", limit=limit)).rows
    expected = min(int(float(limit)) if not isinstance(limit, str) else int(limit), 50)
    assert len(rows) == expected


@pytest.mark.parametrize(
    "limit",
    [0, -1, -(10**12), "-5", "0", 0.5, 1.5, -0.0, float("inf"), float("-inf"), float("nan"), "ten", "1e3",
     "1_0", "\u0665", "", " ", "5;DROP TABLE orders", True, False, [5], {"n": 5}, Decimal(5), b"5",
     "9" * 5000],
)  # fmt: skip
async def test_bad_limits_are_refused(toolset: Toolset, shop_db: Any, limit: Any) -> None:
    err = await expect(ValidationError, toolset.query(RunContext(ACME, shop_db), model="Order", limit=limit))
    assert "between 1 and 50" in str(err)


# --- hostile values in filters ---------------------------------------------------------------


async def test_principal_looking_values_are_plain_strings(toolset: Toolset, shop_db: Any) -> None:
    ctx = RunContext(ACME, shop_db)
    for value in ("principal.tenant_id", "principal", "{principal.tenant_id}", ":tenant_id_1", "$1", "%(tenant_id_1)s"):
        for field in ("tenant_id", "status", "owner_id"):
            assert (await toolset.query(ctx, model="Order", filters=[{"field": field, "op": "eq", "value": value}])).rows == []
        rows = await walk(toolset, ctx, "Order", filters=[{"field": "tenant_id", "op": "ne", "value": value}])
        assert {r["tenant_id"] for r in rows} == {"acme"}


async def test_filters_can_only_narrow_the_scope(toolset: Toolset, shop_db: Any) -> None:
    ctx = RunContext(ACME, shop_db)
    acme_ids = sorted(await scalars(shop_db, select(Order.id).where(Order.tenant_id == "acme")))
    for filters in (
        [{"field": "tenant_id", "op": "eq", "value": "globex"}],
        [{"field": "tenant_id", "op": "in", "value": ["globex", "initech"]}],
        [{"field": "tenant_id", "op": "ne", "value": "acme"}],
        [{"field": "tenant_id", "op": "gt", "value": "acme"}],
    ):
        assert await walk(toolset, ctx, "Order", filters=filters) == []
    for filters in (
        [{"field": "tenant_id", "op": "in", "value": ["acme", "globex", "initech"]}],
        [{"field": "tenant_id", "op": "ne", "value": "globex"}],
        [{"field": "tenant_id", "op": "between", "value": ["a", "z"]}],
        [{"field": "tenant_id", "op": "is_null", "value": False}],
    ):
        assert sorted(r["id"] for r in await walk(toolset, ctx, "Order", filters=filters)) == acme_ids
    assert (await toolset.aggregate(ctx, model="Order", filters=[{"field": "tenant_id", "op": "ne", "value": "acme"}])).value == 0


async def test_sql_in_values_is_data(toolset: Toolset, shop_db: Any) -> None:
    ctx = RunContext(ACME, shop_db)
    for value in ("'; DROP TABLE orders; --", "acme' OR '1'='1", "acme\" OR 1=1 --", "x') UNION SELECT password_hash --"):
        for op in ("eq", "contains", "startswith"):
            assert (await toolset.query(ctx, model="Order", filters=[{"field": "status", "op": op, "value": value}])).rows == []
        await expect(RecordNotFoundError, toolset.get(ctx, model="Tenant", id=value))
    assert await scalars(shop_db, select(func.count()).select_from(Order)) == [240]


@pytest.mark.parametrize(
    "value", ["1 OR 1=1", "1; --", [1], {"id": 1, "tenant_id": "globex"}, {"tenant_id": "globex"}, None, 1.5, True, 10**30]
)
async def test_hostile_ids_are_refused(toolset: Toolset, shop_db: Any, value: Any) -> None:
    await expect(ValidationError, toolset.get(RunContext(ACME, shop_db), model="Order", id=value))


async def test_out_of_range_numbers_are_refused_before_the_database(toolset: Toolset, shop_db: Any) -> None:
    ctx = RunContext(ACME, shop_db)
    for value in (2**63, -(2**63) - 1, 10**30, "1" * 40):
        for op in ("eq", "lt", "gt"):
            await expect(ValidationError, toolset.query(ctx, model="Order", filters=[{"field": "id", "op": op, "value": value}]))
    await expect(ValidationError, toolset.query(ctx, model="Order", filters=[{"field": "quantity", "op": "eq", "value": True}]))


async def test_a_failed_statement_leaves_the_session_usable(toolset: Toolset, shop_db: Any, shop_backend: Any) -> None:
    # On PostgreSQL a value that fits 64 bits but not the INTEGER column fails in the database and
    # aborts the transaction; the toolset opened it, so it rolls it back and the next call works.
    ctx = RunContext(ACME, shop_db)
    attempt = toolset.query(ctx, model="Order", filters=[{"field": "quantity", "op": "lt", "value": 2**40}])
    if shop_backend.is_postgres:
        await expect(OrmAIError, attempt)
    else:
        assert len((await attempt).rows) == 50  # SQLite integers are 64-bit
    page = await toolset.query(ctx, model="Order", limit=5)
    assert [r["tenant_id"] for r in page.rows] == ["acme"] * 5


async def test_prompt_injection_in_rows_changes_nothing(shop_db: Any) -> None:
    policy = Policy(
        models={
            "Document": ModelPolicy(
                fields={"id": FieldAction.Allow, "tenant_id": FieldAction.Allow, "title": FieldAction.Allow},
                scoping={"tenant_id": "principal.tenant_id"},
            )
        }
    )
    toolset = Toolset(shop.Base, policy)
    ctx = RunContext(ACME, shop_db)
    before = await walk(toolset, ctx, "Document")
    injected = [d for d in before if d["title"].startswith("Ignore previous instructions")]
    assert injected, "the seed must hold an injection row acme can read"
    # The row comes back as data; the next call, even one echoing the row's text back, is scoped alike.
    for d in injected:
        filters = [{"field": "title", "op": "eq", "value": d["title"]}]
        again = await walk(toolset, ctx, "Document", filters=filters)
        assert {r["tenant_id"] for r in again} == {"acme"}
        assert sorted(r["id"] for r in again) == sorted(
            await scalars(shop_db, select(Document.id).where(Document.tenant_id == "acme", Document.title == d["title"]))
        )
    assert await walk(toolset, ctx, "Document") == before


# --- malformed calls -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "filters",
    [
        [{"field": "status", "op": "eq", "value": "x", "password_hash": "$2b$"}],
        [{"field": "status", "op": "eq", "value": "x", "raw_sql": "1=1"}],
        [{"field": "status", "op": "like", "value": "%"}],
        [{"field": "status", "op": "regex", "value": ".*"}],
        [{"field": "status", "op": "EQ", "value": "x"}],
        [{"field": "status", "op": "=", "value": "x"}],
        [{"field": "status", "op": "", "value": "x"}],
        [{"field": "status", "op": None, "value": "x"}],
        [{"field": "status", "value": "x"}],
        [{"op": "eq", "value": "x"}],
        [{"field": "", "op": "eq", "value": "x"}],
        [{"field": 3, "op": "eq", "value": "x"}],
        [{"field": "x" * 500, "op": "eq", "value": "x"}],
        ["status = 'x'"],
        "status = 'x'",
        [None],
        [{"field": "status", "op": "in", "value": "pending"}],
        [{"field": "status", "op": "in", "value": ["x"] * 501}],
        [{"field": "status", "op": "between", "value": ["a"]}],
        [{"field": "status", "op": "is_null", "value": "yes"}],
        [{"field": "total", "op": "contains", "value": "1"}],
        [{"field": "status", "op": "contains", "value": 1}],
        [{"field": "total", "op": "eq", "value": "NaN"}],
        [{"field": "created_at", "op": "lt", "value": "yesterday"}],
        [{"field": "status", "op": "eq", "value": "x"}] * 51,
    ],
)
async def test_malformed_filters_are_refused(toolset: Toolset, shop_db: Any, filters: Any) -> None:
    await expect(ValidationError, toolset.query(RunContext(ACME, shop_db), model="Order", filters=filters))


async def test_unknown_arguments_are_refused(toolset: Toolset, shop_db: Any) -> None:
    ctx = RunContext(ACME, shop_db)
    with pytest.raises(TypeError):
        await toolset.query(ctx, model="Order", tenant_id="globex")  # type: ignore[call-arg]
    for kwargs in ({"function": "median", "field": "total"}, {"function": "sum"}, {"function": "sum", "field": "status"},
                   {"function": "count; DROP", "field": None}):  # fmt: skip
        await expect(ValidationError, toolset.aggregate(ctx, model="Order", **kwargs))
    await expect(ValidationError, toolset.query(ctx, model="Order", order_by=[1]))
    await expect(ValidationError, toolset.query(ctx, model="Order", select=[]))
    await expect(FieldNotAllowedError, toolset.query(ctx, model="Order", include=["nope"]))
    await expect(ValidationError, toolset.query(ctx, model="Order", include=["customer.orders"]))


async def test_audit_records_of_attacks_hold_no_secrets(shop_db: Any) -> None:
    store = MemoryAuditStore()
    toolset = Toolset(shop.Base, shop.shop_policy(), store)
    ctx = RunContext(ACME, shop_db)
    for field in HIDDEN:
        with pytest.raises(FieldNotAllowedError):
            await toolset.query(ctx, model="Customer", filters=[{"field": field, "op": "startswith", "value": "$2b$12$secret5"}])
    assert len(store.records) == len(HIDDEN)
    for record in store.records:
        assert record.outcome == "denied" and record.tenant_id == "acme"
        assert "$2b$12$secret5" not in repr(record.to_dict())
        assert record.error_message and "password_hash" not in record.error_message


@pytest.mark.parametrize(
    "spec",
    [
        {"field": "created_at", "op": "lt", "value": "2026-01-01T00:00:00+05:00"},
        {"field": "created_at", "op": "eq", "value": "2026-01-01T12:00:00Z"},
        {"field": "created_at", "op": "between", "value": ["2026-01-01T00:00:00", "2027-01-01T00:00:00Z"]},
        {"field": "status", "op": "eq", "value": "pen\x00ding"},
        {"field": "status", "op": "in", "value": ["pending", "\x00"]},
        {"field": "status", "op": "contains", "value": "\x00"},
        {"field": "status", "op": "startswith", "value": "a\x00"},
    ],
)
async def test_values_drivers_disagree_on_are_refused_alike(toolset: Toolset, shop_db: Any, spec: dict[str, Any]) -> None:
    # An offset against a column without a time zone, or a NUL in text: SQLite, psycopg and asyncpg
    # would each do something different (ignore, convert, fail); every backend refuses instead.
    ctx = RunContext(ACME, shop_db)
    await expect(ValidationError, toolset.query(ctx, model="Order", filters=[spec]))
    page = await toolset.query(ctx, model="Order", limit=3, filters=[{"field": "created_at", "op": "lt", "value": "2027-01-01T00:00:00"}])
    assert len(page.rows) == 3
