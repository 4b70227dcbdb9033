"""Build the configured STT, TTS and LLM engines from resolved settings (`Settings.resolved()`: engines,
models, voices and endpoints already chosen there, in one place).

Engine modules are imported inside each branch so a deployment only loads what it uses
(llama_cpp, the eSpeak library and pocketsphinx's model are all heavy or optional).
"""

from __future__ import annotations

from actors.config import Settings
from actors.llm.base import LLMEngine
from actors.stt.base import STTEngine
from actors.tts.base import TTSEngine


def create_stt_engine(settings: Settings) -> STTEngine:
    """The STT engine `settings.stt_engine` names (resolved settings: no "auto"), not yet warmed up."""
    engine = settings.stt_engine
    if engine == "pocketsphinx":
        from actors.stt.pocketsphinx_engine import PocketsphinxEngine

        return PocketsphinxEngine()
    if engine == "openai":
        from actors.stt.openai_engine import OpenAISTTEngine

        return OpenAISTTEngine(
            api_key=settings.openai_key,
            base_url=settings.openai_base_url,
            model=settings.stt_model,
            connect_timeout_s=settings.speech_connect_timeout_s,
            timeout_s=settings.stt_timeout_s,
            probe_ttl_s=settings.readyz_probe_ttl_s,
        )
    if engine == "simulated":
        from actors.stt.simulated import SimulatedSTTEngine

        return SimulatedSTTEngine(
            settings.sim_stt_transcript,
            finalize_delay_ms=settings.sim_stt_delay_ms,
            interim_results=settings.sim_stt_interim_results,
        )
    raise ValueError(f"unknown stt_engine {engine!r} (expected 'pocketsphinx', 'openai' or 'simulated')")


def stt_interim_results(settings: Settings) -> bool:
    """`STTEngine.interim_results` of the engine `settings` names, without loading it (the router needs
    it; the engine runs in the STT deployment)."""
    if settings.stt_engine == "openai":
        return False
    if settings.stt_engine == "simulated":
        return settings.sim_stt_interim_results
    return True


def create_tts_engine(settings: Settings) -> TTSEngine:
    """The TTS engine `settings.tts_engine` names, not yet warmed up."""
    engine = settings.tts_engine
    if engine == "espeak":
        from actors.tts.espeak_engine import EspeakEngine

        return EspeakEngine(voice=settings.tts_voice, rate_wpm=settings.tts_rate_wpm)
    if engine == "openai":
        from actors.tts.openai_engine import OpenAITTSEngine

        return OpenAITTSEngine(
            api_key=settings.openai_key,
            base_url=settings.openai_base_url,
            model=settings.tts_model,
            voice=settings.tts_voice,
            connect_timeout_s=settings.speech_connect_timeout_s,
            timeout_s=settings.tts_timeout_s,
            probe_ttl_s=settings.readyz_probe_ttl_s,
        )
    if engine == "simulated":
        from actors.tts.simulated import SimulatedTTSEngine

        return SimulatedTTSEngine(ttfb_ms=settings.sim_tts_ttfb_ms)
    raise ValueError(f"unknown tts_engine {engine!r} (expected 'espeak', 'openai' or 'simulated')")


def create_llm_engine(settings: Settings) -> LLMEngine:
    """The LLM engine `settings.llm_engine` names (full-Letta mode: each user's Letta agent), not yet
    warmed up."""
    engine = settings.llm_engine
    if engine == "openai":
        from actors.llm.call_policy import LLMCallPolicy
        from actors.llm.openai_engine import OpenAILLMEngine

        return OpenAILLMEngine(
            api_key=settings.openai_key,
            base_url=settings.llm_base_url,
            model=settings.llm_model,
            policy=LLMCallPolicy(
                connect_timeout_s=settings.llm_connect_timeout_s,
                first_token_timeout_s=settings.llm_first_token_timeout_s,
                chunk_timeout_s=settings.llm_chunk_timeout_s,
                max_retries=settings.llm_max_retries,
                retry_budget_s=settings.llm_retry_budget_s,
            ),
            probe_ttl_s=settings.readyz_probe_ttl_s,
        )
    if engine == "llamacpp":
        from actors.llm.llamacpp_engine import LlamaCppEngine

        return LlamaCppEngine(
            model_path=settings.llama_model_path,
            n_threads=settings.llama_threads,
            model=settings.llm_model,
            # Lets warmup() cache the real prompt prefix, not a default one.
            system_prompt=settings.system_prompt,
        )
    if engine == "letta":
        from actors.llm.letta_engine import LettaAgentLLMEngine
        from actors.memory.letta import LettaMemory, letta_config

        return LettaAgentLLMEngine(LettaMemory(letta_config(settings)))
    raise ValueError(f"unknown llm_engine {engine!r} (expected 'openai', 'llamacpp' or 'letta')")
