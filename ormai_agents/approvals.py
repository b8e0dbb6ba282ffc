"""Human approval of writes whose policy says `WriteAction.RequireApproval`.

The flow:

1. The agent calls a write (say `toolset.update(ctx, model="Order", id=7, data={...})`). The call
   is validated against the policy, nothing is written, and `ApprovalRequiredError` is raised with
   `.approval_id`. The pending `Approval` (operation, model, exact arguments, principal) is kept
   in the toolset's approval store, signed with a key derived from the toolset's `secret_key`.
2. A person approves or rejects it: `await store.approve(approval_id, decided_by="alice")`.
3. The host runs it: `await toolset.execute_approved(ctx, approval_id)`. It runs only for the
   principal that asked, only the operation and arguments that were approved, under the policy
   in force *now* (a write since denied, a field since hidden, a row since out of scope all fail),
   and at most once: the approval is claimed atomically before the write and is spent afterwards,
   whether the write succeeded or failed. An altered record (arguments, principal, model or
   operation changed in the store) fails its signature check.

Pass a stable `secret_key` to the Toolset when approvals must survive a restart.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import hmac
import json
import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from sqlalchemy import Column, DateTime, Engine, MetaData, String, Table, Text, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from ormai_agents._dialects import exact_equals
from ormai_agents._errors import ApprovalError, ApprovalRequiredError, OrmAIError

if TYPE_CHECKING:
    from ormai_agents._context import Principal

__all__ = [
    "Approval",
    "ApprovalDecisions",
    "ApprovalError",
    "ApprovalRequiredError",
    "ApprovalStatus",
    "ApprovalStore",
    "MemoryApprovalStore",
    "SqlApprovalStore",
]

log = logging.getLogger("ormai_agents")


class ApprovalStatus(str, Enum):
    """Where an approval is in its life: pending → approved/rejected → executing → executed/failed."""

    Pending = "pending"
    Approved = "approved"
    Rejected = "rejected"
    Executing = "executing"
    Executed = "executed"
    Failed = "failed"


def _now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(slots=True)
class Approval:
    """One write waiting for, or past, a person's decision."""

    id: str
    tool: str  # create, update, delete or bulk_update
    model: str
    arguments: dict[str, Any]  # exactly what will run, as JSON values
    principal: dict[str, Any]  # Principal.to_dict() of the caller
    signature: str
    status: ApprovalStatus = ApprovalStatus.Pending
    created_at: datetime = field(default_factory=_now)
    decided_at: datetime | None = None
    decided_by: str | None = None
    reason: str | None = None
    finished_at: datetime | None = None
    error_code: str | None = None

    @property
    def tenant_id(self) -> Any:
        return self.principal.get("tenant_id")

    @property
    def user_id(self) -> Any:
        return self.principal.get("user_id")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view for the person deciding (timestamps as ISO 8601)."""
        return {
            "id": self.id,
            "tool": self.tool,
            "model": self.model,
            "arguments": self.arguments,
            "principal": self.principal,
            "status": self.status.value,
            "created_at": self.created_at.isoformat(),
            "decided_at": self.decided_at.isoformat() if self.decided_at else None,
            "decided_by": self.decided_by,
            "reason": self.reason,
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "error_code": self.error_code,
        }


@runtime_checkable
class ApprovalStore(Protocol):
    """Where approvals are kept: every method the toolset and the framework adapters call.

    `transition` must be atomic (compare-and-set on the status). `approve` and `reject` come
    with `ApprovalDecisions`.
    """

    async def add(self, approval: Approval) -> None:
        """Keep a new pending approval; raise when it could not be stored."""

    async def get(self, approval_id: str) -> Approval | None:
        """The approval, or None."""

    async def transition(
        self,
        approval_id: str,
        expected: ApprovalStatus,
        new: ApprovalStatus,
        *,
        decided_by: str | None = None,
        reason: str | None = None,
        error_code: str | None = None,
    ) -> bool:
        """Move from `expected` to `new` if the approval is in `expected`; True when it moved."""

    async def list(
        self, *, tenant_id: Any = None, status: ApprovalStatus | None = None, limit: int = 100
    ) -> list[Approval]:
        """Approvals, newest first."""

    async def approve(self, approval_id: str, *, decided_by: str | None = None, reason: str | None = None) -> Approval:
        """Approve a pending approval; ApprovalError when it is unknown or not pending."""

    async def reject(self, approval_id: str, *, decided_by: str | None = None, reason: str | None = None) -> Approval:
        """Reject a pending approval; ApprovalError when it is unknown or not pending."""


class ApprovalDecisions:
    """`approve` and `reject` for any store with `transition` and `get`: derive a store of your
    own from it and implement `add`, `get`, `transition` and `list`."""

    async def approve(self, approval_id: str, *, decided_by: str | None = None, reason: str | None = None) -> Approval:
        """Approve a pending approval; ApprovalError when it is unknown or not pending."""
        return await self._decide(approval_id, ApprovalStatus.Approved, decided_by, reason)

    async def reject(self, approval_id: str, *, decided_by: str | None = None, reason: str | None = None) -> Approval:
        """Reject a pending approval; ApprovalError when it is unknown or not pending."""
        return await self._decide(approval_id, ApprovalStatus.Rejected, decided_by, reason)

    async def _decide(
        self, approval_id: str, new: ApprovalStatus, decided_by: str | None, reason: str | None
    ) -> Approval:
        store: Any = self
        if not await store.transition(approval_id, ApprovalStatus.Pending, new, decided_by=decided_by, reason=reason):
            raise ApprovalError("No pending approval with that id.")
        approval: Approval | None = await store.get(approval_id)
        assert approval is not None
        return approval


def _apply(
    approval: Approval, new: ApprovalStatus, decided_by: str | None, reason: str | None, error_code: str | None
) -> None:
    approval.status = new
    if new in (ApprovalStatus.Approved, ApprovalStatus.Rejected):
        approval.decided_at, approval.decided_by, approval.reason = _now(), decided_by, reason
    elif new in (ApprovalStatus.Executed, ApprovalStatus.Failed):
        approval.finished_at, approval.error_code = _now(), error_code


class MemoryApprovalStore(ApprovalDecisions):
    """Approvals in memory: for tests, demos and single-process hosts."""

    def __init__(self) -> None:
        self._approvals: dict[str, Approval] = {}
        self._lock = asyncio.Lock()

    async def add(self, approval: Approval) -> None:
        self._approvals[approval.id] = copy.deepcopy(approval)

    async def get(self, approval_id: str) -> Approval | None:
        found = self._approvals.get(approval_id)
        return copy.deepcopy(found) if found is not None else None

    async def transition(
        self,
        approval_id: str,
        expected: ApprovalStatus,
        new: ApprovalStatus,
        *,
        decided_by: str | None = None,
        reason: str | None = None,
        error_code: str | None = None,
    ) -> bool:
        async with self._lock:
            found = self._approvals.get(approval_id)
            if found is None or found.status is not expected:
                return False
            _apply(found, new, decided_by, reason, error_code)
            return True

    async def list(
        self, *, tenant_id: Any = None, status: ApprovalStatus | None = None, limit: int = 100
    ) -> list[Approval]:
        out = [
            copy.deepcopy(a)
            for a in sorted(self._approvals.values(), key=lambda a: a.created_at, reverse=True)
            if (tenant_id is None or a.tenant_id == tenant_id) and (status is None or a.status is status)
        ]
        return out[:limit]


class SqlApprovalStore(ApprovalDecisions):
    """Approvals in a table of their own (`ormai_approvals` by default), through SQLAlchemy.

    `engine` is a sync `Engine` or an `AsyncEngine`; it may be the application's database or
    another one. The table is created on first use unless `create_table=False`.
    """

    def __init__(
        self, engine: Engine | AsyncEngine, *, table_name: str = "ormai_approvals", create_table: bool = True
    ) -> None:
        if not isinstance(engine, (Engine, AsyncEngine)):
            raise TypeError("engine must be a SQLAlchemy Engine or AsyncEngine")
        self.engine = engine
        self._create = create_table
        self._ready = False
        self._setup = asyncio.Lock()
        self.table = Table(
            table_name,
            MetaData(),
            Column("id", String(64), primary_key=True),
            Column("status", String(16), nullable=False, index=True),
            Column("tool", String(32), nullable=False),
            Column("model", String(200), nullable=False),
            Column("tenant_key", String(200), index=True),
            Column("arguments", Text, nullable=False),
            Column("principal", Text, nullable=False),
            Column("signature", String(128), nullable=False),
            Column("created_at", DateTime(timezone=True), nullable=False),
            Column("decided_at", DateTime(timezone=True)),
            Column("decided_by", String(200)),
            Column("reason", Text),
            Column("finished_at", DateTime(timezone=True)),
            Column("error_code", String(64)),
        )

    async def _execute(self, stmt: Any) -> tuple[int, list[Any]]:
        if not self._ready and self._create:
            async with self._setup:
                if not self._ready:
                    await self.create_table()
        if isinstance(self.engine, AsyncEngine):
            async with self.engine.begin() as conn:
                result = await conn.execute(stmt)
                return result.rowcount, (list(result.all()) if result.returns_rows else [])
        with self.engine.begin() as sync_conn:
            result = sync_conn.execute(stmt)
            return result.rowcount, (list(result.all()) if result.returns_rows else [])

    async def create_table(self) -> None:
        """Create the approvals table if it does not exist."""
        if isinstance(self.engine, AsyncEngine):
            async with self.engine.begin() as conn:
                await conn.run_sync(self.table.metadata.create_all)
        else:
            with self.engine.begin() as sync_conn:
                self.table.metadata.create_all(sync_conn)
        self._ready = True

    async def add(self, approval: Approval) -> None:
        await self._execute(
            insert(self.table).values(
                id=approval.id,
                status=approval.status.value,
                tool=approval.tool,
                model=approval.model,
                tenant_key=_tenant_key(approval.tenant_id),
                arguments=_dumps(approval.arguments),
                principal=_dumps(approval.principal),
                signature=approval.signature,
                created_at=approval.created_at,
            )
        )

    async def get(self, approval_id: str) -> Approval | None:
        _, rows = await self._execute(select(self.table).where(self.table.c.id == approval_id))
        return _from_row(rows[0]) if rows else None

    async def transition(
        self,
        approval_id: str,
        expected: ApprovalStatus,
        new: ApprovalStatus,
        *,
        decided_by: str | None = None,
        reason: str | None = None,
        error_code: str | None = None,
    ) -> bool:
        probe = Approval(approval_id, "", "", {}, {}, "")
        _apply(probe, new, decided_by, reason, error_code)
        values: dict[str, Any] = {"status": new.value}
        if new in (ApprovalStatus.Approved, ApprovalStatus.Rejected):
            values.update(decided_at=probe.decided_at, decided_by=decided_by, reason=reason)
        elif new in (ApprovalStatus.Executed, ApprovalStatus.Failed):
            values.update(finished_at=probe.finished_at, error_code=error_code)
        count, _ = await self._execute(
            update(self.table)
            .where(self.table.c.id == approval_id, self.table.c.status == expected.value)
            .values(values)
        )
        return count == 1

    async def list(
        self, *, tenant_id: Any = None, status: ApprovalStatus | None = None, limit: int = 100
    ) -> list[Approval]:
        stmt = select(self.table).order_by(self.table.c.created_at.desc()).limit(max(1, min(int(limit), 10_000)))
        if tenant_id is not None:
            stmt = stmt.where(exact_equals(self.table.c.tenant_key, _tenant_key(tenant_id)))
        if status is not None:
            stmt = stmt.where(self.table.c.status == status.value)
        _, rows = await self._execute(stmt)
        return [_from_row(r) for r in rows]


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _tenant_key(tenant_id: Any) -> str | None:
    return None if tenant_id is None else _dumps(tenant_id)[:200]


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value


def _from_row(row: Any) -> Approval:
    m = row._mapping
    created = _aware(m["created_at"])
    assert created is not None
    return Approval(
        id=m["id"],
        tool=m["tool"],
        model=m["model"],
        arguments=json.loads(m["arguments"]),
        principal=json.loads(m["principal"]),
        signature=m["signature"],
        status=ApprovalStatus(m["status"]),
        created_at=created,
        decided_at=_aware(m["decided_at"]),
        decided_by=m["decided_by"],
        reason=m["reason"],
        finished_at=_aware(m["finished_at"]),
        error_code=m["error_code"],
    )


_UNKNOWN = "No approval with that id is available to you. Nothing was written."


class ApprovalGate:
    """The toolset's side of approvals: submit, sign, verify, claim and spend (internal)."""

    def __init__(self, store: ApprovalStore | None, key: bytes) -> None:
        self.store = store
        self._key = key

    def sign(self, approval: Approval) -> str:
        payload = _dumps([approval.id, approval.tool, approval.model, approval.arguments, approval.principal])
        return hmac.new(self._key, payload.encode(), hashlib.sha256).hexdigest()

    def _require_store(self) -> ApprovalStore:
        if self.store is None:  # build_write_plans refuses such policies; kept for direct callers
            raise ApprovalError("Approvals are not configured for this toolset.")
        return self.store

    async def submit(self, principal: Principal, tool: str, model: str, arguments: dict[str, Any]) -> str:
        store = self._require_store()
        approval = Approval(
            id=f"apr-{uuid.uuid4().hex}",
            tool=tool,
            model=model,
            arguments=arguments,
            principal=json.loads(_dumps(principal.to_dict())),
            signature="",
        )
        approval.signature = self.sign(approval)
        try:
            await store.add(approval)
        except Exception:
            log.exception("ormai_agents: could not store an approval request")
            raise OrmAIError(
                "The change needs approval, but the request could not be recorded. Nothing was written."
            ) from None
        return approval.id

    async def load(self, approval_id: Any, principal: Principal) -> Approval:
        """The approval, checked: intact, the caller's, and approved."""
        store = self._require_store()
        if not isinstance(approval_id, str) or not 0 < len(approval_id) <= 64:
            raise ApprovalError(_UNKNOWN)
        approval = await store.get(approval_id)
        if approval is None:
            raise ApprovalError(_UNKNOWN)
        if not hmac.compare_digest(approval.signature, self.sign(approval)):
            log.warning("ormai_agents: approval %s failed its signature check", approval_id)
            raise ApprovalError(
                "That approval record was altered after it was submitted; it can't run. Nothing was written."
            )
        if _dumps(approval.principal) != _dumps(principal.to_dict()):
            raise ApprovalError(_UNKNOWN)
        if approval.status is ApprovalStatus.Pending:
            raise ApprovalError("That approval is still waiting for a decision. Nothing was written.")
        if approval.status is ApprovalStatus.Rejected:
            why = f": {approval.reason}" if approval.reason else ""
            raise ApprovalError(f"That change was rejected{why}. Nothing was written.")
        if approval.status is not ApprovalStatus.Approved:
            raise ApprovalError("That approval has already been used. Nothing was written.")
        return approval

    async def claim(self, approval: Approval) -> bool:
        return await self._require_store().transition(approval.id, ApprovalStatus.Approved, ApprovalStatus.Executing)

    async def finish(self, approval: Approval, error: BaseException | None) -> None:
        code = None if error is None else (error.code if isinstance(error, OrmAIError) else "error")
        new = ApprovalStatus.Executed if error is None else ApprovalStatus.Failed
        try:
            await self._require_store().transition(approval.id, ApprovalStatus.Executing, new, error_code=code)
        except Exception:  # the approval stays "executing": spent either way
            log.exception("ormai_agents: could not record the outcome of approval %s", approval.id)
