"""One toolset call: its arguments, its database handle, its deadline and its audit record.

`Toolset` opens a `Call` around every tool method (`async with Call(...) as call:`) and passes it
explicitly to the read path (`ormai_agents._reads`) and the write path (`ormai_agents._writes`).
The call checks the arguments' bounds before anything reads them, sets the row-level security
settings when the toolset enforces them, times itself, and writes exactly one audit record
whatever the outcome.
"""

from __future__ import annotations

import inspect
import logging
import time
from types import TracebackType
from typing import Any

from sqlalchemy import exc as sa_exc

from ormai_agents import _budget, _inputs
from ormai_agents._context import RunContext
from ormai_agents._db import DbHandle
from ormai_agents._dberrors import is_transient, map_db_errors, retrying
from ormai_agents._errors import (
    AuditUnavailableError,
    InvalidCursorError,
    OrmAIError,
    PolicyError,
    TransientDatabaseError,
    ValidationError,
)
from ormai_agents._operations import READ_OPERATIONS
from ormai_agents._plan import ModelPlan, Where
from ormai_agents._redact import redact_snapshot
from ormai_agents._rls_settings import principal_settings, settings_statement
from ormai_agents._runtime import Runtime
from ormai_agents._storable import clean, clean_text
from ormai_agents.audit import AuditRecord, AuditStore, deliver

log = logging.getLogger("ormai_agents")

# Error codes whose calls are recorded as `denied` (the policy said no), not `error`.
DENIED_CODES = frozenset({
    "access_denied", "model_not_allowed", "field_not_allowed", "write_not_allowed",
    "approval_required", "approval_invalid",
})  # fmt: skip
_READ_TOOLS = frozenset(READ_OPERATIONS)
_OUT_OF_BOUNDS = "[not recorded: beyond the argument bounds]"
_RLS_RETRIES = 3  # attempts after the first failure, as for reads


class Call:
    """Times one toolset call and writes its audit record, whatever the outcome."""

    __slots__ = (
        "after",
        "audit_folded",
        "before",
        "ctx",
        "db",
        "deadline",
        "inputs",
        "may_fold",
        "model",
        "opened",
        "plan",
        "recorded",
        "row_count",
        "runtime",
        "started",
        "tool",
        "where",
    )

    def __init__(self, runtime: Runtime, ctx: RunContext, tool: str, model: Any, inputs: dict[str, Any]) -> None:
        if not isinstance(ctx, RunContext):
            raise TypeError("the first argument must be a RunContext")
        self.runtime = runtime
        self.ctx = ctx
        self.db = DbHandle(ctx.db)
        self.tool = tool
        self.model = model
        self.inputs = inputs
        self.plan: ModelPlan | None = None
        self.where: Where | None = None
        self.row_count: int | None = None
        self.before: dict[str, Any] | None = None
        self.after: dict[str, Any] | None = None
        self.opened: bool | None = None  # with rls: whether setting it began the transaction
        self.recorded = False
        # A write in its own transaction may store its record in its own statement (see
        # `ormai_agents._writes`); `audit_folded` says that statement did.
        self.may_fold = False
        self.audit_folded = False
        self.deadline: float | None = None
        self.started = 0.0

    def owns_transaction(self) -> bool:
        """Whether this call began the transaction it runs in (so it may roll back and retry).

        With row-level security the settings statement may already have begun it: it is still
        the call's own (`opened`, decided before that statement)."""
        return self.opened if self.opened is not None else not self.db.in_transaction()

    async def set_rls(self) -> None:
        """Set the principal's row-level security settings in the current transaction."""
        paths = self.runtime.rls_paths
        assert paths is not None
        if not self.db.capabilities().row_level_security:
            raise PolicyError(
                "This toolset enforces row-level security (rls=True), which needs PostgreSQL; the "
                "database it is connected to has no row-level security. The operator must connect it "
                "to PostgreSQL or build the toolset with rls=False."
            )
        statement = settings_statement(principal_settings(self.ctx.principal, paths))
        await self.db.fetch(statement, action="set the row-level security settings")

    async def audit_now(self) -> None:
        """Store the success record now, inside a write's transaction: when it can't be stored
        the error propagates and the write is rolled back (writes fail closed)."""
        store = self.runtime.audit_store
        if self.audit_folded:
            pass  # the write's own statement stored it
        elif store is not None or self.ctx.on_audit is not None:
            try:
                await self._audit(store, None, strict=True)
            except Exception as exc:  # whatever the store's failure, the record is not stored
                dropped = isinstance(exc, sa_exc.DBAPIError) and is_transient(exc)
                if dropped or isinstance(exc, TransientDatabaseError):
                    # A dropped connection, not a refused record: like any statement of the
                    # write before its commit, the write is retried when it is the call's own.
                    log.warning("ormai_agents: transient failure storing a %s's audit record", self.tool, exc_info=exc)
                    raise TransientDatabaseError(
                        "The database is temporarily unavailable. Try the same call again shortly."
                    ) from None
                raise AuditUnavailableError(
                    "The change was not applied because it could not be recorded in the audit log. Try again later."
                ) from None
        self.recorded = True

    async def __aenter__(self) -> Call:
        self.started = time.perf_counter()
        self.deadline = _budget.deadline(self.runtime.policy.call_timeout_seconds)
        try:
            self._check_bounds()
            # Before the call's first statement; `opened` tells reads and writes whether setting
            # them began the transaction (so it is the call's own to retry and commit).
            if self.runtime.rls_paths is not None and self.tool != "describe_schema":
                self.opened = not self.db.in_transaction()
                await self._first_rls()
        except BaseException as exc:
            await self.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    async def _first_rls(self) -> None:
        # Nothing has run yet: when the call began the transaction, a dropped connection (a
        # pooler restarted, a server connection killed) is retried on a new one.
        try:
            await self.set_rls()
            return
        except TransientDatabaseError:
            if not self.opened:
                raise
        async for attempt in retrying(_RLS_RETRIES):
            with attempt:
                with map_db_errors("roll back"):
                    await self.db.rollback()
                await self.set_rls()

    def _check_bounds(self) -> None:
        # Before anything reads them: arguments too deep or too big are refused (and the refused
        # values are left out of the audit record).
        problems = _inputs.check_bounds(self.inputs, self.runtime.bounds) if self.inputs else None
        if problems:
            self.inputs = {k: (_OUT_OF_BOUNDS if k in problems else v) for k, v in self.inputs.items()}
            why = "; ".join(problems.values())
            # A cursor is only ever one the toolset made: too big is simply not one.
            error = InvalidCursorError if list(problems) == ["cursor"] else ValidationError
            raise error(f"{why[0].upper()}{why[1:]}. Nothing was run: send smaller arguments.")

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        error: OrmAIError | None = None
        if isinstance(exc, OrmAIError):
            error = exc
        elif exc is not None:
            if isinstance(exc, Exception):
                log.error("ormai_agents: unexpected error in %s", self.tool, exc_info=exc)
            # Cancellation and other BaseExceptions are recorded, then propagate unchanged.
            error = OrmAIError("The request could not be completed.")
        store = self.runtime.audit_store
        if (store is not None or self.ctx.on_audit is not None) and not (self.recorded and error is None):
            await self._audit(store, error)
        if isinstance(exc, Exception) and error is not None and error is not exc:
            raise error from exc

    def success_record(self) -> AuditRecord | None:
        """The record of this write as it will have succeeded (one row), before its statement
        runs, for a statement that stores it itself; None when a value can't be rendered (the
        record is then stored the usual way)."""
        count, self.row_count = self.row_count, 1
        try:
            return self._record(None)
        except Exception:  # noqa: BLE001 - `_audit` builds it again, and logs what failed
            return None
        finally:
            self.row_count = count

    def _record(self, error: OrmAIError | None, bare: bool = False) -> AuditRecord:
        """The call's audit record, redacted once and storable by every store and event sink.

        `bare` keeps the principal's ids and what the toolset itself decides (the fallback when
        a value can't be rendered at all)."""
        principal = self.ctx.principal
        where = self.where
        model = self.model if isinstance(self.model, str) else None
        patterns = self.runtime.redact_keys
        return AuditRecord(
            tool_name=self.tool,
            model=clean_text(model, 200) if model is not None else None,
            tenant_id=clean(principal.tenant_id),
            user_id=clean(principal.user_id),
            roles=[] if bare else clean(list(principal.roles)),
            inputs={"[UNRECORDABLE]": True} if bare else self.runtime.redact(self.plan, self.inputs),
            scopes_injected=clean(list(where.scopes)) if where and not bare else [],
            policies_applied=clean(list(where.policies)) if where and not bare else [],
            bypass_used=where.bypass if where else False,
            outcome="success" if error is None else ("denied" if error.code in DENIED_CODES else "error"),
            error_code=None if error is None else error.code,
            error_message=None if error is None or bare else clean_text(error.message),
            row_count=self.row_count,
            duration_ms=(time.perf_counter() - self.started) * 1000,
            before=None if bare else redact_snapshot(self.before, patterns),
            after=None if bare else redact_snapshot(self.after, patterns),
            request_id=None if bare or self.ctx.request_id is None else clean_text(str(self.ctx.request_id), 200),
        )

    async def _audit(self, store: AuditStore | None, error: OrmAIError | None, strict: bool = False) -> None:
        try:
            record = self._record(error)
        except Exception:  # a host's odd value must not cost the call its record
            log.exception("ormai_agents: could not build the audit record of a %s call", self.tool)
            record = self._record(error, bare=True)
        if store is not None:
            try:
                await deliver(store, record, durable=self.tool not in _READ_TOOLS, db=self.ctx.db)
            except Exception:
                if strict:
                    raise
                # A read still answers; the failure is reported to the host's logs.
                log.exception("ormai_agents: could not store the audit record of a %s call", self.tool)
        sink = self.ctx.on_audit
        if sink is not None:
            try:
                pending = sink(record)
                if inspect.isawaitable(pending):
                    await pending
            except Exception:
                log.exception("ormai_agents: the on_audit callback failed for a %s call", self.tool)


__all__ = ["DENIED_CODES", "Call"]
