"""The router's Starlette app: `WS /v1/realtime`, `GET /healthz`, `GET /readyz`, `GET /metrics`, and the
OpenAI-compatible REST endpoints of `serve_app.rest_api`.

Plain ASGI with no Ray imports, so it runs under Serve (see `serve_app.deployments.Router`), under
uvicorn, or in Starlette's TestClient with in-process stages.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from actors.config import Settings
from actors.journal import user_id_problem
from actors.memory_sink import MemorySink
from actors.pipeline import LLMClient, SynthesizerClient, TranscriberClient
from actors.session import SessionLimits, SessionOptions, VoiceSession
from actors.vad import SileroSpeechDetector, SpeechDetector, VadConfig
from serve_app.auth import authorized, bearer_token
from serve_app.protocol import ProtocolLimits
from serve_app.realtime import RealtimeConnection
from serve_app.rest_api import rest_routes

log = logging.getLogger(__name__)


@dataclass
class RouterDeps:
    settings: Settings
    stt: TranscriberClient
    llm: LLMClient
    tts: SynthesizerClient
    memory_sink: MemorySink | None = None
    memory_context: Callable[[str], Awaitable[str | None]] | None = None  # the user's long-term memory
    speech_detector: Callable[[], SpeechDetector] = SileroSpeechDetector
    warmups: list[Callable[[], Awaitable[None]]] = field(default_factory=list)  # run before serving
    # Answers which engine each stage runs once every stage can take requests (raises otherwise).
    readiness: Callable[[], Awaitable[dict[str, str]]] | None = None
    # What is down behind the stages (e.g. {"llm": "the LLM server is unreachable"}); {} when all is up.
    upstreams: Callable[[], Awaitable[dict[str, str]]] | None = None
    # Metrics of other processes (the memory actor) in Prometheus text, appended to /metrics.
    extra_metrics: Callable[[], Awaitable[bytes]] | None = None


def default_options(settings: Settings) -> SessionOptions:
    return SessionOptions(
        instructions=settings.system_prompt,
        turn_detection=VadConfig(
            threshold=settings.vad_threshold,
            silence_ms=settings.vad_silence_ms,
            prefix_padding_ms=settings.vad_prefix_padding_ms,
            min_speech_ms=settings.vad_min_speech_ms,
        ),
        max_tokens=settings.llm_max_tokens,
        temperature=settings.llm_temperature,
    )


def build_router_app(deps: RouterDeps) -> Starlette:
    settings = deps.settings
    limits = ProtocolLimits(settings.max_event_bytes, settings.max_append_bytes, settings.max_text_chars)
    session_limits = SessionLimits(
        stt_chunk_ms=settings.stt_chunk_ms,
        audio_lead_ms=settings.audio_lead_ms,
        history_turns=settings.history_turns,
        stage_timeout_s=settings.stage_timeout_s,
        stt_timeout_s=settings.stt_timeout_s,
        tts_timeout_s=settings.tts_timeout_s,
        apology=settings.failure_apology,
    )
    keys = settings.bearer_keys
    prefetches: set[asyncio.Future[str | None]] = set()

    async def realtime(websocket: WebSocket) -> None:
        headers, query = websocket.headers, websocket.query_params
        presented = bearer_token(headers.get("authorization"), query.get("api_key"))
        if not authorized(keys, presented):
            await websocket.close(code=1008, reason="invalid or missing API key")
            return
        user_id = websocket.query_params.get("user") or "anonymous"
        if (problem := user_id_problem(user_id)) is not None:
            # A close reason is capped at 123 bytes.
            await websocket.close(code=1008, reason=problem.encode()[:120].decode(errors="ignore"))
            return
        await websocket.accept()
        if deps.memory_context is not None:
            # Read the user's memory while they start speaking: the first turn then finds it cached
            # instead of spending its read budget (a new user's agent takes ~0.5 s to create).
            prefetch = asyncio.ensure_future(deps.memory_context(user_id))
            prefetches.add(prefetch)
            prefetch.add_done_callback(prefetches.discard)

        def make_session(emit: Callable) -> VoiceSession:
            return VoiceSession(
                stt=deps.stt,
                llm=deps.llm,
                tts=deps.tts,
                emit=emit,
                options=default_options(settings),
                limits=session_limits,
                speech_detector=deps.speech_detector,
                memory_sink=deps.memory_sink,
                memory_context=deps.memory_context,
                user_id=user_id,
            )

        model = websocket.query_params.get("model") or settings.llm_model
        await RealtimeConnection(websocket, make_session, limits, model).run()

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok", "engines": settings.describe_engines()})

    async def readyz(request: Request) -> Response:
        stages: dict[str, str] = {}
        try:
            async with asyncio.timeout(5):
                if deps.readiness is not None:
                    stages = await deps.readiness()
        except Exception as exc:
            log.info("not ready: %r", exc)
            return JSONResponse(
                {"status": "starting", "detail": "not every stage has loaded its engine yet"}, status_code=503
            )
        try:
            async with asyncio.timeout(5):
                down = await deps.upstreams() if deps.upstreams is not None else {}
        except Exception as exc:  # the probe itself failed: say which part, keep the details in the log
            log.warning("upstream check failed: %r", exc)
            down = {"upstreams": "the upstream check did not answer"}
        if down:
            log.info("not ready, upstream down: %s", down)
            return JSONResponse({"status": "unavailable", "down": down, "stages": stages}, status_code=503)
        return JSONResponse({"status": "ready", "stages": stages} if stages else {"status": "ready"})

    async def metrics(request: Request) -> Response:
        presented = bearer_token(request.headers.get("authorization"), None)
        if not authorized(keys, presented):
            return JSONResponse(
                {"error": {"message": "invalid or missing API key", "type": "auth_error"}}, status_code=401
            )
        body = generate_latest()
        if deps.extra_metrics is not None:
            try:
                async with asyncio.timeout(2):
                    body += await deps.extra_metrics()
            except Exception as exc:  # the router's own metrics still answer
                log.warning("memory metrics unavailable: %r", exc)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        for warmup in deps.warmups:
            await warmup()
        yield

    return Starlette(
        lifespan=lifespan,
        routes=[
            WebSocketRoute("/v1/realtime", realtime),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics),
            *rest_routes(deps),  # OpenAI-compatible REST; after the WebSocket route it must not shadow
        ],
    )
