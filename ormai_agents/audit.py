"""Audit records: one per toolset call, whatever its outcome, and the stores that keep them."""

from __future__ import annotations

import asyncio
import uuid
from collections import deque
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal, Protocol, runtime_checkable

__all__ = ["AuditRecord", "AuditStore", "MemoryAuditStore"]

Outcome = Literal["success", "denied", "error"]


def _new_id() -> str:
    return f"aud-{uuid.uuid4().hex}"


def _now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(slots=True)
class AuditRecord:
    """What one toolset call did, for whom, under which policy, and how it ended.

    `inputs` are redacted: values on fields the policy does not plainly allow, and values under
    keys matching `Policy.redact_keys`, are replaced by "[REDACTED]".
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
        """A JSON-ready dict (timestamps as ISO 8601)."""
        data = asdict(self)
        data["timestamp"] = self.timestamp.isoformat()
        return data


@runtime_checkable
class AuditStore(Protocol):
    """Where audit records go. Implementations must be safe for concurrent use in one process."""

    async def write(self, record: AuditRecord) -> None:
        """Store one record; raise when it could not be stored."""

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
        """Matching records, newest first."""


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
        and (since is None or record.timestamp >= since)
        and (until is None or record.timestamp < until)
    )


class MemoryAuditStore:
    """Keeps records in memory (newest `max_records`); for tests, demos and short-lived processes."""

    def __init__(self, max_records: int | None = 100_000) -> None:
        self._records: deque[AuditRecord] = deque(maxlen=max_records)
        self._lock = asyncio.Lock()

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
        out: list[AuditRecord] = []
        for record in reversed(self._records):
            if matches(record, tenant_id, user_id, tool_name, since, until):
                out.append(record)
                if len(out) >= limit:
                    break
        return out

    async def delete_before(self, cutoff: datetime) -> int:
        """Retention: drop records older than `cutoff`; returns how many were dropped."""
        async with self._lock:
            keep = [r for r in self._records if r.timestamp >= cutoff]
            dropped = len(self._records) - len(keep)
            self._records.clear()
            self._records.extend(keep)
            return dropped
