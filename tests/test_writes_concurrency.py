"""PostgreSQL and MariaDB: concurrent connections and dropped connections during writes.

- No gap between check and write: a row moved out of scope by another transaction is not
  written, and while a write call runs the row can't be moved under it.
- Fault injection: the call's connection is killed from a second connection mid-call
  (`pg_terminate_backend`, MariaDB's `KILL`). Reads and uncommitted writes are retried; a write is
  never applied twice, and a failure during COMMIT is reported as an unknown outcome, never
  retried. The same rules hold on both servers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, column, create_engine, event, func, select, table, update
from sqlalchemy import exc as sa_exc
from sqlalchemy.pool import NullPool

from ormai_agents import RecordNotFoundError, RunContext, WriteOutcomeUnknownError
from tests import shop
from tests.conftest import ACME, Backend, mysql_url, pg_url
from tests.writes_support import count, ids, toolset

pytestmark = pytest.mark.parametrize("empty_backend", ["postgres", "mysql"], indirect=True)

Order = shop.Order
_activity = table("pg_stat_activity", column("pid"), column("wait_event_type"))
_innodb_trx = table("INNODB_TRX", column("trx_mysql_thread_id"), column("trx_state"), schema="information_schema")


def backend_pid(conn: Any) -> int:
    """The server's id of a SQLAlchemy connection (psycopg, asyncpg, PyMySQL, aiomysql)."""
    raw = conn.connection.driver_connection
    if hasattr(raw, "server_thread_id"):
        return int(raw.server_thread_id[0])
    info = getattr(raw, "info", None)
    return int(info.backend_pid) if info is not None else int(raw.get_server_pid())


def admin_engine(backend: Backend) -> Engine:
    return create_engine(mysql_url("pymysql") if backend.is_mysql else pg_url("psycopg"), poolclass=NullPool)


def terminate(admin: Engine, pid: int) -> None:
    with admin.connect() as c:
        if admin.dialect.name == "postgresql":
            # The timeout makes the call wait until the backend is gone.
            assert c.execute(select(func.pg_terminate_backend(pid, 5000))).scalar_one() is True
        else:
            c.exec_driver_sql(f"KILL {int(pid)}")


class Fault:
    """Terminates the connection's backend before the Nth statement matching `prefix`, or
    before COMMIT; counts what ran."""

    def __init__(self, backend: Backend, engine: Engine, prefix: str | None, on_commit: bool = False) -> None:
        self.admin = admin_engine(backend)  # no hooks on this one
        self.engine = engine
        self.prefix = prefix
        self.on_commit = on_commit
        self.statements: list[str] = []
        self.fired = 0

    def _before(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        self.statements.append(statement.lstrip()[:60].upper())
        if self.prefix is not None and statement.startswith(self.prefix) and not self.fired:
            self.fired += 1
            terminate(self.admin, backend_pid(conn))

    def _commit(self, conn: Any) -> None:
        if self.on_commit and not self.fired:
            self.fired += 1
            terminate(self.admin, backend_pid(conn))

    def __enter__(self) -> Fault:
        event.listen(self.engine, "before_cursor_execute", self._before)
        event.listen(self.engine, "commit", self._commit)
        return self

    def __exit__(self, *exc: Any) -> None:
        event.remove(self.engine, "before_cursor_execute", self._before)
        event.remove(self.engine, "commit", self._commit)
        self.admin.dispose()


@pytest.fixture(params=["sync", "async"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def session_and_engine(wb: Backend, kind: str) -> tuple[Any, Engine]:
    if kind == "sync":
        return wb.session(), wb.sync_engine
    return wb.async_session(), wb.async_engine.sync_engine


async def close(db: Any) -> None:
    out = db.close()
    if asyncio.iscoroutine(out):
        await out


async def test_reads_are_retried_after_the_connection_is_killed(wb: Backend, kind: str) -> None:
    ts = toolset()
    db, engine = session_and_engine(wb, kind)
    try:
        with Fault(wb, engine, "SELECT") as fault:
            page = await ts.query(RunContext(ACME, db), "Order", limit=50)
        assert fault.fired == 1
        assert [r["id"] for r in page.rows] == ids(wb, Order, Order.tenant_id == "acme")[:50]
        assert sum(s.startswith("SELECT") for s in fault.statements) == 2, "the read ran again"
    finally:
        await close(db)


async def test_a_write_interrupted_before_commit_is_retried_and_applied_once(wb: Backend, kind: str) -> None:
    ts = toolset()
    n = count(wb, Order)
    db, engine = session_and_engine(wb, kind)
    try:
        with Fault(wb, engine, "INSERT") as fault:
            result = await ts.create(RunContext(ACME, db), "Order", {"total": 5, "status": "exactly-once"})
        assert fault.fired == 1
        assert sum(s.startswith("INSERT") for s in fault.statements) == 2, "the insert was sent again"
        assert count(wb, Order) == n + 1
        assert ids(wb, Order, Order.status == "exactly-once") == [result.data["id"]]

        target = ids(wb, Order, Order.tenant_id == "acme")[0]
        with Fault(wb, engine, "UPDATE") as fault:
            await ts.update(RunContext(ACME, db), "Order", target, {"status": "after-kill"})
        assert fault.fired == 1
        assert count(wb, Order, Order.id == target, Order.status == "after-kill") == 1
    finally:
        await close(db)


async def test_a_failed_commit_is_never_retried(wb: Backend, kind: str) -> None:
    ts = toolset()
    n = count(wb, Order)
    db, engine = session_and_engine(wb, kind)
    try:
        with Fault(wb, engine, None, on_commit=True) as fault:
            with pytest.raises(WriteOutcomeUnknownError) as err:
                await ts.create(RunContext(ACME, db), "Order", {"total": 5, "status": "commit-killed"})
        assert fault.fired == 1
        assert sum(s.startswith("INSERT") for s in fault.statements) == 1, "a write is never sent twice"
        assert "may or may not" in str(err.value)
        # The backend died before COMMIT reached it, so the server rolled the insert back.
        assert count(wb, Order) == n
    finally:
        await close(db)


@pytest.fixture
def row(wb: Backend) -> Iterator[int]:
    yield ids(wb, Order, Order.tenant_id == "acme")[0]


async def _wait_until_blocked(wb: Backend, pid_holder: list[int], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    with wb.sync_engine.connect() as c:
        while asyncio.get_running_loop().time() < deadline:
            if wb.is_mysql:
                stmt = select(func.count()).select_from(_innodb_trx).where(
                    _innodb_trx.c.trx_mysql_thread_id.in_(pid_holder), _innodb_trx.c.trx_state == "LOCK WAIT"
                )
            else:
                stmt = select(func.count()).select_from(_activity).where(
                    _activity.c.pid.in_(pid_holder), _activity.c.wait_event_type == "Lock"
                )
            if pid_holder and c.execute(stmt).scalar_one():
                return
            c.rollback()
            # InnoDB refreshes INNODB_TRX only when it was not read in the last 0.1 s.
            await asyncio.sleep(0.15 if wb.is_mysql else 0.02)
    raise AssertionError("the toolset call never waited for the row lock")


async def test_a_row_moved_out_of_scope_by_a_concurrent_transaction_is_not_written(wb: Backend, row: int) -> None:
    ts = toolset()
    pids: list[int] = []

    def remember(conn: Any, *args: Any) -> None:
        pid = backend_pid(conn)
        if pid not in pids:
            pids.append(pid)

    event.listen(wb.async_engine.sync_engine, "before_cursor_execute", remember)
    try:
        for call in ("update", "delete", "bulk_update"):
            other = wb.sync_engine.connect()
            other.begin()
            # Another transaction moves the row to globex and has not committed yet.
            other.execute(update(Order).where(Order.id == row).values(tenant_id="globex", status="moved"))
            async with wb.async_session() as db:
                ctx = RunContext(ACME, db)
                if call == "update":
                    task = asyncio.ensure_future(ts.update(ctx, "Order", row, {"status": "mine"}))
                elif call == "delete":
                    task = asyncio.ensure_future(ts.delete(ctx, "Order", row))
                else:
                    task = asyncio.ensure_future(
                        ts.bulk_update(ctx, "Order", [{"field": "id", "op": "eq", "value": row}], {"status": "mine"})
                    )
                await _wait_until_blocked(wb, pids)
                other.commit()
                other.close()
                if call == "bulk_update":
                    assert (await task).data == {"updated_count": 0}
                else:
                    with pytest.raises(RecordNotFoundError):
                        await task
            with wb.sync_engine.connect() as c:
                assert c.execute(select(Order.tenant_id, Order.status).where(Order.id == row)).one() == ("globex", "moved")
            with wb.sync_engine.begin() as c:  # put it back for the next operation
                c.execute(update(Order).where(Order.id == row).values(tenant_id="acme", status="start"))
            pids.clear()
    finally:
        event.remove(wb.async_engine.sync_engine, "before_cursor_execute", remember)


async def test_the_row_cannot_move_between_check_and_write(wb: Backend, row: int) -> None:
    """Right after the toolset's UPDATE ran (the read of the row as it was, its lock, the change
    and the WITH CHECK are that one statement), a second connection tries to move the row out of
    scope: it can't, because the row stays locked until the call commits."""
    ts = toolset()
    attempts: list[str] = []

    def interfere(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.startswith("UPDATE orders") and not attempts:
            with wb.sync_engine.connect() as other:
                if wb.is_mysql:
                    other.exec_driver_sql("SET SESSION innodb_lock_wait_timeout = 1")
                else:
                    other.execute(select(func.set_config("lock_timeout", "200ms", True)))
                try:
                    other.execute(update(Order).where(Order.id == row).values(tenant_id="globex"))
                    other.commit()
                    attempts.append("moved")
                except sa_exc.OperationalError as exc:
                    attempts.append(str(exc.orig.args[0]) if wb.is_mysql else getattr(exc.orig, "sqlstate", None) or "error")
                finally:
                    if wb.is_mysql:
                        other.rollback()
                        other.exec_driver_sql("SET SESSION innodb_lock_wait_timeout = DEFAULT")

    engine = wb.async_engine.sync_engine
    event.listen(engine, "after_cursor_execute", interfere)
    try:
        async with wb.async_session() as db:
            result = await ts.update(RunContext(ACME, db), "Order", row, {"status": "written"})
    finally:
        event.remove(engine, "after_cursor_execute", interfere)
    # lock_not_available (PostgreSQL), lock wait timeout (MariaDB): locked between check and write.
    assert attempts == (["1205"] if wb.is_mysql else ["55P03"])
    assert result.data["tenant_id"] == "acme"
    assert count(wb, Order, Order.id == row, Order.tenant_id == "acme", Order.status == "written") == 1
