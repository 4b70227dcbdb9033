"""Phone calls through Twilio: the TwiML webhook that answers a call, and the Media Streams WebSocket
that carries it to a VoiceSession (the same session `WS /v1/realtime` holds).

- `POST /v1/phone/twilio/voice`, the number's "A call comes in" webhook: checks Twilio's request
  signature, picks the caller's memory user (`phone_users`, else `tel:<digits>` for an E.164 number,
  else `anonymous`) and answers `<Connect><Stream>` with a client secret for that user, valid for
  `STREAM_TOKEN_TTL_S`, as a stream `<Parameter>` (Twilio's stream URL takes no query string, and
  Twilio cannot send our API keys).
- `WS /v1/phone/twilio/stream`: Twilio's `start` message must carry that secret; the caller's μ-law
  8 kHz audio goes to the session at 16 kHz, the reply (synthesised at 8 kHz) goes back as μ-law
  `media`, each chunk followed by a `mark`. Twilio echoes a mark once the audio before it has played,
  so the marks not yet echoed are what the caller has not heard yet: when the caller starts speaking
  over it, a `clear` drops it from Twilio's buffer at once. If that speech was no interruption (a
  cough) and the reply plays on, the dropped audio is sent again first, so the caller misses nothing.

Twilio reads nothing we could send about a bad message: a malformed one is logged (with what is
wrong), counted in `voice_client_errors`, and skipped, and the call goes on. A stream that cannot be
authorised is closed with code 1008 and the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from actors.audio.mulaw import MULAW_SAMPLE_RATE, mulaw_to_pcm16, pcm16_to_mulaw
from actors.audio.pcm import STT_SAMPLE_RATE, StreamResampler
from actors.config import Settings
from actors.conversation.events import (
    Emit,
    ResponseAudioDelta,
    ResponseFinished,
    ResponseStarted,
    SessionError,
    SessionEvent,
    SpeechStarted,
    TranscriptCompleted,
)
from actors.conversation.metrics import ERRORS
from actors.conversation.options import SessionOptions
from actors.conversation.session import VoiceSession
from actors.memory.journal import user_id_problem
from serve_app.api.admission import Admission, Refused, TokenBucket
from serve_app.api.auth import POLICY_VIOLATION, close_reason
from serve_app.api.credentials import ANONYMOUS, CLIENT_SECRET_PREFIX, CredentialError, Credentials, Principal
from serve_app.api.protocol import ProtocolError, initial_options
from serve_app.api.twilio_protocol import (
    StreamStart,
    TwilioMessageError,
    clear_message,
    connect_stream_twiml,
    mark_message,
    media_message,
    parse_message,
    say_twiml,
    signature_valid,
)

log = logging.getLogger(__name__)

VOICE_PATH = "/v1/phone/twilio/voice"
STREAM_PATH = "/v1/phone/twilio/stream"
STREAM_TOKEN_TTL_S = 60  # Twilio opens the stream within a second or two of our answer
START_TIMEOUT_S = 10.0  # from the WebSocket opening to Twilio's `start`
TOKEN_PARAMETER = "token"
E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")
# The webhook's own principal: it mints stream secrets, bound to one caller each.
_WEBHOOK = Principal("twilio-webhook", None, may_administer=True)

OpenSession = Callable[[str, SessionOptions, Emit], VoiceSession]


def caller_user(number: str | None, mapping: dict[str, str]) -> str:
    """The memory user a caller's number acts as: its `phone_users` entry, else `tel:<digits>` for an
    E.164 number, else `anonymous` (withheld or not a phone number: no long-term memory)."""
    if number and number in mapping:
        return mapping[number]
    if number and E164.match(number):
        return "tel:" + number[1:]
    return ANONYMOUS


def phone_options(settings: Settings) -> SessionOptions:
    """A call's session: the caller's audio arrives at the STT rate (resampled from 8 kHz here), and
    the reply is synthesised straight at the telephone rate."""
    return replace(
        initial_options(settings, None),
        input_sample_rate=STT_SAMPLE_RATE,
        output_sample_rate=MULAW_SAMPLE_RATE,
    )


@dataclass
class _Sent:
    """Reply audio sent to Twilio behind one of our marks, not yet heard."""

    response_id: str
    mulaw: bytes


@dataclass
class Playback:
    """What the caller has heard, as Twilio's echoed marks tell it."""

    heard_ms: dict[str, float] = field(default_factory=dict)  # per response id
    cleared: int = 0  # `clear` messages sent (barge-ins)
    resent_ms: float = 0.0  # audio dropped by a clear and sent again when the reply played on


class TwilioCall:
    """One call's Media Streams WebSocket, after `start`: Twilio's messages in, session events out."""

    def __init__(
        self,
        websocket: WebSocket,
        start: StreamStart,
        make_session: Callable[[Emit], VoiceSession],
        settings: Settings,
    ) -> None:
        self.websocket = websocket
        self.start = start
        self.settings = settings
        self.playback = Playback()
        self._to_session = StreamResampler(MULAW_SAMPLE_RATE, STT_SAMPLE_RATE)
        self._audio_budget = TokenBucket(settings.audio_max_speed, settings.audio_burst_s)
        self._send_lock = asyncio.Lock()
        self._marks: dict[str, _Sent] = {}  # sent, not yet echoed, in the order sent
        self._dropped_marks: set[str] = set()  # dropped by a clear: their echo says nothing was heard
        self._unheard: list[_Sent] = []  # the reply audio the last clear dropped
        self._mark_count = 0
        self._gone = False
        self.session = make_session(self._emit)

    async def run(self) -> None:
        """Serve the call until Twilio stops the stream, hangs up, or the call reaches its longest."""
        try:
            async with asyncio.timeout(self.settings.phone_max_call_s):
                while True:
                    message = await self.websocket.receive()
                    if message["type"] == "websocket.disconnect":
                        break
                    raw = message.get("text")
                    if await self._handle(raw if raw is not None else message.get("bytes") or b""):
                        break
        except TimeoutError:
            log.info(
                "call %s: reached its longest (%.0f s)", self.start.call_sid, self.settings.phone_max_call_s
            )
            await close_stream(self.websocket, "the call reached its maximum length")
        except WebSocketDisconnect:
            pass
        finally:
            self._gone = True
            await self.session.close()
            heard = sum(self.playback.heard_ms.values()) / 1000
            log.info(
                "call %s ended: the caller heard %.1f s of replies; %d clears, %.1f s sent again",
                self.start.call_sid,
                heard,
                self.playback.cleared,
                self.playback.resent_ms / 1000,
            )

    async def _handle(self, raw: str | bytes) -> bool:
        """Handle one message from Twilio; True once the stream has stopped."""
        try:
            message = parse_message(raw)
            if message.stream_sid is not None and message.stream_sid != self.start.stream_sid:
                raise TwilioMessageError(f"message for stream {message.stream_sid[:40]!r}, not this call's")
            match message.event:
                case "media":
                    await self._caller_audio(message.payload)
                case "mark":
                    self._echoed(message.mark or "")
                case "stop":
                    return True
                case "dtmf":
                    log.info(
                        "call %s: key %s pressed (keys are not used)", self.start.call_sid, message.digit
                    )
                case "connected" | "start":
                    raise TwilioMessageError(f"`{message.event}` arrived again in the middle of the stream")
        except TwilioMessageError as exc:
            ERRORS.labels(code="invalid_twilio_message").inc()
            log.warning("call %s: Media Streams message skipped: %s", self.start.call_sid, exc)
        return False

    async def _caller_audio(self, mulaw: bytes) -> None:
        seconds = len(mulaw) / MULAW_SAMPLE_RATE
        if not self._audio_budget.take(seconds):
            raise TwilioMessageError("caller audio is arriving faster than real time: this media was dropped")
        await self.session.append_audio(self._to_session.process(mulaw_to_pcm16(mulaw)))

    def _echoed(self, name: str) -> None:
        """Twilio played (or, after a clear, dropped) the audio up to our mark `name`."""
        if name in self._dropped_marks:
            self._dropped_marks.discard(name)
            return
        if name not in self._marks:
            raise TwilioMessageError(f"mark {name[:40]!r} was never sent on this stream")
        # Marks come back in the order sent: every one before it has played too.
        for sent_name in list(self._marks):
            sent = self._marks.pop(sent_name)
            heard = self.playback.heard_ms
            heard[sent.response_id] = heard.get(sent.response_id, 0.0) + _ms(sent.mulaw)
            if sent_name == name:
                break

    async def _emit(self, event: SessionEvent) -> None:
        match event:
            case SpeechStarted() if self._marks:
                # The caller talks over audio they have not heard yet: stop it now. The session decides
                # meanwhile whether this interrupts the reply (and pauses it until then).
                await self._clear()
            case ResponseStarted():
                self._unheard = []
            case ResponseAudioDelta(response_id=response_id, pcm16=pcm16):
                if self._unheard:  # the reply plays on after speech that did not interrupt it
                    again, self._unheard = self._unheard, []
                    for sent in again:
                        if sent.response_id == response_id:
                            self.playback.resent_ms += _ms(sent.mulaw)
                            await self._play(sent)
                await self._play(_Sent(response_id, pcm16_to_mulaw(pcm16)))
            case ResponseFinished(status=status, metrics=metrics, reason=reason):
                self._unheard = []
                if status == "cancelled" and self._marks:
                    await self._clear()
                log.info("call %s: reply %s (%s) %s", self.start.call_sid, status, reason or "", metrics)
            case TranscriptCompleted(transcript=transcript):
                log.debug("call %s: caller said %r", self.start.call_sid, transcript)
            case SessionError(code=code, message=text):
                log.warning("call %s: %s: %s", self.start.call_sid, code, text)

    async def _play(self, sent: _Sent) -> None:
        self._mark_count += 1
        name = f"m{self._mark_count}"
        self._marks[name] = sent
        await self._send(media_message(self.start.stream_sid, sent.mulaw))
        await self._send(mark_message(self.start.stream_sid, name))

    async def _clear(self) -> None:
        """Drop what Twilio still buffers; keep it in case the reply plays on."""
        self._unheard = list(self._marks.values())
        self._dropped_marks.update(self._marks)
        self._marks.clear()
        self.playback.cleared += 1
        await self._send(clear_message(self.start.stream_sid))

    async def _send(self, text: str) -> None:
        async with self._send_lock:
            if self._gone:
                return
            try:
                async with asyncio.timeout(self.settings.send_timeout_s):
                    await self.websocket.send_text(text)
            except (TimeoutError, WebSocketDisconnect, RuntimeError):
                self._gone = True  # Twilio stopped reading or left: the receive loop ends the call


def _ms(mulaw: bytes) -> float:
    return 1000.0 * len(mulaw) / MULAW_SAMPLE_RATE


async def close_stream(websocket: WebSocket, reason: str) -> None:
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        await websocket.close(code=POLICY_VIOLATION, reason=close_reason(reason))


async def await_start(websocket: WebSocket) -> StreamStart:
    """Twilio's `connected` (optional) then `start`; TwilioMessageError for anything else."""
    async with asyncio.timeout(START_TIMEOUT_S):
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                raise WebSocketDisconnect(message.get("code", 1000))
            raw = message.get("text")
            parsed = parse_message(raw if raw is not None else message.get("bytes") or b"")
            if parsed.event == "start" and parsed.start is not None:
                return parsed.start
            if parsed.event != "connected":
                raise TwilioMessageError(f"expected `connected` or `start` first, got `{parsed.event}`")


def phone_routes(
    settings: Settings, credentials: Credentials, admission: Admission, open_session: OpenSession
) -> list[BaseRoute]:
    """The Twilio webhook and Media Streams routes."""
    auth_token = settings.twilio_auth_token.get_secret_value() if settings.twilio_auth_token else None
    users = settings.phone_user_map

    def signed_url(request: Request) -> str:
        """The URL Twilio requested, which it signed: behind a proxy, the public one."""
        if settings.phone_public_url is None:
            return str(request.url)
        query = request.url.query
        return settings.phone_public_url + request.url.path + (f"?{query}" if query else "")

    async def voice(request: Request) -> Response:
        form = await request.form()
        fields = [(name, value) for name, value in form.multi_items() if isinstance(value, str)]
        params = dict(fields)
        url = signed_url(request)
        if auth_token is not None:
            if not signature_valid(auth_token, url, fields, request.headers.get("x-twilio-signature")):
                log.warning("phone webhook refused: X-Twilio-Signature does not match %s", url)
                return PlainTextResponse("X-Twilio-Signature is missing or does not match this URL", 403)
        elif not credentials.open:
            return PlainTextResponse(
                "phone calls need TWILIO_AUTH_TOKEN (the Twilio account's auth token) on a router with keys",
                403,
            )
        if not params.get("CallSid"):
            return PlainTextResponse("the form has no CallSid: this is not a Twilio voice webhook", 400)
        user = caller_user(params.get("From"), users)
        if user == ANONYMOUS and settings.llm_engine == "letta":
            return _twiml(say_twiml("Sorry, this service cannot take calls from a withheld number."))
        secret = credentials.mint(_WEBHOOK, user, STREAM_TOKEN_TTL_S, None)
        base = settings.phone_public_url or f"{request.url.scheme}://{request.url.netloc}"
        scheme, _, host = base.partition("://")
        stream = ("wss" if scheme == "https" else "ws") + "://" + host + STREAM_PATH
        log.info("call %s answered for %s", params["CallSid"], user)
        return _twiml(connect_stream_twiml(stream, {TOKEN_PARAMETER: secret.value}))

    async def stream(websocket: WebSocket) -> None:
        await websocket.accept()
        with contextlib.ExitStack() as place:
            try:
                start = await await_start(websocket)
                principal = await _stream_principal(credentials, start)
                user = principal.bound_user or ANONYMOUS
                if (problem := user_id_problem(user)) is not None:
                    raise CredentialError(403, "invalid_user", problem)
                place.enter_context(admission.session(principal))
            except (TwilioMessageError, CredentialError, ProtocolError, Refused) as exc:
                message = str(exc) if isinstance(exc, TwilioMessageError) else exc.message
                log.warning("phone stream refused: %s", message)
                await close_stream(websocket, message)
                return
            except (TimeoutError, WebSocketDisconnect):
                await close_stream(websocket, "no Media Streams `start` message arrived")
                return
            options = phone_options(settings)
            call = TwilioCall(websocket, start, lambda emit: open_session(user, options, emit), settings)
            await call.run()
        with contextlib.suppress(WebSocketDisconnect, RuntimeError):
            await websocket.close()  # the call's session has ended: so does the stream

    return [Route(VOICE_PATH, voice, methods=["POST"]), WebSocketRoute(STREAM_PATH, stream)]


async def _stream_principal(credentials: Credentials, start: StreamStart) -> Principal:
    token = start.custom_parameters.get(TOKEN_PARAMETER)
    if not token or not token.startswith(CLIENT_SECRET_PREFIX):
        raise CredentialError(
            401, "invalid_api_key", "the stream's `token` parameter from the webhook is missing"
        )
    principal = await credentials.authenticate(token)
    if principal.secret_id is None:
        raise CredentialError(401, "invalid_api_key", "the stream's `token` is not a client secret")
    return principal


def _twiml(body: str) -> Response:
    return Response(body, media_type="application/xml")
