"""Audit records: one per toolset call, whatever its outcome, and the stores that keep them.

Three stores ship: `MemoryAuditStore` (tests, demos), `JsonlAuditStore` (append-only JSON lines
with size-based rotation) and `SqlAuditStore` (a table of its own, `ormai_audit_log`, through
SQLAlchemy, in the application's database or another one). All are async and safe for
concurrent use within one process.

Two ways to store a record, and how the toolset uses them:

- `await store.write(record)` is *durable*: it returns once the record is stored and raises
  when it could not be. The toolset uses it for writes (create, update, delete, bulk_update):
  a write whose record can't be stored is rolled back (fail closed).
- `await store.write_buffered(record)` may batch: the record is stored when the batch is full,
  after `flush_interval` seconds, on `flush()`, on `aclose()`, or together with the next durable
  write. The toolset uses it for reads, so auditing does not dominate a read's cost. A read whose
  record can't be stored still answers; the failure goes to the `ormai_agents` logger and the
  record stays queued for the next flush (up to `max_pending` records). Call `await
  store.aclose()` on shutdown, or buffered records of the last interval are lost.

`SqlAuditStore(in_caller_transaction=True)` instead stores a successful write's record in the
caller's own transaction, so record and change commit or roll back together (needed on SQLite
when the audit table shares the application's database file).

Custom stores only need `write` and `query` (the `AuditStore` protocol); without
`write_buffered` every record is written durably.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import logging
import math
import os
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from datetime import date, datetime, timezone
from decimal import Decimal
from enum import Enum
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Engine,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    bindparam,
    cast,
    delete,
    func,
    insert,
    select,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.mysql import DATETIME as MYSQL_DATETIME
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession
from sqlalchemy.orm import Session
from sqlalchemy.types import TypeDecorator

from ormai_agents._db import DbHandle, engine_of
from ormai_agents._dialects import exact_equals
from ormai_agents._storable import MAX_TEXT, clean, clean_text, escape_line

__all__ = [
    "AuditRecord", "AuditStore", "JsonlAuditStore", "MemoryAuditStore", "SqlAuditStore", "audit_table",
    "skeleton_record", "storable_record",
]  # fmt: skip

log = logging.getLogger("ormai_agents")

Outcome = Literal["success", "denied", "error"]


def _new_id() -> str:
    # 128 random bits, like uuid4, at a fraction of its cost on the per-call path.
    return f"aud-{os.urandom(16).hex()}"


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _utc(value: datetime) -> datetime:
    """An aware UTC datetime; naive values are taken to be UTC already."""
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def _json_default(value: Any) -> Any:
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value)} bytes>"
    return str(value)


def _dumps(value: Any) -> str:
    # allow_nan=False: "Infinity" is not JSON, and PostgreSQL's json types refuse it.
    return json.dumps(value, default=_json_default, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


@dataclass(slots=True)
class AuditRecord:
    """What one toolset call did, for whom, under which policy, and how it ended.

    `inputs` are redacted: values on fields the policy does not plainly allow, and values under
    keys matching `Policy.redact_keys` (at any depth), are replaced by "[REDACTED]".
    `before`/`after` are the row as the principal may see it, for writes.
    """

    tool_name: str
    model: str | None
    tenant_id: Any = None
    user_id: Any = None
    inputs: dict[str, Any] = field(default_factory=dict)
    scopes_injected: list[str] = field(default_factory=list)
    policies_applied: list[str] = field(default_factory=list)
    bypass_used: bool = False
    outcome: Outcome = "success"
    error_code: str | None = None
    error_message: str | None = None
    row_count: int | None = None
    duration_ms: float = 0.0
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None
    request_id: str | None = None
    roles: list[str] = field(default_factory=list)
    id: str = field(default_factory=_new_id)
    timestamp: datetime = field(default_factory=_now)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (timestamps as ISO 8601, other non-JSON values as text)."""
        return json.loads(self.to_json())  # type: ignore[no-any-return]

    def to_json(self) -> str:
        """The record as one line of JSON (no raw line breaks; see `storable_record` for what a
        record no store could keep becomes)."""
        try:
            return _record_json(self)
        except (ValueError, TypeError, RecursionError, AttributeError):
            return _record_json(storable_record(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AuditRecord:
        """The record `to_dict` produced (unknown keys are ignored, for forward compatibility).

        Raises ValueError when `data` is not such a record (a missing tool name, a value of the
        wrong type, a timestamp that is not ISO 8601)."""
        if not isinstance(data, Mapping):
            raise ValueError("an audit record is a JSON object")
        values = {k: v for k, v in data.items() if k in _FIELD_TYPES}
        for name, value in values.items():
            expected = _FIELD_TYPES[name]
            if expected is not None and not isinstance(value, expected):
                raise ValueError(f"audit record field {name!r} has the wrong type")
        ts = values.get("timestamp")
        try:
            if isinstance(ts, str):
                values["timestamp"] = _utc(datetime.fromisoformat(ts))
            elif isinstance(ts, datetime):
                values["timestamp"] = _utc(ts)
            return cls(**values)
        except TypeError:
            raise ValueError("an audit record needs at least a tool name") from None


_FIELD_NAMES = tuple(f.name for f in fields(AuditRecord))


def _record_json(record: AuditRecord) -> str:
    """The record as one line of JSON; raises when a value can't be written as JSON."""
    data = {name: getattr(record, name) for name in _FIELD_NAMES}
    data["timestamp"] = _utc(record.timestamp).isoformat()
    return _dumps(data)


_OPT_STR = (str, type(None))
# What `from_dict` accepts per field (None: any JSON value).
_FIELD_TYPES: dict[str, Any] = {
    "tool_name": str, "model": _OPT_STR, "tenant_id": None, "user_id": None, "inputs": dict,
    "scopes_injected": list, "policies_applied": list, "bypass_used": bool, "outcome": str,
    "error_code": _OPT_STR, "error_message": _OPT_STR, "row_count": (int, type(None)),
    "duration_ms": (int, float), "before": (dict, type(None)), "after": (dict, type(None)),
    "request_id": _OPT_STR, "roles": list, "id": str, "timestamp": (str, datetime),
}  # fmt: skip
assert set(_FIELD_TYPES) == set(_FIELD_NAMES)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _short(value: Any, limit: int) -> str | None:
    """Storable text of at most `limit` characters (None stays None)."""
    if value is None:
        return None
    return clean_text(value if isinstance(value, str) else _dumps(clean(value)), limit)[:limit]


def storable_record(record: AuditRecord) -> AuditRecord:
    """A copy of `record` every store can keep: each value made storable and bounded the way
    the toolset does it for the records it builds (see `ormai_agents._storable`)."""
    ts = record.timestamp
    return AuditRecord(
        id=_short(record.id, 64) or _new_id(),
        timestamp=_utc(ts) if isinstance(ts, datetime) else _now(),
        tool_name=_short(record.tool_name, 64) or "",
        model=_short(record.model, 200),
        tenant_id=clean(record.tenant_id),
        user_id=clean(record.user_id),
        roles=_as_list(clean(record.roles)),
        inputs=_as_dict(clean(record.inputs)),
        scopes_injected=_as_list(clean(record.scopes_injected)),
        policies_applied=_as_list(clean(record.policies_applied)),
        bypass_used=bool(record.bypass_used),
        outcome=_short(record.outcome, 16) or "error",  # type: ignore[arg-type]
        error_code=_short(record.error_code, 64),
        error_message=_short(record.error_message, MAX_TEXT),
        row_count=record.row_count if type(record.row_count) is int and abs(record.row_count) < 2**31 else None,
        duration_ms=float(record.duration_ms) if _finite(record.duration_ms) else 0.0,
        before=None if record.before is None else _as_dict(clean(record.before)),
        after=None if record.after is None else _as_dict(clean(record.after)),
        request_id=_short(record.request_id, 200),
    )


def skeleton_record(record: AuditRecord) -> AuditRecord:
    """What is left of `record` when even `storable_record` can't be stored: who, which tool,
    how it ended and the request id, in ASCII, and a marker where its values were."""
    safe = storable_record(record)

    def ascii_text(value: Any, limit: int) -> Any:
        if value is None or isinstance(value, (bool, int)):
            return value
        text = value if isinstance(value, str) else _dumps(value)
        return text.encode("ascii", "backslashreplace").decode("ascii")[:limit]

    return AuditRecord(
        id=safe.id if safe.id.isascii() else _new_id(),
        timestamp=safe.timestamp,
        tool_name=ascii_text(safe.tool_name, 64),
        model=ascii_text(safe.model, 200),
        tenant_id=ascii_text(safe.tenant_id, 255),
        user_id=ascii_text(safe.user_id, 255),
        inputs={_UNSTORABLE: True},
        bypass_used=safe.bypass_used,
        outcome=ascii_text(safe.outcome, 16),
        error_code=ascii_text(safe.error_code, 64),
        row_count=safe.row_count,
        duration_ms=safe.duration_ms,
        before={_UNSTORABLE: True} if safe.before is not None else None,
        after={_UNSTORABLE: True} if safe.after is not None else None,
        request_id=ascii_text(safe.request_id, 200),
    )


_UNSTORABLE = "[UNSTORABLE]"


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {"value": value}


@runtime_checkable
class AuditStore(Protocol):
    """Where audit records go. Implementations must be safe for concurrent use in one process."""

    async def write(self, record: AuditRecord) -> None:
        """Store one record durably; raise when it could not be stored."""

    async def query(
        self,
        *,
        tenant_id: Any = None,
        user_id: Any = None,
        tool_name: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
    ) -> list[AuditRecord]:
        """Matching records, newest first. `since` is inclusive, `until` exclusive."""


async def deliver(store: AuditStore, record: AuditRecord, *, durable: bool, db: Any = None) -> None:
    """Hand a record to a store: durably (a write that changed something), or batched where the
    store supports it (reads, and writes that were refused or failed: they changed nothing).

    `db` is the caller's session. A store that keeps a write's record in the caller's transaction
    (`SqlAuditStore` on the caller's database, see `SqlAuditStore.uses_caller_transaction`)
    stores it there: the record and the change commit or roll back together, and the write never
    needs a second connection while it holds its own.
    """
    if durable and record.outcome == "success":
        if db is not None and _uses_caller_transaction(store, db):
            await store.write_in(db, record)  # type: ignore[attr-defined]
            return
        await store.write(record)
        return
    buffered = getattr(store, "write_buffered", None)
    if buffered is not None:
        await buffered(record)
        return
    await store.write(record)


def _uses_caller_transaction(store: Any, db: Any) -> bool:
    check = getattr(store, "uses_caller_transaction", None)
    if check is not None:
        return bool(check(db))
    return bool(getattr(store, "in_caller_transaction", False)) and hasattr(store, "write_in")


def matches(
    record: AuditRecord,
    tenant_id: Any,
    user_id: Any,
    tool_name: str | None,
    since: datetime | None,
    until: datetime | None,
) -> bool:
    """Whether a record passes `AuditStore.query` filters (None means any)."""
    return (
        (tenant_id is None or record.tenant_id == tenant_id)
        and (user_id is None or record.user_id == user_id)
        and (tool_name is None or record.tool_name == tool_name)
        and (since is None or _utc(record.timestamp) >= _utc(since))
        and (until is None or _utc(record.timestamp) < _utc(until))
    )


def _newest(records: Iterable[AuditRecord], limit: int) -> list[AuditRecord]:
    """The `limit` newest records by timestamp; records stored later win ties (input is oldest first)."""
    ranked = heapq.nlargest(limit, enumerate(records), key=lambda p: (_utc(p[1].timestamp), p[0]))
    return [record for _, record in ranked]


def _check_limit(limit: int) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError("limit must be a positive integer")
    return limit


class MemoryAuditStore:
    """Keeps records in memory (newest `max_records`); for tests, demos and short-lived processes."""

    def __init__(self, max_records: int | None = 100_000) -> None:
        self._records: deque[AuditRecord] = deque(maxlen=max_records)
        self._lock = threading.Lock()

    @property
    def records(self) -> list[AuditRecord]:
        """Every kept record, oldest first."""
        return list(self._records)

    async def write(self, record: AuditRecord) -> None:
        self._records.append(record)  # deque.append is atomic; no lock needed on the hot path

    async def query(
        self,
        *,
        tenant_id: Any = None,
        user_id: Any = None,
        tool_name: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
    ) -> list[AuditRecord]:
        _check_limit(limit)
        found = (r for r in list(self._records) if matches(r, tenant_id, user_id, tool_name, since, until))
        return _newest(found, limit)

    async def delete_before(self, cutoff: datetime) -> int:
        """Retention: drop records older than `cutoff`; returns how many were dropped."""
        cutoff = _utc(cutoff)
        with self._lock:
            keep = [r for r in self._records if _utc(r.timestamp) >= cutoff]
            dropped = len(self._records) - len(keep)
            self._records.clear()
            self._records.extend(keep)
            return dropped

    async def flush(self) -> None:
        """Nothing is buffered in memory; present so every store can be flushed alike."""

    async def aclose(self) -> None:
        """Nothing to release."""


# Errors that say "this record", not "this store": the batch is split and the record that fails
# alone is stored in a fallback rendering, or dropped and counted (never requeued for ever).
_RECORD_EXCEPTIONS = (ValueError, TypeError, AttributeError, KeyError, RecursionError, OverflowError)
# SQLSTATE classes: data exception, integrity constraint violation, program limit exceeded.
_RECORD_SQLSTATE_CLASSES = ("22", "23", "54")
# MySQL/MariaDB: incorrect string value, data too long, out of range, truncated, invalid JSON,
# CHECK constraint (a JSON column's JSON_VALID), duplicate key.
_RECORD_MYSQL_ERRNOS = {1062, 1264, 1265, 1292, 1300, 1366, 1406, 3140, 4025}
_UNIQUE_SQLSTATE = "23505"


def _driver_error(exc: BaseException) -> BaseException | None:
    orig = getattr(exc, "orig", None)
    return orig if orig is not None else None


def _sqlstate(error: BaseException | None) -> str | None:
    for candidate in (error, getattr(error, "__cause__", None)):
        for attr in ("sqlstate", "pgcode"):
            value = getattr(candidate, attr, None)
            if isinstance(value, str):
                return value
    return None


def _mysql_errno(error: BaseException | None) -> int | None:
    args = getattr(error, "args", None)
    return args[0] if args and type(args[0]) is int else None


def is_record_error(exc: BaseException) -> bool:
    """Whether a store failed because of the record (its values), rather than being unavailable."""
    if isinstance(exc, _RECORD_EXCEPTIONS) and not isinstance(exc, sa_exc.SQLAlchemyError):
        return True
    if not isinstance(exc, sa_exc.StatementError):
        return False  # OSError, timeouts, pool exhaustion: the store, not the record
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return False
    orig = _driver_error(exc)
    state = _sqlstate(orig)
    if state is not None:
        return state[:2] in _RECORD_SQLSTATE_CLASSES
    if _mysql_errno(orig) in _RECORD_MYSQL_ERRNOS:
        return True
    if isinstance(orig, _RECORD_EXCEPTIONS) or isinstance(getattr(orig, "__cause__", None), _RECORD_EXCEPTIONS):
        return True
    if isinstance(exc, (sa_exc.DataError, sa_exc.IntegrityError)):
        return True
    return not isinstance(exc, sa_exc.DBAPIError)  # a bind value the dialect could not convert


def _already_stored(exc: BaseException) -> bool:
    """A unique violation on the record's id: an earlier attempt did store it."""
    if not isinstance(exc, sa_exc.IntegrityError):
        return False
    orig = _driver_error(exc)
    if _sqlstate(orig) == _UNIQUE_SQLSTATE or _mysql_errno(orig) == 1062:
        return True
    return "unique constraint failed" in str(orig).lower()


class AuditRecordRejected(Exception):
    """A store could take the record in no rendering (it was dropped and counted)."""


class _Batcher:
    """Queues records for a store and stores them in batches.

    A batch is stored when `batch_size` records are queued (by a task of its own when
    `background`, so the caller never waits for the store's connection), `flush_interval` seconds
    after the first one was queued, with the next durable write, or on `flush()`/`aclose()`.

    When a batch fails because the store is unavailable, it is put back (oldest dropped beyond
    `max_pending`, with an error log). When it fails because of a record, it is split until the
    record that fails alone is found; that record is stored in a fallback rendering
    (`storable_record`, then `skeleton_record`), or, when none can be stored, dropped: logged
    without its values and counted in `dead_letters`, never put back.
    """

    def __init__(
        self,
        store_many: Callable[[list[AuditRecord]], Awaitable[None]],
        batch_size: int,
        flush_interval: float,
        max_pending: int,
        *,
        background: bool = False,
        exit_in_thread: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if flush_interval <= 0:
            raise ValueError("flush_interval must be positive")
        if max_pending < batch_size:
            raise ValueError("max_pending must be at least batch_size")
        self._store_many = store_many
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.max_pending = max_pending
        self._pending: list[AuditRecord] = []
        self._lock = threading.Lock()
        self._timer: asyncio.Task[None] | None = None
        self._drainer: asyncio.Task[None] | None = None
        self.background = background
        self.exit_in_thread = exit_in_thread
        self._exit_threads: list[threading.Thread] = []
        self._inflight = 0
        # One future per batch being stored, resolved when that store ends: a reader waits for
        # them, or a batch a timer took a moment earlier would be missing from what it reads.
        self._storing: list[asyncio.Future[None]] = []
        self.dead_letters = 0
        self.fallbacks = 0

    @property
    def pending(self) -> int:
        """Records queued or being stored."""
        return len(self._pending) + self._inflight

    def _take(self) -> list[AuditRecord]:
        with self._lock:
            batch, self._pending = self._pending, []
            self._inflight += len(batch)
        return batch

    def _done(self, count: int) -> None:
        with self._lock:
            self._inflight -= count

    def _requeue(self, batch: list[AuditRecord]) -> None:
        with self._lock:
            merged = batch + self._pending
            overflow = len(merged) - self.max_pending
            if overflow > 0:
                log.error("ormai_agents: dropped %d buffered audit records that could not be stored", overflow)
                merged = merged[overflow:]
            self._pending = merged

    async def add(self, record: AuditRecord) -> None:
        with self._lock:
            self._pending.append(record)
            full = len(self._pending) >= self.batch_size
        loop = asyncio.get_running_loop()
        if full:
            if not self.background:
                await self._flush_now()
                return
            # Stored by a task of its own: the caller may hold a connection from the pool the
            # store draws on, and must never wait for a second one.
            drainer = self._drainer
            if drainer is None or drainer.done() or drainer.get_loop() is not loop:
                self._drainer = loop.create_task(self._drain())
            return
        timer = self._timer
        if timer is None or timer.done() or timer.get_loop() is not loop:
            self._timer = loop.create_task(self._flush_later())

    async def _drain(self) -> None:
        try:
            while True:
                await self._flush_now()
                if len(self._pending) < self.batch_size:
                    return
        except asyncio.CancelledError:
            await self._on_loop_exit()
            raise
        except Exception:
            log.exception("ormai_agents: could not store buffered audit records")

    async def _flush_later(self) -> None:
        try:
            await asyncio.sleep(self.flush_interval)
            await self._flush_now()
        except asyncio.CancelledError:
            await self._on_loop_exit()
            raise
        except Exception:
            log.exception("ormai_agents: could not store buffered audit records")

    async def _on_loop_exit(self) -> None:
        """The task was cancelled (an event loop shutting down, or `aclose`): store what is queued.

        With `exit_in_thread`, from a thread of its own, not waited for here: the loop's thread
        may hold a connection of the pool the store draws on (a sync session kept open across
        `asyncio.run` calls), and would wait for itself. `flush`/`aclose` wait for that thread."""
        if not self.exit_in_thread:
            try:
                await self._flush_now()
            except Exception:
                log.exception("ormai_agents: could not store buffered audit records")
            return
        if not self._pending:
            return

        def store() -> None:
            try:
                asyncio.run(self._flush_now())
            except Exception:
                log.exception("ormai_agents: could not store buffered audit records")

        thread = threading.Thread(target=store, name="ormai-audit-flush")  # not a daemon: exit waits for it
        with self._lock:
            self._exit_threads = [t for t in self._exit_threads if t.is_alive()] + [thread]
        thread.start()

    async def _settle(self, everything: bool) -> None:
        """Wait for a background batch of this event loop, and for batches being stored by
        threads of their own, still being stored; with `everything`, also for every batch of
        this loop being stored (a timer's, another caller's)."""
        loop = asyncio.get_running_loop()
        drainer = self._drainer
        if drainer is not None and not drainer.done() and drainer.get_loop() is loop:
            await asyncio.wait([drainer])
        with self._lock:
            threads = [t for t in self._exit_threads if t.is_alive()]
        for thread in threads:
            await asyncio.to_thread(thread.join)
        if everything:
            with self._lock:
                busy = [f for f in self._storing if f.get_loop() is loop]
            if busy:
                await asyncio.wait(busy)

    async def flush(self, extra: AuditRecord | None = None, *, everything: bool = False) -> None:
        """Store everything queued (and `extra`, durably, in the same batch).

        With `everything` (readers, explicit flushes), also wait for the batches other tasks of
        this loop are storing, so that what is read next holds every record written before.
        A durable write does not wait for them: its caller may hold the connection they need.

        Raises when the store is unavailable (queued records are kept), and
        `AuditRecordRejected` when `extra` could be stored in no rendering."""
        await self._settle(everything)
        await self._flush_now(extra)

    async def _flush_now(self, extra: AuditRecord | None = None) -> None:
        batch = self._take()
        taken = len(batch)
        if extra is not None:
            batch.append(extra)
        if not batch:
            return
        stored: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        with self._lock:
            self._storing.append(stored)
        try:
            lost = await self._store_resilient(batch, extra)
        finally:
            self._done(taken)
            with self._lock:
                self._storing.remove(stored)
            stored.set_result(None)
        if extra is not None and any(r is extra for r in lost):
            raise AuditRecordRejected("the audit record could not be stored")

    async def _store_resilient(self, batch: list[AuditRecord], extra: AuditRecord | None) -> list[AuditRecord]:
        """Store `batch`, splitting it around records that fail; returns the records dropped."""
        chunks = [batch]  # a stack: the last chunk holds the oldest records not yet stored
        lost: list[AuditRecord] = []
        try:
            while chunks:
                chunk = chunks[-1]
                try:
                    await self._store_many(chunk)
                except Exception as exc:
                    if not is_record_error(exc):
                        raise
                    if len(chunk) > 1:
                        chunks.pop()
                        half = len(chunk) // 2
                        chunks += [chunk[half:], chunk[:half]]
                        continue
                    if not _already_stored(exc) and not await self._last_resort(chunk[0], exc):
                        lost.append(chunk[0])
                chunks.pop()
        except BaseException:
            # The store is unavailable (or the task was cancelled): keep what was not stored.
            unstored = [r for chunk in reversed(chunks) for r in chunk]
            self._requeue([r for r in unstored if r is not extra])
            raise
        return lost

    async def _last_resort(self, record: AuditRecord, first: BaseException) -> bool:
        """Store `record` in a fallback rendering; False when none could be stored (dropped)."""
        for render in (storable_record, skeleton_record):
            try:
                await self._store_many([render(record)])
            except Exception as exc:
                if _already_stored(exc):
                    return True
                if not is_record_error(exc):
                    raise
                continue
            self.fallbacks += 1
            log.warning(
                "ormai_agents: stored audit record %s in a fallback rendering (%s could not be stored as is)",
                _safe_id(record), type(first).__name__,
            )  # fmt: skip
            return True
        self.dead_letters += 1
        log.error(
            "ormai_agents: dropped audit record %s: no rendering of it could be stored (%s)",
            _safe_id(record), type(first).__name__,
        )  # fmt: skip
        return False

    async def aclose(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and not timer.done() and timer.get_loop() is asyncio.get_running_loop():
            timer.cancel()
            await asyncio.wait([timer])
        await self.flush(everything=True)


def _safe_id(record: AuditRecord) -> str:
    # Identifies a record in a log line without any value an agent or a host chose.
    rid = record.id if isinstance(record.id, str) and record.id.isascii() and record.id.isprintable() else "?"
    tool = record.tool_name if isinstance(record.tool_name, str) and record.tool_name.isidentifier() else "?"
    return f"{rid[:64]} ({tool[:64]}, {record.outcome if record.outcome in ('success', 'denied', 'error') else '?'})"


# --- JSON lines ---------------------------------------------------------------------------

_PATH_LOCKS: dict[str, threading.Lock] = {}
_PATH_LOCKS_GUARD = threading.Lock()


def _path_lock(path: Path) -> threading.Lock:
    # One lock per file, shared by every store on that file in this process.
    key = os.path.abspath(path)
    with _PATH_LOCKS_GUARD:
        return _PATH_LOCKS.setdefault(key, threading.Lock())


def _parse_line(line: bytes) -> AuditRecord | None:
    """The record on one line of a JSONL store, or None when the line is not one."""
    try:
        record = AuditRecord.from_dict(json.loads(line.decode("utf-8")))
        record.timestamp.tzinfo  # noqa: B018 - a datetime, or this is no record
        return record
    except (ValueError, TypeError, AttributeError, RecursionError):
        return None


class JsonlAuditStore:
    """Append-only JSON lines, one record per line, with size-based rotation.

    When appending would take the file past `max_bytes`, it is renamed to `<path>.1` (older
    backups shift to `.2` ... `.<backup_count>`, the oldest is deleted) and a new file is begun.
    `max_bytes=None` never rotates. File work runs in a worker thread, under a lock shared by
    every store on the same path in this process, so concurrent writers never interleave lines.

    `write` returns once the line is handed to the operating system (`fsync=True` also waits
    for the disk). Reads are written at once too unless `batch_size > 1`, which batches them
    (see the module docstring).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_bytes: int | None = 50 * 1024 * 1024,
        backup_count: int = 5,
        fsync: bool = False,
        batch_size: int = 1,
        flush_interval: float = 1.0,
        max_pending: int = 10_000,
    ) -> None:
        if max_bytes is not None and max_bytes < 1:
            raise ValueError("max_bytes must be positive, or None for no rotation")
        if max_bytes is not None and backup_count < 1:
            raise ValueError("backup_count must be at least 1 when rotating")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.backup_count = backup_count
        self.fsync = fsync
        self._lock = _path_lock(self.path)
        self._batcher = _Batcher(self._store_many, batch_size, flush_interval, max_pending)
        self._skipped = 0

    # writing

    async def write(self, record: AuditRecord) -> None:
        """Store one record (and any batched ones) now; raises when the file can't be written."""
        await self._batcher.flush(record)

    async def write_buffered(self, record: AuditRecord) -> None:
        """Queue a record; stored with the batch (at once when `batch_size` is 1)."""
        await self._batcher.add(record)

    async def flush(self) -> None:
        """Store every queued record now."""
        await self._batcher.flush(everything=True)

    async def aclose(self) -> None:
        """Store every queued record and stop the flush timer."""
        await self._batcher.aclose()

    @property
    def pending(self) -> int:
        """How many records are queued, not yet written."""
        return self._batcher.pending

    @property
    def dead_letters(self) -> int:
        """Records dropped because no rendering of them could be written (each logged, without values)."""
        return self._batcher.dead_letters

    @property
    def fallbacks(self) -> int:
        """Records written in a fallback rendering (`storable_record` or `skeleton_record`)."""
        return self._batcher.fallbacks

    @property
    def skipped_lines(self) -> int:
        """Unreadable lines the last read skipped (a torn write, a line edited by hand)."""
        return self._skipped

    async def _store_many(self, records: list[AuditRecord]) -> None:
        # One record per line, whatever its values hold: `escape_line` leaves nothing a reader
        # could split on; a value UTF-8 can't encode fails here, and the batcher falls back.
        data = "".join(escape_line(_record_json(r)) + "\n" for r in records).encode("utf-8")
        # A small append to an existing file is a page-cache copy of a few microseconds, cheaper
        # than a trip to a worker thread: do it here when nobody holds the file. fsync, rotation
        # and a busy file go to a worker thread, off the event loop.
        if not self.fsync and self._lock.acquire(blocking=False):
            try:
                size = self._size()
                if size > 0 and (self.max_bytes is None or size + len(data) <= self.max_bytes):
                    self._write(data)
                    return
            finally:
                self._lock.release()
        await asyncio.to_thread(self._append, data)

    def _backup(self, n: int) -> Path:
        return self.path.with_name(f"{self.path.name}.{n}")

    def _size(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def _must_rotate(self, incoming: int) -> bool:
        if self.max_bytes is None:
            return False
        size = self._size()
        return bool(size) and size + incoming > self.max_bytes

    def _write(self, data: bytes) -> None:
        # O_APPEND: each write lands at the end even if another handle wrote meanwhile.
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)

    def _append(self, data: bytes) -> None:
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self._must_rotate(len(data)):
                self._rotate()
            self._write(data)

    def _rotate(self) -> None:
        oldest = self._backup(self.backup_count)
        if oldest.exists():
            oldest.unlink()
        for n in range(self.backup_count - 1, 0, -1):
            src = self._backup(n)
            if src.exists():
                os.replace(src, self._backup(n + 1))
        os.replace(self.path, self._backup(1))

    # reading

    def _files_newest_first(self) -> list[Path]:
        files = [self.path] + [self._backup(n) for n in range(1, self.backup_count + 1)]
        return [f for f in files if f.exists()]

    def _read_lines(self, path: Path) -> list[bytes]:
        try:
            return path.read_bytes().split(b"\n")
        except FileNotFoundError:
            return []

    def _records_oldest_first(self) -> Iterator[AuditRecord]:
        # Open every file under the lock (a rotation can't move one between listing and opening),
        # then read without it, so writers are not held up by a long read.
        handles = []
        with self._lock:
            for f in reversed(self._files_newest_first()):
                try:
                    handles.append(f.open("rb"))
                except FileNotFoundError:
                    continue
        contents = []
        for fh in handles:
            with fh:
                contents.append(fh.read())
        skipped = 0
        try:
            for data in contents:
                # Lines end with "\n" only: the writer escapes every other character a reader
                # might take as a line break, so a value can't split or hide a record.
                for line in data.split(b"\n"):
                    if not line.strip():
                        continue
                    record = _parse_line(line)
                    if record is None:
                        skipped += 1
                        continue
                    yield record
        finally:
            self._skipped = skipped
            if skipped:
                log.warning("ormai_agents: skipped %d unreadable line(s) in %s and its backups", skipped, self.path)

    async def query(
        self,
        *,
        tenant_id: Any = None,
        user_id: Any = None,
        tool_name: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
    ) -> list[AuditRecord]:
        """Matching records across the file and its backups, newest first."""
        _check_limit(limit)

        def run() -> list[AuditRecord]:
            found = (
                r for r in self._records_oldest_first() if matches(r, tenant_id, user_id, tool_name, since, until)
            )
            return _newest(found, limit)

        return await asyncio.to_thread(run)

    async def delete_before(self, cutoff: datetime) -> int:
        """Retention: rewrite the file and its backups without records older than `cutoff`."""
        cutoff = _utc(cutoff)

        def run() -> int:
            dropped = 0
            with self._lock:
                for path in self._files_newest_first():
                    lines = [line for line in self._read_lines(path) if line.strip()]
                    keep = []
                    for line in lines:
                        try:
                            ts = _utc(datetime.fromisoformat(json.loads(line)["timestamp"]))
                        except (ValueError, TypeError, KeyError, AttributeError, RecursionError):
                            keep.append(line)  # unreadable lines are kept for a human to inspect
                            continue
                        if ts >= cutoff:
                            keep.append(line)
                    if len(keep) == len(lines):
                        continue
                    dropped += len(lines) - len(keep)
                    tmp = path.with_name(path.name + ".tmp")
                    tmp.write_bytes(b"".join(line + b"\n" for line in keep))
                    os.replace(tmp, path)
            return dropped

        await self._batcher.flush(everything=True)
        return await asyncio.to_thread(run)


# --- SQL ----------------------------------------------------------------------------------


class _UTCDateTime(TypeDecorator[datetime]):
    """Timestamps stored in UTC: as timestamptz on PostgreSQL, as naive UTC elsewhere."""

    # MySQL's DATETIME keeps whole seconds unless told otherwise: keep microseconds.
    impl = DateTime(timezone=True).with_variant(MYSQL_DATETIME(fsp=6), "mysql", "mariadb")
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        value = _utc(value)
        return value if dialect.name == "postgresql" else value.replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else _utc(value)


def _json() -> Any:
    return JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")


class _JSONText(TypeDecorator[str]):
    """A JSON column's value already serialised (by `_json_text`): bound as that text, cast to
    jsonb on PostgreSQL, so the driver or SQLAlchemy doesn't serialise it a second time."""

    impl = _json()
    cache_ok = True

    def bind_processor(self, dialect: Any) -> None:
        return None


# The JSON columns, bound from the row's "<column>_json" keys.
_JSON_COLUMNS = ("principal", "inputs", "scopes_injected", "policies_applied", "before", "after")
# A folded record's bound columns: all but the snapshots (see `SqlAuditStore.folded_insert`).
_FOLDED_COLUMNS = (
    "id", "timestamp", "tenant_id", "user_id", "tool_name", "model", "outcome", "error_code", "error_message",
    "row_count", "duration_ms", "bypass_used", "request_id", "principal", "inputs", "scopes_injected",
    "policies_applied",
)  # fmt: skip


def _plain(value: Any) -> Any:
    """What `json.loads(_dumps(value))` gives back (and raises what it raises), without the round
    trip for the scalars records carry."""
    kind = type(value)
    if value is None or kind is str or kind is bool or kind is int or (kind is float and math.isfinite(value)):
        return value
    return json.loads(_dumps(value))


def _json_text(value: Any) -> str | None:
    """The text SQLAlchemy's JSON type stored for `_plain(value)` (`json.dumps`' defaults), in one
    pass; None stays SQL NULL."""
    if value is None:
        return None
    return _ENCODER.encode(value)


# `json.dumps` with these options builds an encoder per call; one shared encoder gives the same text.
_ENCODER = json.JSONEncoder(default=_json_default, allow_nan=False)


def audit_table(metadata: MetaData, name: str = "ormai_audit_log", schema: str | None = None) -> Table:
    """The audit table's definition (for Alembic, or `metadata.create_all`)."""
    return Table(
        name,
        metadata,
        # A sequence number orders records stored in the same microsecond.
        Column("seq", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True),
        Column("id", String(64), nullable=False, unique=True),
        Column("timestamp", _UTCDateTime(), nullable=False),
        Column("tenant_id", String(255)),
        Column("user_id", String(255)),
        Column("tool_name", String(64), nullable=False),
        Column("model", String(200)),
        Column("outcome", String(16), nullable=False),
        Column("error_code", String(64)),
        Column("error_message", Text),
        Column("row_count", Integer),
        Column("duration_ms", Float),
        Column("bypass_used", Boolean, nullable=False),
        Column("request_id", String(200)),
        # The principal's typed tenant_id, user_id and roles (the columns above hold text keys).
        Column("principal", _json()),
        Column("inputs", _json()),
        Column("scopes_injected", _json()),
        Column("policies_applied", _json()),
        Column("before", _json()),
        Column("after", _json()),
        Index(f"ix_{name}_tenant_ts", "tenant_id", "timestamp"),
        Index(f"ix_{name}_ts", "timestamp"),
        schema=schema,
        # MySQL and MariaDB: utf8mb4 whatever the database's default (latin1 and utf8mb3 can't
        # hold every character an agent sends; such records lost their values to a fallback).
        mysql_charset="utf8mb4",
        mariadb_charset="utf8mb4",
    )


_DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306, "mariadb": 3306}


def _same_database(a: Engine, b: Engine) -> bool:
    """Whether two engines reach the same database (the same engine, or the same URL apart
    from the driver)."""
    if a is b:
        return True
    ua, ub = a.url, b.url
    backend = ua.get_backend_name()
    if backend != ub.get_backend_name():
        return False
    if backend == "sqlite":
        files = [u.database for u in (ua, ub)]
        if any(f in (None, "", ":memory:") or str(f).startswith("file:") for f in files):
            return False
        return os.path.realpath(str(files[0])) == os.path.realpath(str(files[1]))
    port = _DEFAULT_PORTS.get(backend)
    return (ua.host, ua.port or port, ua.database, ua.username) == (ub.host, ub.port or port, ub.database, ub.username)


def _cut(value: Any, limit: int | None) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else _dumps(value)
    return text if limit is None else text[:limit]


def _key(value: Any) -> str | None:
    """The text form of a tenant or user id, as stored in the indexed column."""
    if value is None:
        return None
    text = value if isinstance(value, str) else _dumps(value)
    return text[:255]


class SqlAuditStore:
    """Audit records in a table of their own (`ormai_audit_log`), through SQLAlchemy Core.

    `engine` is a sync `Engine` or an `AsyncEngine`, on the application's database or a separate
    one (sync engines run in a worker thread, off the event loop). Call `await create_table()`
    once (it does nothing when the table exists), or create it with your migrations from
    `audit_table()`. The table is indexed on (tenant_id, timestamp) and on timestamp.

    Where a write's record goes (`in_caller_transaction`):

    - `None` (the default): in the caller's own transaction when the caller's session is on this
      store's database: the same engine, or an engine with the same database URL (backend, host,
      port, database, user; the file for SQLite) and the same default schema. The record then
      commits or rolls back with the change it describes, and the write never needs a second
      connection while it holds its own, so a small pool, or a pooler's few server connections,
      can't deadlock. Otherwise through `engine`, before the caller commits.
    - `True`: always in the caller's transaction (the audit table must be in the database and
      schema the caller's session uses; when it isn't there, every write fails closed).
    - `False`: always through `engine`: for an audit database of its own. Give it connections
      of its own too (its own pool, and its own pool in a pooler), or writes holding the
      application's connections wait for the audit's.

    Everything else is batched (`batch_size=100`, `flush_interval=0.5` seconds; one INSERT per
    batch): the records of reads, and of writes that were refused or failed (they changed
    nothing, and a rollback can't erase them). A full batch is stored by a background task, so a
    call never waits for the store's connection; on a sync engine, what is queued when an event
    loop ends (`asyncio.run` of one call) is stored by a thread of its own, so the loop's thread,
    which may hold a connection of the same pool, never waits for it. `query`, `flush` and `aclose` store what is
    queued first. Call `await store.aclose()` on shutdown (on SIGTERM): until then, a crash loses
    at most the records of the last `flush_interval` seconds (or `batch_size` calls). Records of
    successful writes are never in that window.
    """

    def __init__(
        self,
        engine: Engine | AsyncEngine,
        *,
        table_name: str = "ormai_audit_log",
        schema: str | None = None,
        batch_size: int = 100,
        flush_interval: float = 0.5,
        max_pending: int = 10_000,
        in_caller_transaction: bool | None = None,
    ) -> None:
        if not isinstance(engine, (Engine, AsyncEngine)):
            raise TypeError("engine must be a SQLAlchemy Engine or AsyncEngine")
        if in_caller_transaction not in (None, True, False):
            raise TypeError("in_caller_transaction must be None (decide by database), True or False")
        self.engine = engine
        self.in_caller_transaction = in_caller_transaction
        self.metadata = MetaData()
        self.table = audit_table(self.metadata, table_name, schema)
        # One INSERT for every record: inline (no RETURNING of the sequence number nobody reads),
        # the JSON columns bound as the text `_row` serialised.
        self._insert_row = (
            insert(self.table)
            .inline()
            .values({name: bindparam(f"{name}_json", type_=_JSONText()) for name in _JSON_COLUMNS})
        )
        # A sync engine's batches can be stored from any thread: when a loop ends, they are.
        sync = isinstance(engine, Engine)
        self._batcher = _Batcher(
            self._store_many, batch_size, flush_interval, max_pending, background=True, exit_in_thread=sync
        )
        self._same_database: dict[Engine, bool] = {}

    def uses_caller_transaction(self, db: Any) -> bool:
        """Whether a successful write made through `db` has its record stored in `db`'s
        transaction (see `in_caller_transaction` in the class docstring)."""
        if self.in_caller_transaction is not None:
            return self.in_caller_transaction
        caller = engine_of(db)
        if caller is None:
            return False
        verdict = self._same_database.get(caller)
        if verdict is None:
            mine = self.engine.sync_engine if isinstance(self.engine, AsyncEngine) else self.engine
            verdict = _same_database(caller, mine)
            # The same database, but a search_path that finds another schema (known once each
            # engine has connected): the table is not where the caller's session would look.
            schemas = (caller.dialect.default_schema_name, mine.dialect.default_schema_name)
            known = self.table.schema is not None or None not in schemas
            if verdict and self.table.schema is None and None not in schemas and schemas[0] != schemas[1]:
                verdict = False
            if not known:
                return verdict
            if len(self._same_database) > 64:
                self._same_database.clear()
            self._same_database[caller] = verdict
        return verdict

    # plumbing

    async def _run(self, fn: Callable[[Connection], Any], *, begin: bool) -> Any:
        engine = self.engine
        if isinstance(engine, AsyncEngine):
            ctx = engine.begin() if begin else engine.connect()
            async with ctx as conn:
                return await conn.run_sync(fn)

        def sync() -> Any:
            ctx = engine.begin() if begin else engine.connect()
            with ctx as conn:
                return fn(conn)

        return await asyncio.to_thread(sync)

    def _row(self, record: AuditRecord) -> dict[str, Any]:
        # Plain columns are cut to their lengths; a value the database still refuses fails the
        # batch, which is then split and the record stored in a fallback rendering. Each value is
        # what the record's JSON gives back (`_plain`), and raises where that would, so a record
        # that can't be written as JSON falls back the same way.
        tenant_id, user_id = _plain(record.tenant_id), _plain(record.user_id)
        return {
            "id": _cut(_plain(record.id), 64),
            "timestamp": _utc(record.timestamp),
            "tenant_id": _key(tenant_id),
            "user_id": _key(user_id),
            "tool_name": _cut(_plain(record.tool_name), 64),
            "model": _cut(_plain(record.model), 200),
            "outcome": _cut(_plain(record.outcome), 16),
            "error_code": _cut(_plain(record.error_code), 64),
            "error_message": _cut(_plain(record.error_message), None),
            "row_count": _plain(record.row_count),
            "duration_ms": _plain(record.duration_ms),
            "bypass_used": bool(_plain(record.bypass_used)),
            "request_id": _cut(_plain(record.request_id), 200),
            "principal_json": _json_text({"tenant_id": tenant_id, "user_id": user_id, "roles": record.roles}),
            "inputs_json": _json_text(record.inputs),
            "scopes_injected_json": _json_text(record.scopes_injected),
            "policies_applied_json": _json_text(record.policies_applied),
            "before_json": _json_text(record.before),
            "after_json": _json_text(record.after),
        }

    def _record(self, row: Any) -> AuditRecord:
        m = row._mapping
        principal = m["principal"] if isinstance(m["principal"], dict) else {}
        return AuditRecord(
            id=m["id"],
            timestamp=m["timestamp"],
            tenant_id=principal.get("tenant_id", m["tenant_id"]),
            user_id=principal.get("user_id", m["user_id"]),
            roles=list(principal.get("roles") or []),
            tool_name=m["tool_name"],
            model=m["model"],
            outcome=m["outcome"],
            error_code=m["error_code"],
            error_message=m["error_message"],
            row_count=m["row_count"],
            duration_ms=m["duration_ms"] or 0.0,
            bypass_used=bool(m["bypass_used"]),
            request_id=m["request_id"],
            inputs=m["inputs"] or {},
            scopes_injected=list(m["scopes_injected"] or []),
            policies_applied=list(m["policies_applied"] or []),
            before=m["before"],
            after=m["after"],
        )

    # schema

    async def create_table(self) -> None:
        """Create the table and its indexes if they don't exist."""
        await self._run(lambda conn: self.metadata.create_all(conn, tables=[self.table]), begin=True)

    # writing

    async def _store_many(self, records: list[AuditRecord]) -> None:
        rows = [self._row(r) for r in records]
        await self._run(lambda conn: conn.execute(self._insert_row, rows), begin=True)

    async def write(self, record: AuditRecord) -> None:
        """Store one record (and any batched ones) in one transaction now; raises on failure."""
        await self._batcher.flush(record)

    async def write_buffered(self, record: AuditRecord) -> None:
        """Queue a record; stored with its batch (see the class docstring)."""
        await self._batcher.add(record)

    async def write_in(self, db: Session | AsyncSession | Connection | AsyncConnection, record: AuditRecord) -> None:
        """Store a record in `db`'s current transaction (the table must be in that database).

        When the database refuses it, the caller's transaction fails with it (writes fail
        closed); the toolset's own records are always storable (see `storable_record`)."""
        try:
            row = self._row(record)
        except (ValueError, TypeError, RecursionError, AttributeError):
            row = self._row(storable_record(record))
        # The store's one INSERT, the record's values as parameters: building `.values(row)` per
        # record cost more than sending it.
        await DbHandle(db).execute(self._insert_row, row, action="store the audit record")

    def folded_insert(self, source: Any, before: Any, after: Any) -> Any:
        """The INSERT of one record as part of a write's own statement (PostgreSQL: a
        data-modifying CTE): one row for each row of `source`, the snapshots given as SQL
        expressions over it, every other value bound as `folded_insert_params` names it, and the
        duration grown by the statement's own time so far."""
        columns = self.table.c
        names: list[str] = []
        values: list[Any] = []
        for name in _FOLDED_COLUMNS:
            kind = _JSONText() if name in _JSON_COLUMNS else columns[name].type
            bound: Any = bindparam(f"ormai_audit_{name}", type_=kind)
            if name == "duration_ms":
                elapsed = func.extract("epoch", func.clock_timestamp() - func.statement_timestamp()) * 1000
                bound = cast(bound + elapsed, Float)
            names.append(name)
            values.append(bound)
        rows = select(*values, before, after).select_from(source)
        return insert(self.table).from_select([*names, "before", "after"], rows)

    def folded_insert_params(self, record: AuditRecord) -> dict[str, Any]:
        """The bound values of `folded_insert` for `record` (whose snapshots the statement writes)."""
        row = self._row(record)
        keys = {name: f"{name}_json" if name in _JSON_COLUMNS else name for name in _FOLDED_COLUMNS}
        return {f"ormai_audit_{name}": row[key] for name, key in keys.items()}

    async def flush(self) -> None:
        """Store every queued record now; raises (and keeps them queued) on failure."""
        await self._batcher.flush(everything=True)

    async def aclose(self) -> None:
        """Store every queued record and stop the flush timer. The engine is left open."""
        await self._batcher.aclose()

    @property
    def pending(self) -> int:
        """How many records are queued, not yet stored."""
        return self._batcher.pending

    @property
    def dead_letters(self) -> int:
        """Records dropped because no rendering of them could be stored (each logged, without values)."""
        return self._batcher.dead_letters

    @property
    def fallbacks(self) -> int:
        """Records stored in a fallback rendering (`storable_record` or `skeleton_record`)."""
        return self._batcher.fallbacks

    # reading

    async def query(
        self,
        *,
        tenant_id: Any = None,
        user_id: Any = None,
        tool_name: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
    ) -> list[AuditRecord]:
        """Matching records, newest first (queued records are stored first)."""
        _check_limit(limit)
        await self._batcher.flush(everything=True)
        t = self.table
        stmt = select(t)
        if tenant_id is not None:
            # Exact, whatever the collation: tenant 'ACME' must not read tenant 'acme''s records.
            stmt = stmt.where(exact_equals(t.c.tenant_id, _key(tenant_id)))
        if user_id is not None:
            stmt = stmt.where(exact_equals(t.c.user_id, _key(user_id)))
        if tool_name is not None:
            stmt = stmt.where(exact_equals(t.c.tool_name, tool_name))
        if since is not None:
            stmt = stmt.where(t.c.timestamp >= since)
        if until is not None:
            stmt = stmt.where(t.c.timestamp < until)
        stmt = stmt.order_by(t.c.timestamp.desc(), t.c.seq.desc()).limit(limit)
        rows = await self._run(lambda conn: conn.execute(stmt).all(), begin=False)
        return [self._record(r) for r in rows]

    async def delete_before(self, cutoff: datetime) -> int:
        """Retention: delete records older than `cutoff`; returns how many were deleted."""
        await self._batcher.flush(everything=True)
        stmt = delete(self.table).where(self.table.c.timestamp < cutoff)
        return int(await self._run(lambda conn: conn.execute(stmt).rowcount, begin=True))

