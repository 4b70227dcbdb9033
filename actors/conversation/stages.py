"""The three stage contracts a voice session depends on, as the session imports them.

Each stage declares its own in `actors/<stage>/base.py` (`STTClient`, `LLMClient`, `TTSClient`, and the
LLM's `LLMRequest` / `LLMEvent`); the same session runs against in-process stages (tests, benchmarks, a
single process) and against Ray Serve deployment handles (`serve_app.stage_clients`). The older names
below stay as aliases for the modules that still use them.
"""

from __future__ import annotations

from actors.llm.base import LLMClient, LLMEvent, LLMRequest
from actors.stt.base import STTClient
from actors.tts.base import TTSClient

TranscriberClient = STTClient
PhraseLLMClient = LLMClient
TokenLLMClient = LLMClient
SynthesizerClient = TTSClient

__all__ = [
    "LLMClient",
    "LLMEvent",
    "LLMRequest",
    "PhraseLLMClient",
    "STTClient",
    "SynthesizerClient",
    "TTSClient",
    "TokenLLMClient",
    "TranscriberClient",
]
