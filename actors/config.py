"""Settings for every stage, read from environment variables and overridden by serve_config.yaml args.

Precedence: serve_config.yaml `args` > environment (`VOICE_*`, plus `OPENAI_API_KEY` / `OPENAI_BASE_URL`) >
defaults. Engines left on "auto" pick OpenAI when an API key is set and the offline engines otherwise.
Secrets are never passed through Serve's bound arguments: each replica reads them from its own environment.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from actors.memory.journal import USER_ID
from actors.tools.settings import McpServerConfig, WebhookToolConfig, unique

log = logging.getLogger(__name__)

SECRET_FIELDS = frozenset(
    {
        "openai_api_key",
        "api_keys",
        "user_keys",
        "client_secret_signing_key",
        "letta_api_key",
        "twilio_auth_token",
    }
)


class Settings(BaseSettings):
    # hide_input_in_errors: a malformed secret must not be echoed into a log.
    model_config = SettingsConfigDict(
        env_prefix="VOICE_", extra="forbid", populate_by_name=True, hide_input_in_errors=True
    )

    # --- engines -----------------------------------------------------------------------------------
    stt_engine: Literal["auto", "pocketsphinx", "openai", "simulated"] = "auto"
    stt_model: str = ""  # "" = the engine's default
    llm_engine: Literal["auto", "openai", "llamacpp", "letta"] = "auto"
    llm_model: str = ""
    llm_base_url: str | None = None  # any OpenAI-compatible server; defaults to openai_base_url
    tts_engine: Literal["auto", "espeak", "openai", "simulated"] = "auto"
    tts_model: str = ""
    tts_voice: str = ""
    tts_rate_wpm: int = Field(default=175, ge=80, le=450)
    openai_api_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("openai_api_key", "OPENAI_API_KEY", "VOICE_OPENAI_API_KEY"),
    )
    openai_base_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("openai_base_url", "OPENAI_BASE_URL", "VOICE_OPENAI_BASE_URL"),
    )
    llama_model_path: str | None = None  # any GGUF; default: the packaged Gemma 3 270M
    llama_threads: int = Field(default=2, ge=1, le=64)
    # Latency-faithful stand-ins, for benchmarks only (engine "simulated"; never chosen by "auto").
    sim_stt_transcript: str = "what is the weather like tomorrow"
    sim_stt_delay_ms: float = Field(default=150.0, ge=0)
    sim_stt_interim_results: bool = True
    sim_tts_ttfb_ms: float = Field(default=100.0, ge=0)

    # --- conversation --------------------------------------------------------------------------------
    system_prompt: str = (
        "You are a helpful voice assistant. Answer in one or two short spoken sentences, "
        "without lists or markdown."
    )
    llm_max_tokens: int = Field(default=120, ge=1, le=4096)
    llm_temperature: float = Field(default=0.7, ge=0.0, le=2.0)
    history_turns: int = Field(default=8, ge=0, le=100)  # past exchanges kept in the prompt

    # --- server tools (README "Server tools"); in the environment as JSON lists -----------------------
    tools: list[WebhookToolConfig] = Field(default_factory=list)  # HTTP webhooks
    mcp_servers: list[McpServerConfig] = Field(default_factory=list)  # their tools, named `label__tool`

    # --- provider and stage faults (README "When a provider fails") --------------------------------------
    llm_connect_timeout_s: float = Field(default=3.0, gt=0, le=60)
    llm_first_token_timeout_s: float = Field(default=5.0, gt=0, le=300)  # per attempt
    llm_chunk_timeout_s: float = Field(default=5.0, gt=0, le=300)  # between chunks once streaming
    llm_max_retries: int = Field(default=2, ge=0, le=10)  # only before the first token
    llm_retry_budget_s: float = Field(default=8.0, gt=0, le=600)  # all attempts and waits together
    speech_connect_timeout_s: float = Field(default=3.0, gt=0, le=60)  # OpenAI STT and TTS
    stt_timeout_s: float = Field(default=10.0, gt=0, le=600)  # OpenAI STT: waiting for the transcript
    tts_timeout_s: float = Field(default=5.0, gt=0, le=300)  # OpenAI TTS: first byte, then between chunks
    # The router's own guard on a stage call (one STT chunk, the next TTS chunk) on top of the
    # provider's timeout: a replica that died or hangs fails the turn instead of stalling it.
    stage_timeout_s: float = Field(default=3.0, gt=0, le=300)
    readyz_probe_ttl_s: float = Field(default=5.0, ge=0, le=300)  # /readyz reuses an upstream check
    failure_apology: str = Field(default="Sorry, I'm having trouble answering right now.", min_length=1)

    # --- turn detection (defaults for server VAD; clients change them with session.update) ------------
    vad_threshold: float = Field(default=0.5, gt=0.0, lt=1.0)
    vad_silence_ms: int = Field(default=500, ge=100, le=5000)
    vad_prefix_padding_ms: int = Field(default=300, ge=0, le=2000)
    vad_min_speech_ms: int = Field(default=96, ge=32, le=2000)
    # Start the LLM at a pause in the user's speech, before the turn is confirmed (README "Turn-taking").
    preemptive_generation: bool = True
    # semantic_vad: a pause that sounds finished ends the turn only if its words can end a sentence.
    end_of_turn_words: bool = True
    # Barge-in (README "The WebSocket protocol"): speech over a reply pauses it, and cancels it only
    # when it lasts this long and has this many words; otherwise the reply resumes.
    barge_in_min_speech_ms: int = Field(default=500, ge=0, le=5000)
    barge_in_min_words: int = Field(default=2, ge=0, le=20)
    # Tools in voice replies (README "Tools in voice replies"): rounds of calls per turn, and the filler
    # spoken while a server tool runs.
    tool_max_rounds: int = Field(default=3, ge=1, le=20)
    tool_filler_delay_ms: int = Field(default=400, ge=0, le=10_000)
    tool_filler_repeat_ms: int = Field(default=1500, ge=100, le=30_000)
    tool_filler_max: int = Field(default=2, ge=0, le=10)
    tool_filler_phrases: list[str] = Field(
        default=["One moment.", "Let me check.", "Just a second.", "Still on it."], min_length=1
    )

    # --- long-term memory (Letta); off while letta_base_url is unset ---------------------------------
    letta_base_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("letta_base_url", "LETTA_BASE_URL", "VOICE_LETTA_BASE_URL"),
    )
    letta_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("letta_api_key", "LETTA_API_KEY", "VOICE_LETTA_API_KEY")
    )
    letta_llm_config: dict[str, Any] = Field(  # the LLM each user's Letta agent uses (Letta LlmConfig)
        default_factory=lambda: {
            "model": "gpt-4o-mini",
            "model_endpoint_type": "openai",
            "model_endpoint": "https://api.openai.com/v1",
            "context_window": 128000,
        }
    )
    letta_embedding_config: dict[str, Any] = Field(
        default_factory=lambda: {
            "embedding_endpoint_type": "openai",
            "embedding_endpoint": "https://api.openai.com/v1",
            "embedding_model": "text-embedding-3-small",
            "embedding_dim": 1536,
        }
    )
    # False = full-Letta mode: every reply streams from the user's Letta agent (slower; Letta then keeps
    # the conversation itself, so the memory actor writes nothing). Same as llm_engine="letta".
    use_hybrid_streaming: bool = Field(
        default=True,
        validation_alias=AliasChoices(
            "use_hybrid_streaming", "USE_HYBRID_STREAMING", "VOICE_USE_HYBRID_STREAMING"
        ),
    )
    memory_journal_path: str = "~/.local/state/voice-agent/memory-journal.db"  # a PVC on Kubernetes
    memory_batch_size: int = Field(default=8, ge=1, le=256)
    memory_flush_interval_s: float = Field(default=30.0, gt=0, le=3600)  # see README "Performance"
    memory_retry_max_s: float = Field(default=30.0, gt=0, le=3600)  # longest backoff while Letta is down
    memory_cache_ttl_s: float = Field(default=30.0, gt=0)
    memory_read_budget_ms: int = Field(default=50, ge=0, le=5000)
    # The built-in `search_memory` and `remember` tools, offered to identified users while long-term
    # memory is on (hybrid mode with Letta); full-Letta mode keeps Letta's own tools instead.
    memory_tools: bool = True

    # --- transport and limits -------------------------------------------------------------------------
    # Audio per STT call (≥100 ms: a hop costs ~3 ms); unset: 100 ms for an engine with interim results,
    # 1 s for one without (`actors.conversation.input`).
    stt_chunk_ms: int | None = Field(default=None, ge=20, le=1000)
    audio_lead_ms: int = Field(default=500, ge=0, le=60_000)  # reply audio sent ahead of real time
    max_append_bytes: int = Field(default=1024 * 1024, ge=1024)
    max_text_chars: int = Field(default=4000, ge=1)
    max_event_bytes: int = Field(default=2 * 1024 * 1024, ge=1024)

    # --- admission and limits (README "Security"); counts are per router replica ---------------------------
    # Capacity: one router event loop holds ~20 microphone sessions before latency grows (README
    # "Performance"); above this a new session is refused as busy instead of slowing everyone.
    max_sessions_per_router: int = Field(default=32, ge=1)
    max_requests_per_router: int = Field(default=64, ge=1)  # concurrent REST requests
    credential_max_sessions: int = Field(default=4, ge=1)  # per user key or client secret
    credential_requests_per_minute: int = Field(default=120, ge=1)  # REST requests + sessions opened
    audio_max_speed: float = Field(default=1.2, ge=1.0, le=100.0)  # input audio, × real time ...
    audio_burst_s: float = Field(default=10.0, ge=1.0, le=600.0)  # ... after this much audio ahead
    max_utterance_s: float = Field(default=120.0, ge=5.0, le=3600.0)  # one user turn's audio
    idle_timeout_s: float = Field(default=300.0, ge=5.0)  # no client event and no reply in progress
    max_session_s: float = Field(default=3600.0, ge=60.0)
    send_timeout_s: float = Field(default=10.0, ge=1.0)  # a client that reads nothing for this long
    # A router replica being replaced (an upgrade, a scale-down) lets each session finish the turn in
    # progress for up to this long, then tells it to reconnect (README "Upgrades and failures"). Under
    # Serve's HAProxy ingress the replica stops serving 30 s after it starts draining: keep it below.
    drain_grace_s: float = Field(default=20.0, ge=0.0, le=3600.0)
    # Off: the sessions of a replica being replaced are left to Serve (HAProxy cuts them with a bare close
    # 1012 30 s after the drain began; Serve's Python proxy keeps them up to graceful_shutdown_timeout_s).
    drain_sessions: bool = True
    rest_body_timeout_s: float = Field(default=60.0, ge=1.0)  # the whole request body must arrive

    # --- credentials (README "Security"); with none of them set, anyone may act as any user (local use) ---
    api_keys: SecretStr | None = None  # comma-separated server keys: a trusted backend, acts for any user
    user_keys: SecretStr | None = None  # comma-separated `user:key` pairs: each key acts only as its user
    # Signs client secrets; unset = derived from the server keys (rotating those then ends the secrets).
    client_secret_signing_key: SecretStr | None = None

    # --- phone calls through Twilio (README "Phone calls") --------------------------------------------
    # The account's auth token: webhooks must carry its `X-Twilio-Signature`. Unset, the webhook answers
    # only an open router (no keys configured: local use).
    twilio_auth_token: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("twilio_auth_token", "TWILIO_AUTH_TOKEN", "VOICE_TWILIO_AUTH_TOKEN"),
    )
    # The public base URL Twilio calls (https://agent.example.com): the URL it signs and the stream's
    # host. Unset, both come from the request as the router sees it (fine without a proxy in front).
    phone_public_url: str | None = None
    # Comma-separated `+number=user` pairs: whose memory a caller's number reaches. Unlisted E.164
    # numbers act as `tel:<digits>`; withheld numbers as `anonymous` (no long-term memory).
    phone_users: str = ""
    phone_max_call_s: float = Field(default=3600.0, ge=60.0)  # one call's longest length

    # --- REST API limits (OpenAI-compatible /v1/chat/completions and /v1/audio/*) ---------------------
    rest_max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)  # JSON request bodies
    rest_max_upload_bytes: int = Field(default=25 * 1024 * 1024, ge=1024)  # audio files (OpenAI's limit)
    rest_max_audio_s: float = Field(default=600.0, gt=0, le=7200)  # decoded length of an upload
    # Longer uploads are transcribed in chunks of at most this (cut at pauses), taking turns: at most
    # rest_transcription_slots chunks of long uploads decode at once per router replica.
    rest_transcription_chunk_s: float = Field(default=15.0, ge=5, le=600)
    rest_transcription_slots: int = Field(default=1, ge=1, le=64)
    rest_max_speech_chars: int = Field(default=4096, ge=1)  # /v1/audio/speech input (OpenAI's limit)
    rest_max_completion_tokens: int = Field(default=4096, ge=1)  # largest max_tokens a request may ask
    # Rounds of server tool calls one chat request may run (a request may ask for fewer); then the model
    # must answer in words (`tool_choice: "none"`).
    rest_max_tool_rounds: int = Field(default=4, ge=1, le=32)

    def resolved(self) -> Settings:
        """Return a copy with every 'auto' engine and empty model replaced by a concrete choice."""
        online = self.openai_api_key is not None or self.openai_base_url is not None
        update: dict[str, Any] = {}
        if self.stt_engine == "auto":
            update["stt_engine"] = "openai" if online else "pocketsphinx"
        if self.llm_engine == "auto":
            update["llm_engine"] = "openai" if online or self.llm_base_url else "llamacpp"
        if self.tts_engine == "auto":
            update["tts_engine"] = "openai" if online else "espeak"
        if not self.use_hybrid_streaming or self.llm_engine == "letta":
            update |= {"llm_engine": "letta", "use_hybrid_streaming": False}
        merged = self.model_copy(update=update)
        defaults = {
            ("stt", "simulated"): "simulated",
            ("tts", "simulated"): "simulated",
            ("stt", "openai"): "gpt-4o-mini-transcribe",
            ("stt", "pocketsphinx"): "en-us",
            ("llm", "openai"): "gpt-4o-mini",
            ("llm", "llamacpp"): "gemma3-270m-q4_k_m",
            ("llm", "letta"): "letta-agent",  # each user's own agent answers
            ("tts", "openai"): "gpt-4o-mini-tts",
            ("tts", "espeak"): "espeak-ng",
        }
        models: dict[str, Any] = {}
        for stage in ("stt", "llm", "tts"):
            if not getattr(merged, f"{stage}_model"):
                models[f"{stage}_model"] = defaults[(stage, getattr(merged, f"{stage}_engine"))]
        if not merged.tts_voice:
            models["tts_voice"] = {"openai": "alloy", "simulated": "tone"}.get(merged.tts_engine, "en-us")
        if merged.llm_base_url is None and merged.llm_engine == "openai":
            models["llm_base_url"] = merged.openai_base_url
        return merged.model_copy(update=models)

    def shareable(self) -> dict[str, Any]:
        """Settings safe to pass through Serve (no secrets): replicas re-read secrets from their env."""
        return self.model_dump(exclude=set(SECRET_FIELDS), exclude_unset=True)

    @property
    def bearer_keys(self) -> frozenset[str]:
        if self.api_keys is None:
            return frozenset()
        return frozenset(k.strip() for k in self.api_keys.get_secret_value().split(",") if k.strip())

    @property
    def user_key_map(self) -> dict[str, str]:
        """key → the one user it may act as, from `user_keys` ("alice:key1,bob:key2")."""
        if self.user_keys is None:
            return {}
        return _parse_user_keys(self.user_keys.get_secret_value())

    @field_validator("user_keys")
    @classmethod
    def _check_user_keys(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            _parse_user_keys(value.get_secret_value())
        return value

    @property
    def phone_user_map(self) -> dict[str, str]:
        """caller number → memory user, from `phone_users` ("+15551230000=alice,+15551230001=bob")."""
        return _parse_phone_users(self.phone_users)

    @field_validator("phone_users")
    @classmethod
    def _check_phone_users(cls, value: str) -> str:
        _parse_phone_users(value)
        return value

    @field_validator("phone_public_url")
    @classmethod
    def _check_phone_public_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("https://", "http://")):
            raise ValueError("phone_public_url must be an http(s) URL such as https://agent.example.com")
        return value.rstrip("/") if value is not None else None

    @model_validator(mode="after")
    def _check_tool_names(self) -> Settings:
        unique([tool.name for tool in self.tools], "webhook tools")
        unique([server.server_label for server in self.mcp_servers], "MCP servers")
        return self

    @property
    def letta_key(self) -> str | None:
        return self.letta_api_key.get_secret_value() if self.letta_api_key else None

    @property
    def openai_key(self) -> str | None:
        return self.openai_api_key.get_secret_value() if self.openai_api_key else None

    def describe_engines(self) -> str:
        return (
            f"stt={self.stt_engine}:{self.stt_model} llm={self.llm_engine}:{self.llm_model}"
            f"{' @' + self.llm_base_url if self.llm_base_url else ''} "
            f"tts={self.tts_engine}:{self.tts_model}/{self.tts_voice}"
        )


def _parse_user_keys(text: str) -> dict[str, str]:
    # A user id may contain ':' and a key should not, so the key is what follows the last ':'.
    keys: dict[str, str] = {}
    for number, pair in enumerate((p.strip() for p in text.split(",") if p.strip()), start=1):
        user, _, key = (part.strip() for part in pair.rpartition(":"))
        if not key or not USER_ID.match(user):
            # Never echo the entry: it holds a key.
            raise ValueError(f"user_keys entry {number} is not `user:key` with a valid user id")
        keys[key] = user
    return keys


def _parse_phone_users(text: str) -> dict[str, str]:
    users: dict[str, str] = {}
    for number, pair in enumerate((p.strip() for p in text.split(",") if p.strip()), start=1):
        phone, _, user = (part.strip() for part in pair.partition("="))
        if not phone or not USER_ID.match(user):
            raise ValueError(f"phone_users entry {number} is not `+number=user` with a valid user id")
        users[phone] = user
    return users


def load_settings(overrides: dict[str, Any] | None = None) -> Settings:
    """Settings from the environment with serve_config.yaml args on top, engines resolved."""
    return Settings(**(overrides or {})).resolved()
