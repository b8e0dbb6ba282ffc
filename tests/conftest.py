"""What the whole suite shares: backends, the seeded shop, principals.

Backends: SQLite (always), the real PostgreSQL and MariaDB/MySQL (required under CI=true). Each
test run gets its own PostgreSQL schema and its own MariaDB database, so concurrent runs on one
server don't collide. Async engines use NullPool: every connection belongs to the event loop of
the test using it.

Fixtures are found by pytest by name; never import them into a test module. Plain values
(principals, `Backend`, `BACKENDS`) are imported from here: `from tests.conftest import ACME`.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import settings
from sqlalchemy import Engine, MetaData, String, create_engine, event, func, insert, make_url, select, text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from ormai_agents import Principal
from tests import shop

# The fixtures we ship for users' own suites, enabled the way our docs tell users to.
pytest_plugins = ["ormai_agents.testing.pytest_plugin"]

DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
DEFAULT_MYSQL_URL = "mysql://root@127.0.0.1:3306/test"
MYSQL_DRIVERS = {"sync": "pymysql", "async": "aiomysql"}
# MariaDB's default collation, named so every server folds the same way: case, accents and
# trailing spaces (what the exact-comparison tests attack, and the differential oracle models).
MYSQL_COLLATION = "utf8mb4_general_ci"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# Every backend a database test runs on; parametrize `empty_backend` indirectly with it.
BACKENDS = ["sqlite", "postgres", "mysql"]

# The shop's principals: two tenants, a second user of the first, a third tenant.
ACME = Principal(tenant_id="acme", user_id="u1")
ACME_OTHER_USER = Principal(tenant_id="acme", user_id="u2")
GLOBEX = Principal(tenant_id="globex", user_id="u2")
INITECH = Principal(tenant_id="initech", user_id="u3")


def pg_url(driver: str) -> URL:
    url = make_url(os.environ.get("ORMAI_TEST_POSTGRES_URL", DEFAULT_PG_URL))
    return url.set(drivername=f"postgresql+{driver}")


def _pg_reason() -> str | None:
    """None when PostgreSQL answers; otherwise why not."""
    try:
        engine = create_engine(pg_url("psycopg"), poolclass=NullPool, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(text("select 1"))
        engine.dispose()
        return None
    except Exception as exc:  # noqa: BLE001 - any failure means "not reachable"
        return f"PostgreSQL is not reachable at {pg_url('psycopg').render_as_string(hide_password=True)}: {type(exc).__name__}"


_PG_REASON = _pg_reason()


def mysql_url(driver: str, database: str | None = None) -> URL:
    """The MariaDB/MySQL server (ORMAI_TEST_MYSQL_URL), through `driver` (pymysql or aiomysql)."""
    url = make_url(os.environ.get("ORMAI_TEST_MYSQL_URL", DEFAULT_MYSQL_URL))
    backend = url.get_backend_name()  # "mysql" or "mariadb": both name the same dialect
    url = url.set(drivername=f"{backend}+{driver}")
    return url.set(database=database) if database is not None else url


def _mysql_reason() -> str | None:
    """None when MariaDB/MySQL answers; otherwise why not."""
    try:
        engine = create_engine(mysql_url("pymysql"), poolclass=NullPool, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(text("select 1"))
        engine.dispose()
        return None
    except Exception as exc:  # noqa: BLE001 - any failure means "not reachable"
        where = mysql_url("pymysql").render_as_string(hide_password=True)
        return f"MariaDB/MySQL is not reachable at {where}: {type(exc).__name__}"


_MYSQL_REASON = _mysql_reason()

# Under CI the property tests draw the same examples every run: a red build is reproducible, never
# a coin toss. Locally they explore new examples each run.
settings.register_profile("ci", derandomize=True, database=None)
if IN_CI:
    settings.load_profile("ci")


def pytest_report_header(config: pytest.Config) -> str:
    return "\n".join(
        [
            "postgresql: " + ("available" if _PG_REASON is None else f"UNAVAILABLE ({_PG_REASON})"),
            "mysql: " + ("available" if _MYSQL_REASON is None else f"UNAVAILABLE ({_MYSQL_REASON})"),
        ]
    )


def require_postgres() -> None:
    """Skip (locally) or fail (under CI=true) when PostgreSQL is down."""
    if _PG_REASON is None:
        return
    if IN_CI:
        pytest.fail(f"CI=true requires PostgreSQL: {_PG_REASON}")
    pytest.skip(_PG_REASON)


def require_mysql() -> None:
    """Skip (locally) or fail (under CI=true) when MariaDB/MySQL is down."""
    if _MYSQL_REASON is None:
        return
    if IN_CI:
        pytest.fail(f"CI=true requires MariaDB/MySQL: {_MYSQL_REASON}")
    pytest.skip(_MYSQL_REASON)


@dataclass
class Backend:
    """One database: a sync and an async engine on the same data."""

    name: str
    sync_engine: Engine
    async_engine: AsyncEngine

    @property
    def is_postgres(self) -> bool:
        return self.name == "postgres"

    @property
    def is_mysql(self) -> bool:
        return self.name == "mysql"

    @property
    def is_sqlite(self) -> bool:
        return self.name == "sqlite"

    def session(self) -> Session:
        return Session(self.sync_engine)

    def async_session(self) -> AsyncSession:
        return AsyncSession(self.async_engine)


def create_tables(backend: Backend, metadata: MetaData) -> None:
    """`metadata.create_all` on the backend. MySQL needs a length on every VARCHAR: text columns
    declared without one (as the setup guide's models are) become VARCHAR(255) there."""
    if backend.is_mysql:
        copy = MetaData()
        for table in metadata.sorted_tables:
            table.to_metadata(copy)
        for table in copy.tables.values():
            for column in table.columns:
                if type(column.type) is String and column.type.length is None:
                    column.type = String(255)
        metadata = copy
    metadata.create_all(backend.sync_engine)


def make_backend(name: str, tmp_dir: Any) -> tuple[Backend, Any]:
    """A fresh, empty database; returns it and a cleanup function."""
    if name == "sqlite":
        path = os.path.join(str(tmp_dir), f"ormai-{uuid.uuid4().hex}.db")
        sync_engine = create_engine(f"sqlite:///{path}")
        async_engine = create_async_engine(f"sqlite+aiosqlite:///{path}", poolclass=NullPool)

        def cleanup() -> None:
            sync_engine.dispose()

        return Backend(name, sync_engine, async_engine), cleanup
    if name == "mysql":
        return _mysql_backend()
    require_postgres()
    schema = f"ormai_t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(pg_url("psycopg"), poolclass=NullPool)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    sync_engine = create_engine(pg_url("psycopg"), connect_args={"options": f"-csearch_path={schema}"})
    async_engine = create_async_engine(
        pg_url("asyncpg"), poolclass=NullPool, connect_args={"server_settings": {"search_path": schema}}
    )

    def cleanup() -> None:
        sync_engine.dispose()
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()

    return Backend(name, sync_engine, async_engine), cleanup


@pytest.fixture(scope="session", params=BACKENDS)
def shop_backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    """The seeded shop on each backend, shared by read-only tests."""
    backend, cleanup = make_backend(request.param, tmp_path_factory.mktemp("db"))
    shop.Base.metadata.create_all(backend.sync_engine)
    with backend.session() as s:
        s.add_all(shop.seed_rows())
        s.commit()
    yield backend
    cleanup()


@pytest.fixture(params=["sync", "async"])
async def shop_db(request: pytest.FixtureRequest, shop_backend: Backend) -> AsyncIterator[Session | AsyncSession]:
    """A session on the seeded shop: sync `Session` and `AsyncSession` in turn."""
    if request.param == "sync":
        with shop_backend.session() as s:
            yield s
            s.rollback()
    else:
        async with shop_backend.async_session() as s:
            yield s
            await s.rollback()


@pytest.fixture
def empty_backend(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Backend]:
    """A fresh empty database; parametrize indirectly with "sqlite", "postgres" or "mysql"."""
    backend, cleanup = make_backend(getattr(request, "param", "sqlite"), tmp_path)
    yield backend
    cleanup()


def _mysql_backend() -> tuple[Backend, Any]:
    require_mysql()
    database = f"ormai_t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(mysql_url("pymysql"), poolclass=NullPool)
    with admin.begin() as conn:
        conn.execute(text(f"CREATE DATABASE `{database}` CHARACTER SET utf8mb4 COLLATE {MYSQL_COLLATION}"))
    sync_engine = create_engine(mysql_url(MYSQL_DRIVERS["sync"], database))
    async_engine = create_async_engine(mysql_url(MYSQL_DRIVERS["async"], database), poolclass=NullPool)

    def cleanup() -> None:
        sync_engine.dispose()
        with admin.begin() as conn:
            # A transaction a failed test left open fails the drop after a while, never hangs it.
            conn.execute(text("SET SESSION lock_wait_timeout = 30"))
            conn.execute(text(f"DROP DATABASE IF EXISTS `{database}`"))
        admin.dispose()

    return Backend("mysql", sync_engine, async_engine), cleanup


# --- writable shops: a fresh seeded copy per test ---------------------------------------------


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
    if backend.is_sqlite:
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


@pytest.fixture
def wb(empty_backend: Backend) -> Backend:
    """A fresh seeded shop on `empty_backend`'s database, for tests that write."""
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
    """One session kind per backend (sync on SQLite, async on PostgreSQL and MariaDB) for tests
    where the kind does not matter; `wdb` runs both where it does."""
    if not wb.is_sqlite:
        async with wb.async_session() as s:
            yield s
    else:
        with wb.session() as s:
            yield s
