"""The conversation a session keeps: its items (user and assistant messages, with ids) and the dialogue
the LLM sees, which is their text.

Clients address items by id, as OpenAI's Realtime API lets them: read one back, delete one (the LLM no
longer sees it), or truncate an assistant reply to the audio the user actually heard, so the LLM does not
believe it said what was never played. An assistant item remembers where each spoken phrase's audio
starts, so a truncation keeps the phrases heard and, of the phrase cut, its words in proportion to the
part of its audio played.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from actors.llm.base import ChatMessage

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
class Conversation:
    """What outlives a turn: the items, in order, and the last one's id (each new item names the one
    before it)."""

    items: list[ConversationItem] = field(default_factory=list)
    last_item_id: str | None = None

    @property
    def history(self) -> list[ChatMessage]:
        """The dialogue the LLM sees: the finished turns' items that have text, in order."""
        return [
            {"role": item.role, "content": item.text} for item in self.items if item.in_dialogue and item.text
        ]

    def add_user(self, item_id: str, text: str, spoken: bool) -> ConversationItem:
        """A user message as it arrives (typed, or transcribed); the LLM sees it once its turn ends.
        The same id again gives the item already there."""
        for item in reversed(self.items):
            if item.id == item_id:
                return item
        item = ConversationItem(item_id, "user", spoken, [text], in_dialogue=False)
        self.items.append(item)
        return item

    def add_message(self, role: Literal["user", "assistant"], text: str, item_id: str = "") -> None:
        """A finished message (a user's, or a reply said in full) at the end of the dialogue."""
        self.items.append(ConversationItem(item_id, role, audio=False, phrases=[text]))

    def get(self, item_id: str) -> ConversationItem:
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
        if item.role != "assistant" or not item.audio:
            raise ItemError("invalid_item", f"item {item_id[:80]!r} is not an assistant reply with audio")
        sent_ms = round(item.audio_s * 1000)
        if audio_end_ms > sent_ms:
            raise ItemError(
                "invalid_audio_end_ms",
                f"audio_end_ms {audio_end_ms} is beyond the {sent_ms} ms of audio sent for this item",
            )
        item.heard_ms = audio_end_ms if item.heard_ms is None else min(item.heard_ms, audio_end_ms)
        return item
