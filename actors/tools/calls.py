"""Tool calls as a reply streams them: pieces (`LLMToolCallDelta`) assembled into whole calls, and the
messages a round of calls adds to the prompt for the next round."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from actors.conversation.events import new_id
from actors.llm.base import ChatMessage, LLMToolCallDelta, ToolCall


@dataclass
class _Building:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


class ToolCallAssembler:
    """Collects one round's streamed call pieces by `index`; `calls()` gives them whole, in index order.
    A call whose first piece carried no id gets one (some OpenAI-compatible servers omit it)."""

    def __init__(self) -> None:
        self._calls: dict[int, _Building] = {}

    def __bool__(self) -> bool:
        return bool(self._calls)

    def add(self, delta: LLMToolCallDelta) -> None:
        call = self._calls.setdefault(delta["index"], _Building())
        if delta.get("id"):
            call.id = delta["id"]
        if delta.get("name"):
            call.name += delta["name"]
        call.arguments.append(delta["arguments"])

    def calls(self) -> list[ToolCall]:
        return [
            {
                "id": call.id or new_id("call"),
                "type": "function",
                "function": {"name": call.name, "arguments": "".join(call.arguments)},
            }
            for _, call in sorted(self._calls.items())
        ]


def round_messages(
    text: str, calls: Sequence[ToolCall], outputs: Sequence[tuple[str, str]]
) -> list[ChatMessage]:
    """What one round adds to the prompt: the assistant's words and calls, then each call's output
    (`outputs`: call id and output text, for the calls answered so far)."""
    messages: list[ChatMessage] = [{"role": "assistant", "content": text, "tool_calls": list(calls)}]
    messages += [{"role": "tool", "tool_call_id": call_id, "content": output} for call_id, output in outputs]
    return messages
