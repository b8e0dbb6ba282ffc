"""The seed guide's "Invariant Testing" and "Audit Trail" snippets, on the guide's own models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Column, ForeignKey, Integer, String
from sqlalchemy.orm import declarative_base

from ormai_agents.audit import JsonlAuditStore, MemoryAuditStore, SqlAuditStore
from ormai_agents.core import Principal, RunContext
from ormai_agents.policy import FieldAction, FieldPolicy, ModelPolicy, Policy
from ormai_agents.toolset import Toolset
from tests.conftest import Backend, create_tables, make_backend

Base = declarative_base()


class Tenant(Base):  # type: ignore[valid-type,misc]
    __tablename__ = "tenants"
    id = Column(String, primary_key=True)
    name = Column(String, nullable=False)


class User(Base):  # type: ignore[valid-type,misc]
    __tablename__ = "users"
    id = Column(String, primary_key=True)
    tenant_id = Column(String, ForeignKey("tenants.id"), nullable=False)
    email = Column(String, nullable=False)


class Order(Base):  # type: ignore[valid-type,misc]
    __tablename__ = "orders"
    id = Column(Integer, primary_key=True)
    tenant_id = Column(String, ForeignKey("tenants.id"), nullable=False)
    user_id = Column(String, ForeignKey("users.id"), nullable=False)
    status = Column(String)


policy = Policy(
    models={
        "User": ModelPolicy(
            allowed=True,
            fields={
                "id": FieldPolicy(action=FieldAction.Allow),
                "tenant_id": FieldPolicy(action=FieldAction.Allow),
                "email": FieldPolicy(action=FieldAction.Allow),
            },
            scoping={"tenant_id": "principal.tenant_id"},
        ),
        "Order": ModelPolicy(
            allowed=True,
            fields={
                "id": FieldPolicy(action=FieldAction.Allow),
                "tenant_id": FieldPolicy(action=FieldAction.Allow),
                "user_id": FieldPolicy(action=FieldAction.Allow),
                "status": FieldPolicy(action=FieldAction.Allow),
            },
            scoping={"tenant_id": "principal.tenant_id"},
        ),
    },
)


@pytest.fixture(params=["sqlite", "postgres", "mysql"])
def seeded(request: pytest.FixtureRequest, tmp_path: Path) -> Any:

    backend, cleanup = make_backend(request.param, tmp_path)
    create_tables(backend, Base.metadata)
    with backend.session() as s:
        s.add_all([Tenant(id="acme-corp", name="Acme"), Tenant(id="globex", name="Globex")])
        s.add_all([User(id="user-123", tenant_id="acme-corp", email="a@acme"), User(id="user-9", tenant_id="globex", email="g@globex")])
        s.flush()
        s.add_all(
            [Order(id=i, tenant_id="acme-corp" if i % 2 else "globex", user_id="user-123" if i % 2 else "user-9",
                   status="pending" if i % 3 else "shipped") for i in range(1, 21)]
        )  # fmt: skip
        s.commit()
    yield backend
    cleanup()


async def test_invariant_testing_snippet(seeded: Backend) -> None:
    toolset = Toolset(Base, policy)
    async with seeded.async_session() as session:
        ctx = RunContext(principal=Principal(tenant_id="acme-corp", user_id="user-123"), db=session)

        # --- the guide, with `ormai` replaced by `ormai_agents` ---
        from ormai_agents.eval import EvalHarness, no_cross_tenant_data

        harness = EvalHarness(toolset, policy)

        # Run with invariant checks
        result = await harness.run(
            ctx,
            tool="query",
            kwargs={"model": "Order"},
            invariants=[no_cross_tenant_data],
        )
        # --- end of the guide's snippet ---
        assert result.passed, result.violations
        assert {r["tenant_id"] for r in result.result.rows} == {"acme-corp"} and len(result.result.rows) == 10

        # The same check fails on a policy that forgot the scoping.
        unscoped = Policy(models={**policy.models, "Order": ModelPolicy(**{**policy.models["Order"].model_dump(), "scoping": {}})})
        bad = await EvalHarness(Toolset(Base, unscoped), unscoped).run(
            ctx, tool="query", kwargs={"model": "Order", "select": ["id", "status"]}, invariants=[no_cross_tenant_data]
        )
        assert len(bad.violations) == 10


@pytest.mark.parametrize("kind", ["memory", "jsonl", "sql"])
async def test_audit_trail_snippet(seeded: Backend, tmp_path: Path, kind: str) -> None:
    if kind == "memory":
        store: Any = MemoryAuditStore()
    elif kind == "jsonl":
        store = JsonlAuditStore(tmp_path / "audit.jsonl")
    else:
        store = SqlAuditStore(seeded.async_engine)
        await store.create_table()
    toolset = Toolset(Base, policy, audit_store=store)
    async with seeded.async_session() as session:
        ctx = RunContext(principal=Principal(tenant_id="acme-corp", user_id="user-123"), db=session)
        # The guide's "How Scoping Works" call.
        result = await toolset.query(
            ctx,
            model="Order",
            filters=[{"field": "status", "op": "eq", "value": "pending"}],
        )
        assert result.rows and all(r["tenant_id"] == "acme-corp" and r["status"] == "pending" for r in result.rows)
        await toolset.query(RunContext(Principal(tenant_id="globex", user_id="user-9"), session), model="Order")

    # Query audit logs by tenant:
    records = await store.query(tenant_id="acme-corp")
    assert len(records) == 1
    shape = records[0].to_dict()
    assert shape["id"].startswith("aud-")
    assert {k: shape[k] for k in ("tenant_id", "user_id", "tool_name", "model", "scopes_injected")} == {
        "tenant_id": "acme-corp",
        "user_id": "user-123",
        "tool_name": "query",
        "model": "Order",
        "scopes_injected": ["tenant_id = 'acme-corp'"],
    }
    assert shape["outcome"] == "success" and shape["row_count"] == len(result.rows)
    await store.aclose()
