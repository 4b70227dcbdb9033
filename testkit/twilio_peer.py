"""A simulated Twilio for phone-call tests and benchmarks: the voice webhook as Twilio calls it (a
signed form POST), and the Media Streams side of a call as Twilio documents it.

The peer sends `connected`, `start` (with the TwiML's `<Parameter>`s as `customParameters`), then a
`media` message every 20 ms, all the time, as a phone line does: the caller's speech when there is
some, a faint line noise otherwise. It plays the agent's `media` at real time from a buffer, echoes
each of the agent's `mark`s once the audio sent before it has played, and on `clear` drops what it
still buffers and echoes the marks in it at once. Every message the agent sends is checked against
the documented schema.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import websockets

from actors.audio.mulaw import MULAW_SAMPLE_RATE, mulaw_to_pcm16, pcm16_to_mulaw
from actors.audio.pcm import resample
from serve_app.api.twilio_protocol import request_signature

FRAME_BYTES = MULAW_SAMPLE_RATE // 50  # 20 ms of μ-law
ACCOUNT_SID = "AC" + "0" * 32


def to_mulaw(pcm16: bytes, rate: int) -> bytes:
    """Speech at `rate` as a phone line carries it: 8 kHz μ-law."""
    return pcm16_to_mulaw(resample(pcm16, rate, MULAW_SAMPLE_RATE))


def _line_noise(frames: int, seed: int = 1) -> bytes:
    noise = np.random.default_rng(seed).integers(-20, 21, size=frames * FRAME_BYTES).astype("<i2")
    return pcm16_to_mulaw(noise.tobytes())


@dataclass
class Answer:
    """The webhook's TwiML: where to stream and with which parameters."""

    status: int
    body: str
    stream_url: str = ""
    parameters: dict[str, str] = field(default_factory=dict)


async def call_webhook(
    http: httpx.AsyncClient, url: str, caller: str, auth_token: str | None, signed_url: str | None = None
) -> Answer:
    """POST the voice webhook as Twilio does when `caller` dials in (signed when `auth_token` is given)."""
    form = {
        "AccountSid": ACCOUNT_SID,
        "ApiVersion": "2010-04-01",
        "CallSid": "CA" + uuid.uuid4().hex,
        "CallStatus": "ringing",
        "Called": "+15005550006",
        "Caller": caller,
        "Direction": "inbound",
        "From": caller,
        "To": "+15005550006",
    }
    headers = {}
    if auth_token is not None:
        headers["X-Twilio-Signature"] = request_signature(auth_token, signed_url or url, list(form.items()))
    response = await http.post(url, data=form, headers=headers)
    answer = Answer(response.status_code, response.text)
    if response.status_code == 200 and "<Stream" in response.text:
        stream = ET.fromstring(response.text).find("./Connect/Stream")
        assert stream is not None, response.text
        answer.stream_url = stream.attrib["url"]
        answer.parameters = {p.attrib["name"]: p.attrib["value"] for p in stream.findall("Parameter")}
    return answer


class TwilioPeer:
    """Twilio's end of one Media Streams call (see the module docstring)."""

    def __init__(self, ws: Any, parameters: dict[str, str]) -> None:
        self.ws = ws
        self.parameters = parameters
        self.stream_sid = "MZ" + uuid.uuid4().hex
        self.call_sid = "CA" + uuid.uuid4().hex
        self.received = bytearray()  # every μ-law byte of agent audio received
        self.played = bytearray()  # what the caller heard
        self.marks_sent: list[str] = []  # marks received from the agent, in order
        self.marks_echoed: list[str] = []
        self.clears: list[float] = []  # monotonic times a clear arrived
        self.dropped: list[bytes] = []  # per clear, the agent audio it dropped unplayed
        self.received_at_clear: list[int] = []  # per clear, how much audio had been received
        self.media_times: list[float] = []  # monotonic time each agent media message arrived
        self.speech_ended: list[float] = []  # monotonic time the caller's last speech frame was sent
        self._buffer: list[bytes | str] = []  # agent audio and marks, in play order
        self._speech = bytearray()
        self._sequence = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._noise = _line_noise(50)

    async def __aenter__(self) -> TwilioPeer:
        await self._send({"event": "connected", "protocol": "Call", "version": "1.0.0"})
        await self._send(
            {
                "event": "start",
                "start": {
                    "accountSid": ACCOUNT_SID,
                    "streamSid": self.stream_sid,
                    "callSid": self.call_sid,
                    "tracks": ["inbound"],
                    "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                    "customParameters": self.parameters,
                },
                "streamSid": self.stream_sid,
            }
        )
        self._tasks = [asyncio.create_task(self._line()), asyncio.create_task(self._listen())]
        return self

    async def __aexit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            await self._send({"event": "stop", "stop": {"accountSid": ACCOUNT_SID, "callSid": self.call_sid}})
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def say(self, mulaw: bytes) -> None:
        """The caller speaks `mulaw` (8 kHz), from the next 20 ms frame on."""
        self._speech += mulaw

    @property
    def speaking(self) -> bool:
        return bool(self._speech)

    @property
    def playing(self) -> bool:
        """Agent audio is still buffered, unplayed."""
        return any(isinstance(item, bytes) for item in self._buffer)

    async def wait_until(self, condition: Any, limit_s: float = 60.0) -> None:
        async with asyncio.timeout(limit_s):
            while not condition():
                for task in self._tasks:
                    if task.done():
                        task.result()
                        raise AssertionError("the stream ended")
                await asyncio.sleep(0.02)

    async def send_raw(self, text: str) -> None:
        await self.ws.send(text)

    async def _send(self, message: dict[str, Any]) -> None:
        if message["event"] != "connected":
            self._sequence += 1
            message["sequenceNumber"] = str(self._sequence)
        await self.ws.send(json.dumps(message))

    async def _line(self) -> None:
        """Every 20 ms: one inbound media frame out, 20 ms of the agent's audio played."""
        started = time.monotonic()
        frame = 0
        while True:
            if self._speech:
                payload = bytes(self._speech[:FRAME_BYTES]).ljust(FRAME_BYTES, b"\xff")
                del self._speech[:FRAME_BYTES]
                if not self._speech:
                    self.speech_ended.append(time.monotonic())
            else:
                at = (frame % 50) * FRAME_BYTES
                payload = self._noise[at : at + FRAME_BYTES]
            frame += 1
            media = {
                "track": "inbound",
                "chunk": str(frame),
                "timestamp": str(frame * 20),
                "payload": base64.b64encode(payload).decode(),
            }
            await self._send({"event": "media", "streamSid": self.stream_sid, "media": media})
            await self._play(FRAME_BYTES)
            await asyncio.sleep(max(0.0, started + frame * 0.02 - time.monotonic()))

    async def _play(self, budget: int) -> None:
        while self._buffer:
            head = self._buffer[0]
            if isinstance(head, str):
                self._buffer.pop(0)
                await self._echo(head)
                continue
            if budget == 0:
                return
            take = head[:budget]
            self.played += take
            budget -= len(take)
            if len(take) == len(head):
                self._buffer.pop(0)
            else:
                self._buffer[0] = head[len(take) :]

    async def _echo(self, name: str) -> None:
        self.marks_echoed.append(name)
        await self._send({"event": "mark", "streamSid": self.stream_sid, "mark": {"name": name}})

    async def _listen(self) -> None:
        async for raw in self.ws:
            message = json.loads(raw)
            event = message.get("event")
            assert message.get("streamSid") == self.stream_sid, message
            if event == "media":
                assert set(message) == {"event", "streamSid", "media"}, message
                mulaw = base64.b64decode(message["media"]["payload"], validate=True)
                self.received += mulaw
                self.media_times.append(time.monotonic())
                self._buffer.append(mulaw)
            elif event == "mark":
                assert set(message) == {"event", "streamSid", "mark"}, message
                name = message["mark"]["name"]
                assert isinstance(name, str) and name, message
                self.marks_sent.append(name)
                self._buffer.append(name)
            elif event == "clear":
                assert set(message) == {"event", "streamSid"}, message
                self.clears.append(time.monotonic())
                self.dropped.append(b"".join(item for item in self._buffer if isinstance(item, bytes)))
                self.received_at_clear.append(len(self.received))
                pending = [item for item in self._buffer if isinstance(item, str)]
                self._buffer.clear()
                for name in pending:
                    await self._echo(name)
            else:
                raise AssertionError(f"Twilio does not accept {event!r} messages: {message}")


def pcm_of(mulaw: bytes) -> bytes:
    """Agent audio as PCM16 at 8 kHz, for checks."""
    return mulaw_to_pcm16(mulaw)


@contextlib.asynccontextmanager
async def phone_call(stream_url: str, parameters: dict[str, str]) -> Any:
    """Open the Media Stream the webhook pointed at, as Twilio does, and run the peer on it."""
    async with websockets.connect(stream_url, max_size=None) as ws, TwilioPeer(ws, parameters) as peer:
        yield peer
