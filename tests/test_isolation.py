"""`ormai_agents.testing`: tenant isolation of a user's models in a few lines, and the fixtures."""

from __future__ import annotations

from typing import Any

import pytest

from ormai_agents import ModelPolicy, Policy, Principal, RunContext, Toolset
from ormai_agents.eval import no_cross_tenant_data
from ormai_agents.testing import IsolationReport, assert_tenant_isolation
from tests import shop

PRINCIPALS = [Principal(tenant_id=t, user_id=f"user-{t}") for t in shop.TENANTS]


def without_scoping(model: str) -> Policy:
    policy = shop.shop_policy()
    models = dict(policy.models)
    models[model] = ModelPolicy(**{**models[model].model_dump(), "scoping": {}})
    return Policy(models=models)


@pytest.fixture
def ormai_toolset() -> Toolset:
    return Toolset(shop.Base, shop.shop_policy(), secret_key=b"i" * 32)


@pytest.fixture
def ormai_db(shop_db: Any) -> Any:
    return shop_db


async def test_isolation_holds_for_the_shop(ormai_toolset: Toolset, shop_db: Any) -> None:
    report = await assert_tenant_isolation(ormai_toolset, shop_db, PRINCIPALS)
    assert isinstance(report, IsolationReport) and report.passed
    assert all(report.rows_seen[(f"tenant={t!r} user='user-{t}'", "Order")] > 0 for t in shop.TENANTS)
    assert report.rows_seen[("tenant='acme' user='user-acme'", "Tenant")] == 1


@pytest.mark.parametrize("model", ["Order", "Customer", "Tenant"])
async def test_isolation_fails_when_a_model_lost_its_scoping(shop_db: Any, model: str) -> None:
    toolset = Toolset(shop.Base, without_scoping(model), secret_key=b"i" * 32)
    with pytest.raises(AssertionError) as info:
        await assert_tenant_isolation(toolset, shop_db, PRINCIPALS, policy=shop.shop_policy())
    text = str(info.value)
    assert f"query {model}: no_cross_tenant_data" in text
    assert "more violations" in text or text.count("\n") < 60  # the report stays readable
    others = [m for m in ("Order", "Customer", "Tenant") if m != model]
    assert not any(f"query {m}:" in text for m in others)


async def test_isolation_refuses_to_pass_vacuously(ormai_toolset: Toolset, shop_db: Any) -> None:
    nobody = [Principal(tenant_id="no-such-tenant-1"), Principal(tenant_id="no-such-tenant-2")]
    with pytest.raises(AssertionError, match="no principal saw any row"):
        await assert_tenant_isolation(ormai_toolset, shop_db, nobody)
    with pytest.raises(ValueError):
        await assert_tenant_isolation(ormai_toolset, shop_db, PRINCIPALS[:1])


async def test_fixtures(tenant_isolation: Any, ormai_harness: Any, ormai_recorder: Any, ormai_db: Any) -> None:
    report = await tenant_isolation(PRINCIPALS[:2], models=["Order"])
    assert report.calls >= 4
    ormai_harness.recorder = ormai_recorder
    result = await ormai_harness.run(RunContext(PRINCIPALS[0], ormai_db), tool="query", kwargs={"model": "Order"},
                                     invariants=[no_cross_tenant_data])  # fmt: skip
    assert result.passed and len(ormai_recorder.load()) == 1


@pytest.mark.slow
def test_testing_package_imports_no_framework() -> None:
    import subprocess
    import sys

    code = (
        "import sys; from ormai_agents.testing import assert_tenant_isolation; "
        "assert not any(m.startswith(('langchain', 'llama_index')) for m in sys.modules), 'framework imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
