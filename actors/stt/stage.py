"""The STT stage: utterance streams from one engine.

In process, callers open a stream and keep it (`open_stream`). Behind a Serve handle a stream object
cannot travel, so `STTDeployment` keeps each utterance's stream here, keyed by stream id, and
`serve_app.stage_clients.RemoteSTTStage` feeds it by id (`feed`, `finish`, `close`).

Each of those calls says at which byte offset of the utterance its audio starts. A replica that does not
hold the stream at that offset (restarted, evicted, or the request was routed elsewhere) answers
`resync`, and the caller resends the utterance from the start: affinity is an optimisation, never a
correctness requirement.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import TypedDict

from actors.load_meter import LoadMeter
from actors.stt.base import STTEngine, STTStream


class FeedResult(TypedDict):
    interim: str | None
    resync: bool


class FinishResult(TypedDict):
    text: str | None
    resync: bool


@dataclass
class _Held:
    stream: STTStream
    received: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    last_used: float = field(default_factory=time.monotonic)


class STTStage:
    """The STT stage around one engine (an `STTClient`), holding the utterance streams a Serve replica
    is fed by id."""

    def __init__(self, engine: STTEngine, idle_timeout_s: float = 5.0) -> None:
        self.engine = engine
        self.idle_timeout_s = idle_timeout_s
        self._streams: dict[str, _Held] = {}
        # Utterances in progress, from their first audio to their transcript (or their last audio, for
        # one that never gets a transcript here), over time: this stage's autoscaling signal.
        self.load = LoadMeter()

    @property
    def interim_results(self) -> bool:
        return self.engine.interim_results

    @property
    def streams_held(self) -> int:
        """Streams held by id (not `__len__`: a stage holding none must not be falsy)."""
        return len(self._streams)

    def open_stream(self) -> STTStream:
        """A stream for one utterance, kept by the caller (in process)."""
        return self.engine.open_stream()

    async def _stream_at(self, stream_id: str, offset: int) -> _Held | None:
        """The stream whose next byte is `offset`: offset 0 starts afresh (a resend of the whole
        utterance replaces what we had); any other offset must match, else the state is dropped."""
        held = self._streams.get(stream_id)
        if offset == 0 and (held is None or held.received):
            await self.close(stream_id)
            held = self._streams[stream_id] = _Held(self.engine.open_stream())
            self.load.begin()
        if held is None or held.received != offset:
            await self.close(stream_id)
            return None
        return held

    async def feed(self, stream_id: str, offset: int, pcm16: bytes) -> FeedResult:
        """Feed `pcm16` (audio from byte `offset`) to stream `stream_id`; the new interim transcript."""
        await self.expire_idle()
        held = await self._stream_at(stream_id, offset)
        if held is None:
            return {"interim": None, "resync": True}
        async with held.lock:
            interim = await held.stream.feed(pcm16)
            held.received += len(pcm16)
            held.last_used = time.monotonic()
        return {"interim": interim, "resync": False}

    async def finish(self, stream_id: str, offset: int, tail: bytes = b"") -> FinishResult:
        """Feed `tail` (audio from byte `offset`) and end the utterance."""
        held = await self._stream_at(stream_id, offset)
        if held is None:
            return {"text": None, "resync": True}
        async with held.lock:
            try:
                text = await held.stream.finish_with(tail)
            finally:
                if self._streams.pop(stream_id, None) is not None:
                    self.load.end()
        return {"text": text, "resync": False}

    async def close(self, stream_id: str) -> None:
        """Drop stream `stream_id` without a transcript (the utterance was abandoned, moved to another
        replica, or went idle). It counted as in progress until its last audio."""
        held = self._streams.pop(stream_id, None)
        if held is not None:
            self.load.end(last_active=held.last_used)
            with contextlib.suppress(Exception):
                await held.stream.aclose()

    async def expire_idle(self) -> None:
        """Drop streams fed nothing for `idle_timeout_s`. A stream being spoken gets audio every ~100 ms
        (a call that takes seconds fails the utterance anyway: `stage_timeout_s`); one left behind when
        its utterance moved to another replica (a resync) gets none, and must neither hold memory nor
        count as an utterance in progress. Dropping a live one by mistake only costs a resync."""
        now = time.monotonic()
        for stream_id in [s for s, h in self._streams.items() if now - h.last_used > self.idle_timeout_s]:
            await self.close(stream_id)
