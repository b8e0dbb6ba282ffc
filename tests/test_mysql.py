"""MariaDB/MySQL specifics: driver errors mapped by their numeric codes, transient ones retried,
row-level security refused, the per-statement time budget, and the dialect capabilities.

Every error here is provoked for real on the server, through both drivers (PyMySQL, aiomysql).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import (
    Column,
    ForeignKey,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    create_engine,
    event,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.pool import NullPool

from ormai_agents import (
    DatabaseError,
    IntegrityConstraintError,
    PolicyError,
    Principal,
    RunContext,
    Toolset,
    TransientDatabaseError,
    ValidationError,
)
from ormai_agents._dberrors import map_db_errors
from ormai_agents._dialects import capabilities
from tests import shop
from tests.conftest import Backend

MYSQL = pytest.mark.parametrize("empty_backend", ["mysql"], indirect=True)

meta = MetaData()
parents = Table("parents", meta, Column("id", Integer, primary_key=True), Column("code", String(8), unique=True))
children = Table(
    "children",
    meta,
    Column("id", Integer, primary_key=True),
    Column("parent_id", Integer, ForeignKey("parents.id"), nullable=False),
    Column("amount", Numeric(4, 2)),
)


@pytest.fixture
def db(empty_backend: Backend) -> Iterator[Backend]:
    meta.create_all(empty_backend.sync_engine)
    with empty_backend.sync_engine.begin() as conn:
        conn.execute(insert(parents), [{"id": 1, "code": "p1"}, {"id": 2, "code": "p2"}])
        conn.execute(insert(children), [{"id": 1, "parent_id": 1}])
    yield empty_backend


CASES = [
    ("duplicate key", insert(parents).values(id=3, code="P1"), IntegrityConstraintError, "unique"),
    ("missing parent", insert(children).values(id=2, parent_id=99), IntegrityConstraintError, "foreign_key"),
    ("parent still referenced", parents.delete().where(parents.c.id == 1), IntegrityConstraintError, "foreign_key"),
    ("null", insert(children).values(id=3, parent_id=None), IntegrityConstraintError, "not_null"),
    ("data too long", insert(parents).values(id=4, code="secret-long-value"), ValidationError, None),
    ("out of range", insert(children).values(id=5, parent_id=2, amount=12345), ValidationError, None),
]


@MYSQL
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
async def test_driver_errors_map_by_code_on_both_drivers(db: Backend, case: Any) -> None:
    _, stmt, error, kind = case
    with db.sync_engine.connect() as conn, pytest.raises(error) as sync_err:
        with map_db_errors("write"):
            conn.execute(stmt)
    async with db.async_engine.connect() as conn:
        with pytest.raises(error) as async_err:
            with map_db_errors("write"):
                await conn.execute(stmt)
    for err in (sync_err.value, async_err.value):
        assert err.message == sync_err.value.message
        if kind is not None:
            assert err.details == {"constraint": kind}
        # Nothing the driver said: no value, no SQL, no constraint or table name.
        for leak in ("secret", "P1", "INSERT", "parents", "children", "Duplicate", "1062", "pymysql"):
            assert leak not in str(err)


def _thread_id(conn: Any) -> int:
    return int(conn.exec_driver_sql("SELECT CONNECTION_ID()").scalar_one())


@MYSQL
async def test_lost_connection_is_transient(db: Backend) -> None:
    admin = create_engine(db.sync_engine.url, poolclass=NullPool)
    with db.sync_engine.connect() as conn:
        with admin.connect() as other:
            other.exec_driver_sql(f"KILL {_thread_id(conn)}")
        with pytest.raises(TransientDatabaseError), map_db_errors("read"):
            conn.execute(select(parents.c.id))
    async with db.async_engine.connect() as aconn:
        tid = int((await aconn.exec_driver_sql("SELECT CONNECTION_ID()")).scalar_one())
        with admin.connect() as other:
            other.exec_driver_sql(f"KILL {tid}")
        with pytest.raises(TransientDatabaseError):
            with map_db_errors("read"):
                await aconn.execute(select(parents.c.id))
    admin.dispose()


@MYSQL
async def test_lock_wait_timeout_is_transient(db: Backend) -> None:
    with db.sync_engine.connect() as holder, db.sync_engine.connect() as waiter:
        holder.execute(update(parents).where(parents.c.id == 1).values(code="held"))  # row locked, not committed
        waiter.exec_driver_sql("SET SESSION innodb_lock_wait_timeout = 1")
        with pytest.raises(TransientDatabaseError), map_db_errors("write"):
            waiter.execute(update(parents).where(parents.c.id == 1).values(code="waits"))
        holder.rollback()
        waiter.rollback()
        waiter.exec_driver_sql("SET SESSION innodb_lock_wait_timeout = DEFAULT")


@MYSQL
async def test_deadlock_is_transient(db: Backend) -> None:
    """Two transactions lock rows 1 and 2 in opposite orders: the server kills one (1213)."""
    outcomes: list[str] = []
    barrier = threading.Barrier(2, timeout=10)

    def worker(first: int, second: int) -> None:
        with db.sync_engine.connect() as conn:
            conn.exec_driver_sql("SET SESSION innodb_lock_wait_timeout = 10")
            try:
                with map_db_errors("write"):
                    conn.execute(update(parents).where(parents.c.id == first).values(code=f"a{first}"))
                    barrier.wait()
                    conn.execute(update(parents).where(parents.c.id == second).values(code=f"b{first}"))
                    conn.commit()
                outcomes.append("committed")
            except TransientDatabaseError:
                outcomes.append("transient")
                conn.rollback()
            conn.exec_driver_sql("SET SESSION innodb_lock_wait_timeout = DEFAULT")

    threads = [threading.Thread(target=worker, args=(1, 2)), threading.Thread(target=worker, args=(2, 1))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(outcomes) == ["committed", "transient"]


@MYSQL
async def test_a_deadlocked_read_is_retried_by_the_toolset(db: Backend) -> None:
    """The toolset retries a transient failure of its read (the server's deadlock error, raised by
    SIGNAL on the call's connection right before its SELECT) when the call owns the transaction."""
    shop.Base.metadata.create_all(db.sync_engine)
    with db.sync_engine.begin() as conn:
        conn.execute(insert(shop.Order), [{"id": 1, "tenant_id": "acme", "total": 1}])
    ts = Toolset(shop.Base, shop.shop_policy())
    attempts: list[int] = []

    def fail_once(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.startswith("SELECT orders.id") and not attempts:
            attempts.append(1)
            cursor.execute("SIGNAL SQLSTATE '40001' SET MYSQL_ERRNO = 1213, MESSAGE_TEXT = 'Deadlock found'")

    event.listen(db.sync_engine, "before_cursor_execute", fail_once)
    try:
        with db.session() as s:
            rows = (await ts.query(RunContext(Principal(tenant_id="acme"), s), "Order")).rows
    finally:
        event.remove(db.sync_engine, "before_cursor_execute", fail_once)
    assert attempts == [1] and [r["id"] for r in rows] == [1]


@MYSQL
async def test_row_level_security_is_refused_with_a_clear_error(db: Backend) -> None:
    shop.Base.metadata.create_all(db.sync_engine)
    ts = Toolset(shop.Base, shop.shop_policy(), rls=True)
    for session in (db.session(), db.async_session()):
        ctx = RunContext(Principal(tenant_id="acme"), session)
        with pytest.raises(PolicyError) as err:
            await ts.query(ctx, "Order")
        assert "row-level security" in str(err.value) and "PostgreSQL" in str(err.value)
        assert "rls=False" in str(err.value)
        out = session.close()
        if asyncio.iscoroutine(out):
            await out


@MYSQL
async def test_capabilities_of_the_server(db: Backend) -> None:
    with db.sync_engine.connect() as conn:
        caps = capabilities(conn.dialect)
        assert caps.name in ("mariadb", "mysql")
        assert not caps.nulls_last and not caps.update_returning and not caps.row_level_security
        assert caps.locking_reads and caps.savepoints
        if caps.insert_returning:  # MariaDB 10.5+: INSERT ... RETURNING really works
            row = conn.execute(insert(parents).values(id=7, code="p7").returning(parents.c.id, parents.c.code)).one()
            assert tuple(row) == (7, "p7")
            conn.rollback()


@pytest.mark.parametrize("empty_backend", ["mysql", "postgres"], indirect=True)
async def test_a_statement_stopped_by_a_server_time_limit_is_reported_plainly(empty_backend: Backend) -> None:
    """An operator's own limit (MariaDB max_statement_time, PostgreSQL statement_timeout) maps to a
    plain error the agent can act on, not a retry."""
    with empty_backend.sync_engine.connect() as conn:
        if empty_backend.is_postgres:
            conn.execute(text("SET LOCAL statement_timeout = 200"))
            slow = text("SELECT pg_sleep(3)")
        else:
            slow = text("SET STATEMENT max_statement_time = 0.2 FOR SELECT SLEEP(3)")
        with pytest.raises(DatabaseError) as err, map_db_errors("read"):
            conn.execute(slow)
        assert "took longer" in str(err.value) and not isinstance(err.value, TransientDatabaseError)
        conn.rollback()
        assert conn.execute(text("SELECT 1")).scalar_one() == 1
