"""The seed guide's read snippets as tests (`ormai` → `ormai_agents`), on SQLite and PostgreSQL.

Covered: the models of step 1, the two-model policy of step 2, `get_context` of step 3, "How
Scoping Works", multiple scoping fields, user-level scoping, hierarchical tenancy, the admin
bypass, validation, shared resources and tenant metadata access. The guide's "Invariant Testing"
and "Audit Trail" snippets live in test_seed_eval_audit.py.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

# Step 1 as written, plus `Integer`: the guide uses it for Order.id but forgets to import it.
from sqlalchemy import Boolean, Column, ForeignKey, Integer, String
from sqlalchemy.orm import declarative_base

from ormai_agents import AccessDeniedError, RecordNotFoundError, Toolset
from ormai_agents.audit import MemoryAuditStore
from ormai_agents.core import Principal, RunContext
from ormai_agents.policy import FieldAction, FieldPolicy, ModelPolicy, Policy, RowPolicy, WriteAction, WritePolicy
from tests._truth import captured, walk
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


# Not in the guide: models for the snippets that name columns its three models lack.
class Project(Base):  # type: ignore[valid-type,misc]
    __tablename__ = "projects"
    id = Column(Integer, primary_key=True)
    tenant_id = Column(String, nullable=False)
    organization_id = Column(String)


class Resource(Base):  # type: ignore[valid-type,misc]
    __tablename__ = "resources"
    id = Column(Integer, primary_key=True)
    tenant_id = Column(String)  # nullable: a resource may belong to no tenant
    is_public = Column(Boolean, nullable=False, default=False)
    title = Column(String)


# Step 2, as written.
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


# Step 3, as written.
def get_context(request, db):  # type: ignore[no-untyped-def]
    # Extract from JWT, header, or session
    tenant_id = request.headers.get("X-Tenant-ID")
    user_id = request.user.id
    return RunContext(
        principal=Principal(
            tenant_id=tenant_id,
            user_id=user_id,
        ),
        db=db,
    )


TENANTS = ["acme-corp", "globex", "root", "parent-tenant", "child-tenant", "system"]
USERS = {"user-1": "acme-corp", "user-2": "acme-corp", "user-3": "globex", "user-4": "root",
         "user-5": "parent-tenant", "user-6": "child-tenant"}  # fmt: skip
STATUSES = ["pending", "shipped", "cancelled"]
ORDERS = [
    {"id": i, "user_id": u, "tenant_id": USERS[u], "status": STATUSES[i % 3]}
    for i, u in enumerate([u for u in USERS for _ in range(4)], 1)
]
PROJECTS = [
    {"id": i, "tenant_id": t, "organization_id": o}
    for i, (t, o) in enumerate([(t, o) for t in ("acme-corp", "globex") for o in ("org-1", "org-2", None)], 1)
]
RESOURCES = [
    {"id": i, "tenant_id": t, "is_public": p, "title": f"{t}-{p}"}
    for i, (t, p) in enumerate([(t, p) for t in ("acme-corp", "globex", None) for p in (True, False)], 1)
]


@pytest.fixture(scope="module", params=["sqlite", "postgres", "mysql"])
def guide_backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    backend, cleanup = make_backend(request.param, tmp_path_factory.mktemp("guide"))
    create_tables(backend, Base.metadata)
    with backend.session() as s:
        s.add_all([Tenant(id=t, name=t.title()) for t in TENANTS])
        s.add_all([User(id=u, tenant_id=t, email=f"{u}@{t}.example") for u, t in USERS.items()])
        s.flush()
        s.add_all([Order(**o) for o in ORDERS] + [Project(**p) for p in PROJECTS] + [Resource(**r) for r in RESOURCES])
        s.commit()
    yield backend
    cleanup()


@pytest.fixture
def db(guide_backend: Backend) -> Iterator[Any]:
    with guide_backend.session() as s:
        yield s


def ids(rows: list[dict[str, Any]]) -> list[int]:
    return sorted(r["id"] for r in rows)


def order_ids(pred: Any) -> list[int]:
    return sorted(o["id"] for o in ORDERS if pred(o))


def request_for(tenant: str | None, user: str) -> Any:
    headers = {"X-Tenant-ID": tenant} if tenant is not None else {}
    return SimpleNamespace(headers=headers, user=SimpleNamespace(id=user))


def one_model(name: str, model_policy: ModelPolicy, fields: tuple[str, ...]) -> Policy:
    """A guide ModelPolicy fragment, with the fields it leaves out allowed for the test."""
    update = {"fields": {f: FieldPolicy(action=FieldAction.Allow) for f in fields}}
    return Policy(models={name: model_policy.model_copy(update=update)})


ORDER_FIELDS = ("id", "tenant_id", "user_id", "status")


# --- steps 1-3 and "How Scoping Works" ---------------------------------------------------------


async def test_how_scoping_works(guide_backend: Backend, db: Any) -> None:
    store = MemoryAuditStore()
    toolset = Toolset(Base, policy, store)
    ctx = get_context(request_for("acme-corp", "user-1"), db)
    with captured(guide_backend, "orders") as statements:
        # User's query
        result = await toolset.query(
            ctx,
            model="Order",
            filters=[{"field": "status", "op": "eq", "value": "pending"}],
        )
    assert ids(result.rows) == order_ids(lambda o: o["tenant_id"] == "acme-corp" and o["status"] == "pending")
    assert result.rows and {r["tenant_id"] for r in result.rows} == {"acme-corp"}
    [(sql, params)] = statements
    # WHERE tenant_id = 'acme-corp' (and its exact twin where the column's collation may fold:
    # byte-wise, or under MariaDB's utf8mb4_nopad_bin; `true` where `=` is exact already, as under
    # PostgreSQL's deterministic collations) AND status = 'pending', with both values bound.
    twin = r"(\S+\(orders\.tenant_id\b.*|\(orders\.tenant_id COLLATE utf8mb4_nopad_bin\) = .*|true)"
    assert re.search(rf"orders\.tenant_id = \S+ AND {twin} AND orders\.status = ", sql)
    assert {"acme-corp", "pending"} <= set(params) and "acme-corp" not in sql and "pending" not in sql
    assert store.records[-1].scopes_injected == ["tenant_id = 'acme-corp'"]
    # "Users cannot override or bypass the tenant scope."
    other = await toolset.query(ctx, model="Order", filters=[{"field": "tenant_id", "op": "eq", "value": "globex"}])
    assert other.rows == []
    users = await walk(toolset, ctx, "User")
    assert sorted(u["id"] for u in users) == ["user-1", "user-2"]
    # The guide's Tenant model is not in step 2's policy: it does not exist for the agent.
    assert "Tenant" not in (await toolset.describe_schema(ctx)).models


async def test_get_context_without_tenant_header_denies(guide_backend: Backend) -> None:
    toolset = Toolset(Base, policy)
    async with guide_backend.async_session() as adb:
        ctx = get_context(request_for(None, "user-1"), adb)
        with pytest.raises(AccessDeniedError):
            await toolset.query(ctx, model="Order")
        ctx = get_context(request_for("globex", "user-3"), adb)
        rows = await walk(toolset, ctx, "Order")
        assert ids(rows) == order_ids(lambda o: o["tenant_id"] == "globex")


# --- Multiple Scoping Fields, User-Level Scoping ---------------------------------------------


async def test_multiple_scoping_fields(db: Any) -> None:
    fragment = ModelPolicy(
        scoping={
            "tenant_id": "principal.tenant_id",
            "organization_id": "principal.metadata.org_id",
        }
    )
    toolset = Toolset(Base, one_model("Project", fragment, ("id", "tenant_id", "organization_id")))
    ctx = RunContext(principal=Principal(tenant_id="acme-corp", metadata={"org_id": "org-2"}), db=db)
    rows = await walk(toolset, ctx, "Project")
    assert ids(rows) == sorted(p["id"] for p in PROJECTS if p["tenant_id"] == "acme-corp" and p["organization_id"] == "org-2")
    assert len(rows) == 1
    # Without an org in the principal's metadata the call is refused, never unscoped.
    with pytest.raises(AccessDeniedError):
        await toolset.query(RunContext(principal=Principal(tenant_id="acme-corp"), db=db), model="Project")


async def test_user_level_scoping(db: Any) -> None:
    # The guide's section has no snippet; this is the policy its sentence describes.
    fragment = ModelPolicy(scoping={"tenant_id": "principal.tenant_id", "user_id": "principal.user_id"})
    toolset = Toolset(Base, one_model("Order", fragment, ORDER_FIELDS))
    ctx = RunContext(principal=Principal(tenant_id="acme-corp", user_id="user-2"), db=db)
    assert ids(await walk(toolset, ctx, "Order")) == order_ids(lambda o: o["user_id"] == "user-2")
    # Own user id in another tenant: nothing.
    ctx = RunContext(principal=Principal(tenant_id="globex", user_id="user-2"), db=db)
    assert await walk(toolset, ctx, "Order") == []
    with pytest.raises(AccessDeniedError):
        await toolset.query(RunContext(principal=Principal(tenant_id="acme-corp"), db=db), model="Order")


# --- Hierarchical Tenancy --------------------------------------------------------------------

# Principal with hierarchy (as written)
principal = Principal(
    tenant_id="child-tenant",
    metadata={
        "parent_tenant_id": "parent-tenant",
        "tenant_hierarchy": ["root", "parent-tenant", "child-tenant"],
    },
)
HIERARCHY = order_ids(lambda o: o["tenant_id"] in ("root", "parent-tenant", "child-tenant"))
OWN = order_ids(lambda o: o["tenant_id"] == "child-tenant")


async def test_hierarchy_snippet_as_written_is_a_restriction(db: Any) -> None:
    # Policy with hierarchical access (as written: no mode, so it restricts and grants nothing).
    fragment = ModelPolicy(
        scoping={"tenant_id": "principal.tenant_id"},
        row_policies=[
            RowPolicy(
                name="parent_access",
                condition="tenant_id IN principal.metadata.tenant_hierarchy",
                description="Access data from parent tenants",
            ),
        ],
    )
    toolset = Toolset(Base, one_model("Order", fragment, ORDER_FIELDS))
    assert ids(await walk(toolset, RunContext(principal=principal, db=db), "Order")) == OWN
    # A principal whose own tenant is outside its hierarchy sees nothing at all.
    stray = Principal(tenant_id="globex", metadata={"tenant_hierarchy": ["root"]})
    assert await walk(toolset, RunContext(principal=stray, db=db), "Order") == []


async def test_hierarchy_with_permit_mode(db: Any) -> None:
    fragment = ModelPolicy(
        scoping={"tenant_id": "principal.tenant_id"},
        row_policies=[
            RowPolicy(
                name="parent_access",
                condition="tenant_id IN principal.metadata.tenant_hierarchy",
                description="Access data from parent tenants",
                mode="permit",
            ),
        ],
    )
    toolset = Toolset(Base, one_model("Order", fragment, ORDER_FIELDS))
    assert ids(await walk(toolset, RunContext(principal=principal, db=db), "Order")) == HIERARCHY
    # Without a hierarchy the permit grants nothing: own tenant only.
    alone = Principal(tenant_id="child-tenant")
    assert ids(await walk(toolset, RunContext(principal=alone, db=db), "Order")) == OWN


async def test_hierarchy_as_scoping_is_in(guide_backend: Backend, db: Any) -> None:
    fragment = ModelPolicy(scoping={"tenant_id": "principal.metadata.tenant_hierarchy"})
    toolset = Toolset(Base, one_model("Order", fragment, ORDER_FIELDS))
    with captured(guide_backend, "orders") as statements:
        rows = await walk(toolset, RunContext(principal=principal, db=db), "Order")
    assert ids(rows) == HIERARCHY
    assert all(re.search(r"orders\.tenant_id IN \(", sql) for sql, _ in statements)
    with pytest.raises(AccessDeniedError):  # an empty hierarchy is refused
        await toolset.query(RunContext(principal=Principal(metadata={"tenant_hierarchy": []}), db=db), model="Order")


# --- Cross-Tenant Access (Admin) -------------------------------------------------------------


async def test_admin_bypass(db: Any) -> None:
    # Admin principal
    admin_principal = Principal(
        tenant_id="system",
        user_id="admin-001",
        roles=["super_admin"],
    )
    # Policy with admin bypass
    fragment = ModelPolicy(
        scoping={"tenant_id": "principal.tenant_id"},
        row_policies=[
            RowPolicy(
                name="admin_bypass",
                condition="'super_admin' IN principal.roles",
                bypass=True,  # Bypasses scoping for admins
            ),
        ],
    )
    store = MemoryAuditStore()
    toolset = Toolset(Base, one_model("Order", fragment, ORDER_FIELDS), store)
    rows = await walk(toolset, RunContext(principal=admin_principal, db=db), "Order")
    assert ids(rows) == order_ids(lambda o: True)
    admin_record = store.records[-1]
    assert admin_record.bypass_used is True and admin_record.policies_applied == ["admin_bypass"]
    assert admin_record.scopes_injected == [] and admin_record.user_id == "admin-001"
    count = await toolset.aggregate(RunContext(principal=admin_principal, db=db), model="Order")
    assert count.value == len(ORDERS) and store.records[-1].bypass_used is True
    # A normal user is still scoped, and the audit record says no bypass.
    user = Principal(tenant_id="globex", user_id="user-3", roles=["admin"])
    rows = await walk(toolset, RunContext(principal=user, db=db), "Order")
    assert ids(rows) == order_ids(lambda o: o["tenant_id"] == "globex")
    assert store.records[-1].bypass_used is False and store.records[-1].scopes_injected == ["tenant_id = 'globex'"]


# --- Validation, Shared Resources, Tenant Metadata Access -------------------------------------


async def test_validation_tenant_required(guide_backend: Backend, db: Any) -> None:
    fragment = ModelPolicy(
        scoping={"tenant_id": "principal.tenant_id"},
        row_policies=[
            RowPolicy(
                name="tenant_required",
                condition="tenant_id IS NOT NULL",
                description="Ensure tenant_id is always set",
            )
        ],
    )
    toolset = Toolset(Base, one_model("Resource", fragment, ("id", "tenant_id", "is_public")))
    with captured(guide_backend, "resources") as statements:
        rows = await walk(toolset, RunContext(principal=Principal(tenant_id="acme-corp"), db=db), "Resource")
    assert ids(rows) == sorted(r["id"] for r in RESOURCES if r["tenant_id"] == "acme-corp")
    assert "resources.tenant_id IS NOT NULL" in statements[0][0]


async def test_shared_resources(db: Any) -> None:
    fragment = ModelPolicy(
        scoping={},  # No tenant scoping
        row_policies=[
            RowPolicy(
                name="public_or_owned",
                condition="is_public = true OR tenant_id = principal.tenant_id",
            ),
        ],
    )
    toolset = Toolset(Base, one_model("Resource", fragment, ("id", "tenant_id", "is_public", "title")))
    for tenant in ("acme-corp", "globex", "initech"):
        rows = await walk(toolset, RunContext(principal=Principal(tenant_id=tenant), db=db), "Resource")
        assert ids(rows) == sorted(r["id"] for r in RESOURCES if r["is_public"] or r["tenant_id"] == tenant)
        assert all(r["is_public"] or r["tenant_id"] == tenant for r in rows)
    # Without a tenant the restriction can't be evaluated: refused, not "public only" nor everything.
    with pytest.raises(AccessDeniedError):
        await toolset.query(RunContext(principal=Principal(), db=db), model="Resource")


async def test_tenant_metadata_access(db: Any) -> None:
    tenant_policy = Policy(
        models={
            "Tenant": ModelPolicy(
                allowed=True,
                fields={
                    "id": FieldPolicy(action=FieldAction.Allow),
                    "name": FieldPolicy(action=FieldAction.Allow),
                },
                scoping={"id": "principal.tenant_id"},  # Can only see own tenant
                write_policy=WritePolicy(
                    create=WriteAction.Deny,
                    update=WriteAction.Deny,
                    delete=WriteAction.Deny,
                ),
            )
        }
    )
    toolset = Toolset(Base, tenant_policy)
    ctx = RunContext(principal=Principal(tenant_id="globex"), db=db)
    rows = await walk(toolset, ctx, "Tenant")
    assert rows == [{"id": "globex", "name": "Globex"}]
    assert (await toolset.get(ctx, model="Tenant", id="globex")).data == {"id": "globex", "name": "Globex"}
    with pytest.raises(RecordNotFoundError):
        await toolset.get(ctx, model="Tenant", id="acme-corp")
    assert (await toolset.aggregate(ctx, model="Tenant")).value == 1
    assert "writes" not in (await toolset.describe_schema(ctx)).models["Tenant"]
