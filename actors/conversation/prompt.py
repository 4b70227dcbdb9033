"""How a user's long-term memory enters the system prompt: one wording for voice and REST turns."""

from __future__ import annotations

MEMORY_HEADER = "What you remember about this user from earlier conversations:"


def with_memory(instructions: str, memory: str | None) -> str:
    """The system prompt with the user's memory appended (unchanged when there is none)."""
    if not memory:
        return instructions
    return f"{instructions}\n\n{MEMORY_HEADER}\n{memory}"
