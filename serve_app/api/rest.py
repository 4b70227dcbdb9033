"""OpenAI-compatible REST endpoints on the router: chat completions, transcriptions, speech, models.

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
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from actors.audio.files import decode_upload, streaming_wav_header
from actors.audio.pcm import DEFAULT_OUTPUT_RATE, AudioFormatError
from actors.conversation.chat_turn import ChatTurn
from actors.conversation.faults import public_error
from actors.conversation.metrics import HISTOGRAMS
from actors.conversation.session import new_id
from actors.llm.base import ChatMessage
from serve_app.api import json_input
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
from serve_app.api.openapi import openapi_document
from serve_app.api.protocol import ProtocolError, initial_options, session_object
from serve_app.api.rest_models import (
    TRANSCRIPTION_FORMATS,
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    ClientSecret,
    ClientSecretRequest,
    ClientSecretRevoked,
    ClientSecretRevokeRequest,
    Delta,
    ErrorDetail,
    ErrorResponse,
    ModelCard,
    ModelList,
    SpeechAudioDelta,
    SpeechAudioDone,
    SpeechRequest,
    SpeechUsage,
    Transcription,
    TranscriptionUsage,
    TranscriptionVerbose,
    Usage,
)

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")
MAX_FORM_FIELD_BYTES = 64 * 1024  # a non-file form field (model, language, prompt, ...)


class ApiError(Exception):
    """A request we answer with OpenAI's error JSON."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type

    def response(self) -> JSONResponse:
        body = ErrorResponse(
            error=ErrorDetail(message=self.message, type=self.type, param=self.param, code=self.code)
        )
        return JSONResponse(body.model_dump(), status_code=self.status)


def _validation_error(exc: ValidationError) -> ApiError:
    problems = []
    for err in exc.errors(include_url=False):
        where = ".".join(str(part) for part in err["loc"]) or "body"
        problems.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
    first = exc.errors(include_url=False)[0]
    param = ".".join(str(part) for part in first["loc"]) or None
    code = "missing_required_parameter" if first["type"] == "missing" else "invalid_value"
    return ApiError(400, "invalid request: " + "; ".join(problems), param=param, code=code)


def _sse(model: BaseModel) -> str:
    return f"data: {model.model_dump_json()}\n\n"


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


Endpoint = Callable[[Request], Awaitable[Response]]


def _guarded(endpoint: Endpoint, answered: tuple[type[Exception], ...]) -> Endpoint:
    """Any unexpected failure of a handler is a JSON 500 in OpenAI's shape, never a plain-text page;
    the `answered` exceptions go on to the app's exception handlers."""

    async def guarded(request: Request) -> Response:
        try:
            return await endpoint(request)
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

    return guarded


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


class RestApi:
    """The OpenAI-compatible REST endpoints under `/v1` and `GET /openapi.json` (see the module docstring)."""

    def __init__(self, deps: RouterDeps, credentials: Credentials, admission: Admission) -> None:
        self.deps = deps
        self.settings = deps.settings
        self.credentials = credentials
        self.admission = admission
        self.created = int(time.time())
        self.document = openapi_document()

    # ------------------------------------------------------------------ plumbing
    def routes(self) -> list[BaseRoute]:
        handlers: dict[Any, Any] = {
            ApiError: self._api_error,
            HTTPException: self._http_error,
            CredentialError: self._credential_error,
            Refused: self._refused,
        }

        def guard(endpoint: Endpoint) -> Endpoint:
            return _guarded(endpoint, tuple(handlers))

        v1 = Starlette(
            routes=[
                Route("/chat/completions", guard(self.chat_completions), methods=["POST"]),
                Route("/audio/transcriptions", guard(self.transcriptions), methods=["POST"]),
                Route("/audio/speech", guard(self.speech), methods=["POST"]),
                Route("/models", guard(self.list_models), methods=["GET"]),
                Route("/realtime/client_secrets", guard(self.mint_client_secret), methods=["POST"]),
                Route("/realtime/client_secrets/revoke", guard(self.revoke_client_secret), methods=["POST"]),
                Route("/models/{model:path}", guard(self.retrieve_model), methods=["GET"]),
            ],
            exception_handlers=handlers,
        )
        return [
            Route("/openapi.json", guard(self.openapi), methods=["GET"]),
            Mount("/v1", app=self._admitted(v1)),
        ]

    def _admitted(self, app: ASGIApp) -> ASGIApp:
        """Each request holds a place on this replica until its response (a stream too) has been sent."""

        async def admitted(scope: Scope, receive: Receive, send: Send) -> None:
            try:
                with self.admission.request_slot():
                    await app(scope, receive, send)
            except Refused as exc:
                await refused_response(exc)(scope, receive, send)

        return admitted

    async def _api_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return exc.response()

    async def _credential_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, CredentialError)
        return credential_error_response(exc)

    async def _refused(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, Refused)
        return refused_response(exc)

    async def _http_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        message = f"{request.method} {request.url.path}: {exc.detail}"
        return ApiError(exc.status_code, message, code=code).response()

    async def _authorize(self, request: Request) -> Principal:
        principal = await self.credentials.authenticate(bearer_token(request.headers.get("authorization")))
        self.admission.charge(principal)
        return principal

    async def _body(self, request: Request, limit: int) -> AsyncGenerator[bytes, None]:
        """The request body, refused with 413 as soon as it is larger than `limit` bytes."""
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise ApiError(413, f"request body of {declared} bytes exceeds the limit of {limit} bytes")
        received = 0
        timeout = self.settings.rest_body_timeout_s
        deadline = asyncio.get_running_loop().time() + timeout
        stream = request.stream()
        while True:
            try:
                # A client trickling its body holds a request: it gets a deadline, not the replica.
                async with asyncio.timeout_at(deadline):
                    chunk = await anext(stream)
            except StopAsyncIteration:
                return
            except TimeoutError:
                message = f"the request body did not arrive within {timeout:.0f} s"
                raise ApiError(408, message, code="request_timeout") from None
            received += len(chunk)
            if received > limit:
                raise ApiError(413, f"request body exceeds the limit of {limit} bytes")
            yield chunk

    async def _json(self, request: Request, model: type[M]) -> M:
        body = b"".join([chunk async for chunk in self._body(request, self.settings.rest_max_body_bytes)])
        if not body.strip():
            raise ApiError(400, "the request body is empty: send a JSON object")
        try:
            data = json_input.loads(body)
        except json_input.JsonInputError as exc:
            raise ApiError(400, f"the request body {exc.reason}", code="invalid_json") from None
        if not isinstance(data, dict):
            raise ApiError(400, f"the request body must be a JSON object, not {type(data).__name__}")
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            raise _validation_error(exc) from exc

    # ------------------------------------------------------------------ endpoints
    async def openapi(self, request: Request) -> Response:
        return JSONResponse(self.document)

    def _models(self) -> list[ModelCard]:
        s = self.settings
        return [
            ModelCard(id=s.llm_model, created=self.created, owned_by=f"llm:{s.llm_engine}"),
            ModelCard(id=s.stt_model, created=self.created, owned_by=f"stt:{s.stt_engine}"),
            ModelCard(id=s.tts_model, created=self.created, owned_by=f"tts:{s.tts_engine}:{s.tts_voice}"),
        ]

    async def list_models(self, request: Request) -> Response:
        await self._authorize(request)
        return JSONResponse(ModelList(data=self._models()).model_dump())

    async def retrieve_model(self, request: Request) -> Response:
        await self._authorize(request)
        wanted = request.path_params["model"]
        for card in self._models():
            if card.id == wanted:
                return JSONResponse(card.model_dump())
        raise ApiError(
            404, f"the model {wanted!r} does not exist here", param="model", code="model_not_found"
        )

    async def mint_client_secret(self, request: Request) -> Response:
        principal = await self._authorize(request)
        body = await self._json(request, ClientSecretRequest)
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

    async def revoke_client_secret(self, request: Request) -> Response:
        principal = await self._authorize(request)
        body = await self._json(request, ClientSecretRevokeRequest)
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

    async def chat_completions(self, request: Request) -> Response:
        principal = await self._authorize(request)
        body = await self._json(request, ChatCompletionRequest)
        user_id = acting_user(principal, body.user, self.settings)
        memory = self.deps.memory_for(user_id)
        s = self.settings
        max_tokens = body.max_completion_tokens or body.max_tokens or s.llm_max_tokens
        if max_tokens > s.rest_max_completion_tokens:
            param = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
            raise ApiError(
                400, f"{param} is {max_tokens}; the limit is {s.rest_max_completion_tokens}", param=param
            )
        messages: list[ChatMessage] = [
            {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
            for m in body.messages
        ]
        if all(m["role"] == "system" for m in messages):
            raise ApiError(400, "messages has no user or assistant message to answer", param="messages")
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
        parts = [] if first is None else [first]
        try:
            parts += [delta async for delta in deltas]
        except Exception as exc:
            log.exception("LLM failed")
            raise _stage_failed(exc, "LLM") from exc
        out = turn.outcome
        completion = ChatCompletion(
            id=turn.turn_id,
            created=created,
            model=model,
            choices=[Choice(message=AssistantMessage(content=out.text), finish_reason=out.finish_reason)],
            usage=Usage(
                prompt_tokens=out.prompt_tokens,
                completion_tokens=out.completion_tokens,
                total_tokens=out.prompt_tokens + out.completion_tokens,
            ),
            metrics=out.metrics,
        )
        return JSONResponse(completion.model_dump())

    async def _chat_events(
        self,
        turn: ChatTurn,
        deltas: AsyncGenerator[str, None],
        first: str | None,
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
                yield chunk(Delta(content=first))
                async for delta in deltas:
                    yield chunk(Delta(content=delta))
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

    async def speech(self, request: Request) -> Response:
        await self._authorize(request)
        body = await self._json(request, SpeechRequest)
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
        if body.voice_name() != s.tts_voice:
            raise ApiError(
                400,
                f"voice {body.voice_name()[:60]!r} is not available: this server speaks with {s.tts_voice!r}",
                param="voice",
                code="unsupported_voice",
            )
        if body.speed is not None and body.speed != 1.0:
            raise ApiError(400, "speed is not supported by this server: omit it or send 1.0", param="speed")
        loop = asyncio.get_running_loop()
        started = loop.time()
        chunks = self.deps.tts.synthesize(text, DEFAULT_OUTPUT_RATE)
        first = await _first(chunks, "TTS")
        HISTOGRAMS["tts_ttfb"].observe((loop.time() - started) * 1000)
        wav = body.response_format == "wav"

        async def audio() -> AsyncGenerator[bytes, None]:
            try:
                if wav:
                    yield streaming_wav_header(DEFAULT_OUTPUT_RATE)
                if first is not None:
                    yield first
                    async for piece in chunks:
                        yield piece
            finally:
                await chunks.aclose()

        if body.stream_format == "sse":
            return StreamingResponse(
                self._speech_events(audio()),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        return StreamingResponse(audio(), media_type="audio/wav" if wav else "audio/pcm")

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
        await self._authorize(request)
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise ApiError(400, "send the recording as multipart/form-data with a `file` field", param="file")
        parser = MultiPartParser(
            request.headers,
            self._body(request, self.settings.rest_max_upload_bytes),
            max_files=1,
            max_fields=32,
            max_part_size=MAX_FORM_FIELD_BYTES,
        )
        try:
            form = await parser.parse()
        except MultiPartException as exc:
            raise ApiError(400, f"malformed multipart form: {exc.message}") from exc
        try:
            return await self._transcribe(form)
        finally:
            await form.close()

    async def _transcribe(self, form: Any) -> Response:
        upload, model = form.get("file"), form.get("model")
        if not isinstance(upload, UploadFile):
            raise ApiError(400, "the form has no `file` upload: attach the recording as `file`", param="file")
        if not isinstance(model, str) or not model.strip():
            raise ApiError(
                400, "the form has no `model` field", param="model", code="missing_required_parameter"
            )
        fmt = form.get("response_format") or "json"
        if fmt not in TRANSCRIPTION_FORMATS:
            raise ApiError(
                400,
                f"response_format {str(fmt)[:40]!r} is not supported: use "
                + ", ".join(TRANSCRIPTION_FORMATS),
                param="response_format",
            )
        if str(form.get("stream", "false")).lower() not in ("false", "0"):
            raise ApiError(400, "streamed transcription is not supported: omit `stream`", param="stream")
        temperature = form.get("temperature")
        if temperature is not None:
            try:
                float(temperature)
            except (TypeError, ValueError) as exc:
                raise ApiError(400, "temperature must be a number", param="temperature") from exc
        language = form.get("language")
        if language is not None and not isinstance(language, str):
            raise ApiError(400, "language must be a string", param="language")
        data = await upload.read()
        try:
            pcm, seconds = await asyncio.to_thread(decode_upload, data, self.settings.rest_max_audio_s)
        except AudioFormatError as exc:
            raise ApiError(400, str(exc), param="file", code="invalid_audio") from exc
        loop = asyncio.get_running_loop()
        started = loop.time()  # the whole recording is here: its end is "end of speech"
        stream = self.deps.stt.open_stream()
        try:
            text = (await stream.finish_with(pcm)).strip()
        except Exception as exc:
            log.exception("STT failed")
            with contextlib.suppress(Exception):
                await stream.aclose()
            raise _stage_failed(exc, "STT") from exc
        HISTOGRAMS["transcription_delay"].observe((loop.time() - started) * 1000)
        usage = TranscriptionUsage(seconds=round(seconds, 3))
        if fmt == "text":
            return PlainTextResponse(text)
        if fmt == "verbose_json":
            verbose = TranscriptionVerbose(
                language=language or "en", duration=round(seconds, 3), text=text, usage=usage
            )
            return JSONResponse(verbose.model_dump())
        return JSONResponse(Transcription(text=text, usage=usage).model_dump())


def rest_routes(deps: RouterDeps, credentials: Credentials, admission: Admission) -> list[BaseRoute]:
    """`GET /openapi.json` and everything under `/v1` except the WebSocket (mount after it)."""
    return RestApi(deps, credentials, admission).routes()
