"""What a user notices when a provider or a stage fails, through the router app in process (Starlette's
TestClient): a spoken apology and a failed `response.done` with a public code, never internals; the next
turn works; `/readyz` names a dead upstream. The LLM is the real OpenAI engine behind the fault proxy."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Iterator

import pytest
from starlette.testclient import TestClient

from actors.config import Settings
from actors.llm.call_policy import LLMCallPolicy
from actors.llm.openai_engine import OpenAILLMEngine
from actors.llm.stage import LLMStage
from actors.probe import problems
from actors.stt.base import STTEngine, STTStream
from actors.stt.simulated import SimulatedSTTEngine
from actors.tts.base import DEFAULT_STYLE, SpeechStyle
from actors.tts.simulated import SimulatedTTSEngine
from actors.tts.stage import TTSStage
from serve_app.api.deps import RouterDeps
from serve_app.api.router_app import build_router_app
from testkit.fakes import EnergySpeechDetector, silence, tone, user_text_event
from testkit.fault_proxy import Fault, FaultProxy, start_fault_proxy
from testkit.harness import APOLOGY, INTERNALS
from testkit.sim_openai_server import SimOpenAIConfig, SimOpenAIServer, start_sim_openai_server
from tests.test_router_app import SERVER_EVENT

REPLY = "Hello there. How are you today? I am fine, thank you for asking."
POLICY = LLMCallPolicy(
    connect_timeout_s=0.5, first_token_timeout_s=1.0, chunk_timeout_s=1.0, max_retries=2, retry_budget_s=3.0
)


class ReplicaDied(Exception):
    """Looks like what a Serve handle raises when the replica's process is gone."""

    def __init__(self) -> None:
        super().__init__(
            "The actor died unexpectedly before finishing this task. class_name: ServeReplica:voice:STT "
            "actor_id: 9f3c1a7e5b2d4c6e8a0b1c2d3e4f5a6b01000000 pid: 4242 ip: 10.1.2.3"
        )


ReplicaDied.__name__ = "ActorDiedError"  # how the sanitiser recognises a dead replica


@pytest.fixture(scope="module")
def sim() -> Iterator[SimOpenAIServer]:
    server = start_sim_openai_server(SimOpenAIConfig(reply=REPLY, ttft_ms=20, tokens_per_s=50))
    yield server
    server.stop()


@pytest.fixture
def proxy(sim: SimOpenAIServer) -> Iterator[FaultProxy]:
    p = start_fault_proxy(sim.base_url)
    yield p
    p.stop()


class SwitchableTTS(TTSStage):
    """A TTS stage whose replica can be 'dead'."""

    def __init__(self) -> None:
        super().__init__(SimulatedTTSEngine(ttfb_ms=5, realtime_factor=1000))
        self.dead = False

    async def synthesize(
        self, text: str, sample_rate: int, style: SpeechStyle = DEFAULT_STYLE
    ) -> AsyncIterator[bytes]:
        if self.dead:
            raise ReplicaDied()
        async for chunk in super().synthesize(text, sample_rate, style):
            yield chunk


class DyingSTTStream(STTStream):
    def __init__(self, engine: DyingSTT) -> None:
        self.engine = engine
        self.inner = SimulatedSTTEngine("what time is it", finalize_delay_ms=10).open_stream()
        self.calls = 0

    async def feed(self, pcm16: bytes) -> str | None:
        self.calls += 1
        if self.engine.mode and self.calls > 2:  # dies a little into the utterance
            self.engine.mode, mode = None, self.engine.mode
            if mode == "raise":
                raise ReplicaDied()
            await asyncio.Event().wait()  # no replica answers
        return await self.inner.feed(pcm16)

    async def finish(self) -> str:
        return await self.inner.finish()


class DyingSTT(STTEngine):
    name, model = "dying", "test"

    def __init__(self) -> None:
        self.mode: str | None = None  # "raise" (replica died) or "hang" (no replica answers)

    def open_stream(self) -> STTStream:
        return DyingSTTStream(self)


def make_client(
    proxy: FaultProxy, *, tts: TTSStage | None = None, stt: STTEngine | None = None
) -> TestClient:
    settings = Settings(
        stt_engine="pocketsphinx", llm_engine="openai", tts_engine="espeak", stage_timeout_s=0.5
    ).resolved()
    engine = OpenAILLMEngine(base_url=proxy.base_url, model="sim", policy=POLICY, probe_ttl_s=0.3)
    deps = RouterDeps(
        settings=settings,
        stt=stt or SimulatedSTTEngine("what time is it", finalize_delay_ms=10),
        llm=LLMStage(engine),
        tts=tts or TTSStage(SimulatedTTSEngine(ttfb_ms=5, realtime_factor=1000)),
        speech_detector=EnergySpeechDetector,
        upstreams=lambda: problems({"llm": engine.probe}),
    )
    return TestClient(build_router_app(deps))


def receive_until(ws, kind: str, times: list[float] | None = None) -> list[dict]:
    events = []
    for _ in range(5000):
        event = json.loads(ws.receive_text())
        SERVER_EVENT.validate_python(event)
        events.append(event)
        if times is not None:
            times.append(time.monotonic())
        if event["type"] == kind:
            return events
    raise AssertionError(f"no {kind} in {[e['type'] for e in events]}")


def text_turn(ws, text: str, times: list[float] | None = None) -> list[dict]:
    ws.send_text(user_text_event(text))
    ws.send_text(json.dumps({"type": "response.create"}))
    return receive_until(ws, "response.done", times)


def assert_no_internals(events: list[dict]) -> None:
    for event in events:
        if event["type"] != "response.output_audio.delta":  # base64 audio can spell anything
            text = json.dumps(event)
            assert not INTERNALS.search(text), text


def transcript(events: list[dict], kind: str = "response.output_audio_transcript.delta") -> str:
    return "".join(e["delta"] for e in events if e["type"] == kind)


def audio_after_apology(events: list[dict]) -> int:
    """Bytes of reply audio sent after the apology's transcript started."""
    start = next(i for i, e in enumerate(events) if APOLOGY in e.get("delta", ""))
    return sum(
        len(base64.b64decode(e["delta"]))
        for e in events[start:]
        if e["type"] == "response.output_audio.delta"
    )


def test_refused_llm_gets_a_spoken_apology_and_the_next_turn_works(proxy: FaultProxy) -> None:
    proxy.refuse()
    with make_client(proxy).websocket_connect("/v1/realtime") as ws:
        receive_until(ws, "session.created")
        started = time.monotonic()
        times: list[float] = []
        events = text_turn(ws, "What time is it?", times)
        done = events[-1]["response"]
        assert done["status"] == "failed"
        assert done["status_details"]["error"]["code"] == "llm_unavailable"
        assert done["status_details"]["error"]["message"] == "The language model is not reachable right now."
        assert transcript(events) == APOLOGY == done["output"][0]["content"][0]["transcript"]
        assert audio_after_apology(events) > 24_000  # about a second of speech or more
        # The retries of a refused connection take well under a second; the apology comes right after.
        first_audio = next(t for t, e in zip(times, events, strict=True) if e["type"].endswith("audio.delta"))
        assert first_audio - started < 2.0
        assert_no_internals(events)

        proxy.accept()
        events = text_turn(ws, "And now?")
        done = events[-1]["response"]
        assert done["status"] == "completed" and transcript(events) == REPLY


def test_llm_that_never_answers_fails_within_the_budget(proxy: FaultProxy) -> None:
    proxy.default = Fault("hang")
    with make_client(proxy).websocket_connect("/v1/realtime") as ws:
        receive_until(ws, "session.created")
        started = time.monotonic()
        events = text_turn(ws, "Hello?")
        elapsed = time.monotonic() - started
        done = events[-1]["response"]
        assert done["status"] == "failed"
        assert done["status_details"]["error"]["code"] == "llm_timeout"
        assert transcript(events) == APOLOGY
        assert elapsed < POLICY.retry_budget_s + 2.0
        assert_no_internals(events)


def test_stall_mid_reply_keeps_what_was_said_then_apologises(proxy: FaultProxy, sim: SimOpenAIServer) -> None:
    proxy.plan.append(Fault("stall", after_events=3))  # the role chunk, "Hello", " there."
    with make_client(proxy).websocket_connect("/v1/realtime") as ws:
        receive_until(ws, "session.created")
        times: list[float] = []
        events = text_turn(ws, "Hi!", times)
        done = events[-1]["response"]
        assert done["status"] == "failed"
        assert done["status_details"]["error"]["code"] == "llm_stalled"
        assert transcript(events) == f"Hello there. {APOLOGY}"
        assert audio_after_apology(events) > 24_000
        # Silence between the first phrase and the apology: the chunk timeout, then at most 2 s.
        said = [t for t, e in zip(times, events, strict=True) if "delta" in e and e["type"].endswith("delta")]
        apology_at = next(t for t, e in zip(times, events, strict=True) if APOLOGY in e.get("delta", ""))
        last_before = max(t for t in said if t < apology_at)
        assert apology_at - last_before < POLICY.chunk_timeout_s + 2.0
        assert_no_internals(events)

        events = text_turn(ws, "Go on.")
        assert events[-1]["response"]["status"] == "completed"
        # The conversation keeps what was said, not the apology.
        history = sim.requests[-1]["body"]["messages"]
        assert {"role": "assistant", "content": "Hello there."} in history
        assert not any(APOLOGY in m["content"] for m in history)


def test_text_only_session_gets_the_apology_as_text(proxy: FaultProxy) -> None:
    proxy.refuse()
    with make_client(proxy).websocket_connect("/v1/realtime") as ws:
        receive_until(ws, "session.created")
        ws.send_text(
            json.dumps(
                {"type": "session.update", "session": {"type": "realtime", "output_modalities": ["text"]}}
            )
        )
        receive_until(ws, "session.updated")
        events = text_turn(ws, "Hello?")
        assert events[-1]["response"]["status"] == "failed"
        assert transcript(events, "response.output_text.delta") == APOLOGY
        assert not any(e["type"] == "response.output_audio.delta" for e in events)


def test_dead_tts_is_reported_promptly_and_the_next_turn_works(proxy: FaultProxy) -> None:
    tts = SwitchableTTS()
    tts.dead = True
    with make_client(proxy, tts=tts).websocket_connect("/v1/realtime") as ws:
        receive_until(ws, "session.created")
        started = time.monotonic()
        events = text_turn(ws, "Hello?")
        assert time.monotonic() - started < 2.0
        errors = [e["error"] for e in events if e["type"] == "error"]
        assert [e["code"] for e in errors] == ["tts_unavailable"]
        done = events[-1]["response"]
        assert done["status"] == "failed"
        assert done["status_details"]["error"]["code"] == "tts_unavailable"
        assert_no_internals(events)

        tts.dead = False
        events = text_turn(ws, "Hello again?")
        assert events[-1]["response"]["status"] == "completed" and transcript(events) == REPLY


def test_cancel_during_the_llm_stream_says_client_cancelled(proxy: FaultProxy) -> None:
    proxy.plan.append(Fault("stall", after_events=1))  # the stream is open, no token yet
    with make_client(proxy).websocket_connect("/v1/realtime") as ws:
        receive_until(ws, "session.created")
        ws.send_text(user_text_event("Hello?"))
        ws.send_text(json.dumps({"type": "response.create"}))
        receive_until(ws, "response.created")
        ws.send_text(json.dumps({"type": "response.cancel"}))
        done = receive_until(ws, "response.done")[-1]["response"]
        assert done["status"] == "cancelled"
        assert done["status_details"]["reason"] == "client_cancelled"


def append(ws, pcm: bytes) -> None:
    ws.send_text(json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm).decode()}))


STT_MESSAGES = {
    "raise": "The speech recogniser is unavailable right now; try again soon.",
    "hang": "The speech recogniser did not answer in time.",
}


@pytest.mark.parametrize("mode", ["raise", "hang"])
def test_stt_dying_mid_utterance_is_reported_before_the_user_stops(proxy: FaultProxy, mode: str) -> None:
    stt = DyingSTT()
    stt.mode = mode
    with make_client(proxy, stt=stt).websocket_connect("/v1/realtime") as ws:
        receive_until(ws, "session.created")
        for _ in range(40):  # 4 s of speech in 100 ms appends, sent faster than real time
            append(ws, tone(100))
        started = time.monotonic()
        events = receive_until(ws, "error")
        assert time.monotonic() - started < 2.0
        assert events[-1]["error"]["code"] == "transcription_failed"
        assert events[-1]["error"]["message"] == STT_MESSAGES[mode]
        assert_no_internals(events)
        append(ws, silence(800))
        # The next utterance is transcribed and answered.
        append(ws, tone(800) + silence(800))
        events = receive_until(ws, "response.done")
        assert "conversation.item.input_audio_transcription.completed" in [e["type"] for e in events]
        assert events[-1]["response"]["status"] == "completed"


def test_readyz_names_a_dead_llm_upstream(proxy: FaultProxy) -> None:
    with make_client(proxy) as client:  # one event loop for all requests, as in a server
        assert client.get("/readyz").status_code == 200
        proxy.refuse()
        time.sleep(0.4)  # past the probe's cache
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["down"] == {"llm": "the LLM server is unreachable"}
        assert client.get("/healthz").status_code == 200  # liveness is not readiness
        proxy.accept()
        time.sleep(0.4)
        assert client.get("/readyz").status_code == 200


def test_rest_chat_with_a_dead_llm_is_a_clean_502(proxy: FaultProxy) -> None:
    proxy.refuse()
    response = make_client(proxy).post(
        "/v1/chat/completions", json={"model": "sim", "messages": [{"role": "user", "content": "Hi"}]}
    )
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["code"] == "llm_unavailable"
    assert not INTERNALS.search(json.dumps(error))
