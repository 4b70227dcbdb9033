"""Build the configured STT, TTS and LLM engines from resolved settings.

Engine modules are imported inside each branch so a deployment only loads what it uses
(llama_cpp, the eSpeak library and pocketsphinx's model are all heavy or optional).
"""

from __future__ import annotations

from typing import Any

from actors.llm.base import LLMEngine
from actors.stt.base import STTEngine
from actors.tts.base import TTSEngine


def _secret(value: Any) -> str | None:
    # Settings keeps the API key as a pydantic SecretStr; plain strings are accepted too.
    if value is None:
        return None
    get = getattr(value, "get_secret_value", None)
    return get() if callable(get) else str(value)


def create_stt_engine(settings: Any) -> STTEngine:
    engine = settings.stt_engine
    if engine == "pocketsphinx":
        from actors.stt.pocketsphinx_engine import PocketsphinxEngine

        return PocketsphinxEngine()
    if engine == "openai":
        from actors.stt.openai_engine import OpenAISTTEngine

        return OpenAISTTEngine(
            api_key=_secret(settings.openai_api_key),
            base_url=settings.openai_base_url,
            model=settings.stt_model or "gpt-4o-mini-transcribe",
        )
    if engine == "simulated":
        from actors.stt.simulated import SimulatedSTTEngine

        return SimulatedSTTEngine(settings.sim_stt_transcript, finalize_delay_ms=settings.sim_stt_delay_ms)
    raise ValueError(f"unknown stt_engine {engine!r} (expected 'pocketsphinx', 'openai' or 'simulated')")


def create_tts_engine(settings: Any) -> TTSEngine:
    engine = settings.tts_engine
    if engine == "espeak":
        from actors.tts.espeak_engine import EspeakEngine

        return EspeakEngine(voice=settings.tts_voice or "en-us", rate_wpm=settings.tts_rate_wpm)
    if engine == "openai":
        from actors.tts.openai_engine import OpenAITTSEngine

        return OpenAITTSEngine(
            api_key=_secret(settings.openai_api_key),
            base_url=settings.openai_base_url,
            model=settings.tts_model or "gpt-4o-mini-tts",
            voice=settings.tts_voice or "alloy",
        )
    if engine == "simulated":
        from actors.tts.simulated import SimulatedTTSEngine

        return SimulatedTTSEngine(ttfb_ms=settings.sim_tts_ttfb_ms)
    raise ValueError(f"unknown tts_engine {engine!r} (expected 'espeak', 'openai' or 'simulated')")


def create_llm_engine(settings: Any) -> LLMEngine:
    engine = settings.llm_engine
    if engine == "openai":
        from actors.llm.openai_engine import OpenAILLMEngine

        return OpenAILLMEngine(
            api_key=_secret(settings.openai_api_key),
            base_url=settings.llm_base_url or settings.openai_base_url,
            model=settings.llm_model or "gpt-4o-mini",
        )
    if engine == "llamacpp":
        from actors.llm.llamacpp_engine import LlamaCppEngine

        return LlamaCppEngine(
            model_path=settings.llama_model_path,
            n_threads=settings.llama_threads,
            model=settings.llm_model or "gemma3-270m-q4_k_m",
            # Lets warmup() cache the real prompt prefix, not a default one.
            system_prompt=getattr(settings, "system_prompt", None),
        )
    raise ValueError(f"unknown llm_engine {engine!r} (expected 'openai' or 'llamacpp')")
