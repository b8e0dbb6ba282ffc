"""The adapter kernel: the one call path shared by the LangChain, LlamaIndex and MCP adapters.

An adapter turns its framework's tool call into `ToolRunner.call(spec, principal, arguments)`
and the `ToolReply` it gets back into the framework's tool result. Everything between is here,
so the frameworks can't drift apart:

- the principal comes from the adapter (bound, from the run's config, from a bearer token),
  never from the arguments; a call without one is refused before anything runs;
- each call opens its own session from the host's factory, commits when the call succeeds,
  rolls back when it fails and closes it either way (`ormai_agents._sessions.open_session`);
- the `ToolSpec` runs on the `Toolset` in a `RunContext` carrying the adapter's audit sink;
  arguments the tool does not take are refused and audited like any other call;
- our errors become the JSON text the model reads; anything else is logged for the host and
  the model gets a generic message (no driver text, no traceback);
- writes whose policy says `RequireApproval`: `approval_request` says what a person would be
  asked, and `call(..., decision=...)` records that person's decision and runs (or refuses)
  the write. Without a decision the model hears `approval_required` with the approval id.

Misuse by the host (a sync call with an async session factory) raises `HostError` to the host.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import async_sessionmaker

from ormai_agents._context import AuditSink, Principal, RunContext
from ormai_agents._db import DbHandle
from ormai_agents._errors import AccessDeniedError, ApprovalRequiredError, OrmAIError, ValidationError
from ormai_agents._memory_sqlite import check_session_factory
from ormai_agents._sessions import SessionFactory, open_session
from ormai_agents._toolspecs import ArgumentError, ToolSpec, jsonable, render, tool_name
from ormai_agents.toolset import Toolset

log = logging.getLogger("ormai_agents")

GENERIC = OrmAIError("The request could not be completed.")
NO_PRINCIPAL = AccessDeniedError(
    "This tool can't be used in this conversation: the application did not say on whose behalf "
    "it runs. Tell the user the request can't be served; retrying will not help."
)
_UNKNOWN_TOOL = ValidationError("There is no tool of that name. Use one of the tools the server lists.")
ASYNC_IN_SYNC = (
    "This toolkit has an async session factory: call its tools asynchronously (ainvoke, acall), "
    "or give it a sync sessionmaker for synchronous calls."
)


class HostError(RuntimeError):
    """A mistake in how the host application uses an adapter: raised to the host, never shown to the model."""


@dataclass(frozen=True, slots=True)
class Decision:
    """A person's answer to an approval request."""

    approve: bool
    decided_by: str | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class ToolReply:
    """What the model reads: compact JSON text, and whether it is an error."""

    text: str
    is_error: bool = False

    @classmethod
    def error(cls, error: OrmAIError) -> ToolReply:
        return cls(render(error.to_dict()), True)


@dataclass(frozen=True, slots=True)
class ToolRunner:
    """Runs `ToolSpec`s of one toolset with sessions from one factory (shared by every tool of an adapter)."""

    toolset: Toolset
    session_factory: SessionFactory

    def __post_init__(self) -> None:
        check_session_factory(self.session_factory)

    @property
    def async_factory(self) -> bool:
        """Whether the factory makes async sessions (they belong to the event loop that opened them)."""
        return isinstance(self.session_factory, async_sessionmaker)

    def approval_request(self, spec: ToolSpec, principal: Principal, arguments: Any) -> dict[str, Any] | None:
        """What to put to a person before this call runs, or None when there is nothing to approve:
        the tool needs no approval, or the write would fail its checks anyway (it then runs, is
        refused and audited like any other call, and nobody is asked about it)."""
        if not spec.requires_approval or not isinstance(principal, Principal) or not isinstance(arguments, Mapping):
            return None
        try:
            _, call = spec.prepare(arguments)  # the toolset's arguments: what would be approved
            self.toolset.check_write(spec.model or "", spec.method, call)
        except (OrmAIError, ArgumentError):
            return None
        return {
            "type": "ormai_approval",
            "tool": spec.name,
            "operation": spec.method,
            "model": spec.model,
            "arguments": jsonable(call),
            "tenant_id": jsonable(principal.tenant_id),
            "user_id": jsonable(principal.user_id),
            "description": spec.description,
        }

    async def approval_target_visible(self, spec: ToolSpec, principal: Principal, arguments: Any) -> bool:
        """Whether the record a write needing approval names is one the principal may change,
        checked in a session of its own before anyone is asked (see `approval_request`). False
        when it can't be told: the call then runs, and the toolset refuses and audits it."""
        try:
            _, call = spec.prepare(arguments)
            async with open_session(self.session_factory) as db:
                ctx = RunContext(principal, db)
                return await self.toolset.write_target_exists(ctx, spec.model or "", spec.method, call)
        except Exception:
            log.debug(
                "ormai_agents: could not check the target of %s before asking for approval", spec.name, exc_info=True
            )
            return False

    async def call(
        self,
        spec: ToolSpec,
        principal: Principal | None,
        arguments: Any,
        *,
        on_audit: AuditSink | None = None,
        decision: Decision | None = None,
        sync: bool = False,
    ) -> ToolReply:
        """Run one tool call in a session of its own; never raises for anything the model did.

        `sync=True` is for adapters' synchronous entry points, which run the call on a private
        event loop: an async session factory is then refused (`HostError`).
        """
        return await self._guarded(
            spec.name, principal, lambda ctx: self._run(spec, ctx, arguments, decision), on_audit=on_audit, sync=sync
        )

    async def unknown_tool(
        self, name: Any, principal: Principal | None, arguments: Any, *, on_audit: AuditSink | None = None
    ) -> ToolReply:
        """A call of a tool that does not exist (an MCP client may send any name): refused and
        audited under a sanitised form of the name, which the reply never echoes."""
        label = tool_name("", str(name)[:200] or "unnamed")
        inputs = dict(arguments) if isinstance(arguments, Mapping) else {}
        return await self._guarded(
            label,
            principal,
            lambda ctx: self.toolset.refuse(ctx, label, _UNKNOWN_TOOL, inputs=inputs),
            on_audit=on_audit,
        )

    async def _guarded(
        self,
        name: str,
        principal: Principal | None,
        work: Callable[[RunContext], Awaitable[Any]],
        *,
        on_audit: AuditSink | None,
        sync: bool = False,
    ) -> ToolReply:
        if not isinstance(principal, Principal):
            log.warning("ormai_agents: %s called without a principal; refused", name)
            return ToolReply.error(NO_PRINCIPAL)
        if sync and self.async_factory:
            raise HostError(ASYNC_IN_SYNC)
        try:
            async with open_session(self.session_factory) as db:
                if sync and DbHandle(db).is_async:
                    raise HostError(ASYNC_IN_SYNC)
                result = await work(RunContext(principal, db, on_audit=on_audit))
            return ToolReply(render(result))
        except HostError:
            raise
        except OrmAIError as error:
            return ToolReply.error(error)
        except Exception:
            log.exception("ormai_agents: unexpected error in tool %s", name)
            return ToolReply.error(GENERIC)

    async def _run(self, spec: ToolSpec, ctx: RunContext, arguments: Any, decision: Decision | None) -> Any:
        try:
            return await spec.run(self.toolset, ctx, arguments)
        except ApprovalRequiredError as pending:
            if decision is None:  # no one to ask here: the model hears the approval id
                raise
            # The toolset validated the request and recorded it as pending: record the person's
            # decision and let the toolset run it (or refuse it), audited like any approved write.
            await DbHandle(ctx.db).rollback()
            store = self.toolset.approval_store
            decide = store.approve if decision.approve else store.reject
            await decide(pending.approval_id, decided_by=decision.decided_by, reason=decision.reason)
            return await self.toolset.execute_approved(ctx, pending.approval_id)


__all__ = ["Decision", "HostError", "ToolReply", "ToolRunner"]
