"""Offline TTS with eSpeak NG: formant synthesis, ~700x real time, first chunk in well under 1 ms."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator

from actors.tts.base import TTSEngine
from actors.tts.espeak_lib import get_espeak

_DONE = object()  # end-of-synthesis marker on the chunk queue


class EspeakEngine(TTSEngine):
    name = "espeak"
    model = "espeak-ng"

    def __init__(self, voice: str = "en-us", rate_wpm: int = 175) -> None:
        self.voice = voice
        self.rate_wpm = rate_wpm
        # Initialising here (a few ms, once per process) gives the true rate: 22050 Hz.
        self.sample_rate = get_espeak().sample_rate

    async def warmup(self) -> None:
        # Load the voice (first use reads its data files) with a tiny synthesis.
        await asyncio.to_thread(get_espeak().synth, ".", self.voice, self.rate_wpm, lambda _chunk: False)

    async def synthesize(self, text: str) -> AsyncIterator[bytes]:
        if not text.strip():
            return
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()
        stop = threading.Event()

        def post(item: object) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed under an abandoned stream
                loop.call_soon_threadsafe(queue.put_nowait, item)

        def sink(chunk: bytes) -> bool:
            # Runs in the worker thread, inside espeak's callback.
            if stop.is_set():
                return True  # the consumer is gone (barge-in): abort the synthesis
            post(chunk)
            return False

        def work() -> None:
            try:
                if not stop.is_set():  # closed while waiting for the lock: skip it entirely
                    get_espeak().synth(text, self.voice, self.rate_wpm, sink)
            except Exception as exc:
                post(exc)
            else:
                post(_DONE)

        # A plain daemon thread, not asyncio.to_thread: waiting for the global lock behind
        # another synthesis must not occupy the loop's default executor.
        thread = threading.Thread(target=work, name="espeak-synth", daemon=True)
        thread.start()
        try:
            while True:
                item = await queue.get()
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                assert isinstance(item, bytes)
                yield item
        finally:
            stop.set()
            # Let the worker notice the abort (at its next chunk) before the lock is reused;
            # it is quick, but must not block the event loop.
            if thread.is_alive():
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(thread.join)
