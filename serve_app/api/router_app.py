"""The router's Starlette app: `WS /v1/realtime`, the phone routes of `serve_app.api.phone` (Twilio),
`GET /healthz`, `GET /readyz`, `GET /metrics`, the OpenAI-compatible REST endpoints of
`serve_app.api.rest` (a FastAPI app behind them), and the talk page at `/` (`serve_app.api.web_page`).

Plain ASGI with no Ray imports, so it runs under Serve (see `serve_app.deployments.Router`), under
uvicorn, or in Starlette's TestClient with in-process stages.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from actors.conversation.events import Emit
from actors.conversation.metrics import LOOP_TASKS, REQUESTS_IN_FLIGHT, SESSIONS_OPEN
from actors.conversation.session import SessionLimits, SessionOptions, VoiceSession
from actors.memory.journal import user_id_problem
from serve_app.api.admission import Admission, AdmissionLimits, Refused
from serve_app.api.auth import (
    bearer_token,
    credential_error_response,
    refuse_websocket,
    websocket_key,
    websocket_subprotocols,
)
from serve_app.api.credentials import (
    CredentialError,
    Credentials,
    Principal,
    acting_user,
)
from serve_app.api.deps import RouterDeps
from serve_app.api.drain import SessionDrain, refuse_while_draining
from serve_app.api.phone import phone_routes
from serve_app.api.protocol import ProtocolError, ProtocolLimits, initial_options
from serve_app.api.realtime import ConnectionLimits, RealtimeConnection
from serve_app.api.rest import http_error_response, rest_routes
from serve_app.api.web_page import page_routes

log = logging.getLogger(__name__)


def _exposition() -> str:
    return generate_latest().decode()


async def _problems(
    check: Callable[[], Awaitable[dict[str, str]]] | None, name: str, unanswered: str
) -> dict[str, str]:
    """What `check` finds down, within 5 s; a check that fails or hangs itself is reported under `name`
    (the details go to the log)."""
    if check is None:
        return {}
    try:
        async with asyncio.timeout(5):
            return await check()
    except Exception as exc:
        log.warning("%s check failed: %r", name, exc)
        return {name: unanswered}


async def _drain_when(replaced: Callable[[], Awaitable[None]], drain: SessionDrain) -> None:
    """Once `replaced` returns (this replica is being replaced), end its sessions (`SessionDrain`)."""
    await replaced()
    await drain.begin()


def build_router_app(deps: RouterDeps) -> Starlette:
    """The router's ASGI app: `WS /v1/realtime` (one VoiceSession per connection), the REST API,
    `/healthz`, `/readyz`, `/metrics` and the talk page, with credentials and admission checked at the
    door."""
    settings = deps.settings
    limits = ProtocolLimits.from_settings(settings)
    session_limits = SessionLimits(
        stt_chunk_ms=settings.stt_chunk_ms,
        audio_lead_ms=settings.audio_lead_ms,
        barge_in_min_speech_ms=settings.barge_in_min_speech_ms,
        barge_in_min_words=settings.barge_in_min_words,
        history_turns=settings.history_turns,
        max_utterance_s=settings.max_utterance_s,
        stage_timeout_s=settings.stage_timeout_s,
        stt_timeout_s=settings.stt_timeout_s,
        tts_timeout_s=settings.tts_timeout_s,
        apology=settings.failure_apology,
        preemptive_generation=settings.preemptive_generation,
        end_of_turn_words=settings.end_of_turn_words,
        tool_max_rounds=settings.tool_max_rounds,
        tool_filler_delay_ms=settings.tool_filler_delay_ms,
        tool_filler_repeat_ms=settings.tool_filler_repeat_ms,
        tool_filler_max=settings.tool_filler_max,
        tool_filler_phrases=tuple(settings.tool_filler_phrases),
    )
    connection_limits = ConnectionLimits.from_settings(settings)
    credentials = Credentials.from_settings(settings, deps.revocations)
    admission = Admission(AdmissionLimits.from_settings(settings))
    drain = SessionDrain(settings.drain_grace_s)
    SESSIONS_OPEN.set_function(lambda: admission.sessions)
    REQUESTS_IN_FLIGHT.set_function(lambda: admission.requests)
    LOOP_TASKS.set_function(lambda: len(asyncio.all_tasks()))  # read on the loop: /metrics and reports
    prefetches: set[asyncio.Future[str | None]] = set()

    def open_session(user_id: str, options: SessionOptions, emit: Emit) -> VoiceSession:
        """A VoiceSession for `user_id` (a Realtime connection's or a phone call's)."""
        memory = deps.memory_for(user_id)
        if memory.context is not None:
            # Read the user's memory while they start speaking: the first turn then finds it cached
            # instead of spending its read budget (a new user's agent takes ~0.5 s to create).
            prefetch = asyncio.ensure_future(memory.context(user_id))
            prefetches.add(prefetch)
            prefetch.add_done_callback(prefetches.discard)
        return VoiceSession(
            stt=deps.stt,
            llm=deps.llm,
            tts=deps.tts,
            emit=emit,
            options=options,
            limits=session_limits,
            speech_detector=deps.speech_detector,
            memory_sink=memory.sink,
            memory_context=memory.context,
            user_id=user_id,
            toolbox=deps.toolbox_for(user_id),
        )

    async def realtime(websocket: WebSocket) -> None:
        with contextlib.ExitStack() as place:
            query = websocket.query_params
            offered = websocket_subprotocols(websocket.scope)
            if drain.draining:
                await refuse_while_draining(websocket, offered)
                return
            try:
                principal = await credentials.authenticate(websocket_key(websocket.headers, query, offered))
                user_id = acting_user(principal, query.get("user"), settings)
                if (problem := user_id_problem(user_id)) is not None:
                    raise CredentialError(403, "invalid_user", problem)
                options = initial_options(settings, principal.session)
                if query.get("intent") == "transcription":  # as OpenAI's transcription clients connect
                    options = replace(options, transcription_only=True)
                place.enter_context(admission.session(principal))
            except (CredentialError, ProtocolError, Refused) as exc:
                await refuse_websocket(websocket, exc, offered)
                return
            await serve_session(websocket, principal, user_id, options, offered)

    async def serve_session(
        websocket: WebSocket, principal: Principal, user_id: str, options: SessionOptions, offered: list[str]
    ) -> None:
        await websocket.accept(subprotocol="realtime" if "realtime" in offered else None)

        def make_session(emit: Callable) -> VoiceSession:
            return open_session(user_id, options, emit)

        model = websocket.query_params.get("model") or settings.llm_model
        connection = RealtimeConnection(websocket, make_session, limits, model, connection_limits)
        watch = None if principal.secret_id is None else lambda: credentials.still_valid(principal)
        with drain.track(connection):
            await connection.run(still_authorized=watch)

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
        tool_problems = deps.server_tools.problems if deps.server_tools is not None else None
        down, degraded, tools_down = await asyncio.gather(
            _problems(deps.upstreams, "upstreams", "the upstream check did not answer"),
            _problems(deps.degradations, "degradations", "the memory check did not answer"),
            _problems(tool_problems, "tools", "the tool servers check did not answer"),
        )
        degraded |= tools_down
        # A dead Letta leaves the service ready: the voice path does not need it (turns wait in the
        # memory journal, prompts go without memory), and all replicas share one Letta, so taking them
        # out of rotation would turn a memory outage into a whole one. So does a dead MCP server: its
        # calls fail plainly and the model says so.
        extra = ({"degraded": degraded} if degraded else {}) | ({"stages": stages} if stages else {})
        if down:
            log.info("not ready, upstream down: %s", down)
            return JSONResponse({"status": "unavailable", "down": down, **extra}, status_code=503)
        if degraded:
            log.info("ready, degraded: %s", degraded)
        return JSONResponse({"status": "degraded" if degraded else "ready", **extra})

    async def metrics(request: Request) -> Response:
        try:
            principal = await credentials.authenticate(bearer_token(request.headers.get("authorization")))
            if not principal.may_administer:
                raise CredentialError(403, "permission_denied", "metrics need a server key")
        except CredentialError as exc:
            return credential_error_response(exc)
        body = b""
        if deps.metrics_hub is not None:
            try:
                body = (await deps.metrics_hub.merged_metrics(_exposition)).encode()
            except Exception as exc:  # this replica's own figures still answer
                log.warning("deployment metrics unavailable, answering this replica's: %r", exc)
        if not body:
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
        if deps.server_tools is not None:
            await deps.server_tools.start()
        reporter = None
        if deps.metrics_hub is not None:
            reporter = asyncio.create_task(deps.metrics_hub.report_forever(_exposition))
        drainer = None
        if deps.replaced is not None:
            drainer = asyncio.create_task(_drain_when(deps.replaced, drain))
        yield
        for task in (reporter, drainer):
            if task is not None:
                task.cancel()
        if deps.server_tools is not None:
            await deps.server_tools.close()

    app = Starlette(
        lifespan=lifespan,
        exception_handlers={HTTPException: http_error_response},  # any path: OpenAI's error JSON
        routes=[
            WebSocketRoute("/v1/realtime", realtime),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics),
            *page_routes(),
            # Phone calls: the Twilio webhook and its Media Streams WebSocket
            *phone_routes(settings, credentials, admission, open_session),
            # OpenAI-compatible REST; after the WebSocket route it must not shadow
            *rest_routes(deps, credentials, admission),
        ],
    )
    app.state.deps = deps  # what it was built from, for whoever holds the app (tests)
    return app
