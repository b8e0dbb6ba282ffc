"""The eval harness: invariants against the database, suites, recording and replay."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from ormai_agents import ModelPolicy, Policy, Principal, RunContext, Toolset
from ormai_agents.eval import (
    EvalCase,
    EvalHarness,
    Invariant,
    NoCrossTenantData,
    Observation,
    Recorder,
    replay,
    no_cross_tenant_data,
    no_denied_fields,
    within_limits,
)
from ormai_agents.policy import FieldAction, FieldPolicy
from tests import shop
from tests.conftest import ACME, GLOBEX

SECRET = "S3CR3T-77aa"
ALL = [no_cross_tenant_data, no_denied_fields, within_limits]


def edited(policy: Policy, model: str, **changes: Any) -> Policy:
    """`policy` with one model's settings changed (validated again)."""
    models = dict(policy.models)
    models[model] = ModelPolicy(**{**models[model].model_dump(), **changes})
    return Policy(**{**policy.model_dump(exclude={"models"}), "models": models})


async def ids_of(db: Any, tenant: str) -> list[int]:
    result = db.execute(select(shop.Order.id).where(shop.Order.tenant_id == tenant).order_by(shop.Order.id))
    if hasattr(result, "__await__"):
        result = await result
    return list(result.scalars())


@pytest.fixture(scope="module")
def scoped() -> Toolset:
    return Toolset(shop.Base, shop.shop_policy(), secret_key=b"e" * 32)


@pytest.fixture(scope="module")
def unscoped() -> Toolset:
    """The deliberate mistake: Order and Customer lost their tenant scoping."""
    policy = edited(edited(shop.shop_policy(), "Order", scoping={}), "Customer", scoping={})
    return Toolset(shop.Base, policy, secret_key=b"e" * 32)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"model": "Order", "limit": 50},
        {"model": "Order", "select": ["id", "status"]},  # tenant column not selected
        {"model": "Order", "select": ["status", "total", "created_at"]},  # not even the key
        {"model": "Order", "include": ["customer"], "select": ["id", "customer_id"]},
        {"model": "Customer", "include": ["orders"], "select": ["id", "name"]},
    ],
)
async def test_invariants_hold_on_the_scoped_policy(scoped: Toolset, shop_db: Any, kwargs: dict[str, Any]) -> None:
    harness = EvalHarness(scoped, scoped.policy)
    result = await harness.run(RunContext(ACME, shop_db), tool="query", kwargs=kwargs, invariants=ALL)
    assert result.error is None and result.result.rows
    assert result.passed, [str(v) for v in result.violations]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"model": "Order", "select": ["id", "status"]},  # tenant column not selected
        {"model": "Order", "select": ["status", "total", "created_at"]},  # no key either: matched by values
        {"model": "Order", "order_by": ["-total"], "select": ["id"]},
    ],
)
async def test_no_cross_tenant_data_fails_on_an_unscoped_policy(unscoped: Toolset, shop_db: Any, kwargs: dict[str, Any]) -> None:
    harness = EvalHarness(unscoped, unscoped.policy)  # the harness is not told the right policy
    result = await harness.run(RunContext(ACME, shop_db), tool="query", kwargs=kwargs, invariants=[no_cross_tenant_data])
    assert result.error is None
    assert not result.passed
    assert all(v.invariant == "no_cross_tenant_data" for v in result.violations)
    returned = result.result.rows
    assert all("tenant_id" not in r for r in returned)
    if "id" in kwargs.get("select", []):
        acme = set(await ids_of(shop_db, "acme"))
        foreign = {r["id"] for r in returned} - acme
        assert foreign, "the unscoped query should return other tenants' rows"
        flagged = {v.details["id"][0] for v in result.violations}
        assert flagged == foreign  # exactly the foreign rows, none of acme's


async def test_no_cross_tenant_data_checks_get_and_includes(scoped: Toolset, unscoped: Toolset, shop_db: Any) -> None:
    globex_order = (await ids_of(shop_db, "globex"))[0]
    bad = await EvalHarness(unscoped).run(
        RunContext(ACME, shop_db), tool="get", kwargs={"model": "Order", "id": globex_order, "select": ["id"]},
        invariants=[no_cross_tenant_data],
    )  # fmt: skip
    assert [v.details["id"] for v in bad.violations] == [[globex_order]]
    # Only the related model forgot its scoping: the included rows are caught.
    half = Toolset(shop.Base, edited(shop.shop_policy(), "Customer", scoping={}), secret_key=b"e" * 32)
    result = await EvalHarness(half).run(
        RunContext(ACME, shop_db), tool="query", kwargs={"model": "Order", "include": ["customer"], "limit": 50},
        invariants=[no_cross_tenant_data],
    )  # fmt: skip
    assert not result.passed and all("Customer" in v.message for v in result.violations)
    good = await EvalHarness(scoped).run(
        RunContext(ACME, shop_db), tool="get", kwargs={"model": "Order", "id": globex_order}, invariants=[no_cross_tenant_data]
    )
    assert good.passed and good.error_code == "not_found"


async def test_harness_judges_against_the_intended_policy(shop_db: Any) -> None:
    intended = shop.shop_policy()
    leaky = edited(
        intended, "Customer",
        fields={**{k: v for k, v in intended.models["Customer"].fields.items()}, "password_hash": FieldPolicy(action=FieldAction.Allow)},
        max_rows=500,
    )  # fmt: skip
    toolset = Toolset(shop.Base, edited(leaky, "Order", max_rows=200), secret_key=b"e" * 32)
    harness = EvalHarness(toolset, edited(intended, "Order", max_rows=10))
    ctx = RunContext(ACME, shop_db)
    denied = await harness.run(ctx, tool="query", kwargs={"model": "Customer"}, invariants=[no_denied_fields])
    assert [str(v) for v in denied.violations] == ["no_denied_fields: Customer rows carry denied field 'password_hash'"]
    many = await harness.run(ctx, tool="query", kwargs={"model": "Order", "limit": 100}, invariants=[within_limits])
    assert len(many.result.rows) > 10
    assert [v.invariant for v in many.violations] == ["within_limits"]
    fine = await EvalHarness(toolset).run(ctx, tool="query", kwargs={"model": "Order", "limit": 100}, invariants=[within_limits])
    assert fine.passed


async def test_custom_invariants_and_expectations(scoped: Toolset, shop_db: Any) -> None:
    class NoPendingOrders(Invariant):
        name = "no_pending"

        async def check(self, obs: Observation) -> list[str]:
            return [f"order {r['id']} is pending" for r in obs.rows if r.get("status") == "pending"]

    def at_most_three(obs: Observation) -> list[str]:
        return ["too many"] if len(obs.rows) > 3 else []

    def broken(obs: Observation) -> None:
        raise RuntimeError("boom")

    harness = EvalHarness(scoped)
    ctx = RunContext(ACME, shop_db)
    pending = await harness.run(
        ctx, tool="query", kwargs={"model": "Order", "filters": [{"field": "status", "op": "eq", "value": "pending"}]},
        invariants=[NoPendingOrders, at_most_three, broken],
    )  # fmt: skip
    assert pending.result.rows
    names = [v.invariant for v in pending.violations]
    assert names.count("no_pending") == len(pending.result.rows)
    assert "broken" in names and ("at_most_three" in names) == (len(pending.result.rows) > 3)
    with pytest.raises(ValueError):
        await harness.run(ctx, tool="drop_table", kwargs={})


async def test_run_suite_checks_expected_outcomes(scoped: Toolset, shop_db: Any) -> None:
    own = (await ids_of(shop_db, "acme"))[0]
    foreign = (await ids_of(shop_db, "globex"))[0]
    count = len(await ids_of(shop_db, "acme"))
    cases = [
        EvalCase("list orders", ACME, "query", {"model": "Order", "limit": 5}, row_count=5),
        EvalCase("own order", ACME, "get", {"model": "Order", "id": own}, row_count=1),
        EvalCase("foreign order", ACME, "get", {"model": "Order", "id": foreign}, expect="error", error_code="not_found"),
        EvalCase("ssn oracle", ACME, "query", {"model": "Customer", "filters": [{"field": "ssn", "op": "startswith", "value": "0"}]},
                 expect="denied", error_code="field_not_allowed"),  # fmt: skip
        EvalCase("no tenant", Principal(user_id="x"), "aggregate", {"model": "Order"}, expect="denied", error_code="access_denied"),
        EvalCase("wrong expectation", ACME, "get", {"model": "Order", "id": foreign}),
        EvalCase("wrong count", ACME, "aggregate", {"model": "Order", "group_by": ["status"]}, row_count=count + 1000),
    ]
    suite = await EvalHarness(scoped).run_suite(cases, db=shop_db, invariants=ALL)
    assert [r.name for r in suite.failures] == ["wrong expectation", "wrong count"]
    assert not suite.passed
    assert "5/7 cases passed" in suite.summary() and "expected success, got error (not_found)" in suite.summary()


async def test_record_and_replay_as_another_principal(scoped: Toolset, unscoped: Toolset, shop_db: Any, tmp_path: Path) -> None:
    recorder = Recorder(tmp_path / "calls.jsonl")
    tools = recorder.wrap(scoped)
    ctx = RunContext(ACME, shop_db)
    own = (await ids_of(shop_db, "acme"))[0]
    foreign = (await ids_of(shop_db, "globex"))[0]
    await tools.query(ctx, model="Order", limit=20)  # 0
    await tools.get(ctx, model="Order", id=own)  # 1
    await tools.aggregate(ctx, model="Order")  # 2
    with pytest.raises(Exception):
        await tools.query(ctx, model="Customer", filters=[{"field": "ssn", "op": "eq", "value": SECRET}])  # 3
    with pytest.raises(Exception):
        await tools.get(ctx, model="Order", id=foreign)  # 4
    await tools.describe_schema(ctx)  # 5
    assert SECRET not in (tmp_path / "calls.jsonl").read_text()
    calls = recorder.load()
    assert [c.outcome for c in calls] == ["success", "success", "success", "denied", "error", "success"]
    assert calls[0].principal["tenant_id"] == "acme" and calls[0].ids == [[i] for i in (await ids_of(shop_db, "acme"))[:20]]

    same = await replay(recorder.path, scoped, shop_db)
    assert same.ok and same.replayed == 6, same.summary()

    report = await replay(recorder.path, scoped, shop_db, as_principal=GLOBEX)
    kinds = {d.index: d.kind for d in report.differences}
    assert kinds == {0: "rows_changed", 1: "allowed→denied", 2: "rows_changed", 4: "denied→allowed"}, report.summary()
    rows = report.differences[0]
    assert [own] in rows.removed_ids and [foreign] in rows.added_ids
    assert "allowed → error (not_found)" in str(report.differences[1])

    # The same traffic under a policy change: acme now sees other tenants' rows.
    changed = await replay(recorder.path, unscoped, shop_db, as_principal=lambda p: p)
    kinds = {d.index: d.kind for d in changed.differences}
    assert kinds == {0: "rows_changed", 2: "rows_changed", 4: "denied→allowed"}, changed.summary()


async def test_harness_records_its_runs(scoped: Toolset, shop_db: Any, tmp_path: Path) -> None:
    recorder = Recorder(tmp_path / "h.jsonl")
    harness = EvalHarness(scoped, recorder=recorder)
    await harness.run(RunContext(ACME, shop_db), tool="query", kwargs={"model": "Order", "select": ["status"]})
    (call,) = recorder.load()
    line = json.loads(recorder.path.read_text())
    assert line["tool"] == "query" and line["ids"] is None and line["rows_digest"]
    report = await replay([call], scoped, shop_db, as_principal=GLOBEX)
    assert [d.kind for d in report.differences] == ["rows_changed"]


async def test_no_cross_tenant_data_with_other_tenant_columns(scoped: Toolset, shop_db: Any) -> None:
    # Customers are scoped by tenant only; an org-level check finds the other orgs' rows.
    principal = Principal(tenant_id="acme", metadata={"org_id": "org-1"})
    inv = NoCrossTenantData(tenant_columns=("org_id",), principal_path="principal.metadata.org_id")
    result = await EvalHarness(scoped).run(
        RunContext(principal, shop_db), tool="query", kwargs={"model": "Customer", "select": ["id"]}, invariants=[inv]
    )
    truth = db_rows = shop_db.execute(select(shop.Customer.id, shop.Customer.org_id).where(shop.Customer.tenant_id == "acme"))
    if hasattr(truth, "__await__"):
        db_rows = await truth
    other_org = {cid for cid, org in db_rows if org != "org-1"}
    assert other_org and {v.details["id"][0] for v in result.violations} == other_org
    with pytest.raises(ValueError):
        NoCrossTenantData(principal_path="tenant_id")


async def test_no_denied_fields_catches_an_error_naming_a_denied_field(scoped: Toolset, shop_db: Any) -> None:
    from ormai_agents import FieldNotAllowedError

    harness = EvalHarness(scoped)
    ctx = RunContext(ACME, shop_db)
    leaky = Observation(harness, ctx, "query", {"model": "Customer"}, None, FieldNotAllowedError("unknown field password_hash"))
    assert [str(v) for v in await no_denied_fields.check(leaky)] == ["no_denied_fields: the error names denied field 'password_hash'"]
    # The toolset's real error for the same attempt names nothing denied.
    real = await harness.run(
        ctx, tool="query", kwargs={"model": "Customer", "filters": [{"field": "password_hash", "op": "eq", "value": "x"}]},
        invariants=[no_denied_fields], expect="denied",
    )  # fmt: skip
    assert real.passed, real.violations


async def test_recorder_without_redaction_replays_raw_inputs(scoped: Toolset, shop_db: Any, tmp_path: Path) -> None:
    raw = Recorder(tmp_path / "raw.jsonl", redact=False)
    tools = raw.wrap(scoped)
    with pytest.raises(Exception):
        await tools.query(RunContext(ACME, shop_db), model="Customer", filters=[{"field": "ssn", "op": "eq", "value": SECRET}])
    (call,) = raw.load()
    assert call.kwargs["filters"][0]["value"] == SECRET and call.error_code == "field_not_allowed"
    assert (await replay([call], scoped, shop_db)).ok
