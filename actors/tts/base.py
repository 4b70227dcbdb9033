"""The TTS stage's interfaces: the engine interface (a phrase in, PCM16 chunks out as they are
synthesised) and `TTSClient`, the stage as its callers hold it."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class SpeechStyle:
    """How a text is spoken, as OpenAI's speech API says it: `voice` (an OpenAI voice name or an
    engine voice; None: the engine's configured voice), `speed` (0.25–4.0) and `instructions` (for
    engines that take them). Validated by the API layer (`actors/tts/voices.py`)."""

    voice: str | None = None
    speed: float = 1.0
    instructions: str | None = None


DEFAULT_STYLE = SpeechStyle()


class TTSEngine(ABC):
    name: str
    model: str
    voice: str
    sample_rate: int  # native output rate of `synthesize`

    @abstractmethod
    def synthesize(self, text: str, style: SpeechStyle = DEFAULT_STYLE) -> AsyncGenerator[bytes, None]:
        """Yield mono PCM16 chunks at `sample_rate` as soon as each is ready, spoken in `style`.

        Closing the iterator early (barge-in) must stop the synthesis work.
        """

    async def warmup(self) -> None:  # noqa: B027 - optional hook
        """Load voices ahead of the first request."""

    async def probe(self) -> str | None:
        """None when the engine can answer now, else a short description of what is down (an
        engine behind an HTTP API checks it, cached so readiness probes stay cheap)."""
        return None


class TTSClient(Protocol):
    """The TTS stage as its callers hold it: one phrase in, PCM16 mono at `sample_rate` out, the first
    chunk as soon as it exists. `TTSStage` in process, `RemoteTTSStage` over a Serve handle."""

    def synthesize(
        self, text: str, sample_rate: int, style: SpeechStyle = DEFAULT_STYLE
    ) -> AsyncGenerator[bytes, None]: ...
