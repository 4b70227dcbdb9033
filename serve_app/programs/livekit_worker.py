"""A LiveKit agent worker whose STT, LLM and TTS are this project's Serve stages, reached over the router's
OpenAI-compatible REST API with the stock `livekit-plugins-openai` plugins; Silero VAD from the
`livekit-plugins-silero` wheel.

    python -m serve_app.programs.livekit_worker dev      # or: start

Settings from the environment: `VOICE_AGENT_URL` (the router, default http://127.0.0.1:8000),
`VOICE_AGENT_API_KEY` (one of the router's `VOICE_API_KEYS`), optional `VOICE_AGENT_LLM_MODEL`,
`VOICE_AGENT_TTS_VOICE`, `VOICE_AGENT_INSTRUCTIONS`, `VOICE_AGENT_LANGUAGE`, `VOICE_AGENT_METRICS_PORT`,
`VOICE_AGENT_METRICS_DIR` (all in `WorkerConfig`); LiveKit's own `LIVEKIT_URL`, `LIVEKIT_API_KEY`,
`LIVEKIT_API_SECRET` are read by its CLI.

Turn-taking (VAD, endpointing, barge-in) runs here, in LiveKit's `AgentSession`; the router only serves
the stages. The room participant's identity becomes the chat requests' `user`: whose memory goes into the
prompt and receives the turn.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from collections.abc import Mapping
from typing import Any

import httpx
from livekit.agents import (
    Agent,
    AgentSession,
    JobContext,
    JobProcess,
    MetricsCollectedEvent,
    WorkerOptions,
    cli,
    metrics,
    room_io,
)
from livekit.agents.llm import ChatMessage
from livekit.agents.vad import VAD
from livekit.agents.voice.events import ConversationItemAddedEvent
from livekit.plugins import openai, silero
from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from actors.conversation.metrics import HISTOGRAMS
from actors.memory.journal import USER_ID

log = logging.getLogger(__name__)

DEFAULT_URL = "http://127.0.0.1:8000"
OPEN_SERVER_KEY = "unused"  # the router asks for no key unless VOICE_API_KEYS is set; the SDK wants one


class WorkerConfig(BaseSettings):
    """Where our router is and what to ask it for, from `VOICE_AGENT_*` environment variables; empty
    model fields are read from GET /v1/models."""

    # extra="ignore": `from_env` passes every VOICE_AGENT_* variable of its mapping; one this version does
    # not know is ignored, as it is in the process environment.
    model_config = SettingsConfigDict(
        env_prefix="VOICE_AGENT_", frozen=True, extra="ignore", hide_input_in_errors=True
    )

    base_url: str = Field(default=DEFAULT_URL, validation_alias=AliasChoices("base_url", "VOICE_AGENT_URL"))
    api_key: str = OPEN_SERVER_KEY  # a server key when the router has keys: it acts for each participant
    llm_model: str = ""
    stt_model: str = ""  # empty: from the router's model list
    tts_model: str = ""
    tts_voice: str = ""
    instructions: str = ""  # empty: the router's configured system prompt applies
    language: str = "en"
    # The worker's Prometheus metrics (gathered from its job processes) are served on metrics_port;
    # prometheus_client's multiprocess files go to metrics_dir (default: a new temporary directory).
    metrics_port: int | None = None
    metrics_dir: str = ""

    @field_validator("base_url")
    @classmethod
    def _v1(cls, url: str) -> str:
        url = url.rstrip("/")
        return url if url.endswith("/v1") else f"{url}/v1"

    @field_validator("api_key")
    @classmethod
    def _some_key(cls, key: str) -> str:
        return key or OPEN_SERVER_KEY  # the SDK refuses an empty key even for an open router

    @field_validator("metrics_port", mode="before")
    @classmethod
    def _unset_when_empty(cls, port: Any) -> Any:
        return None if port == "" else port  # an empty variable leaves metrics off

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> WorkerConfig:
        """From `env` (default: the process environment)."""
        if env is None:
            return cls()
        prefix = "VOICE_AGENT_"
        # Strings, converted as the environment's would be (e.g. metrics_port).
        values: dict[str, Any] = {
            k.removeprefix(prefix).lower(): v for k, v in env.items() if k.startswith(prefix)
        }
        if "url" in values:
            values["base_url"] = values.pop("url")
        return cls(**values)

    @property
    def resolved(self) -> bool:
        return bool(self.llm_model and self.stt_model and self.tts_model and self.tts_voice)

    async def resolve(self) -> WorkerConfig:
        """Fill empty model names and the voice from the router's model list (`owned_by` says which
        stage serves each: `llm:<engine>`, `stt:<engine>`, `tts:<engine>:<voice>`)."""
        if self.resolved:
            return self
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.get(
                f"{self.base_url}/models", headers={"Authorization": f"Bearer {self.api_key}"}
            )
            response.raise_for_status()
        found: dict[str, str] = {}
        for card in response.json()["data"]:
            stage, _, rest = str(card["owned_by"]).partition(":")
            found.setdefault(f"{stage}_model", card["id"])
            if stage == "tts":
                found.setdefault("tts_voice", rest.partition(":")[2])
        filled = {k: getattr(self, k) or v for k, v in found.items() if hasattr(self, k)}
        return self.model_copy(update=filled)


def user_id_for(identity: str) -> str:
    """The memory user for a LiveKit participant: the identity itself when it is a valid user id (the
    same person on the WebSocket path gets the same memory), else a stable digest of it, never a
    lossy cleanup that could merge two participants into one memory."""
    if USER_ID.fullmatch(identity):
        return identity
    return "lk-" + hashlib.sha256(identity.encode()).hexdigest()[:40]


# --------------------------------------------------------------------------------------- the stages


def build_stt(cfg: WorkerConfig) -> openai.STT:
    # Streaming: the plugin opens a Realtime transcription session on /v1/realtime (?intent=transcription)
    # and streams the microphone; the router's VAD cuts utterances and its STT stage sends interim
    # transcripts while the user speaks, then the final one. `recognize` (a whole recording) still
    # goes to POST /v1/audio/transcriptions.
    return openai.STT(
        base_url=cfg.base_url,
        api_key=cfg.api_key,
        model=cfg.stt_model,
        language=cfg.language,
        use_realtime=True,
    )


def build_llm(cfg: WorkerConfig, user: str) -> openai.LLM:
    # POST /v1/chat/completions, streamed; `user` selects the memory.
    return openai.LLM(base_url=cfg.base_url, api_key=cfg.api_key, model=cfg.llm_model, user=user)


def build_tts(cfg: WorkerConfig) -> openai.TTS:
    # POST /v1/audio/speech with stream_format sse: 24 kHz PCM16 as it is synthesised.
    return openai.TTS(
        base_url=cfg.base_url,
        api_key=cfg.api_key,
        model=cfg.tts_model,
        voice=cfg.tts_voice,
        response_format="pcm",
    )


def build_session(cfg: WorkerConfig, *, user: str, vad: VAD | None = None) -> AgentSession:
    """The session for one participant. Turn detection and interruptions use the VAD alone: nothing
    here needs LiveKit's hosted inference or a model download."""
    session: AgentSession = AgentSession(
        stt=build_stt(cfg),
        llm=build_llm(cfg, user),
        tts=build_tts(cfg),
        vad=vad if vad is not None else silero.VAD.load(),
        turn_handling={"turn_detection": "vad", "interruption": {"mode": "vad"}},
    )
    record_metrics(session)
    return session


class VoiceAgent(Agent):
    def __init__(self, instructions: str = "") -> None:
        super().__init__(instructions=instructions)


# ------------------------------------------------------------------------------------------ metrics


def _ms(seconds: float) -> float | None:
    return seconds * 1000.0 if seconds >= 0 else None  # LiveKit reports -1 for "never happened"


def observe_metrics(m: metrics.AgentMetrics) -> dict[str, float]:
    """Put one LiveKit metrics event into our histograms; returns what was recorded (ms)."""
    seen: dict[str, float | None] = {}
    if isinstance(m, metrics.EOUMetrics):
        seen["end_of_turn_delay"] = _ms(m.end_of_utterance_delay)
        seen["transcription_delay"] = _ms(m.transcription_delay)
    elif isinstance(m, metrics.LLMMetrics) and not m.cancelled:
        seen["llm_ttft"] = _ms(m.ttft)
    elif isinstance(m, metrics.TTSMetrics) and not m.cancelled:
        seen["tts_ttfb"] = _ms(m.ttfb)
    recorded = {k: v for k, v in seen.items() if v is not None}
    for name, value in recorded.items():
        HISTOGRAMS[name].observe(value)
    return recorded


def observe_reply(item: Any) -> float | None:
    """e2e_latency of a spoken reply: LiveKit puts it (end of user speech → agent starts speaking) on the
    assistant message it adds to the conversation."""
    if not isinstance(item, ChatMessage) or item.role != "assistant":
        return None
    seconds = item.metrics.get("e2e_latency")
    if seconds is None or seconds < 0:
        return None
    HISTOGRAMS["e2e_latency"].observe(seconds * 1000.0)
    return seconds * 1000.0


def record_metrics(session: AgentSession) -> None:
    def on_metrics(ev: MetricsCollectedEvent) -> None:
        observe_metrics(ev.metrics)

    def on_item(ev: ConversationItemAddedEvent) -> None:
        observe_reply(ev.item)

    session.on("metrics_collected", on_metrics)
    session.on("conversation_item_added", on_item)


# ------------------------------------------------------------------------------------------- worker


_config: WorkerConfig | None = None


async def worker_config() -> WorkerConfig:
    """The environment's settings, resolved against the router once per process."""
    global _config
    if _config is None:
        _config = await WorkerConfig.from_env().resolve()
    return _config


def prewarm(proc: JobProcess) -> None:
    proc.userdata["vad"] = silero.VAD.load()  # the ONNX model ships in the plugin's wheel


async def entrypoint(ctx: JobContext) -> None:
    cfg = await worker_config()
    await ctx.connect()
    participant = await ctx.wait_for_participant()
    user = user_id_for(participant.identity)
    log.info("room %s: talking with %s (memory user %s)", ctx.room.name, participant.identity, user)
    session = build_session(cfg, user=user, vad=ctx.proc.userdata.get("vad"))
    await session.start(
        agent=VoiceAgent(cfg.instructions),
        room=ctx.room,
        room_options=room_io.RoomOptions(participant_identity=participant.identity),
    )


def worker_options(env: Mapping[str, str] | None = None) -> WorkerOptions:
    """LiveKit's worker options for our entrypoint, with metrics when `metrics_port` is set; settings from
    `env` (default: the process environment)."""
    cfg = WorkerConfig.from_env(env)
    options = WorkerOptions(entrypoint_fnc=entrypoint, prewarm_fnc=prewarm)
    if cfg.metrics_port is not None:
        # Jobs run in child processes: prometheus_client's multiprocess mode gathers their histograms.
        options.prometheus_port = cfg.metrics_port
        options.prometheus_multiproc_dir = cfg.metrics_dir or tempfile.mkdtemp(prefix="lk-metrics-")
    return options


def main() -> None:
    cli.run_app(worker_options())


if __name__ == "__main__":
    main()
