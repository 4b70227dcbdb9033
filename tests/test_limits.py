"""Limits and admission control: audio no faster than real time (after a burst), bounded input buffers,
a full router saying "busy", per-credential limits, idle and overlong sessions, clients that stop reading,
request bodies that trickle. Each is answered plainly and leaves the session (or the server) working."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
import websockets
from openai import OpenAI
from starlette.websockets import WebSocketDisconnect

from actors.conversation.session import SessionOptions, VoiceSession
from actors.llm.stage import LLMStage
from actors.tts.simulated import SimulatedTTSEngine
from actors.tts.stage import TTSStage
from serve_app.api.protocol import ProtocolLimits
from serve_app.api.realtime import ConnectionLimits, RealtimeConnection
from testkit.fakes import FakeLLMEngine, served, silence, tone, user_text_event
from testkit.harness import KEY, Harness, make_app

USER_KEYS = "ada:ada-key"


def harness(**overrides: Any) -> Harness:
    return Harness(user_keys=USER_KEYS, **overrides)


@pytest.fixture
def api(request: pytest.FixtureRequest) -> Iterator[Harness]:
    h = harness(**getattr(request, "param", {}))
    with h.http:
        yield h


def connect(api: Harness, key: str = KEY, query: str = ""):
    return api.http.websocket_connect(f"/v1/realtime{query}", headers={"Authorization": f"Bearer {key}"})


def append_event(pcm: bytes) -> str:
    return json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm).decode()})


def receive_until(ws, kind: str) -> list[dict]:
    events = []
    while True:
        events.append(json.loads(ws.receive_text()))
        if events[-1]["type"] == kind:
            return events


def typed_turn(ws) -> dict:
    ws.send_text(user_text_event("still there?"))
    ws.send_text(json.dumps({"type": "response.create"}))
    return receive_until(ws, "response.done")[-1]["response"]


# --------------------------------------------------------------------------------------- input audio


def test_audio_faster_than_real_time_is_refused_after_the_burst_and_the_session_goes_on(api: Harness) -> None:
    with connect(api) as ws:
        receive_until(ws, "session.created")
        ws.send_text(append_event(silence(8_000)))  # 8 s at once: within the 10 s burst
        ws.send_text(append_event(silence(8_000)))  # 16 s ahead of the clock: refused
        error = receive_until(ws, "error")[-1]["error"]
        assert error["code"] == "audio_rate_exceeded" and "real time" in error["message"]
        assert typed_turn(ws)["status"] == "completed"


@pytest.mark.parametrize("api", [{"max_utterance_s": 5}], indirect=True)
def test_push_to_talk_buffer_is_capped_and_what_it_holds_still_commits(api: Harness) -> None:
    with connect(api) as ws:
        receive_until(ws, "session.created")
        ws.send_text(
            json.dumps({"type": "session.update", "session": {"audio": {"input": {"turn_detection": None}}}})
        )
        receive_until(ws, "session.updated")
        ws.send_text(append_event(tone(4_000)))
        ws.send_text(append_event(tone(2_000)))  # 6 s > 5 s
        error = receive_until(ws, "error")[-1]["error"]
        assert error["code"] == "input_audio_buffer_full"
        ws.send_text(json.dumps({"type": "input_audio_buffer.commit"}))
        completed = receive_until(ws, "conversation.item.input_audio_transcription.completed")[-1]
        assert completed["transcript"] == "hello world"
        ws.send_text(json.dumps({"type": "response.create"}))
        assert receive_until(ws, "response.done")[-1]["response"]["status"] == "completed"


def test_speech_that_never_pauses_ends_the_turn_at_the_limit() -> None:
    with make_app(max_utterance_s=5).websocket_connect("/v1/realtime") as ws:  # VAD: loud is speech
        receive_until(ws, "session.created")
        for _ in range(70):  # 7 s of speech in 100 ms appends, as a client streams it
            ws.send_text(append_event(tone(100)))
        events = receive_until(ws, "response.done")
        stopped = next(e for e in events if e["type"] == "input_audio_buffer.speech_stopped")
        assert 5_000 <= stopped["audio_end_ms"] <= 7_000
        assert events[-1]["response"]["status"] == "completed"


async def test_a_client_blasting_audio_does_not_hold_up_other_sessions() -> None:
    h = harness()
    async with served(h.http.app) as url:
        ws_url = url.replace("http", "ws") + "/v1/realtime"
        headers = {"Authorization": f"Bearer {KEY}"}
        async with (
            websockets.connect(ws_url, additional_headers=headers, max_size=None) as blaster,
            websockets.connect(ws_url, additional_headers=headers) as other,
            httpx.AsyncClient(base_url=url) as http,
        ):
            await blaster.recv()
            await other.recv()
            one_mib = append_event(tone(21_000))
            for _ in range(10):
                await blaster.send(one_mib)
            # Meanwhile the server still answers its health check and the other session's turn.
            async with asyncio.timeout(5):
                assert (await http.get("/healthz")).status_code == 200
                await other.send(user_text_event("hello"))
                await other.send(json.dumps({"type": "response.create"}))
                while (event := json.loads(await other.recv()))["type"] != "response.done":
                    pass
            assert event["response"]["status"] == "completed"
            codes = []
            async with asyncio.timeout(10):
                while len(codes) < 10:
                    event = json.loads(await blaster.recv())
                    if event["type"] == "error":
                        codes.append(event["error"]["code"])
            assert set(codes) == {"audio_rate_exceeded"}  # 21 s each: none fits the 10 s burst


# ------------------------------------------------------------------------------------ admission


@pytest.mark.parametrize("api", [{"max_sessions_per_router": 2}], indirect=True)
def test_a_full_router_refuses_new_sessions_as_busy_and_takes_them_again_when_one_ends(api: Harness) -> None:
    with connect(api) as first, connect(api) as second:
        receive_until(first, "session.created")
        receive_until(second, "session.created")
        with connect(api) as third:
            error = json.loads(third.receive_text())
            assert error["error"]["code"] == "server_busy" and "retry after" in error["error"]["message"]
            with pytest.raises(WebSocketDisconnect) as closed:
                third.receive_text()
            assert closed.value.code == 1013  # Try Again Later
        assert typed_turn(first)["status"] == "completed"  # the open sessions are untouched
    with connect(api) as again:
        receive_until(again, "session.created")


@pytest.mark.parametrize("api", [{"credential_max_sessions": 1}], indirect=True)
def test_a_user_credential_has_a_session_limit(api: Harness) -> None:
    with connect(api, key="ada-key") as first:
        receive_until(first, "session.created")
        with connect(api, key="ada-key") as second:
            assert json.loads(second.receive_text())["error"]["code"] == "too_many_sessions"
            with pytest.raises(WebSocketDisconnect) as closed:
                second.receive_text()
            assert closed.value.code == 1008
        with connect(api, key=KEY, query="?user=bob") as other:  # a server key is not counted
            receive_until(other, "session.created")


@pytest.mark.parametrize("api", [{"credential_requests_per_minute": 2}], indirect=True)
def test_a_user_credential_has_a_request_rate(api: Harness) -> None:
    ada = OpenAI(base_url="http://testserver/v1", api_key="ada-key", http_client=api.http, max_retries=0)
    ada.models.list()
    ada.models.list()
    with pytest.raises(openai.RateLimitError) as limited:
        ada.models.list()
    assert limited.value.response.headers["retry-after"] == "30"
    assert limited.value.body["code"] == "rate_limited"
    assert api.client.models.list().data  # the server key is not limited


async def test_a_full_router_answers_rest_with_503_and_retry_after() -> None:
    h = harness(max_requests_per_router=1)
    h.llm.tokens_per_s = 5  # a reply that streams for a while
    async with served(h.http.app) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
        auth = {"Authorization": f"Bearer {KEY}"}
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
        async with http.stream("POST", "/v1/chat/completions", headers=auth, json=body) as streaming:
            lines = streaming.aiter_lines()
            await anext(lines)  # the first chunk: the stream holds its place
            busy = await http.get("/v1/models", headers=auth)
            assert busy.status_code == 503 and busy.headers["retry-after"] == "5"
            assert busy.json()["error"]["code"] == "server_busy"
            assert (await http.get("/healthz")).status_code == 200  # health is never refused
            async for _ in lines:
                pass
        assert (await http.get("/v1/models", headers=auth)).status_code == 200


async def test_a_request_body_that_trickles_is_cut_off() -> None:
    h = harness(rest_body_timeout_s=1)
    async with served(h.http.app) as url:
        host, port = url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
            "Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{".encode()
        )
        await writer.drain()
        async with asyncio.timeout(10):
            status = await reader.readline()
            assert b" 408 " in status
            head = await reader.readuntil(b"\r\n\r\n")
        assert b"request_timeout" in await reader.read(4096) or b"request_timeout" in head
        writer.close()


# -------------------------------------------------------------------- connection timeouts (virtual time)


class ScriptedWebSocket:
    """What RealtimeConnection uses of Starlette's WebSocket: a client that sends nothing, and reads
    everything (or, with `reads=False`, nothing once it has read `reads_before_stall` events)."""

    def __init__(self, reads_before_stall: int | None = None) -> None:
        self.sent: list[dict] = []
        self.closed: tuple[int, str] | None = None
        self._stall_after = reads_before_stall
        self._never = asyncio.Event()

    async def receive(self) -> dict:
        await self._never.wait()
        raise AssertionError("unreachable")

    async def send_text(self, text: str) -> None:
        if self._stall_after is not None and len(self.sent) >= self._stall_after:
            await self._never.wait()  # the client's buffers are full: the write never completes
        self.sent.append(json.loads(text))

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.closed = (code, reason)


def connection(ws: ScriptedWebSocket, **limits: float) -> RealtimeConnection:
    def make_session(emit) -> VoiceSession:
        return VoiceSession(
            stt=None,  # type: ignore[arg-type]  # no audio in these sessions
            llm=LLMStage(FakeLLMEngine(" ".join(["word"] * 400), ttft_ms=10, tokens_per_s=20)),
            tts=TTSStage(SimulatedTTSEngine(ttfb_ms=5)),
            emit=emit,
            options=SessionOptions(instructions="", turn_detection=None),
        )

    return RealtimeConnection(
        ws,  # type: ignore[arg-type]
        make_session,
        ProtocolLimits(1 << 20, 1 << 20, 4000),
        "m",
        ConnectionLimits(**limits),
    )


@pytest.mark.looptime
async def test_an_idle_session_is_closed_with_the_reason() -> None:
    ws = ScriptedWebSocket()
    started = asyncio.get_running_loop().time()
    await connection(ws, idle_timeout_s=60).run()
    assert asyncio.get_running_loop().time() - started == pytest.approx(60)
    assert ws.sent[-1]["error"]["code"] == "idle_timeout"
    assert ws.closed is not None and ws.closed[0] == 1008


@pytest.mark.looptime
async def test_a_session_ends_at_its_maximum_length() -> None:
    ws = ScriptedWebSocket()
    started = asyncio.get_running_loop().time()
    await connection(ws, idle_timeout_s=3600, max_session_s=1500).run()
    assert asyncio.get_running_loop().time() - started == pytest.approx(1500)
    assert ws.sent[-1]["error"]["code"] == "session_expired"


@pytest.mark.looptime
async def test_a_client_that_stops_reading_is_disconnected_and_its_session_closed() -> None:
    ws = ScriptedWebSocket(reads_before_stall=3)
    conn = connection(ws, send_timeout_s=10, idle_timeout_s=600)
    run = asyncio.create_task(conn.run())
    await asyncio.sleep(0)
    await conn.session.add_user_text("talk for a long time")
    await conn.session.create_response()
    async with asyncio.timeout(30):  # virtual seconds: the reply alone would take ~20
        await run
    assert not conn.session.responding  # the reply was cancelled with the session
