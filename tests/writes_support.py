"""Shared pieces of the write-path tests: a writable shop policy and fresh seeded databases."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import Engine, event, func, insert, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from ormai_agents import Policy, Principal, RowPolicy, Toolset, WriteAction, WritePolicy
from tests import shop
from tests.conftest import Backend

ACME = Principal(tenant_id="acme", user_id="u1")
GLOBEX = Principal(tenant_id="globex", user_id="u2")
SECRET = b"w" * 32


def sqlite_savepoints(engine: Engine) -> None:
    """SQLAlchemy's documented recipe for SAVEPOINT-correct transactions on pysqlite/aiosqlite."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN")


def prepare(backend: Backend) -> Backend:
    """Savepoint-correct SQLite, and the hostile shop seed."""
    if not backend.is_postgres:
        sqlite_savepoints(backend.sync_engine)
        sqlite_savepoints(backend.async_engine.sync_engine)
    # Core executemany per table: much cheaper than an ORM flush, and each test gets a fresh copy.
    rows: dict[Any, list[dict[str, Any]]] = {}
    for obj in shop.seed_rows():
        table = type(obj).__table__
        rows.setdefault(table, []).append({c.key: getattr(obj, c.key) for c in table.columns})
    with backend.sync_engine.begin() as conn:
        shop.Base.metadata.create_all(conn, checkfirst=False)
        for table in shop.Base.metadata.sorted_tables:
            if rows.get(table):
                conn.execute(insert(table), rows[table])
        if backend.is_postgres:  # the seed sets ids explicitly: move the sequences past them
            for model in (shop.Customer, shop.Order, shop.Document):
                sequence = func.pg_get_serial_sequence(model.__tablename__, "id")
                conn.execute(select(func.setval(sequence, select(func.max(model.id)).scalar_subquery())))
    return backend


def write_policy(
    order: WriteAction = WriteAction.Allow,
    *,
    max_affected_rows: int = 5,
    order_ops: dict[str, WriteAction] | None = None,
) -> Policy:
    """The shop policy with writes: Order and Customer writable, Tenant creatable (for unique errors)."""
    base = shop.shop_policy()
    ops = {"create": order, "update": order, "delete": order, "bulk_update": order, **(order_ops or {})}
    models = dict(base.models)
    models["Order"] = base.models["Order"].model_copy(
        update={
            "write_policy": WritePolicy(
                **ops,
                auto_set={"tenant_id": "principal.tenant_id", "owner_id": "principal.user_id", "created_at": "now()"},
                immutable_fields=["customer_id"],
                required_fields=["total"],
                max_affected_rows=max_affected_rows,
            ),
            "row_policies": [RowPolicy("small_quantity", "quantity IS NULL OR quantity < 100")],
        }
    )
    models["Customer"] = base.models["Customer"].model_copy(
        update={
            "write_policy": WritePolicy(
                create=WriteAction.Allow, update=WriteAction.Allow, auto_set={"tenant_id": "principal.tenant_id"}
            )
        }
    )
    models["Tenant"] = base.models["Tenant"].model_copy(
        update={"write_policy": WritePolicy(create=WriteAction.Allow, auto_set={"id": "principal.tenant_id"})}
    )
    return Policy(models=models)


def toolset(policy: Policy | None = None, **kwargs: Any) -> Toolset:
    kwargs.setdefault("secret_key", SECRET)
    return Toolset(shop.Base, policy or write_policy(), **kwargs)


def snapshot(backend: Backend, model: Any) -> list[tuple[Any, ...]]:
    """Every committed row of `model`, as seen from a separate connection."""
    table = model.__table__
    with backend.sync_engine.connect() as conn:
        return [tuple(r) for r in conn.execute(select(table).order_by(*table.primary_key.columns))]


def count(backend: Backend, model: Any, *where: Any) -> int:
    with backend.sync_engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(model).where(*where)).scalar_one())


def ids(backend: Backend, model: Any, *where: Any) -> list[Any]:
    with backend.sync_engine.connect() as conn:
        return list(conn.execute(select(model.id).where(*where).order_by(model.id)).scalars())


@pytest.fixture
def wb(empty_backend: Backend) -> Backend:
    return prepare(empty_backend)


@pytest.fixture(params=["sync", "async"])
async def wdb(request: pytest.FixtureRequest, wb: Backend) -> AsyncIterator[Session | AsyncSession]:
    """A session on a fresh seeded shop: sync `Session` and `AsyncSession` in turn."""
    if request.param == "sync":
        with wb.session() as s:
            yield s
    else:
        async with wb.async_session() as s:
            yield s


@pytest.fixture
async def wdb1(wb: Backend) -> AsyncIterator[Session | AsyncSession]:
    """One session kind per backend (sync on SQLite, async on PostgreSQL) for tests where the
    kind does not matter; `wdb` runs both where it does."""
    if wb.is_postgres:
        async with wb.async_session() as s:
            yield s
    else:
        with wb.session() as s:
            yield s
