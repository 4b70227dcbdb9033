"""Preemptive generation: a reply's LLM call started at a pause, before the turn is confirmed.

When the user pauses, the session transcribes what they said so far and starts the LLM on it at once;
the phrases wait here, unheard, and the first one is synthesised ahead. If the turn then ends with that
same transcript, the reply player takes them over (`ReplyPlayer.start(..., early=...)`): the LLM's and
the first phrase's TTS latency were paid during the silence window. If the user goes on, or the
transcript differs, the calls are cancelled and counted as wasted
(`voice_preemptive_replies_total{outcome="wasted"}`): nothing of them reaches the client or the
conversation history.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable

from prometheus_client import Counter

from actors.conversation.metrics import clock
from actors.llm.base import LLMEvent
from actors.tasks import cancel_and_wait, close_quietly
from actors.tts.base import DEFAULT_STYLE, SpeechStyle, TTSClient

PREEMPTIVE_REPLIES = Counter(
    "voice_preemptive_replies",
    "LLM calls started at a pause, before the turn was confirmed: used for the reply, or wasted",
    ["outcome"],
)


class EarlyReply:
    """The LLM events of a reply started early, buffered with the clock time each arrived, and (given a
    TTS) the audio of its first phrase, synthesised ahead so the reply can start the moment it is heard."""

    def __init__(
        self,
        text: str,
        open_stream: Callable[[], Awaitable[AsyncGenerator[LLMEvent, None]]],
        tts: TTSClient | None = None,
        sample_rate: int = 24_000,
        style: SpeechStyle = DEFAULT_STYLE,
    ) -> None:
        self.text = text  # the transcript it answers
        self.llm_start = clock()
        self._buffer: asyncio.Queue[tuple[LLMEvent, float] | Exception | None] = asyncio.Queue()
        self._open = open_stream
        self._tts = tts
        self.sample_rate = sample_rate  # of the audio synthesised ahead
        self.style = style  # the voice it is synthesised in
        self._first_phrase: str | None = None
        self._first_audio: asyncio.Queue[bytes | Exception | None] = asyncio.Queue()
        self._synthesis: asyncio.Task[None] | None = None
        self._audio_taken = False
        self._task = asyncio.create_task(self._pump())
        self._taken = False  # by a reply (used) or by `discard` (wasted)

    async def _pump(self) -> None:
        stream: AsyncGenerator[LLMEvent, None] | None = None
        try:
            stream = await self._open()
            self.llm_start = clock()  # after the prompt was put together, as for any reply
            async for event in stream:
                self._buffer.put_nowait((event, clock()))
                if event["type"] == "phrase" and self._tts is not None and self._synthesis is None:
                    self._first_phrase = event["text"]
                    self._synthesis = asyncio.create_task(self._synthesize(self._tts, event["text"]))
            self._buffer.put_nowait(None)
        except Exception as exc:  # handed to the reply that takes it over, which fails as it would have
            self._buffer.put_nowait(exc)
        finally:
            if stream is not None:
                await close_quietly(stream)

    async def _synthesize(self, tts: TTSClient, text: str) -> None:
        chunks = tts.synthesize(text, self.sample_rate, self.style)
        try:
            async for chunk in chunks:
                self._first_audio.put_nowait(chunk)
            self._first_audio.put_nowait(None)
        except Exception as exc:  # the reply that plays it fails as it would have
            self._first_audio.put_nowait(exc)
        finally:
            await close_quietly(chunks)

    def first_audio(
        self, text: str, sample_rate: int, style: SpeechStyle = DEFAULT_STYLE
    ) -> AsyncGenerator[bytes, None] | None:
        """The audio of the first phrase synthesised ahead, if `text` at `sample_rate` in `style` is
        what it was made for (once); else None and the caller synthesises it."""
        if self._synthesis is None or self._audio_taken:
            return None
        if (text, sample_rate, style) != (self._first_phrase, self.sample_rate, self.style):
            return None
        self._audio_taken = True
        return self._replay_first_audio()

    async def _replay_first_audio(self) -> AsyncGenerator[bytes, None]:
        while (item := await self._first_audio.get()) is not None:
            if isinstance(item, Exception):
                raise item
            yield item

    def take(self) -> AsyncGenerator[tuple[LLMEvent, float], None]:
        """Hand the reply its LLM events with their arrival times (those buffered so far, then the rest
        as they come); the early call counts as used. Once only; `close` ends the call."""
        if self._taken:
            raise RuntimeError("an early reply is taken over once")
        self._taken = True
        PREEMPTIVE_REPLIES.labels(outcome="used").inc()
        return self._events()

    async def _events(self) -> AsyncGenerator[tuple[LLMEvent, float], None]:
        while (item := await self._buffer.get()) is not None:
            if isinstance(item, Exception):
                raise item
            yield item

    async def discard(self) -> None:
        """Not taken over (the turn went on or changed): cancel the LLM call; it counts as wasted. A
        no-op once a reply has taken it over."""
        if self._taken:
            return
        self._taken = True
        PREEMPTIVE_REPLIES.labels(outcome="wasted").inc()
        await self.close()

    async def close(self) -> None:
        """End the LLM call and the synthesis ahead, wherever they are."""
        await cancel_and_wait([self._task, *([self._synthesis] if self._synthesis is not None else [])])
