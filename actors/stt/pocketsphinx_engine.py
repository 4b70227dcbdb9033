"""Offline streaming STT with CMU PocketSphinx and the en-us model bundled in its wheel."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from actors.audio.pcm import PCM_SAMPLE_WIDTH
from actors.stt.base import STTEngine, STTStream

# process_raw holds the GIL for the whole call (measured: one 7 s call stalls the event loop
# for 1.2 s, 100 ms calls for up to ~80 ms). Feeding 20 ms slices lets the interpreter switch
# to the event-loop thread between slices, so its stalls stay around one slice (~20 ms).
_SLICE_BYTES = 320 * PCM_SAMPLE_WIDTH


def _new_decoder() -> Any:
    from pocketsphinx import Decoder

    # fwdflat/bestpath off: the second passes cost latency at end_utt for little WER gain.
    # dither adds 1/2-bit noise, so digitally silent input (TTS, muted mics) has no log(0)
    # energies; measured on eSpeak speech padded with zeros: WER 0.59 without it, 0.49-0.53
    # with it, and an extra explicit noise floor brought nothing more, so there is none.
    return Decoder(dither=True, fwdflat=False, bestpath=False)


class _DecoderPool:
    """Reuses decoders (creating one takes ~0.4 s and ~50 MB); thread-safe."""

    def __init__(self, max_idle: int) -> None:
        self._idle: list[Any] = []
        self._lock = threading.Lock()
        self._max_idle = max_idle

    def acquire(self) -> Any:
        """Blocking: may build a decoder, so call it from a worker thread."""
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return _new_decoder()

    def release(self, decoder: Any) -> None:
        with self._lock:
            if len(self._idle) < self._max_idle:
                self._idle.append(decoder)


class PocketsphinxStream(STTStream):
    def __init__(self, pool: _DecoderPool) -> None:
        self._pool = pool
        self._decoder: Any = None
        # Serialises decoder use between a worker thread that outlives a cancelled feed()
        # and aclose()/finish(): the C decoder is not thread-safe.
        self._lock = threading.Lock()
        self._closed = False
        self._last_hyp = ""
        self._odd = b""  # a trailing odd byte carried over to the next feed

    def _ensure_decoder(self) -> Any:
        if self._decoder is None:
            self._decoder = self._pool.acquire()
            self._decoder.start_utt()
        return self._decoder

    def _process(self, pcm: bytes) -> str:
        with self._lock:
            if self._closed:
                return self._last_hyp
            decoder = self._ensure_decoder()
            for start in range(0, len(pcm), _SLICE_BYTES):
                decoder.process_raw(pcm[start : start + _SLICE_BYTES])
            hyp = decoder.hyp()
            return hyp.hypstr if hyp is not None else ""

    def _finish(self) -> str:
        with self._lock:
            if self._closed or self._decoder is None:
                self._closed = True
                return ""
            self._decoder.end_utt()
            hyp = self._decoder.hyp()
            self._release_locked()
            return hyp.hypstr if hyp is not None else ""

    def _abort(self) -> None:
        with self._lock:
            if self._decoder is not None and not self._closed:
                self._decoder.end_utt()
                self._release_locked()
            self._closed = True

    def _release_locked(self) -> None:
        self._closed = True
        decoder, self._decoder = self._decoder, None
        self._pool.release(decoder)

    async def feed(self, pcm16: bytes) -> str | None:
        pcm = self._odd + pcm16
        cut = len(pcm) - len(pcm) % PCM_SAMPLE_WIDTH
        pcm, self._odd = pcm[:cut], pcm[cut:]
        if not pcm:
            return None
        hyp = await asyncio.to_thread(self._process, pcm)
        if hyp == self._last_hyp:
            return None
        self._last_hyp = hyp
        return hyp

    async def finish(self) -> str:
        return await asyncio.to_thread(self._finish)

    async def aclose(self) -> None:
        await asyncio.to_thread(self._abort)


class PocketsphinxEngine(STTEngine):
    name = "pocketsphinx"
    model = "en-us (bundled)"

    def __init__(self, max_idle_decoders: int = 4) -> None:
        self._pool = _DecoderPool(max_idle_decoders)

    def open_stream(self) -> PocketsphinxStream:
        return PocketsphinxStream(self._pool)

    async def warmup(self) -> None:
        # Build one decoder now so the first utterance does not pay for loading the model.
        decoder = await asyncio.to_thread(self._pool.acquire)
        self._pool.release(decoder)
