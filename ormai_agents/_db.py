"""One async interface over the four kinds of SQLAlchemy handle a host may give a call.

`Session`, `AsyncSession`, `Connection` and `AsyncConnection` differ in where the connection is,
whether methods are coroutines, and how a savepoint is begun. `DbHandle` hides that: everything
above it (reads, writes, audit in the caller's transaction, adapters' sessions) runs statements,
commits, rolls back and opens savepoints through one interface, and asks it for the database's
capabilities (`ormai_agents._dialects`) instead of looking at `dialect.name`.

Statements go straight to the connection (no ORM compile step), every statement runs under the
call's time budget (`ormai_agents._budget`), and every driver error is translated at the one
boundary (`ormai_agents._dberrors`).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping
from typing import Any

from sqlalchemy.engine import Connection, CursorResult, Dialect, Engine, Row
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm import Session

from ormai_agents._budget import Interruptible
from ormai_agents._dberrors import map_db_errors
from ormai_agents._dialects import Capabilities, capabilities, probe_statement, remember_probe

log = logging.getLogger("ormai_agents")

_SESSION, _ASYNC_SESSION, _CONNECTION, _ASYNC_CONNECTION = range(4)
_KINDS: dict[type, int] = {
    Session: _SESSION,
    AsyncSession: _ASYNC_SESSION,
    Connection: _CONNECTION,
    AsyncConnection: _ASYNC_CONNECTION,
}
HANDLE_TYPES = (Session, AsyncSession, Connection, AsyncConnection)


def _kind(db: Any) -> int:
    kind = _KINDS.get(type(db))
    if kind is not None:
        return kind
    for cls, k in _KINDS.items():  # subclasses (a host's own Session class)
        if isinstance(db, cls):
            return k
    raise TypeError("the database handle must be a SQLAlchemy Session, AsyncSession, Connection or AsyncConnection")


def engine_of(db: Any) -> Engine | None:
    """The sync Engine behind a Session, AsyncSession, Connection or AsyncConnection; None for
    anything else, or a session without a single bind."""
    try:
        kind = _kind(db)
    except TypeError:
        return None
    try:
        if kind == _SESSION:
            bind: Any = db.get_bind()
        elif kind == _ASYNC_SESSION:
            bind = db.sync_session.get_bind()
        elif kind == _CONNECTION:
            bind = db.engine
        else:
            bind = db.sync_engine
    except Exception:  # noqa: BLE001 - a session without a single bind: no guess
        return None
    if isinstance(bind, Connection):
        bind = bind.engine
    return bind if isinstance(bind, Engine) else None


class Savepoint:
    """A nested transaction begun by `DbHandle.begin_nested`."""

    __slots__ = ("_tx",)

    def __init__(self, tx: Any) -> None:
        self._tx = tx

    async def commit(self) -> None:
        """Release the savepoint (its changes stay in the enclosing transaction)."""
        with map_db_errors("release the savepoint"):
            await _maybe_await(self._tx.commit())

    async def rollback(self) -> None:
        """Undo everything since the savepoint."""
        with map_db_errors("roll back to the savepoint"):
            await _maybe_await(self._tx.rollback())


class DbHandle:
    """The database handle of one call: `DbHandle(session_or_connection)`."""

    __slots__ = ("_kind", "raw")

    def __init__(self, db: Any) -> None:
        self._kind = _kind(db)
        self.raw = db

    @property
    def is_async(self) -> bool:
        return self._kind in (_ASYNC_SESSION, _ASYNC_CONNECTION)

    def in_transaction(self) -> bool:
        """Whether a transaction is open (begun by the host, by SQLAlchemy for an earlier
        statement, or by this call)."""
        return bool(self.raw.in_transaction())

    async def connection(self) -> Connection:
        """The sync `Connection` the handle's statements run on (begins the transaction)."""
        kind = self._kind
        if kind == _SESSION:
            return self.raw.connection()  # type: ignore[no-any-return]
        if kind == _ASYNC_SESSION:
            return (await self.raw.connection()).sync_connection  # type: ignore[no-any-return]
        if kind == _CONNECTION:
            return self.raw  # type: ignore[no-any-return]
        return self.raw.sync_connection  # type: ignore[no-any-return]

    def dialect(self) -> Dialect:
        """The dialect of the handle's database, without opening a connection."""
        if self._kind in (_SESSION, _ASYNC_SESSION):
            return self.raw.get_bind().dialect  # type: ignore[no-any-return]
        return self.raw.dialect  # type: ignore[no-any-return]

    def capabilities(self) -> Capabilities:
        """What the database supports (RETURNING, locking reads, row-level security, ...)."""
        return capabilities(self.dialect())

    async def execute(
        self,
        stmt: Any,
        params: Mapping[str, Any] | None = None,
        *,
        deadline: float | None = None,
        action: str = "write",
    ) -> CursorResult[Any]:
        """Run one Core statement under the call's deadline; database errors become OrmAIErrors."""
        with map_db_errors(action):
            conn, is_async = await self._probed_connection()
            if is_async:
                with Interruptible(conn.sync_connection, deadline):
                    return await conn.execute(stmt, params)  # type: ignore[no-any-return]
            with Interruptible(conn, deadline):
                return conn.execute(stmt, params)  # type: ignore[no-any-return]

    async def fetch(
        self,
        stmt: Any,
        params: Mapping[str, Any] | None = None,
        *,
        deadline: float | None = None,
        action: str = "read",
    ) -> list[Row[Any]]:
        """Every row of one statement (with `params` for its named bind parameters), read inside
        the deadline (a sync driver reads rows as they are fetched, so fetching is part of the
        statement's time)."""
        with map_db_errors(action):
            conn, is_async = await self._probed_connection()
            if is_async:
                with Interruptible(conn.sync_connection, deadline):
                    return list((await conn.execute(stmt, params)).all())
            with Interruptible(conn, deadline):
                return list(conn.execute(stmt, params).all())

    async def _probed_connection(self) -> tuple[Any, bool]:
        """The handle's connection (async or not), with the dialect's probe run on it where it
        has one; inside the caller's error mapping, as a probe is a statement too."""
        kind = self._kind
        if kind in (_ASYNC_SESSION, _ASYNC_CONNECTION):
            aconn = await self.raw.connection() if kind == _ASYNC_SESSION else self.raw
            if probe_statement(aconn.dialect) is not None:
                await _probe(aconn)
            return aconn, True
        conn = self.raw.connection() if kind == _SESSION else self.raw
        if probe_statement(conn.dialect) is not None:
            await _probe(conn)
        return conn, False

    async def commit(self) -> None:
        await _maybe_await(self.raw.commit())

    async def rollback(self) -> None:
        await _maybe_await(self.raw.rollback())

    async def close(self) -> None:
        await _maybe_await(self.raw.close())

    async def begin_nested(self) -> Savepoint:
        """A SAVEPOINT inside the current transaction."""
        with map_db_errors("begin a savepoint"):
            return Savepoint(await _maybe_await(self.raw.begin_nested()))


async def _probe(conn: Any) -> None:
    """Learn, once per engine, which text columns compare exactly (see `_dialects`)."""
    dialect = conn.dialect
    probe = probe_statement(dialect)
    if probe is None:
        return
    try:
        result = await _maybe_await(conn.execute(probe))
        rows = list(result.all())
    except Exception:
        # Without an answer every text comparison keeps its byte check; the error is the call's.
        log.warning("ormai_agents: could not read the column collations; text comparisons stay byte-exact")
        if remember_probe(dialect, None):
            _clear_compiled(conn)
        raise
    if remember_probe(dialect, rows):
        # A collation changed: statements compiled under the old answer are compiled again.
        _clear_compiled(conn)


def _clear_compiled(conn: Connection | AsyncConnection) -> None:
    engine = engine_of(conn)
    if engine is not None:
        engine.clear_compiled_cache()


async def _maybe_await(value: Any) -> Any:
    # Sync handles return plain values; async ones return awaitables.
    if inspect.isawaitable(value):
        return await value
    return value


__all__ = ["HANDLE_TYPES", "DbHandle", "Savepoint", "engine_of"]
