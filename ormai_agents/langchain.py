"""LangChain adapter: `OrmAIToolkit` turns a `Toolset` into LangChain tools, and
`OrmAICallbackHandler` receives the audit events those tools emit.

Importing this module imports langchain-core; `import ormai_agents` does not.

Who is calling:
- `toolkit.get_tools(principal)` binds every tool to that principal.
- `toolkit.get_tools()` reads the principal of each call from the run's
  `config["configurable"]["principal"]` (see `principal_config`). The config reaches the tool
  through an injected `RunnableConfig` parameter that LangChain hides from the model's schema.
The principal never comes from tool arguments; a call without one (or with something that is
not an `ormai_agents.Principal`) is refused with a tool error.

Sessions: each call opens its own session from `session_factory` and closes it; writes are
committed when the call succeeds. `ainvoke` runs on the caller's event loop with either kind of
factory (a sync `sessionmaker` blocks the loop while its statements run, as the `Toolset` does
with a sync session: use an `async_sessionmaker` for concurrent async runs). `invoke` works
with a sync `sessionmaker`; with an `async_sessionmaker` it is refused (`RuntimeError`, raised to
the host, not the model), because async engines keep connections tied to the event loop that
opened them and a sync call would have to run them on a new one.

Tracing: the tools put the principal's tenant and user in their run metadata
(`ormai_tenant_id`, `ormai_user_id`), which every tracer records, LangSmith included. After every
toolset call, allowed, denied or failed, the tool emits its `AuditRecord` as a custom event
named `ormai_audit` (`AUDIT_EVENT`); callback handlers in `config["callbacks"]` receive it,
`OrmAICallbackHandler` among them, and so does `astream_events`.

Approvals (`WriteAction.RequireApproval`): inside a LangGraph run (`create_agent(...,
checkpointer=...)`) the write tool pauses the graph with `langgraph.types.interrupt` before
touching the database. The interrupt's value describes the request (`type="ormai_approval"`,
tool, operation, model, arguments, tenant_id, user_id). The host resumes with
`Command(resume=...)`: `True`/`False`, `"approve"`/`"reject"`, or
`{"approve": bool, "decided_by": str, "reason": str}`. The tool then submits the write to the
toolset's approval store, records the decision there, and runs it with
`Toolset.execute_approved` (a rejection reaches the model as a tool error; nothing is written).
The write is checked under the policy when it runs, so an approval never widens the scope.
Outside a graph (a direct `invoke`), the toolset's own flow applies: the model gets an
`approval_required` error with the approval id, and the host approves and executes it.
"""

from __future__ import annotations

import asyncio
import contextvars
import copy
import dataclasses
import datetime as dt
import inspect
import logging
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from langchain_core.callbacks import AsyncCallbackHandler
from langchain_core.callbacks.manager import (
    adispatch_custom_event,
    dispatch_custom_event,
)
from langchain_core.runnables import RunnableConfig, ensure_config
from langchain_core.tools import BaseTool, BaseToolkit, ToolException
from pydantic import BaseModel, ConfigDict, PrivateAttr

from ormai_agents._context import Principal
from ormai_agents._kernel import GENERIC, Decision, HostError, ToolReply, ToolRunner
from ormai_agents._toolspecs import Layout, ToolSpec, build_tool_specs, jsonable
from ormai_agents.audit import AuditRecord, AuditStore
from ormai_agents.toolset import Toolset

__all__ = [
    "AUDIT_EVENT",
    "OrmAICallbackHandler",
    "OrmAITool",
    "OrmAIToolkit",
    "audit_record_from_event",
    "principal_config",
]

try:  # langgraph comes with `langchain`; approvals pause through it, plain tools don't need it
    from langgraph.types import interrupt
except ImportError:  # pragma: no cover - langchain-core alone
    interrupt = None  # type: ignore[assignment]

log = logging.getLogger("ormai_agents")

AUDIT_EVENT = "ormai_audit"
"""Name of the custom event carrying an `AuditRecord` (as `AuditRecord.to_dict()`)."""


def _tool_error_text(error: ToolException) -> str:
    return str(error.args[0]) if error.args else ToolReply.error(GENERIC).text


def _trace_metadata(principal: Principal) -> dict[str, Any]:
    return {"ormai_tenant_id": jsonable(principal.tenant_id), "ormai_user_id": jsonable(principal.user_id)}


def principal_config(principal: Principal, config: RunnableConfig | None = None) -> RunnableConfig:
    """`config` (a new dict) with the principal in `configurable` and its tenant and user in
    `metadata`, so the whole run, model calls included, is traced under that principal.

    Pass it to `agent.invoke(..., config=...)` when the tools came from `get_tools()`.
    """
    if not isinstance(principal, Principal):
        raise TypeError("principal must be an ormai_agents.Principal")
    base: dict[str, Any] = dict(config or {})
    base["configurable"] = {**(base.get("configurable") or {}), "principal": principal}
    base["metadata"] = {**(base.get("metadata") or {}), **_trace_metadata(principal)}
    return base  # type: ignore[return-value]


_DECISION_HELP = (
    'Resume an ormai approval with True/False, "approve"/"reject", or '
    '{"approve": bool, "decided_by": str, "reason": str}'
)


def _decision(answer: Any) -> Decision:
    """The host's resume value as a decision; anything unrecognised is the host's mistake."""
    if isinstance(answer, bool):
        return Decision(answer)
    if answer in ("approve", "reject"):
        return Decision(answer == "approve")
    keys = {"approve", "decided_by", "reason"}
    if isinstance(answer, dict) and isinstance(answer.get("approve"), bool) and set(answer) <= keys:
        by, reason = answer.get("decided_by"), answer.get("reason")
        if (by is None or isinstance(by, str)) and (reason is None or isinstance(reason, str)):
            return Decision(answer["approve"], by, reason)
    raise HostError(_DECISION_HELP)


def _run_blocking(make: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """Run a coroutine to completion from sync code: on this thread when no event loop runs
    here, otherwise on a fresh thread (a running loop can't be re-entered)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())
    context = contextvars.copy_context()
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(context.run, asyncio.run, make()).result()


class OrmAITool(BaseTool):
    """One toolset operation as a LangChain tool. Made by `OrmAIToolkit.get_tools`."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    spec: ToolSpec
    runner: ToolRunner
    principal: Principal | None = None
    handle_tool_error: Any = _tool_error_text

    @property
    def tool_call_schema(self) -> Any:
        # The arguments model itself (no injected argument is part of it), so every converter
        # sees the policy's schema as generated: closed objects, strict-ready.
        return self.args_schema

    def _to_args_and_kwargs(self, tool_input: Any, tool_call_id: str | None) -> tuple[tuple[Any, ...], dict[str, Any]]:
        # The arguments reach `_run` exactly as the model sent them, never validated (and
        # possibly refused) by LangChain against `args_schema` first: the toolset validates
        # them, so a malformed call is refused with an error the model can act on, and audited.
        if isinstance(tool_input, dict):
            return (), {name: _plain(value) for name, value in tool_input.items()}
        raise HostError("OrmAI tools take a dict of arguments (a model's tool call), not a string")

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        return super().invoke(input, self._traced(config), **kwargs)

    async def ainvoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        return await super().ainvoke(input, self._traced(config), **kwargs)

    def _traced(self, config: RunnableConfig | None) -> RunnableConfig | None:
        # The principal's tenant and user go into the run's inheritable metadata, bound tools'
        # and per-call principals alike, so the tool's run and everything it emits (the audit
        # events included) carry what `principal_config` puts on a whole run.
        principal = self.principal
        if principal is None:
            principal = (config or {}).get("configurable", {}).get("principal")
        if not isinstance(principal, Principal):
            return config
        config = ensure_config(config)
        return {**config, "metadata": {**config.get("metadata", {}), **_trace_metadata(principal)}}

    def _principal(self, config: RunnableConfig | None) -> Principal | None:
        principal = self.principal
        if principal is None:
            principal = (config or {}).get("configurable", {}).get("principal")
        return principal if isinstance(principal, Principal) else None

    def _request(self, principal: Principal | None, arguments: dict[str, Any]) -> dict[str, Any] | None:
        if interrupt is None or principal is None:
            return None
        return self.runner.approval_request(self.spec, principal, arguments)

    def _ask(self, request: dict[str, Any] | None) -> Decision | None:
        """For a write that needs approval: pause the graph until the host resumes it with a
        decision. None outside a LangGraph run (no interrupt possible) or with no request (the
        write would fail anyway, or its record is not one the principal may change)."""
        if request is None or interrupt is None:
            return None
        try:
            answer = interrupt(request)
        except (KeyError, RuntimeError):  # not inside a graph run: no one to ask
            return None
        return _decision(answer)

    def _run(self, /, *, config: RunnableConfig, **arguments: Any) -> str:
        # `self` is positional-only so that an argument named "self" is just an unknown argument.
        principal = self._principal(config)
        request = self._request(principal, arguments)
        if request is not None and principal is not None:
            runner, spec = self.runner, self.spec
            if not _run_blocking(lambda: runner.approval_target_visible(spec, principal, arguments)):
                request = None
        decision = self._ask(request)  # may pause the graph (raises GraphInterrupt)
        records: list[AuditRecord] = []
        try:
            reply = _run_blocking(
                lambda: self.runner.call(
                    self.spec, principal, arguments, on_audit=records.append, decision=decision, sync=True
                )
            )
        finally:
            for record in records:
                _emit(record)
        return _text(reply)

    async def _arun(self, /, *, config: RunnableConfig, **arguments: Any) -> str:
        principal = self._principal(config)
        request = self._request(principal, arguments)
        if (
            request is not None
            and principal is not None
            and not await self.runner.approval_target_visible(self.spec, principal, arguments)
        ):
            request = None
        decision = self._ask(request)  # may pause the graph (raises GraphInterrupt)
        records: list[AuditRecord] = []
        try:
            reply = await self.runner.call(self.spec, principal, arguments, on_audit=records.append, decision=decision)
        finally:
            for record in records:
                await _aemit(record)
        return _text(reply)


def _plain(value: Any) -> Any:
    """Arguments as JSON values. LangChain's own helpers may pass instances of the tool's
    argument models (`langchain_mcp_adapters.tools.to_fastmcp` validates a call into them first):
    they become the objects the model sent."""
    if isinstance(value, BaseModel):
        return value.model_dump(by_alias=True, exclude_unset=True)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _text(reply: ToolReply) -> str:
    if reply.is_error:  # the model reads it as an error ToolMessage; the loop goes on
        raise ToolException(reply.text)
    return reply.text


def _emit(record: AuditRecord) -> None:
    try:
        dispatch_custom_event(AUDIT_EVENT, record.to_dict())
    except Exception:  # outside a run (no parent run id) there is no one to tell
        log.debug("ormai_agents: audit event not dispatched", exc_info=True)


async def _aemit(record: AuditRecord) -> None:
    try:
        await adispatch_custom_event(AUDIT_EVENT, record.to_dict())
    except Exception:
        log.debug("ormai_agents: audit event not dispatched", exc_info=True)


class OrmAIToolkit(BaseToolkit):
    """LangChain tools for a `Toolset`.

    `session_factory`: a `sessionmaker` or `async_sessionmaker` (any callable returning a
    `Session` or `AsyncSession`); each tool call opens one session and closes it.
    `layout`: "generic" (read tools take a `model` enum) or "per_model" (`query_order`, ...);
    write tools are per model in both. `prefix` is prepended to every tool name.

    The tools depend only on the policy, not on the principal: they are built once per toolkit
    and `get_tools(principal)` binds copies, so it is cheap to call per request.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid", frozen=True)

    toolset: Toolset
    session_factory: Callable[[], Any]
    layout: Layout = "generic"
    prefix: str = ""

    _tools: list[OrmAITool] | None = PrivateAttr(default=None)

    def get_tools(self, principal: Principal | None = None) -> list[BaseTool]:
        """The tools, bound to `principal`; without one, each call reads
        `config["configurable"]["principal"]` and is refused when there is none."""
        if principal is not None and not isinstance(principal, Principal):
            raise TypeError("principal must be an ormai_agents.Principal")
        tools = self._tools
        if tools is None:
            runner = ToolRunner(self.toolset, self.session_factory)
            tools = [
                OrmAITool(
                    name=spec.name,
                    description=spec.description,
                    args_schema=spec.args_model,
                    spec=spec,
                    runner=runner,
                )
                for spec in build_tool_specs(self.toolset, layout=self.layout, prefix=self.prefix)
            ]
            self._tools = tools
        if principal is None:
            return [copy.copy(t) for t in tools]
        metadata = _trace_metadata(principal)
        return [_bound(t, principal, metadata) for t in tools]


def _bound(tool: OrmAITool, principal: Principal, metadata: dict[str, Any]) -> OrmAITool:
    # A shallow copy (pydantic's __copy__) with two fields set: validated values, no re-validation.
    # About 3x cheaper than model_copy(update=...), which matters for toolkits of hundreds of tools.
    bound = copy.copy(tool)
    bound.__dict__["principal"] = principal
    bound.__dict__["metadata"] = dict(metadata)
    bound.__pydantic_fields_set__.update(("principal", "metadata"))
    return bound


class OrmAICallbackHandler(AsyncCallbackHandler):
    """Receives the `ormai_audit` events of a run and passes each `AuditRecord` on.

    `audit_store`: where to write the records (e.g. a store of the tracing side; the toolset's
    own `audit_store` already has them, so don't pass the same store twice).
    `on_record`: a function (sync or async) called with each record.

    The handler keeps no state about runs: one handler may serve concurrent runs of different
    principals, and each record says whose call it was (`tenant_id`, `user_id`, `roles`).
    Errors raised here are logged by LangChain and never change the tool's result.
    """

    def __init__(
        self,
        audit_store: AuditStore | None = None,
        on_record: Callable[[AuditRecord], Any] | None = None,
    ) -> None:
        super().__init__()
        self.audit_store = audit_store
        self.on_record = on_record

    async def on_custom_event(
        self,
        name: str,
        data: Any,
        *,
        run_id: Any,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if name != AUDIT_EVENT:
            return
        record = audit_record_from_event(data)
        if self.on_record is not None:
            outcome = self.on_record(record)
            if inspect.isawaitable(outcome):
                await outcome
        if self.audit_store is not None:
            await self.audit_store.write(record)


_RECORD_FIELDS = tuple(f.name for f in dataclasses.fields(AuditRecord))


def audit_record_from_event(data: Any) -> AuditRecord:
    """The `AuditRecord` carried by an `ormai_audit` event's data."""
    if isinstance(data, AuditRecord):
        return data
    values = {k: data[k] for k in _RECORD_FIELDS if k in data}
    if isinstance(values.get("timestamp"), str):
        values["timestamp"] = dt.datetime.fromisoformat(values["timestamp"])
    return AuditRecord(**values)
