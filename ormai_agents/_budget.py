"""The time budget of a call: statements still running when it is spent are interrupted.

Every call gets a deadline (`Policy.call_timeout_seconds`). While one of its statements runs, a
watchdog thread holds the deadline and, when it passes, interrupts the statement through the
driver, without a round trip in the normal case and without changing any setting of the
connection (nothing outlives the call on a pooled connection):

- SQLite (pysqlite, aiosqlite): `sqlite3.Connection.interrupt()`, which is safe from any thread.
- PostgreSQL with psycopg (sync and async) or psycopg2: the driver's `cancel()`, which sends the
  server a cancel request for the running statement.
- asyncpg: the task awaiting the statement is cancelled in its event loop; asyncpg then cancels
  the statement on the server.
- MySQL and MariaDB with PyMySQL or aiomysql: `KILL QUERY <connection id>` sent from a second,
  short-lived connection (what the mysql client does on Ctrl-C); the statement fails with error
  1317 and the connection stays usable.

A driver without an entry in `INTERRUPTERS` is checked between statements only. The interrupted
statement fails in the driver; `Interruptible` turns that failure into `CallTimeoutError`, so
nothing the driver says reaches the agent.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Callable
from ssl import SSLSocket
from typing import Any, Literal

from ormai_agents._errors import CallTimeoutError

log = logging.getLogger("ormai_agents")

TIMEOUT_MESSAGE = (
    "The call took longer than its time budget and was stopped; nothing was written. Narrow the "
    "filters, ask for fewer rows or fewer included relationships, and try again."
)


class _Watch:
    """One running statement under a deadline."""

    __slots__ = ("active", "deadline", "fired", "interrupt", "repeat")

    def __init__(self, deadline: float, interrupt: Callable[[_Watch], None], repeat: bool) -> None:
        self.deadline = deadline
        self.interrupt = interrupt
        self.repeat = repeat
        self.fired = False
        self.active = True


class _Watchdog:
    """One daemon thread that interrupts the statements whose deadline has passed.

    It sleeps until the earliest deadline it holds; deadlines are handed out in increasing order,
    so registering a statement wakes it only when it had nothing to wait for.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._watches: set[_Watch] = set()
        self._until = math.inf
        self._thread: threading.Thread | None = None

    def watch(self, deadline: float, interrupt: Callable[[_Watch], None], repeat: bool) -> _Watch:
        entry = _Watch(deadline, interrupt, repeat)
        with self._cond:
            self._watches.add(entry)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="ormai-agents-watchdog", daemon=True)
                self._thread.start()
            if deadline < self._until:
                self._until = deadline
                self._cond.notify()
        return entry

    def release(self, entry: _Watch) -> None:
        # Under the lock: once this returns, the watchdog won't interrupt the connection for it.
        with self._cond:
            entry.active = False
            self._watches.discard(entry)

    def _run(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                for entry in [e for e in self._watches if e.deadline <= now]:
                    # A cancel that reaches the server before the statement does is ignored there:
                    # a server-side interrupt is sent again until the statement returns.
                    if entry.repeat:
                        entry.deadline = now + _REPEAT_SECONDS
                    else:
                        self._watches.discard(entry)
                    entry.fired = True
                    try:
                        entry.interrupt(entry)
                    except Exception:  # the connection may be gone already
                        log.warning("ormai_agents: could not interrupt a statement over its time budget", exc_info=True)
                self._until = min((e.deadline for e in self._watches), default=math.inf)
                self._cond.wait(None if self._until == math.inf else max(self._until - now, 0.001))


_REPEAT_SECONDS = 0.25
_WATCHDOG = _Watchdog()


def _sqlite(raw: Any) -> Callable[[_Watch], None] | None:
    method = getattr(raw, "interrupt", None)
    return None if method is None else (lambda _entry: method())


def _aiosqlite(raw: Any) -> Callable[[_Watch], None] | None:
    # aiosqlite runs statements in its own thread on a sqlite3 connection; interrupt() on that
    # connection is thread-safe (aiosqlite's own `interrupt` coroutine calls it directly).
    return _sqlite(getattr(raw, "_connection", None))


def _cancel(raw: Any) -> Callable[[_Watch], None] | None:
    method = getattr(raw, "cancel", None)
    return None if method is None else (lambda _entry: method())


def _cancel_task(raw: Any) -> Callable[[_Watch], None] | None:
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    if task is None:
        return None

    def cancel_if_running(entry: _Watch) -> None:
        if entry.active:  # in the loop: the statement has not returned yet
            task.cancel()

    def interrupt(entry: _Watch) -> None:
        loop.call_soon_threadsafe(cancel_if_running, entry)

    return interrupt


def _kill_query(raw: Any) -> Callable[[_Watch], None] | None:
    # PyMySQL keeps its connection arguments as public attributes, aiomysql as private ones.
    def arg(name: str) -> Any:
        return getattr(raw, name, getattr(raw, "_" + name, None))

    thread_ids = getattr(raw, "server_thread_id", None)
    if not thread_ids:
        return None
    thread_id = int(thread_ids[0])
    # TLS when the connection itself uses it: PyMySQL's socket is then an SSLSocket.
    ssl = getattr(raw, "_ssl_context", None)
    if ssl is None and isinstance(getattr(raw, "_sock", None), SSLSocket):
        ssl = getattr(raw, "ctx", None)
    options = {
        "host": arg("host"), "port": arg("port"), "user": arg("user"), "password": arg("password") or "",
        "unix_socket": arg("unix_socket"), "ssl": ssl, "connect_timeout": 2,
    }  # fmt: skip

    def interrupt(_entry: _Watch) -> None:
        import pymysql  # type: ignore[import-untyped]  # aiomysql is built on PyMySQL: there with either driver

        side = pymysql.connect(**options)
        try:
            with side.cursor() as cursor:
                cursor.execute("KILL QUERY %s", (thread_id,))
        finally:
            side.close()

    return interrupt


# driver name (SQLAlchemy's `dialect.driver`) -> how to interrupt a statement on its connection.
INTERRUPTERS: dict[str, Callable[[Any], Callable[[_Watch], None] | None]] = {
    "pysqlite": _sqlite,
    "aiosqlite": _aiosqlite,
    "psycopg": _cancel,
    "psycopg2": _cancel,
    "asyncpg": _cancel_task,
    "pymysql": _kill_query,
    "aiomysql": _kill_query,
}


def deadline(seconds: float | None) -> float | None:
    """The monotonic time a call started now must end by (None: no budget)."""
    return None if seconds is None else time.monotonic() + seconds


class Interruptible:
    """Run one statement under a deadline: `with Interruptible(connection, deadline): ...`.

    `connection` is the SQLAlchemy (sync) `Connection` the statement runs on.
    """

    __slots__ = ("_conn", "_deadline", "_entry")

    def __init__(self, connection: Any, deadline: float | None) -> None:
        self._conn = connection
        self._deadline = deadline
        self._entry: _Watch | None = None

    def __enter__(self) -> None:
        if self._deadline is None:
            return
        if time.monotonic() >= self._deadline:
            raise CallTimeoutError(TIMEOUT_MESSAGE)
        make = INTERRUPTERS.get(self._conn.dialect.driver)
        interrupt = make(self._conn.connection.driver_connection) if make is not None else None
        if interrupt is not None:
            # Cancelling the task twice would cancel what runs after the statement: once only.
            self._entry = _WATCHDOG.watch(self._deadline, interrupt, repeat=make is not _cancel_task)

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> Literal[False]:
        entry = self._entry
        if entry is None:
            return False
        _WATCHDOG.release(entry)
        if entry.fired and exc is not None:
            if isinstance(exc, asyncio.CancelledError):
                task = asyncio.current_task()
                uncancel = getattr(task, "uncancel", None)  # Python 3.11+
                if uncancel is not None:
                    uncancel()
            raise CallTimeoutError(TIMEOUT_MESSAGE) from None
        return False


__all__ = ["INTERRUPTERS", "TIMEOUT_MESSAGE", "Interruptible", "deadline"]
