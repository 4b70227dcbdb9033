"""What a tool is, wherever it runs.

A *client* tool is declared by the client (`session.update` `tools`, or a REST request's `tools`) and
run by the client: the server only streams the call to it and waits for its output. A *server* tool is
run by the server itself (a webhook, an MCP server's tool, the built-in memory tools); the client sees
its call and its result as conversation items.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Protocol

from actors.llm.base import ToolSpec


class ToolError(Exception):
    """A call that failed in a way the model should hear about (bad arguments, the tool said no, it is
    down). Its message goes back to the model as the call's output, so it can answer the user."""


@dataclass(frozen=True)
class ToolDefinition:
    """A tool as the model sees it, with how the server treats a call to it."""

    name: str
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})
    timeout_s: float = 10.0  # a server tool's call is abandoned (an error output) after this long
    cancel_safe: bool = True  # a barge-in may abandon the call (False: it runs to its end regardless)

    def spec(self) -> ToolSpec:
        """The chat-completions `tools` entry."""
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }


@dataclass(frozen=True)
class ToolContext:
    """Who a call is made for. Tools that reach per-user data (memory) use `user_id` and nothing the
    model wrote to decide whose data it is."""

    user_id: str
    session_id: str
    call_id: str = ""  # the call being run (set by `Toolbox.run`): lets a webhook spot a retried call


class ServerTool(Protocol):
    """A tool the server runs."""

    @property
    def definition(self) -> ToolDefinition: ...

    async def call(self, arguments: dict[str, Any], context: ToolContext) -> str:
        """Run the call and return its output as text for the model (JSON text when structured).
        Raise `ToolError` for a failure the model should be told about."""
        ...


def parse_arguments(text: str) -> dict[str, Any]:
    """The call's arguments as the model wrote them: a JSON object ("" counts as no arguments)."""
    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ToolError(f"the arguments are not valid JSON: {exc.msg}") from exc
    if not isinstance(value, dict):
        raise ToolError("the arguments must be a JSON object")
    return value
