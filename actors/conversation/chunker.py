"""Phrase chunking between the LLM and TTS.

Releases text to TTS at the earliest point where it is safe to speak: a sentence end that pysbd confirms
(so "Dr." or "e.g." never cut a sentence), or a clause break (comma, semicolon, colon, dash) once the phrase
is long enough to sound natural. A period or comma right after a digit waits for the next token, since it
may be a decimal point or a thousands separator.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pysbd

_SENTENCE_END = ".!?…"
_CLAUSE_END = ",;:—–"
_CANDIDATE = re.compile(r"[.!?…,;:—–]+[\"')\]]*(?=\s|$)")
# A probe word that starts a new sentence: pysbd decides whether the text before it is complete.
_PROBE = " Next"


@dataclass(frozen=True)
class ChunkerConfig:
    min_first_clause_words: int = 3  # the first phrase may end at a comma after this many words
    min_clause_words: int = 12  # later phrases end at a comma only once this long
    max_phrase_chars: int = 250  # force a break at a space beyond this


class PhraseChunker:
    """Feed LLM text deltas with `push`; get speakable phrases back. `flush` at end of stream."""

    def __init__(self, config: ChunkerConfig | None = None) -> None:
        self.config = config or ChunkerConfig()
        self._segmenter = pysbd.Segmenter(language="en", clean=False)
        self._buffer = ""
        self._released_any = False
        self._settled = 0  # buffer offset before which every candidate was already judged

    def push(self, delta: str) -> list[str]:
        self._buffer += delta
        phrases: list[str] = []
        while (phrase := self._next_phrase()) is not None:
            phrases.append(phrase)
        return phrases

    def flush(self) -> str | None:
        rest = self._buffer.strip()
        self._buffer = ""
        if rest:
            self._released_any = True
            return rest
        return None

    def _next_phrase(self) -> str | None:
        for match in _CANDIDATE.finditer(self._buffer, self._settled):
            end = match.end()
            at_end = end == len(self._buffer)
            before = self._buffer[match.start() - 1] if match.start() else ""
            if at_end and before.isdigit():
                return None  # "3." or "1," may continue as "3.5" or "1,000"
            head = self._buffer[:end]
            if match.group()[0] in _SENTENCE_END:
                if self._is_sentence_end(head, _PROBE if at_end else self._buffer[end:]):
                    return self._release(end)
            elif len(head.split()) >= self._clause_threshold():
                return self._release(end)
            if not at_end:
                self._settled = end  # judged with real text after it: no need to look again
        if len(self._buffer) > self.config.max_phrase_chars:
            cut = self._buffer.rfind(" ", 0, self.config.max_phrase_chars)
            return self._release(cut if cut > 0 else self.config.max_phrase_chars)
        return None

    def _is_sentence_end(self, head: str, continuation: str) -> bool:
        """True when pysbd puts a sentence boundary between `head` and `continuation`."""
        text = head + continuation
        lo, hi = len(head.rstrip()), len(head) + len(continuation) - len(continuation.lstrip())
        pos = 0
        for segment in self._segmenter.segment(text)[:-1]:
            pos = text.find(segment, pos) + len(segment)
            if lo <= pos <= hi:
                return True
            if pos > hi:
                break
        return False

    def _clause_threshold(self) -> int:
        return self.config.min_clause_words if self._released_any else self.config.min_first_clause_words

    def _release(self, end: int) -> str | None:
        phrase, self._buffer = self._buffer[:end].strip(), self._buffer[end:].lstrip()
        self._settled = 0
        if not phrase:
            return None
        self._released_any = True
        return phrase
