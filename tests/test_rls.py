"""Row-level security generated from the policy, on the real PostgreSQL.

The database is checked on its own: an application role that does not own the tables reads and
writes with raw SQLAlchemy statements or through a toolset whose policy has no scoping at all,
and must still see exactly what the toolset's full policy allows.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, delete, insert, select, text, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool, QueuePool

from ormai_agents import (
    AccessDeniedError,
    DatabaseError,
    FieldAction,
    ModelPolicy,
    Policy,
    PolicyError,
    Principal,
    RecordNotFoundError,
    RowPolicy,
    RunContext,
    Toolset,
    WriteAction,
    WritePolicy,
)
from ormai_agents.rls import generate_rls, principal_settings, settings_paths, settings_statement
from tests import shop
from tests.conftest import make_backend, pg_url

ALL = FieldAction.Allow


def rls_policy() -> Policy:
    """Scoping by scalar and by list, permit, restrict and bypass policies, hostile literals."""
    return Policy(
        models={
            "Tenant": ModelPolicy(
                fields={"id": ALL, "name": ALL},
                scoping={"id": "principal.tenant_id"},
                row_policies=[
                    RowPolicy("same", "id = 'initech' AND principal.metadata.partner = principal.metadata.level", mode="permit"),
                    RowPolicy("own-user", "id != 'globex' OR principal.user_id != principal.tenant_id"),
                ],
            ),
            "Customer": ModelPolicy(
                default_field_action=ALL,
                scoping={"tenant_id": "principal.metadata.tenants"},
                row_policies=[
                    RowPolicy("no-obrien", "name != 'O''Brien'"),
                    RowPolicy("partners", "org_id = 'org-1' AND principal.metadata.partner IN ('yes', 1)", mode="permit"),
                    RowPolicy("not-one", "NOT (principal.metadata.level IN (1, 'one')) OR org_id IS NULL"),
                ],
            ),
            "Order": ModelPolicy(
                default_field_action=ALL,
                scoping={"tenant_id": "principal.tenant_id"},
                row_policies=[
                    RowPolicy("own-or-manager", "owner_id = principal.user_id OR 'manager' IN principal.roles"),
                    RowPolicy("no-odd-status", "status IS NULL OR status NOT IN ('back\\slash', 'x%_\\y', '100%')"),
                    RowPolicy("partner-shipped", "status = 'shipped' AND principal.metadata.partner = 'yes'", mode="permit"),
                    RowPolicy("support", "'support' IN principal.roles", bypass=True),
                ],
            ),
            "Document": ModelPolicy(
                default_field_action=ALL,
                scoping={"tenant_id": "principal.tenant_id"},
                row_policies=[
                    RowPolicy("public", "is_public = true", mode="permit"),
                    RowPolicy("admin", "'admin' IN principal.roles", bypass=True),
                    RowPolicy("clearance", "title != 'Roadmap' OR principal.metadata.level >= 3"),
                ],
            ),
        },
        max_rows=50,
    )


def open_policy() -> Policy:
    """Every row and field visible: the application-level scoping switched off."""
    return Policy(models={name: ModelPolicy(default_field_action=ALL) for name in ("Tenant", "Customer", "Order", "Document")})


PRINCIPALS = [
    Principal(tenant_id="acme", user_id="u1", metadata={"tenants": ["acme", "globex"], "partner": "yes", "level": 3}),
    Principal(tenant_id="globex", user_id="u2", roles=("manager",), metadata={"tenants": "globex", "level": "1"}),
    Principal(tenant_id="initech", user_id="u3", roles=("admin", "support"), metadata={"tenants": [], "level": 5}),
    Principal(user_id="u1", metadata={"tenants": ["acme"]}),  # no tenant
    Principal(tenant_id="", user_id="u2", roles=("admin",)),  # empty tenant
    Principal(tenant_id="acme", roles=("manager",), metadata={"tenants": ["initech", None]}),  # no user
    Principal(tenant_id="acme' OR '1'='1", user_id="u1' OR '1'='1", metadata={"tenants": "x' OR 'a'='a"}),
    Principal(tenant_id="acme", user_id="u2", roles=("support",), metadata={"tenants": {"nested": "acme"}}),
]
MODELS = {"Tenant": shop.Tenant, "Customer": shop.Customer, "Order": shop.Order, "Document": shop.Document}


class Pg:
    def __init__(self, backend: Any, role: str, schema: str) -> None:
        self.backend = backend  # owner (superuser) engines: row-level security does not apply
        self.role = role
        self.schema = schema
        url = pg_url("psycopg").set(username=role)
        self.app = create_engine(url, poolclass=QueuePool, pool_size=1, max_overflow=0,
                                 connect_args={"options": f"-csearch_path={schema}"})  # fmt: skip
        self.app_async = create_async_engine(
            pg_url("asyncpg").set(username=role), poolclass=NullPool,
            connect_args={"server_settings": {"search_path": schema}},
        )  # fmt: skip


@pytest.fixture(scope="module")
def pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pg]:
    backend, cleanup = make_backend("postgres", tmp_path_factory.mktemp("rls"))
    shop.Base.metadata.create_all(backend.sync_engine)
    with backend.session() as s:
        s.add_all(shop.seed_rows())
        s.commit()
    role = f"ormai_app_{uuid.uuid4().hex[:10]}"
    with backend.sync_engine.begin() as conn:
        schema = conn.execute(text("select current_schema()")).scalar_one()
        conn.execute(text(f'CREATE ROLE "{role}" LOGIN NOSUPERUSER NOBYPASSRLS'))
        conn.execute(text(f'GRANT USAGE ON SCHEMA "{schema}" TO "{role}"'))
        conn.execute(text(f'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA "{schema}" TO "{role}"'))
        conn.execute(text(f'GRANT USAGE ON ALL SEQUENCES IN SCHEMA "{schema}" TO "{role}"'))
        conn.execute(text("SELECT setval(pg_get_serial_sequence('documents', 'id'), 10000)"))  # past the seed's ids
        generate_rls(shop.Base, rls_policy()).apply(conn)
    env = Pg(backend, role, schema)
    try:
        yield env
    finally:
        env.app.dispose()
        cleanup()
        with backend.sync_engine.begin() as conn:
            conn.execute(text(f'DROP OWNED BY "{role}"'))
            conn.execute(text(f'DROP ROLE "{role}"'))
        backend.sync_engine.dispose()


PATHS = settings_paths({})  # tenant_id, user_id, roles
FULL_PATHS = list(dict.fromkeys([*PATHS, ("metadata", "tenants"), ("metadata", "partner"), ("metadata", "level")]))


def rls_ids(conn: Any, principal: Principal, model: type) -> list[int | str]:
    """The ids the database alone lets the principal see: raw select, no application scoping."""
    conn.execute(settings_statement(principal_settings(principal, FULL_PATHS)))
    return sorted(conn.execute(select(model.id)).scalars())


async def app_ids(toolset: Toolset, db: Any, principal: Principal, model: str) -> list[int | str] | None:
    """The ids the toolset returns; None when it refuses the principal."""
    ids: list[Any] = []
    cursor = None
    try:
        while True:
            page = await toolset.query(RunContext(principal, db), model=model, select=["id"], limit=50, cursor=cursor)
            ids += [r["id"] for r in page.rows]
            cursor = page.next_cursor
            if cursor is None:
                return sorted(ids)
    except AccessDeniedError:
        return None


def test_app_role_does_not_own_the_tables(pg: Pg) -> None:
    with pg.app.connect() as conn:
        owners = conn.execute(text("select tableowner from pg_tables where tablename = 'orders' and schemaname = current_schema()")).scalars().all()
        me = conn.execute(text("select current_user, rolbypassrls, rolsuper from pg_roles where rolname = current_user")).one()
    assert owners and owners[0] != pg.role
    assert me == (pg.role, False, False)


def test_unset_settings_mean_no_rows(pg: Pg) -> None:
    with pg.app.connect() as conn:
        for model in MODELS.values():
            assert conn.execute(select(model.id)).all() == []
        conn.rollback()


async def test_database_alone_matches_the_toolset(pg: Pg) -> None:
    """Differential: ids visible via RLS only (raw selects as the app role) == the toolset's ids
    (application scoping on the owner connection, where RLS does not apply)."""
    app = Toolset(shop.Base, rls_policy(), secret_key=b"k" * 32)
    seen_any = total_any = False
    with pg.backend.session() as owner, pg.app.connect() as conn:
        for model_name, model in MODELS.items():
            total = sorted(owner.execute(select(model.id)).scalars())
            for principal in PRINCIPALS:
                expected = await app_ids(app, owner, principal, model_name)
                got = rls_ids(conn, principal, model)
                conn.rollback()
                assert got == (expected or []), (model_name, principal)
                seen_any |= bool(got)
                total_any |= got == total
                assert got != total or principal.roles, (model_name, principal)
    assert seen_any, "the oracle must not be empty"
    assert total_any, "bypass principals see every row"


_tenant = st.sampled_from(["acme", "globex", "initech", "", None, "ACME", "acme ", "acme' OR 'x'='x"])
_principals = st.builds(
    Principal,
    tenant_id=_tenant,
    user_id=st.sampled_from(["u1", "u2", "u3", "", None]),
    roles=st.lists(st.sampled_from(["manager", "admin", "support", "Admin", ""]), max_size=3).map(tuple),
    metadata=st.fixed_dictionaries({}, optional={
        "tenants": st.one_of(_tenant, st.lists(_tenant, max_size=3)),
        "partner": st.sampled_from(["yes", "no", "", 1, True, ["yes"]]),
        "level": st.one_of(st.integers(-1, 5), st.sampled_from(["3", 2.5, None, True, False, [3], {"x": 3}])),
    }),
)  # fmt: skip


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(principal=_principals)
async def test_generated_principals_see_the_same_rows(pg: Pg, principal: Principal) -> None:
    """Property: for any principal, the database alone shows exactly what the toolset shows."""
    app = _APP
    with pg.backend.session() as owner, pg.app.connect() as conn:
        for model_name, model in MODELS.items():
            expected = await app_ids(app, owner, principal, model_name)
            got = rls_ids(conn, principal, model)
            conn.rollback()
            assert got == (expected or []), (model_name, principal)


_APP = Toolset(shop.Base, rls_policy(), secret_key=b"k" * 32)


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_toolset_under_rls_matches_the_application(pg: Pg, mode: str) -> None:
    """As the app role with rls=True: a toolset whose policy has no scoping at all (the database
    alone isolates), and the full policy (both layers: row-level security must not take away
    what the policy grants, permits and bypasses included) return the toolset's ids."""
    app = Toolset(shop.Base, rls_policy(), secret_key=b"k" * 32)
    unscoped = Toolset(shop.Base, open_policy(), secret_key=b"k" * 32, rls=True)
    both = Toolset(shop.Base, rls_policy(), secret_key=b"k" * 32, rls=True)
    with pg.backend.session() as owner:
        for principal in PRINCIPALS:
            for model in MODELS:
                expected = await app_ids(app, owner, principal, model)
                for toolset in (unscoped, both):
                    if mode == "sync":
                        with Session(pg.app) as s:
                            got = await app_ids(toolset, s, principal, model)
                    else:
                        async with AsyncSession(pg.app_async) as s:
                            got = await app_ids(toolset, s, principal, model)
                    assert got == (expected if toolset is both else expected or []), (model, principal)


async def test_async_pooled_connection_carries_no_tenant(pg: Pg) -> None:
    engine = create_async_engine(
        pg_url("asyncpg").set(username=pg.role), pool_size=1, max_overflow=0,
        connect_args={"server_settings": {"search_path": pg.schema}},
    )  # fmt: skip
    toolset = Toolset(shop.Base, open_policy(), secret_key=b"k" * 32, rls=True)
    principal = Principal(tenant_id="globex", user_id="u2", metadata={"level": 3})
    try:
        async with AsyncSession(engine) as s:
            assert (await toolset.get(RunContext(principal, s), model="Tenant", id="globex")).data["id"] == "globex"
            with pytest.raises(RecordNotFoundError):
                await toolset.get(RunContext(principal, s), model="Tenant", id="acme")
            pid = (await s.execute(text("select pg_backend_pid()"))).scalar()
        async with engine.connect() as conn:
            assert (await conn.execute(text("select pg_backend_pid()"))).scalar() == pid
            assert (await conn.execute(text("select current_setting('ormai.tenant_id', true)"))).scalar() in (None, "")
            assert (await conn.execute(select(shop.Tenant.id))).all() == []
    finally:
        await engine.dispose()


async def test_settings_are_bound_and_transaction_local(pg: Pg) -> None:
    unscoped = Toolset(shop.Base, open_policy(), secret_key=b"k" * 32, rls=True)
    hostile = Principal(tenant_id="acme'; DROP TABLE orders; --", user_id="u1")
    with Session(pg.app) as s:
        assert (await unscoped.query(RunContext(hostile, s), model="Order")).rows == []
        assert s.execute(text("select current_setting('ormai.tenant_id', true)")).scalar() == hostile.tenant_id
        s.commit()
        assert s.execute(text("select current_setting('ormai.tenant_id', true)")).scalar() in (None, "")
        rows = (await unscoped.query(RunContext(Principal(tenant_id="acme", user_id="u1"), s), model="Order")).rows
        assert rows and {r["tenant_id"] for r in rows} == {"acme"}
        s.rollback()
    with pg.backend.session() as owner:
        assert owner.execute(select(shop.Order.id).limit(1)).all()


async def test_failed_call_leaves_no_tenant_on_the_pooled_connection(pg: Pg) -> None:
    # A restrict policy whose principal value can't be cast makes the statement fail in the database.
    failing = Policy(models={"Order": ModelPolicy(
        default_field_action=ALL,
        row_policies=[RowPolicy("qty", "quantity >= principal.metadata.min_qty")],
    )})  # fmt: skip
    toolset = Toolset(shop.Base, open_policy(), secret_key=b"k" * 32, rls=True)
    with pg.backend.sync_engine.begin() as conn:
        conn.execute(text('DROP POLICY IF EXISTS "ormai_restrict_qty" ON orders'))
        generate_rls(shop.Base, failing).apply(conn)
    try:
        principal = Principal(tenant_id="acme", user_id="u1", metadata={"min_qty": "not a number"})
        with Session(pg.app) as s:
            pid = s.execute(text("select pg_backend_pid()")).scalar()
            s.commit()
            with pytest.raises(DatabaseError):
                await toolset.query(RunContext(principal, s), model="Order")
            # The same session, then the same pooled connection, carry no tenant.
            assert s.execute(text("select current_setting('ormai.tenant_id', true)")).scalar() in (None, "")
        with pg.app.connect() as conn:
            assert conn.execute(text("select pg_backend_pid()")).scalar() == pid
            assert conn.execute(text("select current_setting('ormai.tenant_id', true)")).scalar() in (None, "")
            assert conn.execute(text("select current_setting('ormai.metadata.min_qty', true)")).scalar() in (None, "")
            assert conn.execute(select(shop.Order.id)).all() == []
    finally:
        with pg.backend.sync_engine.begin() as conn:
            conn.execute(text('DROP POLICY IF EXISTS "ormai_restrict_qty" ON orders'))


def test_writes_are_checked_by_the_database(pg: Pg) -> None:
    acme = Principal(tenant_id="acme", user_id="u1", metadata={"level": 3})
    with pg.backend.session() as owner:
        foreign = owner.execute(select(shop.Document.id, shop.Document.is_public).where(
            shop.Document.tenant_id.is_distinct_from("acme"))).all()  # fmt: skip
        own = owner.execute(select(shop.Document.id).where(
            shop.Document.tenant_id == "acme", shop.Document.title != "Roadmap")).scalars().first()  # fmt: skip
    assert own is not None
    assert any(public for _, public in foreign), "seed must have public documents of other tenants"
    foreign_ids = [d for d, _ in foreign]

    def as_acme(conn: Any, principal: Principal = acme) -> None:
        conn.execute(settings_statement(principal_settings(principal, FULL_PATHS)))

    with pg.app.connect() as conn:
        as_acme(conn)
        visible = set(conn.execute(select(shop.Document.id)).scalars())
        assert visible & set(foreign_ids), "public documents of other tenants are readable (permit)"
        # ...but another tenant's rows, public or not, can't be changed or deleted.
        assert conn.execute(update(shop.Document).where(shop.Document.id.in_(foreign_ids)).values(title="pwned")).rowcount == 0
        assert conn.execute(delete(shop.Document).where(shop.Document.id.in_(foreign_ids))).rowcount == 0
        # An own row may be changed.
        assert conn.execute(update(shop.Document).where(shop.Document.id == own).values(title="ok")).rowcount == 1
        conn.rollback()
    # WITH CHECK: rows can't be moved or created outside the scope or the restrict policies.
    low = Principal(tenant_id="acme", user_id="u1", metadata={"level": 1})
    for principal, stmt in (
        (acme, update(shop.Document).where(shop.Document.id == own).values(tenant_id="globex")),
        (acme, update(shop.Document).where(shop.Document.id == own).values(tenant_id=None)),
        (acme, insert(shop.Document).values(id=1000, tenant_id="globex", title="x", is_public=False)),
        (acme, insert(shop.Document).values(id=1001, tenant_id=None, title="x", is_public=True)),
        (low, insert(shop.Document).values(id=1002, tenant_id="acme", title="Roadmap", is_public=False)),
        (low, update(shop.Document).where(shop.Document.id == own).values(title="Roadmap")),
    ):
        with pg.app.connect() as conn:
            as_acme(conn, principal)
            with pytest.raises(DBAPIError) as info:
                conn.execute(stmt)
            assert getattr(info.value.orig, "sqlstate", None) == "42501"  # row-level security violation
            conn.rollback()
    with pg.app.connect() as conn:
        # No settings: nothing can be inserted.
        with pytest.raises(DBAPIError):
            conn.execute(insert(shop.Document).values(id=1003, tenant_id="acme", title="x", is_public=False))
        conn.rollback()
        # A bypass principal (the admin role, compiled into ormai_scope) may write any tenant's row.
        as_acme(conn, Principal(tenant_id="acme", user_id="u1", roles=("admin",), metadata={"level": 3}))
        conn.execute(insert(shop.Document).values(id=1004, tenant_id="globex", title="x", is_public=False))
        assert conn.execute(select(shop.Document.id).where(shop.Document.id == 1004)).scalar() == 1004
        conn.rollback()


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_toolset_writes_are_checked_by_the_database(pg: Pg, mode: str) -> None:
    """Writes through a toolset with no scoping and no auto-set (the application's checks off):
    the database alone keeps them inside the principal's tenant."""
    writable = WritePolicy(create=WriteAction.Allow, update=WriteAction.Allow, delete=WriteAction.Allow,
                           bulk_update=WriteAction.Allow, max_affected_rows=1000)  # fmt: skip
    policy = Policy(models={"Document": ModelPolicy(default_field_action=ALL, write_policy=writable)})
    toolset = Toolset(shop.Base, policy, secret_key=b"k" * 32, rls=True)
    acme = Principal(tenant_id="acme", user_id="u1", metadata={"level": 3})
    with pg.backend.session() as owner:
        foreign = owner.execute(select(shop.Document.id).where(shop.Document.tenant_id != "acme")).scalars().first()
        own_ids = set(owner.execute(select(shop.Document.id).where(shop.Document.tenant_id == "acme")).scalars())
        was_public = set(owner.execute(select(shop.Document.id).where(shop.Document.is_public)).scalars())
        snapshot = owner.execute(select(shop.Document.id, shop.Document.tenant_id, shop.Document.title)
                                 .order_by(shop.Document.id)).all()  # fmt: skip

    async def call(method: str, **kwargs: Any) -> Any:
        if mode == "sync":
            with Session(pg.app) as s:
                return await getattr(toolset, method)(RunContext(acme, s), model="Document", **kwargs)
        async with AsyncSession(pg.app_async) as s:
            return await getattr(toolset, method)(RunContext(acme, s), model="Document", **kwargs)

    try:
        for method, kwargs in (
            ("create", {"data": {"tenant_id": "globex", "title": "x", "is_public": True}}),
            ("create", {"data": {"tenant_id": None, "title": "x", "is_public": True}}),
            ("update", {"id": min(own_ids), "data": {"tenant_id": "globex"}}),
            ("update", {"id": min(own_ids), "data": {"title": "Roadmap", "tenant_id": "initech"}}),
        ):
            with pytest.raises(DatabaseError, match="row-level security"):
                await call(method, **kwargs)
        for method, kwargs in (("update", {"id": foreign, "data": {"title": "pwned"}}), ("delete", {"id": foreign})):
            with pytest.raises(RecordNotFoundError):
                await call(method, **kwargs)
        # bulk_update without filters reaches only the tenant's own rows.
        result = await call("bulk_update", filters=[{"field": "id", "op": "gte", "value": 1}], data={"is_public": True})
        assert result.data == {"updated_count": len(own_ids)}
        created = await call("create", data={"tenant_id": "acme", "title": "fine", "is_public": False})
        new_id = created.data["id"]
        assert new_id > 10000 and created.data["tenant_id"] == "acme"
        with pg.backend.session() as owner:
            after = owner.execute(select(shop.Document.id, shop.Document.tenant_id, shop.Document.title)
                                  .order_by(shop.Document.id)).all()  # fmt: skip
            public = set(owner.execute(select(shop.Document.id).where(shop.Document.is_public)).scalars())
        assert [r for r in after if r[0] != new_id] == snapshot  # nothing else written or moved
        assert own_ids <= public
    finally:
        with pg.backend.session() as owner:
            owner.execute(delete(shop.Document).where(shop.Document.id > 10000))
            owner.execute(update(shop.Document).where(shop.Document.id.in_(own_ids)).values(is_public=False))
            owner.execute(update(shop.Document).where(shop.Document.id.in_(was_public)).values(is_public=True))
            owner.commit()


async def test_permit_rows_are_readable_but_not_writable(pg: Pg) -> None:
    """A permit widens reads only: another tenant's public document can't be changed or deleted,
    whatever the application layer would allow."""
    models = dict(rls_policy().models)
    models["Document"] = models["Document"].model_copy(update={"write_policy": WritePolicy(
        update=WriteAction.Allow, delete=WriteAction.Allow)})  # fmt: skip
    toolset = Toolset(shop.Base, Policy(models=models), secret_key=b"k" * 32, rls=True)
    acme = Principal(tenant_id="acme", user_id="u1", metadata={"level": 3})
    with pg.backend.session() as owner:
        public = owner.execute(select(shop.Document.id, shop.Document.title).where(
            shop.Document.tenant_id == "globex", shop.Document.is_public)).first()  # fmt: skip
    assert public is not None
    with Session(pg.app) as s:
        assert (await toolset.get(RunContext(acme, s), model="Document", id=public.id)).data["title"] == public.title
        for method, kwargs in (("update", {"data": {"title": "defaced"}}), ("delete", {})):
            with pytest.raises(RecordNotFoundError):
                await getattr(toolset, method)(RunContext(acme, s), model="Document", id=public.id, **kwargs)
    with pg.backend.session() as owner:
        assert owner.execute(select(shop.Document.title).where(shop.Document.id == public.id)).scalar() == public.title


async def test_write_inside_the_hosts_transaction(pg: Pg) -> None:
    writable = WritePolicy(create=WriteAction.Allow, auto_set={"tenant_id": "principal.tenant_id"})
    policy = shop.shop_policy().model_copy(update={"models": {"Document": ModelPolicy(
        default_field_action=ALL, scoping={"tenant_id": "principal.tenant_id"}, write_policy=writable)}})  # fmt: skip
    toolset = Toolset(shop.Base, policy, secret_key=b"k" * 32, rls=True)
    acme = Principal(tenant_id="acme", user_id="u1", metadata={"level": 3})
    try:
        with Session(pg.app) as s:
            s.execute(text("select 1"))  # the host's transaction is open: the write uses a savepoint
            made = await toolset.create(RunContext(acme, s), model="Document", data={"title": "t", "is_public": False})
            s.commit()
        with pg.backend.session() as owner:
            assert owner.execute(select(shop.Document.tenant_id).where(shop.Document.id == made.data["id"])).scalar() == "acme"
    finally:
        with pg.backend.session() as owner:
            owner.execute(delete(shop.Document).where(shop.Document.id > 10000))
            owner.commit()


async def test_rls_option_needs_postgresql(tmp_path: Any) -> None:
    backend, cleanup = make_backend("sqlite", tmp_path)
    try:
        shop.Base.metadata.create_all(backend.sync_engine)
        toolset = Toolset(shop.Base, shop.shop_policy(), rls=True)
        with backend.session() as s, pytest.raises(PolicyError, match="PostgreSQL"):
            await toolset.query(RunContext(Principal(tenant_id="acme"), s), model="Order")
        with pytest.raises(TypeError):
            Toolset(shop.Base, shop.shop_policy(), rls="yes")  # type: ignore[arg-type]
    finally:
        cleanup()


# --- generation without a database ----------------------------------------------------------------

from sqlalchemy import JSON, Integer, String  # noqa: E402
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column  # noqa: E402


class _Odd(DeclarativeBase):
    pass


class Gadget(_Odd):
    __tablename__ = "gadgets"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(40))
    attrs: Mapped[dict] = mapped_column(JSON)  # type: ignore[type-arg]
    region: Mapped[str] = mapped_column(String(20))


def test_what_sql_cannot_express_is_reported_not_dropped() -> None:
    policy = Policy(models={"Gadget": ModelPolicy(
        default_field_action=ALL,
        scoping={"tenant_id": "principal.tenant_id", "attrs": "principal.metadata.attrs"},
        row_policies=[
            RowPolicy("dash", "region = principal.metadata.home-region"),
            RowPolicy("roles-eq", "principal.roles = 'x' OR region = 'eu'"),
            RowPolicy("flag", "principal.metadata.beta = true", mode="permit"),
            RowPolicy("order", "principal.user_id > 'm'", mode="permit"),
            RowPolicy("fine", "region != 'x''); DROP TABLE gadgets; --'"),
        ],
    )})  # fmt: skip
    plan = generate_rls(_Odd, policy)
    problems = {(u.model, u.rule) for u in plan.unsupported}
    assert problems == {
        ("Gadget", "scoping attrs"),
        ("Gadget", "row policy 'dash'"),
        ("Gadget", "row policy 'roles-eq'"),
        ("Gadget", "row policy 'order'"),
    }
    assert all(u.reason for u in plan.unsupported)
    sql = plan.sql
    # What can be expressed still is: the tenant scoping and the restrict with a hostile literal,
    # rendered as one quoted literal.
    assert "tenant_id = CAST(nullif(current_setting('ormai.tenant_id', true), '') AS TEXT)" in sql
    assert "region != 'x''); DROP TABLE gadgets; --'" in sql
    assert "ormai_restrict_fine" in sql and "ormai_restrict_dash" not in sql and "ormai_permit_flag" in sql
    assert sql.count("ENABLE ROW LEVEL SECURITY") == 1 and sql.count("FORCE ROW LEVEL SECURITY") == 1


def test_generation_from_a_toolset_matches_models_and_policy() -> None:
    toolset = Toolset(shop.Base, rls_policy())
    assert generate_rls(toolset) == generate_rls(shop.Base, rls_policy())
    plan = generate_rls(toolset)
    assert plan.settings == ["ormai.metadata.level", "ormai.metadata.partner", "ormai.metadata.tenants",
                             "ormai.roles", "ormai.tenant_id", "ormai.user_id"]  # fmt: skip
    assert '"ormai_restrict_own-or-manager"' in plan.sql
    # Permits widen reads only; restricts are restrictive for every command.
    assert "CREATE POLICY ormai_permit_public ON documents AS PERMISSIVE FOR SELECT USING" in plan.sql
    assert 'CREATE POLICY "ormai_restrict_no-odd-status" ON orders AS RESTRICTIVE FOR ALL USING' in plan.sql
    long_name = Policy(models={"Order": ModelPolicy(default_field_action=ALL, row_policies=[RowPolicy("x" * 90, "quantity > 0")])})
    names = [name for _, _, name in generate_rls(shop.Base, long_name).policies]
    assert all(len(n) <= 63 for n in names) and len(set(names)) == len(names)


def test_principal_settings_encoding() -> None:
    p = Principal(tenant_id=7, user_id=None, roles=("a", "b"),
                  metadata={"tenants": ["x", "y"], "org": {"id": 5, "name": "n"}, "bad": ["x", None], "e": ""})  # fmt: skip
    values = principal_settings(p, PATHS)
    assert values == {
        "ormai.tenant_id": "7",
        "ormai.user_id": "",
        "ormai.roles": '["a", "b"]',
        "ormai.metadata.tenants": '["x", "y"]',
        "ormai.metadata.org.id": "5",
        "ormai.metadata.org.name": '"n"',
        "ormai.metadata.bad": "",
        "ormai.metadata.e": "",
    }
    assert principal_settings(Principal(), PATHS) == {"ormai.tenant_id": "", "ormai.user_id": "", "ormai.roles": "[]"}


# --- the command line -------------------------------------------------------------------------------


def test_cli_prints_applies_and_cleans_up(pg: Pg, tmp_path: Any) -> None:
    from typer.testing import CliRunner

    from ormai_agents.cli import app
    from ormai_agents.policy_file import dump_policy

    runner = CliRunner()
    url = pg_url("psycopg").render_as_string(hide_password=False)
    policy = rls_policy()
    path = tmp_path / "policy.yaml"
    path.write_text(dump_policy(policy), encoding="utf-8")
    base = ["rls", "--policy", str(path), "--db", url, "--schema", pg.schema]

    def ormai_policies() -> set[tuple[str, str]]:
        with pg.backend.sync_engine.connect() as conn:
            rows = conn.execute(text(
                "select tablename, policyname from pg_policies where schemaname = current_schema() "
                "and policyname like 'ormai%'")).all()  # fmt: skip
            return {(r[0], r[1]) for r in rows}

    before = ormai_policies()
    result = runner.invoke(app, base)
    assert result.exit_code == 0, result.output
    assert f'ALTER TABLE {pg.schema}.orders FORCE ROW LEVEL SECURITY;' in result.stdout
    assert ormai_policies() == before  # printing applies nothing

    # Drop a row policy from the file: --apply removes it from the database too.
    models = dict(policy.models)
    models["Document"] = ModelPolicy(default_field_action=ALL, scoping={"tenant_id": "principal.tenant_id"})
    path.write_text(dump_policy(Policy(models=models, max_rows=50)), encoding="utf-8")
    result = runner.invoke(app, [*base, "--apply"])
    try:
        assert result.exit_code == 0, result.output
        after = ormai_policies()
        assert ("documents", "ormai_scope") in after
        assert ("documents", "ormai_permit_public") in before and ("documents", "ormai_permit_public") not in after
        assert ("documents", "ormai_restrict_clearance") not in after

        # Something SQL can't express: reported, exit 1, and --apply applies nothing.
        models["Document"] = ModelPolicy(default_field_action=ALL, scoping={"tenant_id": "principal.metadata.home-tenant"})
        path.write_text(dump_policy(Policy(models=models)), encoding="utf-8")
        result = runner.invoke(app, [*base, "--apply"])
        assert result.exit_code == 1
        assert "scoping tenant_id" in result.stderr and "Nothing applied" in result.stderr
        assert ormai_policies() == after
    finally:
        with pg.backend.sync_engine.begin() as conn:
            generate_rls(shop.Base, rls_policy()).apply(conn)
    assert ormai_policies() >= before


def test_setting_names_that_differ_only_in_case_are_reported_and_left_empty() -> None:
    policy = Policy(models={"Order": ModelPolicy(default_field_action=ALL, row_policies=[
        RowPolicy("a", "owner_id = principal.metadata.orgId"),
        RowPolicy("b", "status = principal.metadata.orgid"),
    ])})  # fmt: skip
    plan = generate_rls(shop.Base, policy)
    assert [u.rule for u in plan.unsupported] == ["settings ormai.metadata.orgId, ormai.metadata.orgid"]
    values = principal_settings(Principal(metadata={"orgId": "x", "orgid": "y"}), [("metadata", "orgId"), ("metadata", "orgid")])
    assert values["ormai.metadata.orgId"] == "" and "ormai.metadata.orgid" not in values
    same = principal_settings(Principal(metadata={"orgId": "x", "orgid": "x"}), [("metadata", "orgId"), ("metadata", "orgid")])
    assert same["ormai.metadata.orgId"] == '"x"'
