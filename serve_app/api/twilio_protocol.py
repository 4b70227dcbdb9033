"""Twilio's side of a phone call: the Media Streams WebSocket messages, the TwiML that connects a call
to the stream, and Twilio's request signature.

Media Streams (bidirectional, started by `<Connect><Stream>`): Twilio sends `connected`, then `start`
(the stream and call ids, the media format, the `<Parameter>`s of the TwiML as `customParameters`),
then `media` every 20 ms (base64 μ-law at 8 kHz, track `inbound`), `dtmf` for key presses, `mark` when
the audio sent before a mark of ours has played (or was dropped by `clear`), and `stop` when the call
ends. We send `media` (base64 μ-law at 8 kHz), `mark` (a name Twilio echoes) and `clear` (drop the
audio still buffered). Twilio's `<Stream url>` takes no query string: anything the stream needs rides
in `<Parameter>`s.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit
from xml.sax.saxutils import quoteattr

from actors.audio.mulaw import MULAW_SAMPLE_RATE

MEDIA_ENCODING = "audio/x-mulaw"
MAX_MESSAGE_CHARS = 64 * 1024  # a 20 ms media message is ~250 characters; Twilio's largest is `start`
MAX_MEDIA_BYTES = 16_000  # two seconds of μ-law in one message: far beyond what Twilio sends


class TwilioMessageError(ValueError):
    """A Media Streams message that does not follow Twilio's schema."""


@dataclass(frozen=True)
class StreamStart:
    stream_sid: str
    call_sid: str
    account_sid: str
    custom_parameters: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class StreamMessage:
    """One message from Twilio: `event` and what it carries (`start`, `payload` or `mark`)."""

    event: str
    stream_sid: str | None = None
    start: StreamStart | None = None
    payload: bytes = b""  # media: μ-law audio
    mark: str | None = None  # mark: the name we sent
    digit: str | None = None  # dtmf


def _object(message: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = message.get(key)
    if not isinstance(value, Mapping):
        raise TwilioMessageError(f"a {message.get('event')} message needs a `{key}` object")
    return value


def _text(obj: Mapping[str, Any], key: str, where: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise TwilioMessageError(f"`{where}.{key}` must be a non-empty string")
    return value


def parse_message(raw: str | bytes) -> StreamMessage:
    """Validate one Media Streams message from Twilio; TwilioMessageError says what is wrong."""
    if isinstance(raw, bytes):
        raise TwilioMessageError("Media Streams messages are JSON text frames, not binary frames")
    if len(raw) > MAX_MESSAGE_CHARS:
        raise TwilioMessageError(f"message of {len(raw)} characters exceeds the limit of {MAX_MESSAGE_CHARS}")
    try:
        message = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise TwilioMessageError(f"message is not valid JSON: {exc.msg} at position {exc.pos}") from exc
    if not isinstance(message, dict):
        raise TwilioMessageError("message must be a JSON object")
    event = message.get("event")
    if not isinstance(event, str):
        raise TwilioMessageError("message has no `event` string")
    stream_sid = message.get("streamSid")
    if stream_sid is not None and not isinstance(stream_sid, str):
        raise TwilioMessageError("`streamSid` must be a string")
    match event:
        case "connected" | "stop":
            return StreamMessage(event, stream_sid)
        case "start":
            start = _object(message, "start")
            fmt = _object(start, "mediaFormat")
            if fmt.get("encoding") != MEDIA_ENCODING or fmt.get("sampleRate") != MULAW_SAMPLE_RATE:
                raise TwilioMessageError(
                    f"media format {fmt.get('encoding')!r} at {fmt.get('sampleRate')!r} Hz is not supported: "
                    f"Media Streams carry {MEDIA_ENCODING} at {MULAW_SAMPLE_RATE} Hz"
                )
            if fmt.get("channels", 1) != 1:
                raise TwilioMessageError("only mono media is supported")
            params = start.get("customParameters") or {}
            if not isinstance(params, Mapping) or not all(isinstance(v, str) for v in params.values()):
                raise TwilioMessageError("`start.customParameters` must map names to strings")
            sid = stream_sid or _text(start, "streamSid", "start")
            return StreamMessage(
                event,
                sid,
                start=StreamStart(
                    stream_sid=sid,
                    call_sid=_text(start, "callSid", "start"),
                    account_sid=_text(start, "accountSid", "start"),
                    custom_parameters=dict(params),
                ),
            )
        case "media":
            media = _object(message, "media")
            track = media.get("track", "inbound")
            if track != "inbound":
                raise TwilioMessageError(f"media track {track!r} is not the caller's (`inbound`)")
            payload = media.get("payload")
            if not isinstance(payload, str):
                raise TwilioMessageError("`media.payload` must be a base64 string")
            if len(payload) > MAX_MEDIA_BYTES * 4 // 3 + 4:
                raise TwilioMessageError(f"media payload exceeds the limit of {MAX_MEDIA_BYTES} bytes")
            try:
                audio = base64.b64decode(payload, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise TwilioMessageError(f"`media.payload` is not valid base64: {exc}") from exc
            return StreamMessage(event, stream_sid, payload=audio)
        case "mark":
            return StreamMessage(event, stream_sid, mark=_text(_object(message, "mark"), "name", "mark"))
        case "dtmf":
            return StreamMessage(event, stream_sid, digit=_text(_object(message, "dtmf"), "digit", "dtmf"))
        case _:
            raise TwilioMessageError(f"unknown Media Streams event {event[:40]!r}")


def media_message(stream_sid: str, mulaw: bytes) -> str:
    payload = base64.b64encode(mulaw).decode("ascii")
    return json.dumps({"event": "media", "streamSid": stream_sid, "media": {"payload": payload}})


def mark_message(stream_sid: str, name: str) -> str:
    return json.dumps({"event": "mark", "streamSid": stream_sid, "mark": {"name": name}})


def clear_message(stream_sid: str) -> str:
    return json.dumps({"event": "clear", "streamSid": stream_sid})


def connect_stream_twiml(stream_url: str, parameters: Mapping[str, str]) -> str:
    """The TwiML answer that connects the call to a bidirectional stream at `stream_url`."""
    params = "".join(
        f"<Parameter name={quoteattr(name)} value={quoteattr(value)}/>" for name, value in parameters.items()
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f"<Response><Connect><Stream url={quoteattr(stream_url)}>{params}</Stream></Connect></Response>"
    )


def say_twiml(text: str) -> str:
    """A TwiML answer that says `text` and hangs up (a call we cannot take)."""
    escaped = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return f'<?xml version="1.0" encoding="UTF-8"?><Response><Say>{escaped}</Say><Hangup/></Response>'


def request_signature(auth_token: str, url: str, params: Sequence[tuple[str, str]]) -> str:
    """Twilio's `X-Twilio-Signature` for a form POST: HMAC-SHA1, keyed with the account's auth token, of
    the full URL Twilio requested followed by every form field's name and value, sorted by name (a
    repeated name's values sorted too)."""
    data = url + "".join(name + value for name, value in sorted(params))
    digest = hmac.new(auth_token.encode(), data.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def _port_variants(url: str) -> list[str]:
    """`url` as given, and with its scheme's default port dropped or added: Twilio may sign either."""
    parts = urlsplit(url)
    default = {"https": 443, "http": 80}.get(parts.scheme)
    if default is None or parts.hostname is None:
        return [url]
    userinfo = parts.netloc.rpartition("@")[0]
    host = (userinfo + "@" if userinfo else "") + parts.hostname
    without = urlunsplit(parts._replace(netloc=host))
    with_port = urlunsplit(parts._replace(netloc=f"{host}:{parts.port or default}"))
    return list(dict.fromkeys([url, without, with_port]))


def signature_valid(
    auth_token: str, url: str, params: Sequence[tuple[str, str]], signature: str | None
) -> bool:
    """Whether `signature` is Twilio's for this request (see `request_signature`)."""
    if not signature:
        return False
    presented = signature.encode("utf-8", "surrogatepass")
    return any(
        hmac.compare_digest(request_signature(auth_token, candidate, params).encode(), presented)
        for candidate in _port_variants(url)
    )
