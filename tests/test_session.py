"""The turn state machine, endpointing, barge-in and latency accounting, with fakes on virtual time."""

from __future__ import annotations

import asyncio

import pytest

from actors.audio.vad import VadConfig
from actors.conversation.events import (
    AudioCommitted,
    ResponseAudioDelta,
    ResponseFinished,
    ResponseStarted,
    ResponseTextDelta,
    SessionError,
    SpeechStarted,
    SpeechStopped,
    TranscriptCompleted,
)
from actors.conversation.session import SessionLimits, SessionOptions, VoiceSession
from actors.llm.stage import LLMStage
from actors.memory.sink import RecentTurnsSink
from actors.stt.simulated import SimulatedSTTEngine
from actors.tts.simulated import SimulatedTTSEngine
from actors.tts.stage import TTSStage
from testkit.fakes import EnergySpeechDetector, FakeLLMEngine, silence, tone

pytestmark = pytest.mark.looptime

QUESTION = "what time is it"
LONG_REPLY = " ".join(f"This is sentence number {i} of a long answer." for i in range(30))
STORY = " ".join(f"This is sentence number {i} of a story." for i in range(6))


class EndRecordingSink(RecentTurnsSink):
    def __init__(self) -> None:
        super().__init__()
        self.ended: list[str] = []

    def session_ended(self, user_id: str) -> None:
        self.ended.append(user_id)


class Harness:
    def __init__(
        self,
        reply: str = "Hello there. How are you today?",
        *,
        vad: bool = True,
        stt_delay_ms: float = 150,
        ttft_ms: float = 300,
        tts_ttfb_ms: float = 100,
        audio_lead_ms: int = 500,
        memory=None,
        user_id: str = "anonymous",
        silence_ms: int = 500,
        preemptive: bool = False,  # the latency accounting below is for a reply started at the commit
        create_response: bool = True,
        transcript: str = QUESTION,
    ) -> None:
        self.events: list[object] = []
        self.times: list[float] = []  # loop time of each event
        self.llm = FakeLLMEngine(reply, ttft_ms=ttft_ms, tokens_per_s=50)
        self.sink = EndRecordingSink()
        self.session = VoiceSession(
            stt=SimulatedSTTEngine(transcript, finalize_delay_ms=stt_delay_ms),
            llm=LLMStage(self.llm),
            tts=TTSStage(SimulatedTTSEngine(ttfb_ms=tts_ttfb_ms, realtime_factor=1000)),
            emit=self._emit,
            options=SessionOptions(
                instructions="Be brief.",
                turn_detection=VadConfig(silence_ms=silence_ms, create_response=create_response)
                if vad
                else None,
            ),
            limits=SessionLimits(audio_lead_ms=audio_lead_ms, preemptive_generation=preemptive),
            speech_detector=EnergySpeechDetector,
            memory_sink=self.sink,
            memory_context=memory,
            user_id=user_id,
        )

    async def _emit(self, event: object) -> None:
        self.events.append(event)
        self.times.append(asyncio.get_running_loop().time())

    def at(self, kind: type, n: int = 0) -> float:
        """When the `n`th event of `kind` was emitted."""
        return [t for t, e in zip(self.times, self.events, strict=True) if isinstance(e, kind)][n]

    def audio_between(self, start: float, end: float) -> int:
        return sum(
            1
            for t, e in zip(self.times, self.events, strict=True)
            if isinstance(e, ResponseAudioDelta) and start < t < end
        )

    def of(self, kind: type) -> list:
        return [e for e in self.events if isinstance(e, kind)]

    async def stream(self, pcm: bytes, frame_ms: int = 20, rate: int = 24_000) -> None:
        """Send audio in real-time 20 ms frames, like a microphone."""
        step = rate * frame_ms // 1000 * 2
        for i in range(0, len(pcm), step):
            await self.session.append_audio(pcm[i : i + step])
            await asyncio.sleep(frame_ms / 1000)

    async def wait_for(self, kind: type, count: int = 1, limit_s: float = 30.0) -> None:
        async with asyncio.timeout(limit_s):
            while len(self.of(kind)) < count:  # noqa: ASYNC110 - polls a list on virtual time
                await asyncio.sleep(0.005)


async def test_spoken_turn_events_in_order_and_latency_adds_up() -> None:
    h = Harness()
    await h.stream(tone(1000) + silence(800))
    await h.wait_for(ResponseFinished)
    kinds = [type(e) for e in h.events]
    for earlier, later in [
        (SpeechStarted, SpeechStopped),
        (SpeechStopped, AudioCommitted),
        (AudioCommitted, TranscriptCompleted),
        (TranscriptCompleted, ResponseStarted),
        (ResponseStarted, ResponseAudioDelta),
        (ResponseAudioDelta, ResponseFinished),
    ]:
        assert kinds.index(earlier) < kinds.index(later), (earlier, later)
    assert h.of(TranscriptCompleted)[0].transcript == QUESTION
    done = h.of(ResponseFinished)[0]
    assert done.status == "completed"
    assert done.text == "Hello there. How are you today?"
    assert "".join(e.delta for e in h.of(ResponseTextDelta)) == done.text

    m = done.metrics
    # Endpointing waits for the configured silence (within one 32 ms VAD frame).
    assert 500 <= m["end_of_turn_delay"] <= 500 + 32 + 20
    # STT finalisation is the only work between commit and transcript.
    assert m["transcription_delay"] == pytest.approx(m["end_of_turn_delay"] + 150, abs=0.01)
    assert m["llm_ttft"] == pytest.approx(300, abs=0.01)
    # "Hello there." is two tokens at 50 tok/s: the phrase is released on the second one.
    assert m["llm_ttfs"] == pytest.approx(320, abs=0.01)
    assert m["tts_ttfb"] == pytest.approx(100, abs=0.01)
    assert m["e2e_latency"] == pytest.approx(
        m["transcription_delay"] + m["llm_ttfs"] + m["tts_ttfb"], abs=0.01
    )

    turn = h.sink.turns[0]
    assert (turn.user_text, turn.assistant_text, turn.interrupted) == (QUESTION, done.text, False)
    assert h.llm.requests[0][-1] == {"role": "user", "content": QUESTION}


async def test_barge_in_cancels_llm_and_tts_and_next_turn_works() -> None:
    h = Harness(LONG_REPLY, audio_lead_ms=200)
    await h.stream(tone(800) + silence(700))
    await h.wait_for(ResponseAudioDelta)
    await asyncio.sleep(0.5)  # the reply is playing
    speech_at = asyncio.get_running_loop().time()
    interrupt = asyncio.create_task(h.stream(tone(600) + silence(700)))
    await h.wait_for(ResponseFinished)
    cancelled_at = asyncio.get_running_loop().time()
    first = h.of(ResponseFinished)[0]
    assert first.status == "cancelled" and first.reason == "turn_detected"
    # The audio stops as soon as the VAD hears speech (96 ms, in 32 ms frames)...
    assert h.at(SpeechStarted, 1) - speech_at <= 0.15
    assert h.audio_between(h.at(SpeechStarted, 1), cancelled_at) == 0
    # ...and the reply is cancelled once the speech has lasted 500 ms with two words.
    assert 0.45 <= cancelled_at - speech_at <= 0.7
    assert h.llm.cancelled == 1
    assert len(first.text) < len(LONG_REPLY)  # only what was played is kept
    audio_before = len(h.of(ResponseAudioDelta))
    await interrupt
    await h.wait_for(ResponseStarted, 2)
    await h.wait_for(ResponseAudioDelta, audio_before + 1)  # the next turn speaks
    await h.session.cancel_response()
    await h.wait_for(ResponseFinished, 2)
    assert h.of(ResponseFinished)[1].reason == "client_cancelled"
    assert h.sink.turns[0].interrupted is True


async def test_typed_turns_keep_history_and_response_cancel() -> None:
    h = Harness("Sure. Paris is the capital.", vad=False)
    await h.session.add_user_text("What is the capital of France?")
    await h.session.create_response()
    await h.wait_for(ResponseFinished)
    done = h.of(ResponseFinished)[0]
    assert done.status == "completed" and done.text == "Sure. Paris is the capital."
    assert "transcription_delay" not in done.metrics and done.metrics["e2e_latency"] > 0

    await h.session.add_user_text("And of Spain?")
    await h.session.create_response()
    await h.wait_for(ResponseStarted, 2)
    await h.session.create_response()  # one response at a time
    assert h.of(SessionError)[-1].code == "conversation_already_has_active_response"
    await h.session.cancel_response()
    await h.wait_for(ResponseFinished, 2)
    assert h.of(ResponseFinished)[1].status == "cancelled"
    assert h.of(ResponseFinished)[1].reason == "client_cancelled"
    history = h.llm.requests[1]
    assert [m["role"] for m in history] == ["system", "user", "assistant", "user"]
    assert history[2]["content"] == "Sure. Paris is the capital."

    await h.session.cancel_response()
    assert h.of(SessionError)[-1].code == "response_cancel_not_active"


async def test_a_response_cancelled_the_moment_it_is_created_still_ends_with_response_done() -> None:
    h = Harness("Sure. Paris is the capital.", vad=False)
    await h.session.add_user_text("What is the capital of France?")
    await h.session.create_response()
    await h.session.cancel_response()  # before the response's task has run at all
    await h.wait_for(ResponseFinished)
    assert [type(e) for e in h.events if isinstance(e, ResponseStarted | ResponseFinished)] == [
        ResponseStarted,
        ResponseFinished,
    ]
    done = h.of(ResponseFinished)[0]
    assert done.status == "cancelled" and done.reason == "client_cancelled"


async def test_manual_commit_mode() -> None:
    h = Harness("Okay.", vad=False)
    await h.session.commit()
    assert h.of(SessionError)[-1].code == "input_audio_buffer_commit_empty"
    await h.stream(tone(500))
    await h.session.commit()
    await h.wait_for(TranscriptCompleted)
    await asyncio.sleep(1)
    assert not h.of(ResponseStarted)  # the client decides when to respond
    await h.session.create_response()
    await h.wait_for(ResponseFinished)
    assert h.llm.requests[0][-1]["content"] == QUESTION


async def test_short_click_does_not_start_a_turn() -> None:
    h = Harness()
    await h.stream(tone(40) + silence(1000))
    assert not h.of(SpeechStarted)


async def test_the_users_memory_is_in_the_system_prompt_and_only_theirs() -> None:
    from actors.memory.cache import MemoryCache

    async def fetch(user_id: str) -> str:
        return {"alice": "Alice's cat is called Miso.", "bob": "Bob plays chess."}[user_id]

    cache = MemoryCache(fetch, budget_s=0.05)
    for user, fact, other in (("alice", "Miso", "chess"), ("bob", "chess", "Miso")):
        h = Harness("Okay.", vad=False, memory=cache.context, user_id=user)
        await h.session.add_user_text("What do you know about me?")
        await h.session.create_response()
        await h.wait_for(ResponseFinished)
        system = h.llm.requests[0][0]["content"]
        assert system.startswith("Be brief.") and fact in system and other not in system
        assert h.sink.turns[0].user_id == user
        await h.session.close()
        assert h.sink.ended == [user]  # the end of the session lets the memory writer deliver now


async def typed_reply_playing(h: Harness) -> None:
    """Start a reply (a typed question) and let its audio play for a while."""
    await h.session.add_user_text("Tell me a story.")
    await h.session.create_response()
    await h.wait_for(ResponseAudioDelta)
    await asyncio.sleep(1)


@pytest.mark.parametrize(
    ("burst", "transcript"),
    [
        (tone(150), QUESTION),  # too short to interrupt, whatever the STT makes of it
        (tone(700), ""),  # long enough, but no words: a cough, a door
        (tone(700), "hmm"),  # too few words: "mm-hmm"
    ],
    ids=["short", "no-words", "one-word"],
)
async def test_a_cough_pauses_the_reply_which_resumes_with_all_its_audio_and_text(
    burst: bytes, transcript: str
) -> None:
    whole = Harness(STORY, vad=False)
    await typed_reply_playing(whole)
    await whole.wait_for(ResponseFinished, limit_s=120)

    h = Harness(STORY, transcript=transcript)
    await typed_reply_playing(h)
    await h.stream(burst + silence(1000))
    await h.wait_for(ResponseFinished, limit_s=120)
    [done] = h.of(ResponseFinished)
    assert done.status == "completed" and done.text == STORY  # the reply is not lost
    sent = [e for e in h.events if isinstance(e, ResponseAudioDelta)]
    assert b"".join(e.pcm16 for e in sent) == b"".join(e.pcm16 for e in whole.of(ResponseAudioDelta))
    # Nothing was sent from the speech start until it proved no interruption.
    paused_until = h.at(AudioCommitted) if burst == tone(150) else h.at(TranscriptCompleted)
    assert h.audio_between(h.at(SpeechStarted), paused_until) == 0
    assert h.audio_between(paused_until, h.at(ResponseFinished))  # and then it played on
    assert len(h.of(ResponseStarted)) == 1 and h.llm.cancelled == 0  # the cough is not answered
    assert h.of(TranscriptCompleted)[0].transcript == transcript  # but is an item, transcribed
    assert not h.of(SessionError)


async def test_response_cancel_or_the_session_closing_while_paused_ends_the_reply() -> None:
    for how in ("response.cancel", "close"):
        h = Harness(STORY, transcript="")
        await typed_reply_playing(h)
        speaking = asyncio.create_task(h.stream(tone(2000) + silence(1000)))
        await asyncio.sleep(0.5)  # the reply is paused: no words yet
        assert h.session.responding and not h.of(ResponseFinished)
        if how == "close":
            await h.session.close()
        else:
            await h.session.cancel_response()
        [done] = h.of(ResponseFinished)
        assert (done.status, done.reason) == ("cancelled", "client_cancelled"), how
        await speaking
        await asyncio.sleep(1)
        assert len(h.of(ResponseStarted)) == 1 and not h.of(SessionError), how
