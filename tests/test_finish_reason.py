"""A reply cut short ends as OpenAI's do: the LLM's finish reason ("length", "content_filter") travels
from the engine through the LLM stage to the reply, which ends `incomplete` with the reason in
`status_details` (Realtime), and to REST chat's `finish_reason`. In process, and through the official
SDK against the router on a real socket with the OpenAI-compatible engine and the simulated server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, Iterator

import pytest
from openai import AsyncOpenAI
from starlette.testclient import TestClient

from actors.config import Settings
from actors.conversation.events import ResponseFinished, ResponseTextDelta
from actors.conversation.metrics import TURNS, TurnTimeline
from actors.conversation.options import SessionLimits, SessionOptions
from actors.conversation.reply import ReplyPlayer
from actors.conversation.stages import LLMEvent, LLMRequest
from actors.conversation.turns import Conversation, UserTurn
from actors.llm.base import LLMEngine, LLMFinish
from actors.llm.openai_engine import OpenAILLMEngine
from actors.llm.stage import LLMStage
from actors.memory.sink import RecentTurnsSink
from actors.stt.simulated import SimulatedSTTEngine
from actors.tts.simulated import SimulatedTTSEngine
from actors.tts.stage import TTSStage
from serve_app.api.deps import RouterDeps
from serve_app.api.router_app import build_router_app
from testkit.fakes import EnergySpeechDetector, FakeLLMEngine, served, user_text_event
from testkit.harness import receive_until
from testkit.sim_openai_server import SimOpenAIConfig, SimOpenAIServer, start_sim_openai_server

REPLY = "One two three. Four five six. Seven eight nine."  # nine tokens


def request(max_tokens: int) -> LLMRequest:
    return {
        "messages": [{"role": "user", "content": "Count."}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "user_id": "ada",
    }


# --- the LLM stage ------------------------------------------------------------------------------------


class SilentEngine(LLMEngine):
    """An engine that never says why it stopped (as a server without finish reasons)."""

    name, model = "silent", "m"

    async def stream(self, request: LLMRequest) -> AsyncGenerator[str | LLMFinish, None]:
        yield "Hello."


async def test_the_stage_ends_both_streams_with_the_engines_finish_reason() -> None:
    stage = LLMStage(FakeLLMEngine(REPLY, ttft_ms=0, tokens_per_s=10_000))
    phrases = [e async for e in stage.stream_phrases(request(4))]
    assert phrases[-1] == {"type": "finish", "finish_reason": "length"}
    assert [e for e in phrases if e["type"] == "finish"] == phrases[-1:]  # once, last
    assert " ".join(e["text"] for e in phrases if e["type"] == "phrase") == "One two three. Four"
    tokens = [t async for t in stage.stream_tokens(request(4))]
    assert tokens == ["One", " two", " three.", " Four", {"type": "finish", "finish_reason": "length"}]
    whole = [e async for e in stage.stream_phrases(request(100))]
    assert whole[-1] == {"type": "finish", "finish_reason": "stop"}
    # An engine that cannot tell finished its reply as far as anyone knows.
    silent = LLMStage(SilentEngine())
    assert [e async for e in silent.stream_phrases(request(10))][-1]["type"] == "finish"
    assert [t async for t in silent.stream_tokens(request(10))] == [
        "Hello.",
        {"type": "finish", "finish_reason": "stop"},
    ]


# --- the reply player ---------------------------------------------------------------------------------


class FilteredLLM:
    """An LLM stage whose provider's content filter stops the reply after one phrase."""

    async def stream_phrases(self, request: LLMRequest) -> AsyncGenerator[LLMEvent, None]:
        yield {"type": "first_token", "text": "Well"}
        yield {"type": "phrase", "text": "Well, about that."}
        yield {"type": "finish", "finish_reason": "content_filter"}

    async def stream_tokens(self, request: LLMRequest) -> AsyncGenerator[str | LLMFinish, None]:
        yield {"type": "finish", "finish_reason": "content_filter"}


async def play(llm: LLMStage | FilteredLLM, *, max_tokens: int, audio: bool) -> tuple[list, RecentTurnsSink]:
    events: list = []
    sink = RecentTurnsSink()
    conversation = Conversation()
    finished = asyncio.Event()

    async def emit(event: object) -> None:
        events.append(event)
        if isinstance(event, ResponseFinished):
            finished.set()

    player = ReplyPlayer(
        llm=llm,
        tts=TTSStage(SimulatedTTSEngine(ttfb_ms=1, realtime_factor=1000)),
        emit=emit,
        options=SessionOptions(instructions="Count.", output_audio=audio, max_tokens=max_tokens),
        limits=SessionLimits(audio_lead_ms=100_000),
        conversation=conversation,
        session_id="sess_1",
        user_id="ada",
        memory_sink=sink,
    )
    player.start(UserTurn("item_1", "Count."), TurnTimeline())
    async with asyncio.timeout(30):
        await finished.wait()
    assert conversation.history[-1] == {"role": "assistant", "content": events[-1].text}
    return events, sink


@pytest.mark.parametrize("audio", [True, False], ids=["audio", "text"])
async def test_a_reply_cut_by_max_tokens_is_incomplete_and_kept(audio: bool) -> None:
    llm = LLMStage(FakeLLMEngine(REPLY, ttft_ms=1, tokens_per_s=1000))
    incomplete = TURNS.labels(status="incomplete")._value.get()  # type: ignore[attr-defined]
    events, sink = await play(llm, max_tokens=4, audio=audio)
    done = events[-1]
    assert (done.status, done.reason, done.text) == ("incomplete", "max_output_tokens", "One two three. Four")
    assert "".join(e.delta for e in events if isinstance(e, ResponseTextDelta)) == done.text
    assert sink.turns[-1].assistant_text == done.text
    assert sink.turns[-1].interrupted is False  # the user heard all there was: nobody cut in
    assert TURNS.labels(status="incomplete")._value.get() == incomplete + 1  # type: ignore[attr-defined]
    events, _ = await play(llm, max_tokens=9, audio=audio)  # exactly enough: a whole reply
    assert (events[-1].status, events[-1].reason, events[-1].text) == ("completed", None, REPLY)


async def test_a_reply_the_content_filter_stopped_is_incomplete() -> None:
    events, sink = await play(FilteredLLM(), max_tokens=100, audio=True)
    done = events[-1]
    assert (done.status, done.reason, done.text) == ("incomplete", "content_filter", "Well, about that.")
    assert sink.turns[-1].interrupted is False


# --- the protocol, through the router -----------------------------------------------------------------


def test_response_done_says_incomplete_with_openais_reason() -> None:
    settings = Settings(stt_engine="pocketsphinx", llm_engine="openai", tts_engine="espeak").resolved()
    deps = RouterDeps(
        settings=settings,
        stt=SimulatedSTTEngine("hello", finalize_delay_ms=1),
        llm=LLMStage(FakeLLMEngine(REPLY, ttft_ms=1, tokens_per_s=1000)),
        tts=TTSStage(SimulatedTTSEngine(ttfb_ms=1, realtime_factor=1000)),
        speech_detector=EnergySpeechDetector,
    )
    with TestClient(build_router_app(deps)).websocket_connect("/v1/realtime") as ws:
        receive_until(ws, "session.created")
        for max_tokens, status, details, said in (
            (2, "incomplete", {"type": "incomplete", "reason": "max_output_tokens"}, "One two"),
            ("inf", "completed", {"type": "completed"}, REPLY),
        ):
            update = {
                "type": "session.update",
                "session": {"type": "realtime", "max_output_tokens": max_tokens},
            }
            ws.send_text(json.dumps(update))
            receive_until(ws, "session.updated")
            ws.send_text(user_text_event("Count to nine."))
            ws.send_text(json.dumps({"type": "response.create"}))
            done = receive_until(ws, "response.done")[-1]["response"]  # each event checked by the SDK
            assert (done["status"], done["status_details"]) == (status, details)
            item = done["output"][0]
            assert item["status"] == status
            assert item["content"][0]["transcript"] == said


# --- through the official SDK, with the OpenAI-compatible engine --------------------------------------


@pytest.fixture(scope="module")
def sim() -> Iterator[SimOpenAIServer]:
    server = start_sim_openai_server(SimOpenAIConfig(reply=REPLY, ttft_ms=5, tokens_per_s=500))
    yield server
    server.stop()


async def test_the_sdk_sees_incomplete_replies_and_length_finishes(sim: SimOpenAIServer) -> None:
    settings = Settings(
        stt_engine="simulated",
        llm_engine="openai",
        llm_base_url=sim.base_url,
        llm_model="sim",
        tts_engine="simulated",
    ).resolved()
    app = build_router_app(
        RouterDeps(
            settings=settings,
            stt=SimulatedSTTEngine("hello", finalize_delay_ms=1),
            llm=LLMStage(OpenAILLMEngine(base_url=sim.base_url, model="sim")),
            tts=TTSStage(SimulatedTTSEngine(ttfb_ms=1, realtime_factor=1000)),
            speech_detector=EnergySpeechDetector,
        )
    )
    async with served(app) as url:
        client = AsyncOpenAI(
            api_key="test-key", base_url=f"{url}/v1", websocket_base_url=url.replace("http", "ws") + "/v1"
        )
        async with client.realtime.connect(model="voice-agent") as conn:
            assert (await conn.recv()).type == "session.created"
            for max_tokens, status, reason in (
                (3, "incomplete", "max_output_tokens"),
                ("inf", "completed", None),
            ):
                await conn.session.update(session={"type": "realtime", "max_output_tokens": max_tokens})
                await conn.conversation.item.create(
                    item={
                        "type": "message",
                        "role": "user",
                        "content": [{"type": "input_text", "text": "Count."}],
                    }
                )
                await conn.response.create()
                async with asyncio.timeout(30):
                    async for event in conn:
                        assert event.type != "error", event
                        if event.type == "response.done":
                            break
                response = event.response
                assert response.status == status
                assert response.status_details is not None
                assert (response.status_details.type, response.status_details.reason) == (status, reason)
                assert sim.requests[-1]["body"]["max_tokens"] == (3 if max_tokens == 3 else 4096)

        cut = await client.chat.completions.create(
            model="sim", messages=[{"role": "user", "content": "Count."}], max_tokens=3
        )
        assert (cut.choices[0].finish_reason, cut.choices[0].message.content) == ("length", "One two three.")
        whole = await client.chat.completions.create(
            model="sim", messages=[{"role": "user", "content": "Count."}]
        )
        assert (whole.choices[0].finish_reason, whole.choices[0].message.content) == ("stop", REPLY)
        stream = await client.chat.completions.create(
            model="sim",
            messages=[{"role": "user", "content": "Count."}],
            max_completion_tokens=2,
            stream=True,
        )
        finishes = [c.choices[0].finish_reason async for c in stream if c.choices]
        assert finishes[-1] == "length" and finishes[:-1] == [None] * (len(finishes) - 1)
