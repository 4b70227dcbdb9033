"""The router app in process with fake or simulated stages, as the tests and benchmarks drive it: the
REST harness (the official `openai` client over Starlette's TestClient), a Realtime app with a
deterministic VAD, and what a client must never be shown."""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import jsonschema
from openai import OpenAI
from openai.types.realtime import RealtimeServerEvent
from pydantic import TypeAdapter
from starlette.testclient import TestClient

from actors.config import Settings
from actors.conversation.session import SessionLimits
from actors.llm.base import LLMEngine
from actors.llm.stage import LLMStage
from actors.memory.sink import MemorySink, RecentTurnsSink
from actors.stt.base import STTClient
from actors.stt.simulated import SimulatedSTTEngine
from actors.tools.base import ServerTool
from actors.tools.servers import ServerTools
from actors.tools.toolbox import Toolbox
from actors.tts.base import TTSClient
from actors.tts.simulated import SimulatedTTSEngine
from actors.tts.stage import TTSStage
from serve_app.api.deps import RouterDeps
from serve_app.api.router_app import build_router_app
from testkit.fakes import EnergySpeechDetector, FakeLLMEngine

APOLOGY = SessionLimits().apology

# What must never reach a client: tracebacks, exception reprs, process ids, addresses, Ray ids.
INTERNALS = re.compile(
    r"Traceback|File \"|\bpid\b|\bip\b|\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}|Error\(|Exception|ActorDied"
    r"|RayTaskError|actor_id|[0-9a-f]{28,}",
    re.IGNORECASE,
)


KEY = "test-key"
MEMORIES = {"ada": "Ada's cat is called Miso.", "bob": "Bob plays the cello."}


class Harness:
    """The router app in process (Starlette TestClient), with the official `openai` client on it: simulated
    STT, a scripted LLM (or `engine`), and simulated TTS unless `tts` says otherwise; `toolbox` and
    `memory_tools` are the router's server tools (`toolbox` instead of those the settings configure)."""

    def __init__(
        self,
        *,
        tts: TTSClient | None = None,
        engine: LLMEngine | None = None,
        toolbox: Toolbox | None = None,
        memory_tools: Sequence[ServerTool] = (),
        **overrides: Any,
    ) -> None:
        base: dict[str, Any] = {
            "stt_engine": "simulated",
            "llm_engine": "openai",
            "tts_engine": "espeak",
            "api_keys": KEY,
        }
        settings = Settings(**{**base, **overrides}).resolved()
        self.settings = settings
        self.llm = FakeLLMEngine("Hello there. How are you?", ttft_ms=5, tokens_per_s=1000)
        self.sink = RecentTurnsSink()
        self.memory_reads: list[str] = []

        async def memory_context(user_id: str) -> str | None:
            self.memory_reads.append(user_id)
            return MEMORIES.get(user_id)

        deps = RouterDeps(
            settings=settings,
            stt=SimulatedSTTEngine("hello world", finalize_delay_ms=1),
            llm=LLMStage(engine or self.llm),
            tts=tts or TTSStage(SimulatedTTSEngine(ttfb_ms=1, realtime_factor=1000)),
            memory_sink=self.sink,
            memory_context=memory_context,
            tools=toolbox or Toolbox(),
            memory_tools=memory_tools,
            # A toolbox given here stands instead of the tools the settings configure.
            server_tools=None if toolbox is not None else ServerTools.from_settings(settings),
        )
        self.http = TestClient(build_router_app(deps))
        self.client = OpenAI(base_url="http://testserver/v1", api_key=KEY, http_client=self.http)
        self.document = self.http.get("/openapi.json").json()

    def validate(self, path: str, method: str, status: int, media: str, body: Any) -> None:
        """Check a real response body against the schema the OpenAPI document gives for it."""
        schema = self.document["paths"][path][method]["responses"][str(status)]["content"][media]["schema"]
        resolver_doc = {**schema, "components": self.document["components"]}
        jsonschema.validate(body, resolver_doc)


SERVER_EVENT = TypeAdapter(RealtimeServerEvent)


def receive_until(ws: Any, kind: str, limit: int = 2000) -> list[dict[str, Any]]:
    """Server events from a TestClient WebSocket up to the first of type `kind`, each checked against
    the SDK's own server-event models."""
    events = []
    for _ in range(limit):
        event = json.loads(ws.receive_text())
        SERVER_EVENT.validate_python(event)
        events.append(event)
        if event["type"] == kind:
            return events
    raise AssertionError(f"no {kind} in {[e['type'] for e in events]}")


def make_app(
    memory_context=None,
    *,
    stt: STTClient | None = None,
    reply: str = "Hi. Nice to meet you.",
    replaced: Callable[[], Awaitable[None]] | None = None,
    memory_sink: MemorySink | None = None,
    **overrides: object,
) -> TestClient:
    """The router app with a deterministic VAD (loud is speech), simulated STT (or `stt`), a scripted
    LLM saying `reply`, and simulated TTS; `replaced` says when the replica is being replaced."""
    settings = Settings(
        stt_engine="pocketsphinx", llm_engine="openai", tts_engine="espeak", max_text_chars=200, **overrides
    ).resolved()
    deps = RouterDeps(
        settings=settings,
        stt=stt or SimulatedSTTEngine("hello there", finalize_delay_ms=10),
        llm=LLMStage(FakeLLMEngine(reply, ttft_ms=10, tokens_per_s=500)),
        tts=TTSStage(SimulatedTTSEngine(ttfb_ms=5, realtime_factor=1000)),
        speech_detector=EnergySpeechDetector,
        memory_context=memory_context,
        memory_sink=memory_sink,
        replaced=replaced,
        server_tools=ServerTools.from_settings(settings),
    )
    return TestClient(build_router_app(deps))
