"""The built-in memory tools: `search_memory` and `remember`, server tools over the user's Letta memory.

Whose memory a call reaches comes only from `ToolContext.user_id`, the authenticated caller: neither
tool takes a user, an agent or anything like one from the model's arguments, so a prompt cannot steer a
call to another user's memory. The router offers them only to callers with an identity
(`RouterDeps.toolbox_for`: none for `anonymous`).

Both run against a `MemoryToolBackend`: the memory service itself in process
(`actors.memory.service.MemoryService`), or the memory actor that runs it under Ray
(`serve_app.memory_actor.ActorMemoryTools`).
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from actors.memory.journal import MAX_FACT_CHARS
from actors.tools.base import ServerTool, ToolContext, ToolDefinition, ToolError

SEARCH_LIMIT = 5  # results of each kind when the model asks for no number
MAX_SEARCH_LIMIT = 10


class MemoryToolBackend(Protocol):
    async def search_memory(self, user_id: str, query: str, limit: int) -> dict[str, Any]:
        """`{"facts": [...], "conversation": [...]}`, each item `{"text", "at"}`; raises `ToolError`."""
        ...

    async def remember(self, user_id: str, text: str) -> str:
        """Journal a fact for the user's archival memory; its id once it is on disk. Raises `ToolError`."""
        ...


SEARCH_MEMORY = ToolDefinition(
    name="search_memory",
    description=(
        "Search what you remember about the user you are talking to: facts saved about them and what "
        "they said in past conversations. Use it when the user refers to something from before that "
        "is not in your context."
    ),
    parameters={
        "type": "object",
        "properties": {
            "query": {"type": "string", "description": "What to look for, in a few words."},
            "limit": {
                "type": "integer",
                "minimum": 1,
                "maximum": MAX_SEARCH_LIMIT,
                "description": f"How many results of each kind (default {SEARCH_LIMIT}).",
            },
        },
        "required": ["query"],
        "additionalProperties": False,
    },
    timeout_s=5.0,
    cancel_safe=True,  # a read: abandoning it loses nothing
)

REMEMBER = ToolDefinition(
    name="remember",
    description=(
        "Save a fact about the user you are talking to, for later conversations (for example a name, "
        "a preference, a date). Write it as a short self-contained sentence."
    ),
    parameters={
        "type": "object",
        "properties": {
            "fact": {
                "type": "string",
                "maxLength": MAX_FACT_CHARS,
                "description": "The fact, as a sentence that makes sense on its own.",
            }
        },
        "required": ["fact"],
        "additionalProperties": False,
    },
    timeout_s=5.0,
    cancel_safe=False,  # the user asked for it to be kept: a barge-in does not undo it
)


def _string_argument(arguments: dict[str, Any], name: str) -> str:
    value = arguments.get(name)
    if not isinstance(value, str) or not value.strip():
        raise ToolError(f"`{name}` must be a non-empty string")
    return value


class SearchMemoryTool:
    definition = SEARCH_MEMORY

    def __init__(self, backend: MemoryToolBackend) -> None:
        self.backend = backend

    async def call(self, arguments: dict[str, Any], context: ToolContext) -> str:
        query = _string_argument(arguments, "query")
        limit = arguments.get("limit", SEARCH_LIMIT)
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_SEARCH_LIMIT:
            raise ToolError(f"`limit` must be a whole number from 1 to {MAX_SEARCH_LIMIT}")
        found = await self.backend.search_memory(context.user_id, query, limit)
        return json.dumps(found, ensure_ascii=False)


class RememberTool:
    definition = REMEMBER

    def __init__(self, backend: MemoryToolBackend) -> None:
        self.backend = backend

    async def call(self, arguments: dict[str, Any], context: ToolContext) -> str:
        fact = _string_argument(arguments, "fact").strip()
        await self.backend.remember(context.user_id, fact)
        return json.dumps({"remembered": fact}, ensure_ascii=False)


def build_memory_tools(backend: MemoryToolBackend) -> list[ServerTool]:
    """`search_memory` and `remember` over `backend`, for `RouterDeps.memory_tools`."""
    return [SearchMemoryTool(backend), RememberTool(backend)]
