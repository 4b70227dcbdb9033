"""`/v1/realtime` as code written for OpenAI drives it, through the official `openai` SDK's realtime client
on a real socket: OpenAI's voice names and speed in `session.update`, conversation items read back,
deleted and truncated to what was heard, and transcription sessions with interim transcripts of real
speech (pocketsphinx). Every server event is validated against the SDK's `RealtimeServerEvent` models."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
from openai import AsyncOpenAI
from openai.resources.realtime.realtime import AsyncRealtimeConnection

from actors.audio.vad import SileroSpeechDetector
from actors.config import Settings
from actors.llm.stage import LLMStage
from actors.stt.pocketsphinx_engine import PocketsphinxEngine
from actors.stt.simulated import SimulatedSTTEngine
from actors.tts.espeak_engine import EspeakEngine
from actors.tts.stage import TTSStage
from serve_app.api.deps import RouterDeps
from serve_app.api.router_app import build_router_app
from testkit.fakes import EnergySpeechDetector, FakeLLMEngine, served, silence
from testkit.harness import SERVER_EVENT
from testkit.recordings import librivox, word_error_rate

REPLY = "One two three four five six seven eight. Nine ten eleven twelve thirteen fourteen."


def app(stt: Any = None, reply: str = REPLY, vad: Any = EnergySpeechDetector) -> Any:
    settings = Settings(
        stt_engine="pocketsphinx", llm_engine="openai", tts_engine="espeak", stage_timeout_s=30
    ).resolved()
    return build_router_app(
        RouterDeps(
            settings=settings,
            stt=stt or SimulatedSTTEngine("hello there", finalize_delay_ms=1),
            llm=LLMStage(FakeLLMEngine(reply, ttft_ms=1, tokens_per_s=1000)),
            tts=TTSStage(EspeakEngine()),
            speech_detector=vad,
        )
    )


@contextlib.asynccontextmanager
async def connected(url: str, **query: str) -> AsyncIterator[AsyncRealtimeConnection]:
    client = AsyncOpenAI(
        api_key="k", base_url=f"{url}/v1", websocket_base_url=url.replace("http", "ws") + "/v1"
    )
    async with client.realtime.connect(model="voice-agent", extra_query=query) as conn:
        yield conn


async def until(conn: AsyncRealtimeConnection, kind: str, limit_s: float = 60) -> list[dict[str, Any]]:
    """Server events up to the first of type `kind`, each validated by the SDK's own models; no errors."""
    events: list[dict[str, Any]] = []
    async with asyncio.timeout(limit_s):
        while True:
            event = json.loads(await conn.recv_bytes())
            SERVER_EVENT.validate_python(event)
            events.append(event)
            if event["type"] == kind:
                return events
            assert event["type"] != "error", event


async def error(conn: AsyncRealtimeConnection) -> dict[str, Any]:
    """The next `error` event's error; no response may start before it."""
    async with asyncio.timeout(30):
        while (event := json.loads(await conn.recv_bytes()))["type"] != "error":
            SERVER_EVENT.validate_python(event)
            assert event["type"] != "response.created", event
    SERVER_EVENT.validate_python(event)
    return event["error"]


async def typed_turn(conn: AsyncRealtimeConnection, text: str) -> list[dict[str, Any]]:
    await conn.conversation.item.create(
        item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
    )
    await conn.response.create()
    return await until(conn, "response.done")


def reply_audio(events: list[dict[str, Any]]) -> np.ndarray:
    pcm = b"".join(base64.b64decode(e["delta"]) for e in events if e["type"] == "response.output_audio.delta")
    return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0


def pitch_hz(samples: np.ndarray, rate: int = 24_000) -> float:
    """Median fundamental over the loud 40 ms frames (autocorrelation peak in 60-400 Hz)."""
    n, found = rate // 25, []
    for start in range(0, len(samples) - n, n):
        frame = samples[start : start + n] - samples[start : start + n].mean()
        if np.sqrt(np.mean(frame**2)) > 0.05:
            corr = np.correlate(frame, frame, "full")[n - 1 :]
            found.append(rate / (rate // 400 + int(np.argmax(corr[rate // 400 : rate // 60]))))
    return float(np.median(found))


async def test_voice_and_speed_in_session_update() -> None:
    async with (
        served(app(reply="The quick brown fox jumps over the lazy dog.")) as url,
        connected(url) as conn,
    ):
        created = (await until(conn, "session.created"))[-1]["session"]
        assert created["audio"]["output"]["voice"] == "en-us"  # the configured voice
        plain = reply_audio(await typed_turn(conn, "Hi."))
        await conn.session.update(
            session={"type": "realtime", "audio": {"output": {"voice": "shimmer", "speed": 1.5}}}
        )
        updated = (await until(conn, "session.updated"))[-1]["session"]["audio"]["output"]
        assert (updated["voice"], updated["speed"]) == ("shimmer", 1.5)
        shimmer = reply_audio(await typed_turn(conn, "Hi."))
        assert pitch_hz(shimmer) > 1.5 * pitch_hz(plain)  # a female voice (en-us+f4) against en-us
        assert len(shimmer) < 0.8 * len(plain)  # and faster

        for voice, speed, param, words in (
            (
                "robot",
                1.0,
                "session.audio.output.voice",
                "voice 'robot' is not available: use one of alloy",
            ),
            ("alloy", 2.0, "session.audio.output.speed", "speed must be a number from 0.25 to 1.5"),
        ):
            await conn.session.update(
                session={"type": "realtime", "audio": {"output": {"voice": voice, "speed": speed}}}
            )
            refused = await error(conn)
            assert refused["param"] == param and words in refused["message"], refused
        # Refused all-or-nothing: the session still speaks as shimmer.
        again = reply_audio(await typed_turn(conn, "Hi."))
        assert pitch_hz(again) == pytest.approx(pitch_hz(shimmer), rel=0.1)


async def test_items_are_read_back_deleted_and_truncated_to_what_was_heard() -> None:
    async with served(app()) as url, connected(url) as conn:
        await until(conn, "session.created")
        events = await typed_turn(conn, "Count for me.")
        user_id = next(e["item"]["id"] for e in events if e["type"] == "conversation.item.added")
        done = events[-1]["response"]
        reply_id = done["output"][0]["id"]
        audio = reply_audio(events)
        total_ms = round(len(audio) / 24)

        await conn.conversation.item.retrieve(item_id=user_id)
        item = (await until(conn, "conversation.item.retrieved"))[-1]["item"]
        assert (item["role"], item["content"]) == (
            "user",
            [{"type": "input_text", "text": "Count for me."}],
        )
        await conn.conversation.item.retrieve(item_id=reply_id)
        item = (await until(conn, "conversation.item.retrieved"))[-1]["item"]
        assert item["content"][0] == {"type": "output_audio", "transcript": REPLY}

        # The user heard a little over the first phrase: the reply keeps that, and a share of the second.
        first_phrase_ms = total_ms * 0.55
        await conn.conversation.item.truncate(
            item_id=reply_id, content_index=0, audio_end_ms=int(first_phrase_ms)
        )
        truncated = (await until(conn, "conversation.item.truncated"))[-1]
        assert (truncated["item_id"], truncated["audio_end_ms"]) == (reply_id, int(first_phrase_ms))
        await conn.conversation.item.retrieve(item_id=reply_id)
        heard = (await until(conn, "conversation.item.retrieved"))[-1]["item"]["content"][0]["transcript"]
        assert heard.startswith("One two three four five six seven eight. Nine")
        assert len(heard) < len(REPLY)
        # The next turn's prompt has the truncated reply, not the whole one.
        await conn.conversation.item.create(
            item={
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "Go on."}],
            }
        )
        await conn.response.create()
        await until(conn, "response.done")

        await conn.conversation.item.delete(item_id=user_id)
        deleted = (await until(conn, "conversation.item.deleted"))[-1]
        assert deleted["item_id"] == user_id

        await conn.conversation.item.retrieve(item_id=user_id)
        gone = await error(conn)
        assert (gone["code"], gone["param"]) == ("item_not_found", "item_id")
        await conn.conversation.item.truncate(item_id=reply_id, content_index=0, audio_end_ms=total_ms + 5000)
        beyond = await error(conn)
        assert beyond["code"] == "invalid_audio_end_ms" and "beyond" in beyond["message"]
        await conn.send(
            {
                "type": "conversation.item.truncate",
                "item_id": reply_id,
                "content_index": 1,
                "audio_end_ms": 5,
            }
        )  # type: ignore[arg-type]
        assert "content_index must be 0" in (await error(conn))["message"]
        for kind in ("output_audio_buffer.clear", "transcription_session.update"):
            await conn.send({"type": kind})  # type: ignore[arg-type,misc]
            unknown = await error(conn)
            assert unknown["code"] == "unknown_event_type" and kind in unknown["message"]


async def test_the_llm_sees_the_truncated_and_not_the_deleted() -> None:
    llm = FakeLLMEngine(REPLY, ttft_ms=1, tokens_per_s=1000)
    settings = Settings(stt_engine="pocketsphinx", llm_engine="openai", tts_engine="espeak").resolved()
    router = build_router_app(
        RouterDeps(
            settings=settings,
            stt=SimulatedSTTEngine("hello", finalize_delay_ms=1),
            llm=LLMStage(llm),
            tts=TTSStage(EspeakEngine()),
            speech_detector=EnergySpeechDetector,
        )
    )
    async with served(router) as url, connected(url) as conn:
        await until(conn, "session.created")
        first = await typed_turn(conn, "First question.")
        reply_id = first[-1]["response"]["output"][0]["id"]
        await conn.conversation.item.truncate(item_id=reply_id, content_index=0, audio_end_ms=300)
        await until(conn, "conversation.item.truncated")
        second = await typed_turn(conn, "Second question.")
        second_user = next(e["item"]["id"] for e in second if e["type"] == "conversation.item.added")
        await conn.conversation.item.delete(item_id=second_user)
        await until(conn, "conversation.item.deleted")
        await typed_turn(conn, "Third question.")
    dialogue = [(m["role"], m["content"]) for m in llm.requests[-1][1:]]
    assert ("user", "First question.") in dialogue
    said = next(text for role, text in dialogue if role == "assistant")
    assert REPLY.startswith(said) and len(said.split()) <= 2  # 300 ms of audio: a word or two
    assert ("user", "Second question.") not in dialogue
    assert dialogue[-1] == ("user", "Third question.")


@pytest.mark.parametrize("how", ["session.update", "intent"])
async def test_a_transcription_session_streams_interim_transcripts_of_real_speech(how: str) -> None:
    speech, words = librivox("0880")  # "he was not an ill disposed young man"
    async with served(app(stt=PocketsphinxEngine(), vad=SileroSpeechDetector)) as url:
        query = {"intent": "transcription"} if how == "intent" else {}
        async with connected(url, **query) as conn:
            created = (await until(conn, "session.created"))[-1]["session"]
            if how == "session.update":
                assert created["type"] == "realtime"
                await conn.session.update(
                    session={
                        "type": "transcription",
                        "audio": {
                            "input": {
                                "format": {"type": "audio/pcm", "rate": 24_000},
                                "transcription": {"model": "gpt-4o-transcribe", "language": "en"},
                                "noise_reduction": {"type": "near_field"},
                                "turn_detection": {"type": "server_vad", "silence_duration_ms": 500},
                            }
                        },
                    }
                )
                session = (await until(conn, "session.updated"))[-1]["session"]
            else:
                session = created
            assert (session["type"], session["object"]) == ("transcription", "realtime.transcription_session")

            # Streamed like a microphone, 100 ms at a time.
            audio = speech + silence(1200)
            chunk = 4800
            sender = asyncio.create_task(stream(conn, audio, chunk))
            events = await until(conn, "conversation.item.input_audio_transcription.completed", limit_s=120)
            await sender
            kinds = [e["type"] for e in events]
            deltas = [e for e in events if e["type"] == "conversation.item.input_audio_transcription.delta"]
            completed = events[-1]
            # Interim results while the user was still speaking.
            assert kinds.index("conversation.item.input_audio_transcription.delta") < kinds.index(
                "input_audio_buffer.speech_stopped"
            )
            interim = "".join(d["delta"] for d in deltas)
            assert completed["transcript"].startswith(interim.split()[0])  # appended deltas read as text
            assert word_error_rate(words, completed["transcript"]) < 0.5
            assert {d["item_id"] for d in deltas} == {completed["item_id"]}
            # No reply in a transcription session, and none may be asked for.
            await asyncio.sleep(0.5)
            await conn.response.create()
            refused = await error(conn)
            assert refused["code"] == "transcription_session"


async def stream(conn: AsyncRealtimeConnection, pcm: bytes, chunk: int) -> None:
    for start in range(0, len(pcm), chunk):
        await conn.input_audio_buffer.append(audio=base64.b64encode(pcm[start : start + chunk]).decode())
        await asyncio.sleep(0.1)
