"""The conversation a session keeps: its items (user and assistant messages, the tool calls a reply made
and their outputs, with ids) and the dialogue the LLM sees.

Clients address items by id, as OpenAI's Realtime API lets them: read one back, delete one (the LLM no
longer sees it), or truncate an assistant reply to the audio the user actually heard, so the LLM does not
believe it said what was never played. An assistant item remembers where each spoken phrase's audio
starts, so a truncation keeps the phrases heard and, of the phrase cut, its words in proportion to the
part of its audio played.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from actors.llm.base import ChatMessage, ToolCall

ItemStatus = Literal["in_progress", "completed", "incomplete"]


class ItemError(ValueError):
    """An item a client named that cannot be read, deleted or truncated; `code` says why."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


@dataclass
class ConversationItem:
    """One message. A user item's `phrases` is its one text; an assistant item's are the phrases said so
    far, `starts_s` where each one's audio starts in the reply's audio (audio replies only)."""

    id: str
    role: Literal["user", "assistant"]
    audio: bool  # a spoken user turn, or a reply with audio
    phrases: list[str] = field(default_factory=list)
    starts_s: list[float] = field(default_factory=list)
    audio_s: float = 0.0  # reply audio sent so far
    status: ItemStatus = "completed"
    heard_ms: int | None = None  # set by a truncation
    in_dialogue: bool = True  # False until the turn it belongs to has ended

    @property
    def text(self) -> str:
        """What the item says; for a truncated reply, what the user heard of it."""
        if self.heard_ms is None:
            return " ".join(self.phrases)
        heard_s = self.heard_ms / 1000
        words: list[str] = []
        for n, phrase in enumerate(self.phrases):
            start = self.starts_s[n] if n < len(self.starts_s) else self.audio_s
            if start >= heard_s:
                break
            end = self.starts_s[n + 1] if n + 1 < len(self.starts_s) else self.audio_s
            phrase_words = phrase.split()
            share = 1.0 if end <= heard_s or end <= start else (heard_s - start) / (end - start)
            words += phrase_words[: round(len(phrase_words) * share)]
        return " ".join(words)


@dataclass
class FunctionCallItem:
    """A tool call a reply made (OpenAI's `function_call` item): `in_progress` while its arguments
    stream, then `completed`."""

    id: str
    call_id: str
    name: str
    arguments: str = ""
    status: ItemStatus = "in_progress"
    in_dialogue: bool = True
    server: bool = False  # run by the server (else by the client)

    def call(self) -> ToolCall:
        return {
            "id": self.call_id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


@dataclass
class FunctionCallOutputItem:
    """A call's result (OpenAI's `function_call_output` item): a server tool's, or one the client sent."""

    id: str
    call_id: str
    output: str
    in_dialogue: bool = True


Item = ConversationItem | FunctionCallItem | FunctionCallOutputItem


@dataclass
class Conversation:
    """What outlives a turn: the items, in order, and the last one's id (each new item names the one
    before it)."""

    items: list[Item] = field(default_factory=list)
    last_item_id: str | None = None

    @property
    def history(self) -> list[ChatMessage]:
        """The dialogue the LLM sees: the finished turns' items, in order. Calls become an assistant
        message's `tool_calls` (with the words said just before them), each followed by its output as a
        "tool" message; a call with no output yet (or whose output was deleted) is left out, and so is
        an output whose call is gone, so the provider never sees half of a call."""
        items = [item for item in self.items if item.in_dialogue]
        outputs = {item.call_id: item.output for item in items if isinstance(item, FunctionCallOutputItem)}
        messages: list[ChatMessage] = []
        answered: list[str] = []  # outputs due after the assistant message being built
        for item in items:
            if isinstance(item, FunctionCallOutputItem):
                continue
            if isinstance(item, FunctionCallItem):
                if item.call_id not in outputs or item.status != "completed":
                    continue
                # Calls in a row share one assistant message, which also holds the words just before.
                if not answered and (not messages or messages[-1]["role"] != "assistant"):
                    messages.append({"role": "assistant", "content": ""})
                messages[-1].setdefault("tool_calls", []).append(item.call())
                answered.append(item.call_id)
                continue
            messages += self._answers(answered, outputs)
            if item.text:
                messages.append({"role": item.role, "content": item.text})
        return messages + self._answers(answered, outputs)

    @staticmethod
    def _answers(answered: list[str], outputs: dict[str, str]) -> list[ChatMessage]:
        """The "tool" messages for the calls just added (emptying `answered`)."""
        messages: list[ChatMessage] = [
            {"role": "tool", "tool_call_id": call_id, "content": outputs[call_id]} for call_id in answered
        ]
        answered.clear()
        return messages

    def last_reply(self) -> str:
        """What the user heard of the agent's last finished reply ("" before the first)."""
        replies = [i for i in self.items if isinstance(i, ConversationItem) and i.role == "assistant"]
        heard = [reply.text for reply in replies if reply.in_dialogue]
        return next((text for text in reversed(heard) if text), "")

    def recent(self, keep: int) -> list[ChatMessage]:
        """The last `keep` messages of the history (about), never starting inside a call's answer."""
        if keep <= 0:
            return []
        messages = self.history[-keep:]
        while messages and messages[0]["role"] == "tool":
            messages.pop(0)
        return messages

    def call(self, call_id: str) -> FunctionCallItem | None:
        """The call with `call_id`, if the conversation has it."""
        for item in reversed(self.items):
            if isinstance(item, FunctionCallItem) and item.call_id == call_id:
                return item
        return None

    def add_user(self, item_id: str, text: str, spoken: bool) -> ConversationItem:
        """A user message as it arrives (typed, or transcribed); the LLM sees it once its turn ends.
        The same id again gives the item already there."""
        for existing in reversed(self.items):
            if existing.id == item_id and isinstance(existing, ConversationItem):
                return existing
        item = ConversationItem(item_id, "user", spoken, [text], in_dialogue=False)
        self.items.append(item)
        return item

    def add_message(self, role: Literal["user", "assistant"], text: str, item_id: str = "") -> None:
        """A finished message (a user's, or a reply said in full) at the end of the dialogue."""
        self.items.append(ConversationItem(item_id, role, audio=False, phrases=[text]))

    def get(self, item_id: str) -> Item:
        for item in self.items:
            if item.id == item_id:
                return item
        raise ItemError("item_not_found", f"no item with id {item_id[:80]!r} in this conversation")

    def delete(self, item_id: str) -> None:
        """Remove an item: the LLM no longer sees it."""
        self.items.remove(self.get(item_id))

    def truncate(self, item_id: str, audio_end_ms: int) -> ConversationItem:
        """Cut an assistant reply's text to its first `audio_end_ms` of audio (what was heard)."""
        item = self.get(item_id)
        if not isinstance(item, ConversationItem) or item.role != "assistant" or not item.audio:
            raise ItemError("invalid_item", f"item {item_id[:80]!r} is not an assistant reply with audio")
        sent_ms = round(item.audio_s * 1000)
        if audio_end_ms > sent_ms:
            raise ItemError(
                "invalid_audio_end_ms",
                f"audio_end_ms {audio_end_ms} is beyond the {sent_ms} ms of audio sent for this item",
            )
        item.heard_ms = audio_end_ms if item.heard_ms is None else min(item.heard_ms, audio_end_ms)
        return item
