"""The TTS engine interface: a phrase in, PCM16 chunks out as they are synthesised."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator


class TTSEngine(ABC):
    name: str
    model: str
    voice: str
    sample_rate: int  # native output rate of `synthesize`

    @abstractmethod
    def synthesize(self, text: str) -> AsyncGenerator[bytes, None]:
        """Yield mono PCM16 chunks at `sample_rate` as soon as each is ready.

        Closing the iterator early (barge-in) must stop the synthesis work.
        """

    async def warmup(self) -> None:  # noqa: B027 - optional hook
        """Load voices ahead of the first request."""
