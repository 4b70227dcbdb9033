"""The STT stage's interfaces: the engine interface (one stream per utterance, fed 16 kHz PCM16 chunks)
and `STTClient`, the stage as its callers hold it."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Protocol


class STTStream(ABC):
    """Transcribes one utterance incrementally. Not safe for concurrent use."""

    @abstractmethod
    async def feed(self, pcm16: bytes) -> str | None:
        """Add 16 kHz mono PCM16 audio; return the new interim transcript if it changed."""

    @abstractmethod
    async def finish(self) -> str:
        """End of audio: return the final transcript ('' when nothing was recognised)."""

    async def finish_with(self, tail: bytes) -> str:
        """Feed the last audio and finish; a remote stream overrides this to do both in one call."""
        if tail:
            await self.feed(tail)
        return await self.finish()

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release resources without producing a transcript."""


class STTEngine(ABC):
    """Creates utterance streams. `name` and `model` appear in the startup log."""

    name: str
    model: str
    # Whether its streams return interim transcripts as audio comes. One that only transcribes a finished
    # utterance (a provider that takes a file) gains nothing from being fed often, so it is fed seldom.
    interim_results: bool = True

    @abstractmethod
    def open_stream(self) -> STTStream: ...

    async def warmup(self) -> None:  # noqa: B027 - optional hook
        """Load models ahead of the first request."""

    async def probe(self) -> str | None:
        """None when the engine can answer now, else a short description of what is down (an
        engine behind an HTTP API checks it, cached so readiness probes stay cheap)."""
        return None


class STTClient(Protocol):
    """The STT stage as its callers hold it: one stream per utterance. `STTStage` in process,
    `RemoteSTTStage` over a Serve handle (an engine itself fits too)."""

    @property
    def interim_results(self) -> bool:
        """Whether the engine behind it gives interim transcripts (`STTEngine.interim_results`)."""
        ...

    def open_stream(self) -> STTStream: ...
