"""A scripted LangChain chat model that calls tools, for driving agents in tests without an LLM.

```python
from langchain.agents import create_agent
from langchain_core.messages import AIMessage
from ormai_agents.testing import ScriptedChatModel, tool_call

model = ScriptedChatModel([
    AIMessage("", tool_calls=[tool_call("query", {"model": "Order", "limit": 5})]),
    "Here are your orders.",
])
agent = create_agent(model, tools=toolkit.get_tools(principal))
agent.invoke({"messages": [("user", "show my orders")]})
model.tool_schemas   # the tool schemas the agent gave the model (OpenAI format)
```
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    HumanMessage,
    ToolCall,
    ToolMessage,
)
from langchain_core.messages.tool import tool_call_chunk
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import Field

__all__ = ["ScriptedChatModel", "tool_call"]

Reply = AIMessage | str
Script = Iterable[Reply] | Callable[[list[BaseMessage]], Reply]


def tool_call(name: str, args: dict[str, Any] | None = None, id: str | None = None) -> ToolCall:
    """A tool call for a scripted `AIMessage(content="", tool_calls=[...])`."""
    return ToolCall(name=name, args=dict(args or {}), id=id or f"call_{uuid.uuid4().hex[:12]}", type="tool_call")


class ScriptedChatModel(GenericFakeChatModel):
    """Answers from a script and supports `bind_tools` and streaming.

    `script` is either a sequence of replies (an `AIMessage`, possibly with `tool_calls`, or a
    string), or a function of the conversation so far returning the next reply. A sequence
    restarts with every run: the reply is chosen by counting the model's replies since the last
    human message, so one model can drive one agent for every tenant, and concurrent runs. Past
    the end of the script the model answers with the last tool result's text.

    `stream`, `astream`, `astream_events` and an agent's `stream(stream_mode="messages")` get the
    reply in chunks: the text word by word, then the tool calls. `bind_tools` records each
    tool's schema as the LLM would see it (`convert_to_openai_tool`) in `tool_schemas` and
    returns the model itself.
    """

    messages: Any = Field(default_factory=lambda: iter(()))
    respond: Callable[[list[BaseMessage]], Reply] | None = None
    script: list[Any] = Field(default_factory=list)
    tool_schemas: list[dict[str, Any]] = Field(default_factory=list)

    def __init__(self, script: Script = (), **kwargs: Any) -> None:
        if callable(script):
            kwargs["respond"] = script
        else:
            replies = list(script)
            for reply in replies:
                if not isinstance(reply, (str, AIMessage)):
                    raise TypeError("a scripted reply is an AIMessage or a string")
            kwargs["script"] = replies
        super().__init__(**kwargs)

    @property
    def tool_names(self) -> list[str]:
        """Names of the tools last bound."""
        return [s["function"]["name"] for s in self.tool_schemas]

    def bind_tools(self, tools: Sequence[Any], *, tool_choice: Any = None, **kwargs: Any) -> ScriptedChatModel:
        self.tool_schemas = [convert_to_openai_tool(t) for t in tools]
        return self

    def _reply(self, messages: list[BaseMessage]) -> AIMessage:
        if self.respond is not None:
            reply = self.respond(messages)
        else:
            last_human = max((i for i, m in enumerate(messages) if isinstance(m, HumanMessage)), default=-1)
            step = sum(1 for m in messages[last_human + 1 :] if isinstance(m, AIMessage))
            if step < len(self.script):
                reply = self.script[step]
            else:
                results = [m for m in messages if isinstance(m, ToolMessage)]
                reply = str(results[-1].content) if results else "Done."
        if isinstance(reply, str):
            return AIMessage(content=reply, id=f"run-{uuid.uuid4().hex[:12]}")
        # A copy with an id of its own: one scripted message may answer many runs.
        return reply.model_copy(update={"id": reply.id or f"run-{uuid.uuid4().hex[:12]}"})

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=self._reply(messages))])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        message = self._reply(messages)
        text = message.content if isinstance(message.content, str) else ""
        pieces = [p for p in re.split(r"(\s+)", text) if p]
        calls = [
            tool_call_chunk(name=c["name"], args=json.dumps(c["args"]), id=c["id"], index=i)
            for i, c in enumerate(message.tool_calls)
        ]
        chunks = [AIMessageChunk(content=p, id=message.id) for p in pieces]
        if calls or not chunks:
            chunks.append(AIMessageChunk(content="", id=message.id, tool_call_chunks=calls))
        chunks[-1].chunk_position = "last"
        for chunk in chunks:
            out = ChatGenerationChunk(message=chunk)
            if run_manager is not None and isinstance(chunk.content, str) and chunk.content:
                run_manager.on_llm_new_token(chunk.content, chunk=out)
            yield out
