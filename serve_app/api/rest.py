"""OpenAI-compatible REST endpoints on the router: chat completions, transcriptions, speech, models,
Realtime client secrets; a FastAPI app that also serves their OpenAPI document at `/openapi.json`.

Each handler validates its request (a 4xx in OpenAI's error shape that says what is wrong), runs the
stage clients the WebSocket path uses (in-process stages or Serve handles), and measures the same
per-turn latencies under the same Prometheus names. Routes are mounted by `serve_app.api.router_app`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
import zlib
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from fastapi import Depends, FastAPI, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute, APIRouter
from fastapi.security import HTTPBearer
from pydantic import BaseModel, ValidationError
from pydantic.json_schema import models_json_schema
from starlette.datastructures import FormData, Headers, UploadFile
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from actors.audio.encode import MEDIA_TYPES, SpeechEncoder
from actors.audio.files import decode_upload
from actors.audio.pcm import DEFAULT_OUTPUT_RATE, AudioFormatError
from actors.conversation.chat_turn import ChatTools, ChatTurn
from actors.conversation.faults import public_error
from actors.conversation.metrics import HISTOGRAMS
from actors.conversation.session import new_id
from actors.llm.base import ChatMessage, LLMToolCallDelta, ToolChoice
from actors.stt.recording import ClientGone, RecordedSegment, TranscriptionLane, transcribe_segments
from actors.tools.toolbox import Toolbox
from actors.tts.base import SpeechStyle
from actors.tts.voices import VoiceError, check_voice
from serve_app.api import captions, json_input
from serve_app.api.admission import Admission, Refused
from serve_app.api.auth import bearer_token, credential_error_response, refused_response
from serve_app.api.credentials import (
    ANONYMOUS,
    DEFAULT_SECRET_TTL_S,
    CredentialError,
    Credentials,
    Principal,
    acting_user,
)
from serve_app.api.deps import RouterDeps
from serve_app.api.protocol import ProtocolError, initial_options, session_object
from serve_app.api.rest_models import (
    TRANSCRIPTION_FORM_SCHEMA,
    TRANSCRIPTION_FORMATS,
    TRANSCRIPTION_LANGUAGE,
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatMessageIn,
    Choice,
    ChunkChoice,
    ClientSecret,
    ClientSecretRequest,
    ClientSecretRevoked,
    ClientSecretRevokeRequest,
    Delta,
    ErrorDetail,
    ErrorResponse,
    FunctionCallDelta,
    FunctionCallOut,
    ModelCard,
    ModelList,
    SpeechAudioDelta,
    SpeechAudioDone,
    SpeechRequest,
    SpeechUsage,
    ToolCallDelta,
    ToolCallOut,
    Transcription,
    TranscriptionSegment,
    TranscriptionUsage,
    TranscriptionVerbose,
    TranscriptTextDelta,
    TranscriptTextDone,
    Usage,
    tool_message_problem,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
MAX_FORM_FIELD_BYTES = 64 * 1024  # a non-file form field (model, language, prompt, ...)
Handler = Callable[[Request], Coroutine[Any, Any, Response]]


class ApiError(HTTPException):
    """A request we answer with OpenAI's error JSON. An HTTPException, so that FastAPI lets one raised
    while it reads a body (size, time, JSON) through to the app's handler."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str = "invalid_request_error",
    ) -> None:
        super().__init__(status, message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type

    def response(self) -> JSONResponse:
        """This error as the response a client gets."""
        body = ErrorResponse(
            error=ErrorDetail(message=self.message, type=self.type, param=self.param, code=self.code)
        )
        return JSONResponse(body.model_dump(), status_code=self.status)


async def http_error_response(request: Request, exc: Exception) -> Response:
    """Starlette's own errors (no such path, method not allowed) in OpenAI's error JSON."""
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    message = f"{request.method} {request.url.path}: {exc.detail}"
    return ApiError(exc.status_code, message, code=code).response()


def _invalid_request(errors: Sequence[Mapping[str, Any]]) -> ApiError:
    """A 400 for a body its model refused, naming every field (`errors` as pydantic reports them)."""
    problems = []
    for err in errors:
        where = ".".join(str(part) for part in err["loc"]) or "body"
        problems.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
    first = errors[0]
    param = ".".join(str(part) for part in first["loc"]) or None
    code = "missing_required_parameter" if first["type"] == "missing" else "invalid_value"
    return ApiError(400, "invalid request: " + "; ".join(problems), param=param, code=code)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _sse(model: BaseModel) -> str:
    return f"data: {model.model_dump_json()}\n\n"


def _chat_message(message: ChatMessageIn) -> ChatMessage:
    """A request's message as the LLM stage takes it ("developer" is a system message)."""
    role = "system" if message.role == "developer" else message.role
    out: ChatMessage = {"role": role, "content": message.text()}
    if message.role == "tool" and message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    if message.role == "assistant" and message.tool_calls:
        out["tool_calls"] = [call.call() for call in message.tool_calls]
    return out


def _delta(item: str | LLMToolCallDelta) -> Delta:
    """A streamed chunk's delta: text, or a piece of a call in OpenAI's shape (the first piece of a call
    with its id, type and name; later ones with more of its arguments)."""
    if isinstance(item, str):
        return Delta(content=item)
    piece = ToolCallDelta(
        index=item["index"],
        id=item.get("id"),
        type="function" if item.get("id") else None,
        function=FunctionCallDelta(name=item.get("name"), arguments=item["arguments"]),
    )
    return Delta(tool_calls=[piece])


def _stage_failed_event(stage: str, exc: Exception) -> str:
    """A stage failed mid-stream, after the headers: OpenAI's way is an error object as the last event."""
    log.exception("%s failed mid-stream", stage)
    public = public_error(exc, stage.lower())
    detail = ErrorDetail(message=public.message, type="server_error", code=public.code)
    return _sse(ErrorResponse(error=detail))


def _stage_failed(exc: Exception, stage: str) -> ApiError:
    """A 502 that names the stage and the kind of failure, never the exception's text."""
    public = public_error(exc, stage.lower())
    return ApiError(502, public.message, type="server_error", code=public.code)


async def _first(items: AsyncGenerator[T, None], stage: str) -> T | None:
    """Start a stream before answering, so a failing stage is a clean 502, not a broken body."""
    try:
        return await anext(items)
    except StopAsyncIteration:
        return None
    except Exception as exc:
        log.exception("%s failed", stage)
        with contextlib.suppress(Exception):
            await items.aclose()
        raise _stage_failed(exc, stage) from exc


class Admitted:
    """ASGI middleware: each request holds a place on this replica until its response (a stream too)
    has been sent; a request over the limits is answered at once (429 or 503, with Retry-After)."""

    def __init__(self, app: ASGIApp, admission: Admission) -> None:
        self.app, self.admission = app, admission

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            with self.admission.request_slot():
                await self.app(scope, receive, send)
        except Refused as exc:
            await refused_response(exc)(scope, receive, send)


# ------------------------------------------------------------------------------------ request bodies


class BoundedRequest(Request):
    """A request whose body is refused with 413 as soon as it is larger than `limit` bytes, and with
    408 if it has not all arrived within `timeout_s`: a client trickling its body holds a request, so
    it gets a deadline, not the replica. (Starlette's own body limit answers in plain text.)"""

    def __init__(self, scope: Scope, receive: Receive, limit: int, timeout_s: float) -> None:
        super().__init__(scope, receive)
        self.limit, self.timeout_s = limit, timeout_s

    async def stream(self) -> AsyncGenerator[bytes, None]:
        declared = self.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.limit:
            raise ApiError(413, f"request body of {declared} bytes exceeds the limit of {self.limit} bytes")
        received = 0
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        stream = super().stream()
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    chunk = await anext(stream)
            except StopAsyncIteration:
                return
            except TimeoutError:
                message = f"the request body did not arrive within {self.timeout_s:.0f} s"
                raise ApiError(408, message, code="request_timeout") from None
            received += len(chunk)
            if received > self.limit:
                raise ApiError(413, f"request body exceeds the limit of {self.limit} bytes")
            yield chunk


class JsonBodyRequest(BoundedRequest):
    """A request to an operation with a JSON body, as FastAPI reads it: within the limits, never empty,
    parsed by `json_input` (FastAPI's `json.loads` takes NaN and recurses on deep nesting), an object.
    Its Content-Type reads as JSON whatever the client sent: this API has always read these bodies as
    JSON (`curl -d` declares a form), and FastAPI parses a body only when it is declared JSON."""

    @property
    def headers(self) -> Headers:
        sent = [(name, value) for name, value in self.scope["headers"] if name != b"content-type"]
        return Headers(raw=[*sent, (b"content-type", b"application/json")])

    async def body(self) -> bytes:
        body = await super().body()
        if not body.strip():
            raise ApiError(400, "the request body is empty: send a JSON object")
        return body

    async def json(self) -> Any:
        try:
            data = json_input.loads(await self.body())
        except json_input.JsonInputError as exc:
            raise ApiError(400, f"the request body {exc.reason}", code="invalid_json") from None
        if not isinstance(data, dict):
            raise ApiError(400, f"the request body must be a JSON object, not {type(data).__name__}")
        return data


async def _caller(request: Request) -> Principal:
    """Who is asking: authenticated by the route before any of the body was read."""
    principal: Principal = request.state.principal
    return principal


Caller = Annotated[Principal, Depends(_caller)]
# For the document's security scheme: the routes authenticate before FastAPI resolves dependencies.
BEARER = HTTPBearer(scheme_name="bearerAuth", auto_error=False)


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorResponse, "description": description}


# Every error has OpenAI's shape. "4XX" also keeps FastAPI from documenting a 422 we never send.
ERRORS: dict[int | str, dict[str, Any]] = {
    400: _error("Bad request: malformed JSON, a wrong type or value, an unsupported option"),
    401: _error("Missing, wrong, expired or revoked API key or client secret"),
    403: _error("The credential may not do this: act as another user, mint secrets, read metrics"),
    413: _error("Request body larger than the configured limit"),
    "4XX": _error(
        "Another client error: no such path or method (404, 405), a body too slow (408), "
        "too many requests (429)"
    ),
    500: _error("An unexpected server failure; the details are logged, not returned"),
    502: _error("A stage (STT, LLM or TTS engine) failed"),
}


REF = "#/components/schemas/{model}"
# The JSON in server-sent events: no route field names these models, so `Api.openapi` adds them.
STREAM_EVENTS: tuple[type[BaseModel], ...] = (
    ChatCompletionChunk,
    SpeechAudioDelta,
    SpeechAudioDone,
    TranscriptTextDelta,
    TranscriptTextDone,
)


def _sse_events(description: str, *events: type[BaseModel], last: str | None = None) -> dict[str, Any]:
    """A text/event-stream body: one schema per server-sent event, as SSE tooling reads it; `data` is
    JSON of one of `events` (or, after a stage failed mid-stream, an ErrorResponse), or `last`."""
    models: list[type[BaseModel]] = [*events, ErrorResponse]
    data: dict[str, Any] = {
        "type": "string",
        "contentMediaType": "application/json",
        "contentSchema": {"anyOf": [{"$ref": REF.format(model=m.__name__)} for m in models]},
    }
    if last is not None:
        data = {"anyOf": [data, {"const": last}]}
    return {
        "schema": {
            "type": "object",
            "required": ["data"],
            "properties": {"event": {"type": "string"}, "data": {**data, "description": description}},
        }
    }


class Api(FastAPI):
    """FastAPI, with the models of the server-sent events in its document's components."""

    def openapi(self) -> dict[str, Any]:
        cached = self.openapi_schema is not None
        document = super().openapi()  # built at the first call, then cached
        if not cached:
            _, defs = models_json_schema([(m, "serialization") for m in STREAM_EVENTS], ref_template=REF)
            for name, schema in defs["$defs"].items():
                document["components"]["schemas"].setdefault(name, schema)
        return document


def _ok(content: dict[str, Any]) -> dict[int | str, dict[str, Any]]:
    """More media types for a 200 than its response model's JSON."""
    return {200: {"content": content}}


BINARY = {"schema": {"type": "string", "format": "binary"}}


class RestApi:
    """The OpenAI-compatible REST endpoints under `/v1` and `GET /openapi.json` (see the module docstring)."""

    def __init__(self, deps: RouterDeps, credentials: Credentials, admission: Admission) -> None:
        self.deps = deps
        self.settings = deps.settings
        self.credentials = credentials
        self.admission = admission
        self.created = int(time.time())
        # Long uploads take turns on STT, chunk by chunk (actors/stt/recording.py).
        self.transcription_lane = TranscriptionLane(deps.settings.rest_transcription_slots)

    # ------------------------------------------------------------------ plumbing
    def app(self) -> FastAPI:
        """The FastAPI app: `/openapi.json` and the operations under `/v1`."""
        s = self.settings
        json_route = self._route_class(
            lambda r: JsonBodyRequest(r.scope, r.receive, s.rest_max_body_bytes, s.rest_body_timeout_s)
        )
        upload_route = self._route_class(
            lambda r: BoundedRequest(r.scope, r.receive, s.rest_max_upload_bytes, s.rest_body_timeout_s)
        )
        v1 = APIRouter(
            prefix="/v1",
            route_class=json_route,
            dependencies=[Security(BEARER)],
            responses=ERRORS,
        )
        v1.add_api_route(
            "/chat/completions",
            self.chat_completions,
            methods=["POST"],
            operation_id="createChatCompletion",
            summary="Chat completion, streamed (SSE) or not; the `user`'s memory is in the prompt",
            response_model=ChatCompletion,
            responses=_ok(
                {
                    "text/event-stream": _sse_events(
                        "A ChatCompletionChunk as JSON (or an ErrorResponse if a stage fails mid-stream), "
                        "then [DONE]",
                        ChatCompletionChunk,
                        last="[DONE]",
                    )
                }
            ),
        )
        v1.add_api_route(
            "/audio/transcriptions",
            self.transcriptions,
            methods=["POST"],
            operation_id="createTranscription",
            summary="Transcribe an uploaded recording with the STT stage",
            response_model=Transcription | TranscriptionVerbose,
            responses=_ok(
                {
                    "text/plain": {"schema": {"type": "string"}},
                    "text/vtt": {"schema": {"type": "string"}},
                    "text/event-stream": _sse_events(
                        "With stream true: TranscriptTextDelta events as JSON, then one TranscriptTextDone "
                        "(or an ErrorResponse if the stage fails mid-stream)",
                        TranscriptTextDelta,
                        TranscriptTextDone,
                    ),
                }
            ),
            # The handler parses the form itself: FastAPI's form validation would answer in its own words.
            openapi_extra={
                "requestBody": {
                    "required": True,
                    "content": {"multipart/form-data": {"schema": TRANSCRIPTION_FORM_SCHEMA}},
                }
            },
            route_class_override=upload_route,
        )
        v1.add_api_route(
            "/audio/speech",
            self.speech,
            methods=["POST"],
            operation_id="createSpeech",
            summary="Speech from text, encoded and streamed while it is synthesised (24 kHz mono)",
            response_class=StreamingResponse,
            responses=_ok(
                {
                    **{media: BINARY for media in MEDIA_TYPES.values()},
                    "text/event-stream": _sse_events(
                        "With stream_format sse: SpeechAudioDelta events as JSON, then one SpeechAudioDone "
                        "(or an ErrorResponse if the stage fails mid-stream)",
                        SpeechAudioDelta,
                        SpeechAudioDone,
                    ),
                }
            ),
        )
        v1.add_api_route(
            "/realtime/client_secrets",
            self.mint_client_secret,
            methods=["POST"],
            operation_id="createRealtimeClientSecret",
            summary="A short-lived secret bound to one user, for browsers and phones (server key)",
            response_model=ClientSecret,
        )
        v1.add_api_route(
            "/realtime/client_secrets/revoke",
            self.revoke_client_secret,
            methods=["POST"],
            operation_id="revokeRealtimeClientSecret",
            summary="Revoke a client secret: no new use, and its open sessions are closed",
            response_model=ClientSecretRevoked,
        )
        v1.add_api_route(
            "/models",
            self.list_models,
            methods=["GET"],
            operation_id="listModels",
            summary="The models the LLM, STT and TTS stages serve",
            response_model=ModelList,
        )
        v1.add_api_route(
            "/models/{model:path}",
            self.retrieve_model,
            methods=["GET"],
            operation_id="retrieveModel",
            summary="One model",
            response_model=ModelCard,
            responses={404: _error("No such model")},
        )
        # Starlette's routes answered HEAD as GET; FastAPI's answer the methods they name.
        v1.add_api_route("/models", self.list_models, methods=["HEAD"], include_in_schema=False)
        v1.add_api_route(
            "/models/{model:path}", self.retrieve_model, methods=["HEAD"], include_in_schema=False
        )
        api = Api(
            title="Voice agent: OpenAI-compatible REST API",
            version="1.0.0",
            description="A subset of OpenAI's REST API on the voice agent's stages. Errors use OpenAI's "
            "shape. Unknown request fields are ignored; unsupported ones get a 400 that says so.",
            docs_url=None,
            redoc_url=None,
            exception_handlers={
                ApiError: self._api_error,
                RequestValidationError: self._invalid,
                HTTPException: http_error_response,
                CredentialError: self._credential_error,
                Refused: self._refused,
            },
        )
        api.include_router(v1)
        return api

    def _route_class(self, read: Callable[[Request], Request]) -> type[APIRoute]:
        """Routes whose requests FastAPI reads through `read` (a `BoundedRequest`), once the caller is
        authenticated and charged: nothing of a body is read for a request that will be refused."""
        rest = self
        # Raised by a handler for the app's exception handlers to answer; anything else is a JSON 500.
        answered = (HTTPException, RequestValidationError, CredentialError, Refused)

        class OpenAIRoute(APIRoute):
            def get_route_handler(self) -> Handler:
                handle = super().get_route_handler()

                async def route(request: Request) -> Response:
                    try:
                        request.state.principal = await rest._authorize(request)
                        return await handle(read(request))
                    except answered:
                        raise
                    except Exception:
                        # The details (exception, paths) go to the log only.
                        log.exception("%s %s failed unexpectedly", request.method, request.url.path)
                        return ApiError(
                            500,
                            "the server failed to handle this request; the failure has been logged",
                            type="server_error",
                            code="internal_error",
                        ).response()

                return route

        return OpenAIRoute

    async def _api_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return exc.response()

    async def _invalid(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        route = request.scope.get("route")
        model = (
            route.body_field.field_info.annotation
            if isinstance(route, APIRoute) and route.body_field
            else None
        )
        if isinstance(model, type) and issubclass(model, BaseModel):
            # FastAPI validates with from_attributes=True, which words a non-object where an object
            # belongs as "...object to extract fields from"; the model itself names the object it wants.
            try:
                model.model_validate(exc.body)
            except ValidationError as refused:
                return _invalid_request(refused.errors(include_url=False)).response()
        # FastAPI puts the body's fields under "body"; our messages name the fields themselves.
        errors = [{**err, "loc": tuple(err["loc"])[1:]} for err in exc.errors()]
        return _invalid_request(errors).response()

    async def _credential_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, CredentialError)
        return credential_error_response(exc)

    async def _refused(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, Refused)
        return refused_response(exc)

    async def _authorize(self, request: Request) -> Principal:
        principal = await self.credentials.authenticate(bearer_token(request.headers.get("authorization")))
        self.admission.charge(principal)
        return principal

    # ------------------------------------------------------------------ endpoints
    def _models(self) -> list[ModelCard]:
        s = self.settings
        return [
            ModelCard(id=s.llm_model, created=self.created, owned_by=f"llm:{s.llm_engine}"),
            ModelCard(id=s.stt_model, created=self.created, owned_by=f"stt:{s.stt_engine}"),
            ModelCard(id=s.tts_model, created=self.created, owned_by=f"tts:{s.tts_engine}:{s.tts_voice}"),
        ]

    async def list_models(self) -> Response:
        return JSONResponse(ModelList(data=self._models()).model_dump())

    async def retrieve_model(self, model: str) -> Response:
        for card in self._models():
            if card.id == model:
                return JSONResponse(card.model_dump())
        raise ApiError(404, f"the model {model!r} does not exist here", param="model", code="model_not_found")

    async def mint_client_secret(self, principal: Caller, body: ClientSecretRequest) -> Response:
        try:
            options = initial_options(self.settings, body.session)
        except ProtocolError as exc:
            raise ApiError(400, exc.message, param=exc.param, code=exc.code) from exc
        ttl = body.expires_after.seconds if body.expires_after else DEFAULT_SECRET_TTL_S
        secret = self.credentials.mint(principal, body.user or ANONYMOUS, ttl, body.session)
        log.info(
            "client secret %s for user %s, %d s, minted by %s",
            secret.secret_id[:12],
            secret.user,
            ttl,
            principal.label,
        )
        model = (body.session or {}).get("model")
        session = session_object(
            new_id("sess"), options, model if isinstance(model, str) else self.settings.llm_model
        )
        return JSONResponse(
            ClientSecret(value=secret.value, expires_at=secret.expires_at, session=session).model_dump()
        )

    async def revoke_client_secret(self, principal: Caller, body: ClientSecretRevokeRequest) -> Response:
        try:
            await self.credentials.revoke(principal, body.value)
        except CredentialError:
            raise
        except Exception as exc:
            log.exception("revoking a client secret failed")
            raise ApiError(
                503, "the revocation list is unavailable: try again", type="server_error", code="unavailable"
            ) from exc
        return JSONResponse(ClientSecretRevoked().model_dump())

    async def chat_completions(self, principal: Caller, body: ChatCompletionRequest) -> Response:
        user_id = acting_user(principal, body.user, self.settings)
        memory = self.deps.memory_for(user_id)
        s = self.settings
        max_tokens = body.max_completion_tokens or body.max_tokens or s.llm_max_tokens
        if max_tokens > s.rest_max_completion_tokens:
            param = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
            raise ApiError(
                400, f"{param} is {max_tokens}; the limit is {s.rest_max_completion_tokens}", param=param
            )
        if (problem := tool_message_problem(body.messages)) is not None:
            index, message = problem
            raise ApiError(400, message, param=f"messages.[{index}].role")
        messages = [_chat_message(m) for m in body.messages]
        if all(m["role"] == "system" for m in messages):
            raise ApiError(400, "messages has no user or assistant message to answer", param="messages")
        tools = self._chat_tools(body, user_id)
        # Only an OpenAI-compatible engine can switch models per request; the offline engine answers
        # with the one model it loaded, and the response's `model` says so.
        switchable = s.llm_engine == "openai"
        model = body.model if switchable else s.llm_model
        turn = ChatTurn(
            llm=self.deps.llm,
            messages=messages,
            user_id=user_id,
            max_tokens=max_tokens,
            temperature=body.temperature if body.temperature is not None else s.llm_temperature,
            default_instructions=s.system_prompt,
            model=body.model if switchable else None,
            memory_sink=memory.sink,
            memory_context=memory.context,
            tools=tools,
        )
        deltas = turn.stream()
        first = await _first(deltas, "LLM")
        created = int(time.time())
        if body.stream:
            usage = body.stream_options is not None and body.stream_options.include_usage
            return StreamingResponse(
                self._chat_events(turn, deltas, first, model, created, usage),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        try:
            async for _ in deltas:
                pass  # the turn's outcome collects the reply
        except Exception as exc:
            log.exception("LLM failed")
            raise _stage_failed(exc, "LLM") from exc
        out = turn.outcome
        calls = [ToolCallOut(id=c["id"], function=FunctionCallOut(**c["function"])) for c in out.tool_calls]
        reply = AssistantMessage(content=out.text or (None if calls else ""), tool_calls=calls or None)
        completion = ChatCompletion(
            id=turn.turn_id,
            created=created,
            model=model,
            choices=[Choice(message=reply, finish_reason=out.finish_reason)],
            usage=Usage(
                prompt_tokens=out.prompt_tokens,
                completion_tokens=out.completion_tokens,
                total_tokens=out.prompt_tokens + out.completion_tokens,
            ),
            metrics=out.metrics,
        )
        return JSONResponse(completion.model_dump())

    def _chat_tools(self, body: ChatCompletionRequest, user_id: str) -> ChatTools:
        """The tools a chat request offers the model, checked as OpenAI checks them: the client's, and the
        server's when the request opts in (`server_tools`)."""
        client = [tool.spec() for tool in body.tools or ()]
        server = self.deps.toolbox_for(user_id) if body.server_tools else Toolbox()
        names = [spec["function"]["name"] for spec in client]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise ApiError(400, f"two tools are named {name!r}", param=f"tools.{i}.function.name")
            if name in server:
                raise ApiError(
                    400,
                    f"tool {name!r} has the name of one of the server's tools; rename it or leave out "
                    "`server_tools`",
                    param=f"tools.{i}.function.name",
                )
        offered = [*names, *(d.name for d in server.definitions())]
        for param, value in (
            ("tool_choice", body.tool_choice),
            ("parallel_tool_calls", body.parallel_tool_calls),
        ):
            if value is not None and not offered:
                raise ApiError(400, f"`{param}` is only allowed when `tools` are specified", param=param)
        choice: ToolChoice | None = None
        if isinstance(body.tool_choice, str):
            choice = body.tool_choice
        elif body.tool_choice is not None:
            named = body.tool_choice.function.name
            if named not in offered:
                raise ApiError(
                    400, f"tool_choice names {named!r}, which is not among the tools", param="tool_choice"
                )
            choice = body.tool_choice.model_dump()
        limit = self.settings.rest_max_tool_rounds
        rounds = body.max_tool_rounds or limit
        if rounds > limit:
            raise ApiError(400, f"max_tool_rounds is {rounds}; the limit is {limit}", param="max_tool_rounds")
        return ChatTools(
            client=client, server=server, choice=choice, parallel=body.parallel_tool_calls, max_rounds=rounds
        )

    async def _chat_events(
        self,
        turn: ChatTurn,
        deltas: AsyncGenerator[str | LLMToolCallDelta, None],
        first: str | LLMToolCallDelta | None,
        model: str,
        created: int,
        include_usage: bool,
    ) -> AsyncGenerator[str, None]:
        def chunk(delta: Delta, finish: Any = None) -> str:
            choice = ChunkChoice(delta=delta, finish_reason=finish)
            return _sse(ChatCompletionChunk(id=turn.turn_id, created=created, model=model, choices=[choice]))

        try:
            yield chunk(Delta(role="assistant", content=""))
            if first is not None:
                yield chunk(_delta(first))
                async for delta in deltas:
                    yield chunk(_delta(delta))
        except Exception as exc:
            yield _stage_failed_event("LLM", exc)
            return
        finally:
            await deltas.aclose()
        out = turn.outcome
        yield chunk(Delta(), out.finish_reason)
        if include_usage:
            usage = Usage(
                prompt_tokens=out.prompt_tokens,
                completion_tokens=out.completion_tokens,
                total_tokens=out.prompt_tokens + out.completion_tokens,
            )
            yield _sse(
                ChatCompletionChunk(id=turn.turn_id, created=created, model=model, choices=[], usage=usage)
            )
        yield "data: [DONE]\n\n"

    async def speech(self, body: SpeechRequest) -> Response:
        s = self.settings
        text = body.input.strip()
        if not text:
            raise ApiError(400, "input is empty: send the text to speak", param="input")
        if len(body.input) > s.rest_max_speech_chars:
            raise ApiError(
                400,
                f"input has {len(body.input)} characters; the limit is {s.rest_max_speech_chars}",
                param="input",
            )
        try:
            voice = check_voice(body.voice_name(), s.tts_voice)
        except VoiceError as exc:
            raise ApiError(400, str(exc), param="voice", code="unsupported_voice") from exc
        style = SpeechStyle(voice=voice, speed=body.speed or 1.0, instructions=body.instructions)
        loop = asyncio.get_running_loop()
        started = loop.time()
        chunks = self.deps.tts.synthesize(text, DEFAULT_OUTPUT_RATE, style)
        first = await _first(chunks, "TTS")
        HISTOGRAMS["tts_ttfb"].observe((loop.time() - started) * 1000)
        encoder = SpeechEncoder(body.response_format, DEFAULT_OUTPUT_RATE)

        async def encode(pcm: bytes) -> bytes:
            # Compressed formats cost ~1 ms of CPU per 100 ms of audio: off the event loop.
            return await asyncio.to_thread(encoder.encode, pcm) if encoder.compressed else encoder.encode(pcm)

        async def audio() -> AsyncGenerator[bytes, None]:
            finished = False
            try:
                if first is not None:
                    if data := await encode(first):
                        yield data
                    async for piece in chunks:
                        if data := await encode(piece):
                            yield data
                finished = True
                if tail := await asyncio.to_thread(encoder.finish):
                    yield tail
            finally:
                if not finished:
                    encoder.close()
                await chunks.aclose()

        if body.stream_format == "sse":
            return StreamingResponse(
                self._speech_events(audio()),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        return StreamingResponse(audio(), media_type=MEDIA_TYPES[body.response_format])

    async def _speech_events(self, audio: AsyncGenerator[bytes, None]) -> AsyncGenerator[str, None]:
        """OpenAI's SSE speech stream: the same bytes, base64 in `speech.audio.delta` events."""
        try:
            async for piece in audio:
                yield _sse(SpeechAudioDelta(audio=base64.b64encode(piece).decode("ascii")))
        except Exception as exc:
            yield _stage_failed_event("TTS", exc)
            return
        finally:
            await audio.aclose()
        yield _sse(SpeechAudioDone(usage=SpeechUsage(input_tokens=0, output_tokens=0, total_tokens=0)))

    async def transcriptions(self, request: Request) -> Response:
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise ApiError(400, "send the recording as multipart/form-data with a `file` field", param="file")
        try:
            form = await request.form(max_files=1, max_fields=32, max_part_size=MAX_FORM_FIELD_BYTES)
        except ApiError:
            raise
        except HTTPException as exc:  # Starlette's words for a malformed form
            raise ApiError(400, f"malformed multipart form: {exc.detail}") from exc
        try:
            return await self._transcribe(form, request.is_disconnected)
        finally:
            await form.close()

    async def _transcribe(self, form: FormData, client_gone: Callable[[], Awaitable[bool]]) -> Response:
        upload, model = form.get("file"), form.get("model")
        if not isinstance(upload, UploadFile):
            raise ApiError(400, "the form has no `file` upload: attach the recording as `file`", param="file")
        if not isinstance(model, str) or not model.strip():
            raise ApiError(
                400, "the form has no `model` field", param="model", code="missing_required_parameter"
            )
        options = _transcription_options(form)
        data = await upload.read()
        try:
            pcm, seconds = await asyncio.to_thread(decode_upload, data, self.settings.rest_max_audio_s)
        except AudioFormatError as exc:
            raise ApiError(400, str(exc), param="file", code="invalid_audio") from exc
        loop = asyncio.get_running_loop()
        started = loop.time()  # the whole recording is here: its end is "end of speech"
        segments = transcribe_segments(
            self.deps.stt,
            pcm,
            self.transcription_lane,
            chunk_s=self.settings.rest_transcription_chunk_s,
            client_gone=client_gone,
        )
        if options.stream:
            first = await _first(segments, "STT")
            return StreamingResponse(
                self._transcript_events(first, segments, started),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        try:
            done = [segment async for segment in segments]
        except ClientGone as exc:  # nobody is left to read an answer: stop, and say so in the log
            log.info("transcription abandoned by its client: %s", exc)
            raise ApiError(400, "the client went away", code="client_gone") from exc
        except Exception as exc:
            log.exception("STT failed")
            raise _stage_failed(exc, "STT") from exc
        HISTOGRAMS["transcription_delay"].observe((loop.time() - started) * 1000)
        spoken = [segment for segment in done if segment.text]
        text = " ".join(segment.text for segment in spoken)
        usage = TranscriptionUsage(seconds=round(seconds, 3))
        if options.response_format == "text":
            return PlainTextResponse(text)
        if options.response_format == "srt":
            return PlainTextResponse(captions.srt(spoken))
        if options.response_format == "vtt":
            return PlainTextResponse(captions.vtt(spoken), media_type="text/vtt")
        if options.response_format == "verbose_json":
            verbose = TranscriptionVerbose(
                language=options.language or "en",
                duration=round(seconds, 3),
                text=text,
                segments=[
                    TranscriptionSegment(
                        id=n,
                        seek=round(segment.start_s * 100),
                        start=round(segment.start_s, 3),
                        end=round(segment.end_s, 3),
                        text=segment.text,
                        temperature=options.temperature,
                        compression_ratio=_compression_ratio(segment.text),
                    )
                    for n, segment in enumerate(spoken)
                ],
                usage=usage,
            )
            return JSONResponse(verbose.model_dump())
        return JSONResponse(Transcription(text=text, usage=usage).model_dump())

    async def _transcript_events(
        self, first: RecordedSegment | None, rest: AsyncGenerator[RecordedSegment, None], started: float
    ) -> AsyncGenerator[str, None]:
        """OpenAI's streamed transcription: a `transcript.text.delta` per segment as it is transcribed
        (appending them gives the text), then `transcript.text.done` with the whole text."""
        texts: list[str] = []
        try:
            segment = first
            while segment is not None:
                if segment.text:
                    yield _sse(TranscriptTextDelta(delta=(" " if texts else "") + segment.text))
                    texts.append(segment.text)
                segment = await anext(rest, None)
        except ClientGone as exc:
            log.info("streamed transcription abandoned by its client: %s", exc)
            return
        except Exception as exc:
            yield _stage_failed_event("STT", exc)
            return
        finally:
            await rest.aclose()
        HISTOGRAMS["transcription_delay"].observe((asyncio.get_running_loop().time() - started) * 1000)
        yield _sse(TranscriptTextDone(text=" ".join(texts)))


@dataclass(frozen=True)
class TranscriptionOptions:
    """The form fields of a transcription request besides the file and the model, validated."""

    response_format: str
    stream: bool
    language: str | None
    temperature: float


def _transcription_options(form: FormData) -> TranscriptionOptions:
    """The options a transcription form asks for; a 400 naming the field for a value we cannot honour."""
    fields: dict[str, str] = {}
    for name in ("response_format", "stream", "language", "temperature", "prompt", "chunking_strategy"):
        value = form.get(name)
        if value is not None and not isinstance(value, str):
            raise ApiError(400, f"{name} must be a form field, not a file", param=name)
        if value is not None:
            fields[name] = value
    fmt = fields.get("response_format", "json")
    if fmt not in TRANSCRIPTION_FORMATS:
        raise ApiError(
            400,
            f"response_format {fmt[:40]!r} is not supported: use " + ", ".join(TRANSCRIPTION_FORMATS),
            param="response_format",
        )
    stream = fields.get("stream", "false").lower()
    if stream not in ("true", "false", "1", "0"):
        raise ApiError(400, "stream must be true or false", param="stream")
    streamed = stream in ("true", "1")
    if streamed and fmt not in ("json", "text"):
        raise ApiError(400, f"a streamed transcription is json or text, not {fmt}", param="response_format")
    temperature = fields.get("temperature", "0")
    if not _is_number(temperature) or not 0 <= float(temperature) <= 1:
        raise ApiError(400, "temperature must be a number from 0 to 1", param="temperature")
    language = fields.get("language")
    if language is not None and not TRANSCRIPTION_LANGUAGE.fullmatch(language):
        raise ApiError(
            400, f"language {language[:20]!r} is not an ISO-639-1 code such as 'en'", param="language"
        )
    for granularity in form.getlist("timestamp_granularities[]"):
        if granularity != "segment":
            raise ApiError(
                400,
                f"timestamp granularity {str(granularity)[:20]!r} is not available: only segment",
                param="timestamp_granularities",
            )
    if any(item != "" for item in form.getlist("include[]")):
        raise ApiError(400, "include: the engines report no log probabilities", param="include")
    return TranscriptionOptions(fmt, streamed, language, float(temperature))


def _compression_ratio(text: str) -> float:
    """As Whisper reports it: the text's bytes over their zlib-compressed bytes (repetition scores high)."""
    raw = text.encode("utf-8")
    return round(len(raw) / len(zlib.compress(raw)), 3) if raw else 0.0


def rest_routes(deps: RouterDeps, credentials: Credentials, admission: Admission) -> list[BaseRoute]:
    """`GET /openapi.json` and everything under `/v1` except the WebSocket (mount after it). The paths
    reach the FastAPI app whole: its routes and document name them with `/v1`."""
    api = RestApi(deps, credentials, admission).app()
    return [Route("/openapi.json", api, methods=["GET"]), Route("/v1/{path:path}", Admitted(api, admission))]
