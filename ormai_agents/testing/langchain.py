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

import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Union

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage, ToolCall
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import Field

__all__ = ["ScriptedChatModel", "tool_call"]

Reply = Union[AIMessage, str]
Script = Union[Iterable[Reply], Callable[[list[BaseMessage]], Reply]]


def tool_call(name: str, args: dict[str, Any] | None = None, id: str | None = None) -> ToolCall:
    """A tool call for a scripted `AIMessage(content="", tool_calls=[...])`."""
    return ToolCall(name=name, args=dict(args or {}), id=id or f"call_{uuid.uuid4().hex[:12]}", type="tool_call")


class ScriptedChatModel(GenericFakeChatModel):
    """Answers from a script and supports `bind_tools`.

    `script` is either a sequence of replies (an `AIMessage`, possibly with `tool_calls`, or a
    string), used in order, or a function of the conversation so far returning the next reply;
    a function keeps one model usable by concurrent runs. `bind_tools` records each tool's
    schema as the LLM would see it (`convert_to_openai_tool`) in `tool_schemas` and returns the
    model itself.
    """

    messages: Any = Field(default_factory=lambda: iter(()))
    respond: Callable[[list[BaseMessage]], Reply] | None = None
    tool_schemas: list[dict[str, Any]] = Field(default_factory=list)

    def __init__(self, script: Script = (), **kwargs: Any) -> None:
        if callable(script):
            kwargs["respond"] = script
        else:
            kwargs.setdefault("messages", iter(list(script)))
        super().__init__(**kwargs)

    @property
    def tool_names(self) -> list[str]:
        """Names of the tools last bound."""
        return [s["function"]["name"] for s in self.tool_schemas]

    def bind_tools(self, tools: Sequence[Any], *, tool_choice: Any = None, **kwargs: Any) -> ScriptedChatModel:  # type: ignore[override]
        self.tool_schemas = [convert_to_openai_tool(t) for t in tools]
        return self

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if self.respond is not None:
            reply = self.respond(messages)
        else:
            try:
                reply = next(self.messages)
            except StopIteration:
                raise ValueError("ScriptedChatModel: the script has no more replies") from None
        message = AIMessage(content=reply) if isinstance(reply, str) else reply
        return ChatResult(generations=[ChatGeneration(message=message)])
