"""A scripted function-calling LLM for LlamaIndex agents (`FunctionAgent`, `AgentWorkflow`)."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from llama_index.core.base.llms.types import ChatMessage, MessageRole, ToolCallBlock
from llama_index.core.llms.mock import MockFunctionCallingLLM
from pydantic import PrivateAttr

__all__ = ["ScriptedFunctionCallingLLM"]

# A tool call: ("query", {"model": "Order"}) or {"name": "query", "args": {...}}.
ToolCallSpec = tuple[str, Mapping[str, Any]] | Mapping[str, Any]
Turn = str | Sequence[ToolCallSpec]
Script = Sequence[Turn] | Callable[[list[ChatMessage]], Turn]


class ScriptedFunctionCallingLLM(MockFunctionCallingLLM):
    """Plays a fixed script of assistant turns, one per LLM call of the agent run.

    A turn is a list of tool calls (made in parallel) or a string (the final answer). Once the
    script is used up, the answer is the content of the last tool result, so a test can read
    what the tools returned from the agent's response. `script` may instead be a function of the
    conversation so far returning the next turn.

    The turn is chosen by counting the assistant messages since the last user message, so one
    instance can drive many concurrent runs. Every call records the tools offered to the model,
    as `to_openai_tool()` dicts, in `seen_tools`, and the messages it got in `seen_messages`.
    """

    _script: list[Turn] = PrivateAttr(default_factory=list)
    _decide: Any = PrivateAttr(default=None)
    _seen_tools: list[list[dict[str, Any]]] = PrivateAttr(default_factory=list)
    _seen_messages: list[list[ChatMessage]] = PrivateAttr(default_factory=list)
    _ids: Any = PrivateAttr(default=None)
    _lock: Any = PrivateAttr(default=None)

    def __init__(self, script: Script, **kwargs: Any) -> None:
        if isinstance(script, str):
            raise TypeError("script is a list of turns; a final answer alone is [answer]")
        super().__init__(response_generator=self._respond, **kwargs)
        if callable(script):
            self._decide = script
        else:
            self._script = [_check_turn(turn) for turn in script]
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    @property
    def seen_tools(self) -> list[list[dict[str, Any]]]:
        """For each LLM call, the tool schemas the model was offered."""
        return list(self._seen_tools)

    @property
    def seen_messages(self) -> list[list[ChatMessage]]:
        """For each LLM call, the messages the model got."""
        return list(self._seen_messages)

    def _respond(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatMessage:
        tools = [t.metadata.to_openai_tool() for t in kwargs.get("tools") or []]
        with self._lock:
            self._seen_tools.append(tools)
            self._seen_messages.append(list(messages))
        if self._decide is not None:
            return self._message(_check_turn(self._decide(list(messages))))
        last_user = max((i for i, m in enumerate(messages) if m.role == MessageRole.USER), default=-1)
        step = sum(1 for m in messages[last_user + 1 :] if m.role == MessageRole.ASSISTANT)
        if step >= len(self._script):
            results = [m for m in messages if m.role == MessageRole.TOOL]
            return ChatMessage(role=MessageRole.ASSISTANT, content=results[-1].content if results else "Done.")
        return self._message(self._script[step])

    def _message(self, turn: Turn) -> ChatMessage:
        if isinstance(turn, str):
            return ChatMessage(role=MessageRole.ASSISTANT, content=turn)
        with self._lock:
            ids = [f"call_{next(self._ids)}" for _ in turn]
        blocks = [
            ToolCallBlock(tool_call_id=call_id, tool_name=name, tool_kwargs=dict(args))
            for call_id, (name, args) in zip(ids, map(_call_parts, turn), strict=False)
        ]
        return ChatMessage(role=MessageRole.ASSISTANT, blocks=blocks)


def _call_parts(call: ToolCallSpec) -> tuple[str, Mapping[str, Any]]:
    if isinstance(call, Mapping):
        return call["name"], call.get("args", {})
    name, args = call
    return name, args


def _check_turn(turn: Turn) -> Turn:
    if isinstance(turn, str):
        return turn
    calls = list(turn)
    if not calls:
        raise ValueError("a tool-call turn needs at least one call")
    for call in calls:
        if isinstance(call, Mapping):
            if set(call) - {"name", "args"} or not isinstance(call.get("name"), str):
                raise ValueError("a tool call is {'name': str, 'args': dict}")
            if not isinstance(call.get("args", {}), Mapping):
                raise ValueError("a tool call's args must be a dict")
        elif not (
            isinstance(call, tuple) and len(call) == 2 and isinstance(call[0], str) and isinstance(call[1], Mapping)
        ):
            raise ValueError("a tool call is (name, args) or {'name': str, 'args': dict}")
    return calls
