"""LlamaIndex adapter: the toolset as `FunctionTool`s, with audit records as instrumentation events.

```python
from ormai_agents.llamaindex import OrmAIToolSpec

spec = OrmAIToolSpec(toolset=toolset, session_factory=SessionLocal)
agent = FunctionAgent(tools=spec.get_tools(principal), llm=llm)      # principal bound by closure

agent = FunctionAgent(tools=spec.to_tool_list(), llm=llm)             # principal read per call
ctx = Context(agent)
await set_principal(ctx, principal)                                   # from the workflow Context
await agent.run("...", ctx=ctx)
```

The principal never comes from the model's arguments and never enters `ToolOutput.raw_input`:
bound tools close over it, unbound tools read it from the workflow `Context` (an injected
parameter LlamaIndex hides from the model). Each call opens its own session from the factory,
commits on success and closes it. Errors come back as tool output the model can act on
(`is_error=True`, the error's JSON), never a traceback or driver text.

Every toolset call runs in an instrumentation span (`ormai_agents` dispatcher) and emits an
`OrmAIAuditEvent` carrying its audit record, so handlers on the root dispatcher, and the
observability integrations built on them, see it.
"""

# No `from __future__ import annotations`: FunctionTool finds the Context parameter by comparing
# the evaluated annotation with `Context`.

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, cast

from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import NullEventHandler
from llama_index.core.instrumentation.events import BaseEvent
from llama_index.core.tools import FunctionTool, ToolMetadata, ToolOutput
from llama_index.core.tools.tool_spec.base import BaseToolSpec
from llama_index.core.workflow.context import Context

from ormai_agents._context import Principal
from ormai_agents._kernel import ToolRunner
from ormai_agents._sessions import SessionFactory
from ormai_agents._toolspecs import Layout, ToolSpec, build_tool_specs, jsonable
from ormai_agents.audit import AuditRecord
from ormai_agents.toolset import Toolset

__all__ = ["OrmAIAuditEvent", "OrmAIToolSpec", "get_principal", "set_principal"]

log = logging.getLogger("ormai_agents")
dispatcher = get_dispatcher("ormai_agents")

DEFAULT_CONTEXT_KEY = "principal"
_CTX_PARAM = "workflow_ctx"
_PRINCIPAL_FIELDS = frozenset({"tenant_id", "user_id", "roles", "metadata"})


class OrmAIAuditEvent(BaseEvent):
    """One toolset call's audit record (as `AuditRecord.to_dict()`, JSON-ready).

    Emitted inside the call's span; `tool_name` is the LlamaIndex tool the model called.
    """

    tool_name: str
    record: dict[str, Any]

    @classmethod
    def class_name(cls) -> str:
        return "OrmAIAuditEvent"


class _ErrorText(str):
    """Marks a tool result that is an error, so the tool output says `is_error=True`."""


class _OrmAIFunctionTool(FunctionTool):
    """A FunctionTool whose error results are flagged, and whose Context-reading variant
    refuses (as tool output) when called outside a workflow instead of raising."""

    async_only = False  # set for async session factories: their sessions belong to one event loop

    def _prepare(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        kwargs = {**self._field_defaults, **self.partial_params, **kwargs}
        if self.ctx_param_name is not None and self.ctx_param_name not in kwargs:
            kwargs[self.ctx_param_name] = None
        return kwargs

    @staticmethod
    def _flag(output: ToolOutput) -> ToolOutput:
        if isinstance(output.raw_output, _ErrorText):
            output.raw_output = str(output.raw_output)
            output.is_error = True
        return output

    # `self` is positional-only in `call` and `acall`, and the base class's versions (which bind
    # `self` by name) are not used: a model's argument named "self" is then an argument like any
    # other, refused by the toolset and audited, instead of a TypeError.

    def call(self, /, *args: Any, **kwargs: Any) -> ToolOutput:
        if self.async_only:
            # The sync path would run the call on a private event loop, where an async engine's
            # pooled connections can't be used.
            raise RuntimeError(
                "This OrmAIToolSpec has an async session factory: call the tool with acall (agents "
                "do), or give the spec a sync sessionmaker for call."
            )
        all_kwargs = self._prepare(kwargs)
        return self._output(args, all_kwargs, self._fn(*args, **all_kwargs))

    async def acall(self, /, *args: Any, **kwargs: Any) -> ToolOutput:
        all_kwargs = self._prepare(kwargs)
        return self._output(args, all_kwargs, await self._async_fn(*args, **all_kwargs))

    def _output(self, args: tuple[Any, ...], all_kwargs: dict[str, Any], raw_output: Any) -> ToolOutput:
        shown = {k: v for k, v in all_kwargs.items() if k != self.ctx_param_name}  # the Context stays out
        output = ToolOutput(
            blocks=self._parse_tool_output(raw_output),
            tool_name=self.metadata.get_name(),
            raw_input={"args": args, "kwargs": shown},
            raw_output=raw_output,
        )
        return self._flag(output)


async def set_principal(ctx: Context, principal: Principal, key: str = DEFAULT_CONTEXT_KEY) -> None:
    """Store `principal` in a workflow Context for the unbound tools (`to_tool_list()`,
    `get_tools()` without a principal) to read. Stored in its plain form, so the Context stays
    serializable."""
    if not isinstance(principal, Principal):
        raise TypeError("principal must be an ormai_agents.Principal")
    await ctx.store.set(key, principal.to_dict())


async def get_principal(ctx: Context | None, key: str = DEFAULT_CONTEXT_KEY) -> Principal | None:
    """The principal stored in a workflow Context (a `Principal` or its `to_dict()` form), or
    None when there is none or it is malformed."""
    if not isinstance(ctx, Context):
        return None
    value = await ctx.store.get(key, default=None)
    if isinstance(value, Principal):
        return value
    if isinstance(value, Mapping) and value and set(value) <= _PRINCIPAL_FIELDS:
        try:
            return Principal(**value)
        except (TypeError, ValueError):
            return None
    return None


def _listened() -> bool:
    """Whether any event handler would receive an event of our dispatcher (so the audit event
    is built only when someone listens)."""
    current: Any | None = dispatcher
    while current is not None:
        if any(not isinstance(h, NullEventHandler) for h in current.event_handlers):
            return True
        current = current.parent if current.propagate else None
    return False


@dispatcher.span
async def _tool_call(tool_name: str, arguments: dict[str, Any], invoke: Callable[[], Awaitable[str]]) -> str:
    """One tool call: the span every audit event of the call belongs to.

    The principal is not an argument here: span handlers see the bound arguments.
    """
    return await invoke()


class OrmAIToolSpec(BaseToolSpec):
    """The toolset's tools for LlamaIndex agents.

    `session_factory` is a sync `sessionmaker` or an `async_sessionmaker` (or any callable
    returning a Session/AsyncSession). Agents call tools with `acall`; the sync `call` works
    with a sync factory (on a private event loop) and is refused with an `async_sessionmaker`.
    A sync factory blocks the event loop while its statements run, as the Toolset does with a
    sync session: prefer an `async_sessionmaker` for concurrent async runs. `layout` and `prefix` shape the tool names
    (see `ormai_agents._toolspecs`). Tool schemas depend only on the policy, so the spec is
    built once and shared by every principal and run.
    """

    def __init__(
        self,
        *,
        toolset: Toolset,
        session_factory: SessionFactory,
        layout: Layout = "generic",
        prefix: str = "",
        context_key: str = DEFAULT_CONTEXT_KEY,
    ) -> None:
        if not isinstance(toolset, Toolset):
            raise TypeError("toolset must be an ormai_agents.Toolset")
        if not callable(session_factory):
            raise TypeError("session_factory must be a callable returning a Session or AsyncSession")
        self.toolset = toolset
        self.session_factory = session_factory
        self.context_key = context_key
        self._runner = ToolRunner(toolset, session_factory)
        self._specs = {s.name: s for s in build_tool_specs(toolset, layout=layout, prefix=prefix)}
        self._unbound: dict[str, FunctionTool] = {}

    @property
    def spec_functions(self) -> list[str]:  # type: ignore[override]
        """The tool names, in order (the LlamaIndex tool-spec convention)."""
        return list(self._specs)

    @property
    def tool_specs(self) -> list[ToolSpec]:
        """The framework-neutral specs the tools are built from."""
        return list(self._specs.values())

    def get_tools(self, principal: Principal | None = None) -> list[FunctionTool]:
        """Tools bound to `principal`; without one, tools that read it from the workflow Context."""
        if principal is None:
            return self.to_tool_list()
        if not isinstance(principal, Principal):
            raise TypeError("principal must be an ormai_agents.Principal")
        return [self._bound_tool(spec, principal) for spec in self._specs.values()]

    def to_tool_list(  # type: ignore[override]
        self,
        spec_functions: Sequence[str] | None = None,
        func_to_metadata_mapping: dict[str, ToolMetadata] | None = None,
    ) -> list[FunctionTool]:
        """Tools that read the principal from the workflow Context at each call (see
        `set_principal`). `spec_functions` picks tools by name."""
        if func_to_metadata_mapping:
            raise TypeError("func_to_metadata_mapping is not supported: tool metadata comes from the policy")
        names = list(spec_functions) if spec_functions is not None else list(self._specs)
        unknown = [n for n in names if n not in self._specs]
        if unknown:
            raise ValueError(f"unknown tools: {', '.join(map(str, unknown))}. Tools: {', '.join(self._specs)}")
        return [self._context_tool(self._specs[name]) for name in names]

    # --- internals -----------------------------------------------------------------------

    def _tool(self, spec: ToolSpec, fn: Callable[..., Awaitable[str]]) -> FunctionTool:
        # from_defaults is a classmethod typed as returning the base class; it builds `cls`.
        tool = cast(
            _OrmAIFunctionTool,
            _OrmAIFunctionTool.from_defaults(
                async_fn=fn, name=spec.name, description=spec.description, fn_schema=spec.args_model
            ),
        )
        assert isinstance(tool, _OrmAIFunctionTool)
        tool.async_only = self._runner.async_factory
        return tool

    def _bound_tool(self, spec: ToolSpec, principal: Principal) -> FunctionTool:
        async def resolve() -> Principal | None:
            return principal

        async def bound(**arguments: Any) -> str:
            return await self._call(spec, arguments, resolve)

        return self._tool(spec, bound)

    def _context_tool(self, spec: ToolSpec) -> FunctionTool:
        tool = self._unbound.get(spec.name)
        if tool is None:
            key = self.context_key

            async def from_context(workflow_ctx: Context, **arguments: Any) -> str:
                async def resolve() -> Principal | None:
                    return await get_principal(workflow_ctx, key)

                return await self._call(spec, arguments, resolve)

            tool = self._unbound[spec.name] = self._tool(spec, from_context)
        return tool

    async def _call(
        self, spec: ToolSpec, arguments: dict[str, Any], resolve: Callable[[], Awaitable[Principal | None]]
    ) -> str:
        async def invoke() -> str:
            def emit(record: AuditRecord) -> None:
                dispatcher.event(OrmAIAuditEvent(tool_name=spec.name, record=jsonable(record.to_dict())))

            reply = await self._runner.call(spec, await resolve(), arguments, on_audit=emit if _listened() else None)
            return _ErrorText(reply.text) if reply.is_error else reply.text

        return await _tool_call(spec.name, arguments, invoke)
