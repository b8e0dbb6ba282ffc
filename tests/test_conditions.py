"""The row-policy condition language: every construct run on SQLite and PostgreSQL, its errors,
its rules for bypass and permit, missing principal values, and a fuzzed parser."""

from __future__ import annotations

import operator
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from ormai_agents import (
    AccessDeniedError,
    FieldAction,
    ModelPolicy,
    Policy,
    PolicyError,
    Principal,
    RowPolicy,
    RunContext,
    Toolset,
)
from ormai_agents._conditions import BoundCondition, ColumnBinding, ConditionSyntaxError, MissingPrincipalValue, parse_condition
from ormai_agents._types import make_coercer, python_type
from ormai_agents.audit import MemoryAuditStore
from tests import shop
from tests._truth import rows as db_rows
from tests._truth import walk

Order = shop.Order
ORDER_FIELDS = ("id", "tenant_id", "customer_id", "owner_id", "status", "total", "quantity", "created_at")


def order_policy(*row_policies: RowPolicy, scoping: dict[str, str] | None = None) -> Policy:
    return Policy(
        models={
            "Order": ModelPolicy(
                fields={f: FieldAction.Allow for f in ORDER_FIELDS},
                scoping={"tenant_id": "principal.tenant_id"} if scoping is None else scoping,
                row_policies=list(row_policies),
                max_rows=100,
            )
        }
    )


async def all_orders(db: Any) -> list[dict[str, Any]]:
    return [dict(r._mapping) for r in await db_rows(db, select(Order.__table__))]


def sql_cmp(op: Callable[[Any, Any], bool]) -> Callable[[Any, Any], bool]:
    """A comparison with SQL's NULL rule: anything compared with NULL is not true."""
    return lambda a, b: a is not None and b is not None and op(a, b)


EQ, NE, LT, LE, GT, GE = (sql_cmp(o) for o in (operator.eq, operator.ne, operator.lt, operator.le, operator.gt, operator.ge))


def sql_in(value: Any, items: list[Any]) -> bool:
    return value is not None and value in items


def sql_not_in(value: Any, items: list[Any]) -> bool:
    return value is not None and value not in items


ACME_U1 = Principal(
    tenant_id="acme",
    user_id="u1",
    roles=("support", "admin"),
    metadata={"a": {"b": "u2"}, "owners": ["u1", "u3"], "statuses": ["pending", "100%"], "min_qty": 3},
)

# (condition, row predicate under ACME_U1). The predicate follows SQL: a NULL comparison is not true,
# and NOT of an unknown is unknown.
CASES: list[tuple[str, Callable[[dict[str, Any]], bool]]] = [
    ("status = 'pending'", lambda r: EQ(r["status"], "pending")),
    ("status != 'pending'", lambda r: NE(r["status"], "pending")),
    ("status <> 'pending'", lambda r: NE(r["status"], "pending")),
    ("'pending' = status", lambda r: EQ(r["status"], "pending")),
    ("quantity < 3", lambda r: LT(r["quantity"], 3)),
    ("quantity <= 3", lambda r: LE(r["quantity"], 3)),
    ("quantity > 3", lambda r: GT(r["quantity"], 3)),
    ("quantity >= 3", lambda r: GE(r["quantity"], 3)),
    ("3 < quantity", lambda r: GT(r["quantity"], 3)),
    ("quantity = 0", lambda r: EQ(r["quantity"], 0)),
    ("quantity > -1", lambda r: GT(r["quantity"], -1)),
    ("total >= 250.5", lambda r: GE(r["total"], Decimal("250.5"))),
    ("total < 1e2", lambda r: LT(r["total"], Decimal(100))),
    ("status IN ('pending', 'shipped', 'a_b')", lambda r: sql_in(r["status"], ["pending", "shipped", "a_b"])),
    ("status NOT IN ('pending', 'shipped')", lambda r: sql_not_in(r["status"], ["pending", "shipped"])),
    ("quantity IN (1, 2, 3)", lambda r: sql_in(r["quantity"], [1, 2, 3])),
    ("owner_id IS NULL", lambda r: r["owner_id"] is None),
    ("owner_id IS NOT NULL", lambda r: r["owner_id"] is not None),
    ("created_at IS NULL OR quantity IS NULL", lambda r: r["created_at"] is None or r["quantity"] is None),
    ("status = 'pending' AND quantity > 1", lambda r: EQ(r["status"], "pending") and GT(r["quantity"], 1)),
    ("status = 'pending' OR quantity > 8", lambda r: EQ(r["status"], "pending") or GT(r["quantity"], 8)),
    ("NOT status = 'pending'", lambda r: NE(r["status"], "pending")),
    ("NOT (status = 'pending' OR owner_id IS NULL)", lambda r: NE(r["status"], "pending") and r["owner_id"] is not None),
    ("NOT NOT owner_id IS NULL", lambda r: r["owner_id"] is None),
    (
        "(status = 'shipped' OR status = 'cancelled') AND (quantity >= 1 OR owner_id = 'u2')",
        lambda r: r["status"] in ("shipped", "cancelled") and (GE(r["quantity"], 1) or EQ(r["owner_id"], "u2")),
    ),
    ("status = 'back\\slash' OR status = 'x%_\\y'", lambda r: r["status"] in ("back\\slash", "x%_\\y")),
    ("status = 'ünïcødé'", lambda r: EQ(r["status"], "ünïcødé")),
    ("status = ''", lambda r: EQ(r["status"], "")),
    ("status = 'it''s'", lambda r: EQ(r["status"], "it's")),
    ("status In ('a_b') aNd NoT owner_id iS nUlL", lambda r: EQ(r["status"], "a_b") and r["owner_id"] is not None),
    ("owner_id = tenant_id OR owner_id < status", lambda r: EQ(r["owner_id"], r["tenant_id"]) or LT(r["owner_id"], r["status"])),
    ("true", lambda r: True),
    ("false", lambda r: False),
    ("NOT false AND quantity = 1", lambda r: EQ(r["quantity"], 1)),
    ("true OR quantity = 1", lambda r: True),
    ("false OR quantity = 1", lambda r: EQ(r["quantity"], 1)),
    ("owner_id = principal.user_id", lambda r: EQ(r["owner_id"], "u1")),
    ("principal.user_id = owner_id", lambda r: EQ(r["owner_id"], "u1")),
    ("owner_id != principal.user_id", lambda r: NE(r["owner_id"], "u1")),
    ("tenant_id = principal.tenant_id", lambda r: True),
    ("owner_id = principal.metadata.a.b", lambda r: EQ(r["owner_id"], "u2")),
    ("owner_id IN principal.metadata.owners", lambda r: sql_in(r["owner_id"], ["u1", "u3"])),
    ("owner_id NOT IN principal.metadata.owners", lambda r: sql_not_in(r["owner_id"], ["u1", "u3"])),
    ("status IN principal.metadata.statuses", lambda r: sql_in(r["status"], ["pending", "100%"])),
    ("quantity >= principal.metadata.min_qty", lambda r: GE(r["quantity"], 3)),
    ("'admin' IN principal.roles", lambda r: True),
    ("'root' IN principal.roles", lambda r: False),
    ("'root' NOT IN principal.roles AND quantity = 2", lambda r: EQ(r["quantity"], 2)),
    ("principal.tenant_id = 'acme' AND status = 'shipped'", lambda r: EQ(r["status"], "shipped")),
    ("principal.tenant_id IN ('globex', 'initech') OR quantity = 5", lambda r: EQ(r["quantity"], 5)),
    ("principal.metadata.min_qty > 2", lambda r: True),
]


@pytest.mark.parametrize(("condition", "predicate"), CASES, ids=[c for c, _ in CASES])
async def test_construct_runs_on_the_database(shop_db: Any, condition: str, predicate: Callable[[dict[str, Any]], bool]) -> None:
    toolset = Toolset(shop.Base, order_policy(RowPolicy("p", condition)))
    got = await walk(toolset, RunContext(ACME_U1, shop_db), "Order")
    truth = [r for r in await all_orders(shop_db) if r["tenant_id"] == "acme"]
    assert sorted(r["id"] for r in got) == sorted(r["id"] for r in truth if predicate(r))
    count = (await toolset.aggregate(RunContext(ACME_U1, shop_db), model="Order")).value
    assert count == len(got)


async def test_cases_are_not_trivial(shop_db: Any) -> None:
    # Most predicates must split acme's rows, so the test above compares something.
    truth = [r for r in await all_orders(shop_db) if r["tenant_id"] == "acme"]
    splitting = [c for c, p in CASES if 0 < sum(map(p, truth)) < len(truth)]
    assert len(splitting) >= len(CASES) - 8


async def test_boolean_columns_and_unscoped_restrict(shop_db: Any) -> None:
    policy = Policy(
        models={
            "Document": ModelPolicy(
                fields={"id": FieldAction.Allow, "tenant_id": FieldAction.Allow, "is_public": FieldAction.Allow},
                row_policies=[RowPolicy("p", "is_public = true AND tenant_id IS NOT NULL")],
            )
        }
    )
    toolset = Toolset(shop.Base, policy)
    got = await walk(toolset, RunContext(Principal(tenant_id="acme"), shop_db), "Document")
    truth = await db_rows(shop_db, select(shop.Document.id, shop.Document.is_public, shop.Document.tenant_id))
    expected = sorted(i for i, public, tenant in truth if public and tenant is not None)
    assert expected and sorted(r["id"] for r in got) == expected
    policy2 = Policy(models={"Document": policy.models["Document"].model_copy(
        update={"row_policies": [RowPolicy("p", "NOT is_public = false")]})})  # fmt: skip
    got2 = await walk(Toolset(shop.Base, policy2), RunContext(Principal(), shop_db), "Document")
    assert sorted(r["id"] for r in got2) == sorted(i for i, public, _ in truth if public)


async def test_conditions_may_use_denied_columns(shop_db: Any) -> None:
    # internal_note is not readable, yet a condition may use it (the host wrote it, not the agent).
    toolset = Toolset(shop.Base, order_policy(RowPolicy("p", "internal_note != 'note for acme: do not leak 5'")))
    got = await walk(toolset, RunContext(ACME_U1, shop_db), "Order")
    truth = [r["id"] for r in await all_orders(shop_db) if r["tenant_id"] == "acme" and r["id"] != 5]
    assert sorted(r["id"] for r in got) == sorted(truth)
    assert all("internal_note" not in r for r in got)


# --- errors at construction -----------------------------------------------------------------

SYNTAX_ERRORS = [
    ("status == 'x'", 9),
    ("status = 'x' AND", 17),
    ("(status = 'x'", 14),
    ("status = 'x')", 13),
    ("status = ", 10),
    ("status = 'unterminated", 10),
    ("status IN ()", 12),
    ("status IN (owner_id)", 12),
    ("status IN 'x'", 11),
    ("status LIKE 'x'", 8),
    ("AND status = 'x'", 1),
    ("status IS 'x'", 11),
    ("status = null", 10),
    ("NULL IS NULL", 1),
    ("principal.tenant_id IS NULL", 1),
    ("principal.foo = 'x'", 1),
    ("principal.metadata = 'x'", 1),
    ("principal = 'x'", 1),
    ("customer.tenant_id = 'x'", 1),
    ("status = \"x\"", 10),
    ("status = 'x'; DROP TABLE orders", 13),
    ("status = 'x' -- comment", 14),
    ("@", 1),
    ("status", 7),
]


@pytest.mark.parametrize(("condition", "position"), SYNTAX_ERRORS)
def test_syntax_errors_name_policy_model_and_position(condition: str, position: int) -> None:
    with pytest.raises(PolicyError) as info:
        Toolset(shop.Base, order_policy(RowPolicy("my_rule", condition)))
    message = str(info.value)
    assert message.startswith("Order: row policy 'my_rule': ")
    assert message.endswith(f"(at position {position})")


@pytest.mark.parametrize(
    ("condition", "needle"),
    [("nope = 1", "'nope'"), ("status = 'x' OR Status = 'y'", "'Status'"), ("quantity = 'many'", "'quantity'"),
     ("created_at > 'soon'", "'created_at'"), ("quantity IN (1, 'two')", "'quantity'")],
)  # fmt: skip
def test_unknown_columns_and_misfit_literals(condition: str, needle: str) -> None:
    with pytest.raises(PolicyError) as info:
        Toolset(shop.Base, order_policy(RowPolicy("r", condition)))
    assert "Order" in str(info.value) and "'r'" in str(info.value) and needle in str(info.value)


@pytest.mark.parametrize(
    "condition",
    ["status = 'x'", "'admin' IN principal.roles AND status = 'x'", "owner_id = principal.user_id", "owner_id IS NULL",
     "'admin' IN principal.roles OR quantity > 1"],
)  # fmt: skip
def test_bypass_conditions_may_not_reference_columns(condition: str) -> None:
    with pytest.raises(PolicyError) as info:
        Toolset(shop.Base, order_policy(RowPolicy("b", condition, bypass=True)))
    assert "'b'" in str(info.value) and "bypass" in str(info.value)


def test_permit_needs_a_scoped_model() -> None:
    with pytest.raises(PolicyError) as info:
        Toolset(shop.Base, order_policy(RowPolicy("p", "owner_id = 'u1'", mode="permit"), scoping={}))
    assert "'p'" in str(info.value) and "permit" in str(info.value)
    # The same permit policy on a scoped model is fine.
    Toolset(shop.Base, order_policy(RowPolicy("p", "owner_id = 'u1'", mode="permit")))


def test_policy_classes_forbid_unknown_options() -> None:
    with pytest.raises(Exception):
        RowPolicy("p", "true", mdoe="permit")  # type: ignore[call-arg]
    with pytest.raises(Exception):
        RowPolicy("p", "true", bypass=True, mode="permit")
    with pytest.raises(Exception):
        RowPolicy("bad name!", "true")


# --- missing principal values -----------------------------------------------------------------


@pytest.mark.parametrize(
    "principal",
    [Principal(tenant_id="acme"), Principal(tenant_id="acme", user_id=""), Principal(tenant_id="acme", user_id=0)],
)  # fmt: skip
async def test_missing_value_denies_a_restrict_policy(shop_db: Any, principal: Principal) -> None:
    toolset = Toolset(shop.Base, order_policy(RowPolicy("mine", "owner_id = principal.user_id")))
    ctx = RunContext(principal, shop_db)
    for call in (toolset.query(ctx, model="Order"), toolset.get(ctx, model="Order", id=1), toolset.aggregate(ctx, model="Order")):
        with pytest.raises(AccessDeniedError):
            await call
    toolset2 = Toolset(shop.Base, order_policy(RowPolicy("meta", "status IN principal.metadata.allowed.statuses")))
    with pytest.raises(AccessDeniedError):
        await toolset2.query(ctx, model="Order")


async def test_empty_list_in_restrict_matches_nothing(shop_db: Any) -> None:
    toolset = Toolset(shop.Base, order_policy(RowPolicy("meta", "owner_id IN principal.metadata.owners")))
    ctx = RunContext(Principal(tenant_id="acme", metadata={"owners": []}), shop_db)
    assert (await toolset.query(ctx, model="Order")).rows == []
    negated = Toolset(shop.Base, order_policy(RowPolicy("meta", "owner_id NOT IN principal.metadata.owners")))
    rows = await walk(negated, ctx, "Order")
    truth = [r["id"] for r in await all_orders(shop_db) if r["tenant_id"] == "acme"]
    assert sorted(r["id"] for r in rows) == sorted(truth)


async def test_missing_value_grants_nothing_through_permit(shop_db: Any) -> None:
    toolset = Toolset(shop.Base, order_policy(RowPolicy("shared", "owner_id = principal.metadata.shared_owner", mode="permit")))
    truth = await all_orders(shop_db)
    own = sorted(r["id"] for r in truth if r["tenant_id"] == "acme")
    for principal in (Principal(tenant_id="acme"), Principal(tenant_id="acme", metadata={"shared_owner": None}),
                      Principal(tenant_id="acme", metadata={"shared_owner": ""})):  # fmt: skip
        got = await walk(toolset, RunContext(principal, shop_db), "Order")
        assert sorted(r["id"] for r in got) == own
    # With the value present, the permit policy adds rows of any tenant (that is what permit means).
    got = await walk(toolset, RunContext(Principal(tenant_id="acme", metadata={"shared_owner": "u3"}), shop_db), "Order")
    expected = sorted(r["id"] for r in truth if r["tenant_id"] == "acme" or r["owner_id"] == "u3")
    assert sorted(r["id"] for r in got) == expected and len(expected) > len(own)
    # A permit never lifts the scope's refusal of a principal without a tenant.
    with pytest.raises(AccessDeniedError):
        await toolset.query(RunContext(Principal(metadata={"shared_owner": "u3"}), shop_db), model="Order")


async def test_missing_value_grants_no_bypass(shop_db: Any) -> None:
    store = MemoryAuditStore()
    toolset = Toolset(
        shop.Base,
        order_policy(
            RowPolicy("root", "principal.metadata.level = 'root'", bypass=True),
            RowPolicy("admins", "'super_admin' IN principal.roles", bypass=True),
        ),
        store,
    )
    truth = await all_orders(shop_db)
    own = sorted(r["id"] for r in truth if r["tenant_id"] == "acme")
    for principal in (Principal(tenant_id="acme"), Principal(tenant_id="acme", metadata={"level": None}),
                      Principal(tenant_id="acme", metadata={"level": ["root"]}), Principal(tenant_id="acme", roles=("admin",))):  # fmt: skip
        got = await walk(toolset, RunContext(principal, shop_db), "Order")
        assert sorted(r["id"] for r in got) == own
    assert not any(r.bypass_used for r in store.records)
    for principal in (Principal(tenant_id="acme", metadata={"level": "root"}), Principal(roles=("super_admin",))):
        got = await walk(toolset, RunContext(principal, shop_db), "Order")
        assert sorted(r["id"] for r in got) == sorted(r["id"] for r in truth)  # NULL and empty tenants included
    assert store.records[-1].bypass_used and store.records[-1].policies_applied == ["admins"]


async def test_restrict_still_applies_under_bypass(shop_db: Any) -> None:
    toolset = Toolset(
        shop.Base,
        order_policy(RowPolicy("admins", "'super_admin' IN principal.roles", bypass=True), RowPolicy("live", "status != 'cancelled'")),
    )
    got = await walk(toolset, RunContext(Principal(roles=("super_admin",)), shop_db), "Order")
    truth = await all_orders(shop_db)
    assert sorted(r["id"] for r in got) == sorted(r["id"] for r in truth if NE(r["status"], "cancelled"))


# --- the parser under fuzzing ------------------------------------------------------------------

_COLUMNS = {
    c.key: ColumnBinding(c, make_coercer(python_type(c.type))) for c in Order.__table__.columns
}
TOKENS = [
    "status", "quantity", "total", "owner_id", "tenant_id", "nope", "principal.tenant_id", "principal.user_id",
    "principal.roles", "principal.metadata.a.b", "principal.metadata", "principal.x", "'x'", "'it''s'", "''", "'",
    "1", "-2", "3.5", "1e3", "true", "false", "null", "NULL", "AND", "OR", "NOT", "IN", "IS", "(", ")", ",",
    "=", "!=", "<>", "<", "<=", ">", ">=", "==", ";", "--", "%", "\\", "ü", "\x00", "a.b", "LIKE",
]  # fmt: skip
_PRINCIPALS = [
    Principal(),
    Principal(tenant_id="acme", user_id="u1", roles=("admin",), metadata={"a": {"b": "u2"}}),
    Principal(tenant_id=7, user_id=3, metadata={"a": {"b": ["x"]}, "tenant_id": ["acme"]}),
]


def _check(text: str) -> None:
    try:
        tree = parse_condition(text)
    except ConditionSyntaxError as exc:
        assert exc.position >= 1
        return
    try:
        bound = BoundCondition(tree, _COLUMNS)
    except ConditionSyntaxError:
        return
    for principal in _PRINCIPALS:
        try:
            bound.compile(principal.resolve)
        except MissingPrincipalValue:
            pass


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=200))
def test_parser_fuzz_random_text(text: str) -> None:
    _check(text)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(TOKENS), max_size=40), st.sampled_from([" ", "", "  \n"]))
def test_parser_fuzz_token_soup(tokens: list[str], sep: str) -> None:
    _check(sep.join(tokens))


@settings(max_examples=200, deadline=None)
@given(st.recursive(
    st.sampled_from(["status = 'x'", "quantity > 1", "owner_id IS NULL", "owner_id = principal.user_id", "true",
                     "'admin' IN principal.roles", "status IN ('a', 'b')"]),
    lambda inner: st.one_of(
        st.tuples(inner, st.sampled_from([" AND ", " OR "]), inner).map("".join),
        inner.map(lambda s: f"NOT ({s})"),
        inner.map(lambda s: f"({s})"),
    ),
    max_leaves=12,
))  # fmt: skip
def test_parser_fuzz_well_formed_trees_parse(text: str) -> None:
    bound = BoundCondition(parse_condition(text), _COLUMNS)
    bound.compile(_PRINCIPALS[1].resolve)


@pytest.mark.parametrize(
    "text",
    ["(" * 5000 + "status = 'x'" + ")" * 5000, "NOT " * 5000 + "status = 'x'", "(" * 100_000,
     "NOT (" * 3000 + "true" + ")" * 3000, " AND ".join(["status = 'x'"] * 3000),
     "status IN (" + ", ".join(["'x'"] * 5000) + ")", "'" * 100_001, "9" * 10_000],
    ids=["parens", "nots", "open-parens", "not-parens", "long-and", "long-in", "quotes", "digits"],
)  # fmt: skip
def test_parser_survives_deep_and_long_input(text: str) -> None:
    _check(text)
