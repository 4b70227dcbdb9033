"""Whole recordings (REST uploads) transcribed without tying up the STT stage.

A recording longer than one chunk is split at pauses into chunks of at most `chunk_s` seconds, each
transcribed as an utterance of its own, one after another, while the recording holds a slot of the
process's `TranscriptionLane`. The lane lets at most `slots` long recordings decode at once, and gives
the slots to the recordings with the least audio left (ties: first come): a freed slot goes to the
waiter with the least left, and between two chunks a holder hands its slot to a waiter with less left
than itself. So:

- a short recording (one chunk) never waits on the lane: it shares the STT stage with at most `slots`
  chunk decodes however many long recordings are being transcribed, instead of with all of them;
- long recordings take turns at chunk boundaries, the one closest to done first;
- a recording whose client went away stops after the chunk in progress, not at its end.

Before the lane a long upload was one STT call: two of them made a 3 s upload ~4x slower, and an
abandoned one kept decoding to its end (`bench/long_upload.py`; figures in the README's REST section).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import numpy as np

from actors.audio.pcm import PCM_SAMPLE_WIDTH, STT_SAMPLE_RATE
from actors.stt.base import STTClient

_QUIET_FRAMES = 5  # of 20 ms: a cut goes in the middle of the quietest 100 ms


class ClientGone(Exception):
    """The client of a recording left before its transcript was ready; the rest was not decoded."""


def split_at_pauses(
    pcm16: bytes, chunk_s: float, search_s: float, rate: int = STT_SAMPLE_RATE
) -> list[bytes]:
    """`pcm16` (mono PCM16 at `rate`) in pieces of at most `chunk_s` seconds that join back into it,
    each cut in the quietest 100 ms of the last `search_s` seconds before its limit, so that a cut
    falls between words when there is a pause there."""
    samples = np.frombuffer(pcm16[: len(pcm16) - len(pcm16) % PCM_SAMPLE_WIDTH], dtype="<i2")
    limit = int(chunk_s * rate)
    if len(samples) <= limit:
        return [pcm16] if len(pcm16) else []
    frame = rate // 50
    frames = len(samples) // frame
    energy = np.square(samples[: frames * frame].astype(np.float64)).reshape(frames, frame).mean(axis=1)
    # Energy of each 100 ms window, indexed by its first frame.
    quiet = np.convolve(energy, np.ones(_QUIET_FRAMES), mode="valid")
    search = max(int(search_s * rate) // frame, 1)
    pieces, start = [], 0
    while len(samples) - start > limit:
        last = (start + limit) // frame - _QUIET_FRAMES  # the last window that ends within the limit
        first = max(last - search + 1, start // frame)
        if last >= first:
            cut = (first + int(np.argmin(quiet[first : last + 1])) + _QUIET_FRAMES // 2) * frame
        else:  # a limit shorter than the window: cut at the limit
            cut = start + limit
        pieces.append(samples[start:cut].tobytes())
        start = cut
    pieces.append(samples[start:].tobytes())
    return pieces


class TranscriptionLane:
    """At most `slots` holders at once; a freed slot goes to the waiter with the least audio left
    (then the earliest), and a holder passes its slot between chunks to a waiter with less left than
    itself (shortest remaining first). Plain asyncio: one per event loop."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self._free = slots
        self._waiting: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    @property
    def waiting(self) -> int:
        return sum(not future.done() for _, _, future in self._waiting)

    @contextlib.asynccontextmanager
    async def slot(self, remaining_s: float) -> AsyncIterator[LaneTurn]:
        """Hold a slot for a recording with `remaining_s` seconds of audio to transcribe."""
        turn = LaneTurn(self)
        await self._acquire(remaining_s)
        turn.held = True
        try:
            yield turn
        finally:
            if turn.held:
                self._release()

    async def _acquire(self, remaining_s: float) -> None:
        if self._free and not self.waiting:
            self._free -= 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (remaining_s, next(self._order), future))
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self._release()  # handed a slot just as it was cancelled: pass it on
            raise  # a cancelled waiter stays in the heap, done, and is skipped

    def _next_waiting(self) -> tuple[float, int, asyncio.Future[None]] | None:
        while self._waiting and self._waiting[0][2].done():
            heapq.heappop(self._waiting)
        return self._waiting[0] if self._waiting else None

    def _release(self) -> None:
        if (waiter := self._next_waiting()) is not None:
            heapq.heappop(self._waiting)
            waiter[2].set_result(None)  # the slot goes straight to the next waiter
        else:
            self._free += 1


class LaneTurn:
    """A recording's hold on a lane slot."""

    def __init__(self, lane: TranscriptionLane) -> None:
        self.lane = lane
        self.held = False

    async def pass_to_shorter(self, remaining_s: float) -> None:
        """Between two chunks: when a waiter has less audio left than this recording's `remaining_s`,
        give it the slot and wait for one again."""
        waiter = self.lane._next_waiting()
        if waiter is None or waiter[0] >= remaining_s:
            return
        self.held = False
        self.lane._release()
        await self.lane._acquire(remaining_s)
        self.held = True


@dataclass(frozen=True)
class RecordedSegment:
    """One transcribed piece of a recording: seconds from its start, and its text ('' for none)."""

    start_s: float
    end_s: float
    text: str


async def transcribe_segments(
    stt: STTClient,
    pcm16: bytes,
    lane: TranscriptionLane,
    *,
    chunk_s: float,
    search_s: float = 3.0,
    client_gone: Callable[[], Awaitable[bool]] | None = None,
) -> AsyncGenerator[RecordedSegment, None]:
    """The segments of a whole 16 kHz recording, each as soon as it is transcribed: the chunks cut at
    pauses (see the module docstring), one for a recording of one chunk. Raises `ClientGone` when
    `client_gone` says the client left, checked before each chunk of a long recording but the first."""
    chunks = split_at_pauses(pcm16, chunk_s, search_s)
    bytes_per_s = STT_SAMPLE_RATE * PCM_SAMPLE_WIDTH
    if len(chunks) <= 1:
        chunk = chunks[0] if chunks else b""
        yield RecordedSegment(0.0, len(chunk) / bytes_per_s, await _transcribe(stt, chunk))
        return
    remaining = len(pcm16)
    async with lane.slot(remaining / bytes_per_s) as turn:
        for n, chunk in enumerate(chunks):
            if n:
                if client_gone is not None and await client_gone():
                    raise ClientGone(f"{len(pcm16) - remaining} of {len(pcm16)} bytes transcribed")
                await turn.pass_to_shorter(remaining / bytes_per_s)
            start = len(pcm16) - remaining
            text = await _transcribe(stt, chunk)
            remaining -= len(chunk)
            yield RecordedSegment(start / bytes_per_s, (start + len(chunk)) / bytes_per_s, text)


async def transcribe_recording(
    stt: STTClient,
    pcm16: bytes,
    lane: TranscriptionLane,
    *,
    chunk_s: float,
    search_s: float = 3.0,
    client_gone: Callable[[], Awaitable[bool]] | None = None,
) -> str:
    """The transcript of a whole 16 kHz recording: its segments' texts joined."""
    segments = transcribe_segments(
        stt, pcm16, lane, chunk_s=chunk_s, search_s=search_s, client_gone=client_gone
    )
    return " ".join([s.text async for s in segments if s.text])


async def _transcribe(stt: STTClient, pcm16: bytes) -> str:
    """One utterance: a stream fed the whole chunk and finished in one call."""
    stream = stt.open_stream()
    try:
        return (await stream.finish_with(pcm16)).strip()
    except BaseException:
        with contextlib.suppress(Exception):
            await stream.aclose()
        raise
