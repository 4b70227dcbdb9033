"""The turn state machine alone (`actors.conversation.turns`): commits, the pending turn, barge-in
(`actors.conversation.barge_in`: pause, then cancel or resume), with a scripted reply player and
simulated STT on virtual time."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

import pytest

from actors.audio.end_of_turn import PAUSE_MS
from actors.audio.vad import VadConfig
from actors.conversation.early_reply import EarlyReply
from actors.conversation.events import (
    AudioCommitted,
    InputTimedOut,
    SessionError,
    TranscriptCompleted,
    UserItemAdded,
)
from actors.conversation.input import Utterance
from actors.conversation.metrics import TurnTimeline, clock
from actors.conversation.options import SessionLimits, SessionOptions
from actors.conversation.turns import CancelReason, Conversation, TurnStateMachine, UserTurn
from actors.llm.base import LLMEvent
from actors.stt.base import STTStream
from actors.stt.simulated import SimulatedSTTEngine
from testkit.fakes import tone

pytestmark = pytest.mark.looptime

QUESTION = "what time is it"


class ScriptedReplies:
    """A reply player that records what it was asked to do; a reply runs until cancelled."""

    def __init__(self) -> None:
        self.responding = False
        self.paused = False
        self.started: list[tuple[UserTurn | None, TurnTimeline]] = []
        self.cancelled: list[CancelReason] = []
        self.prepared: list[EarlyReply] = []
        self.took_over: list[EarlyReply | None] = []
        self.pauses = 0
        self.resumes = 0

    def start(self, user: UserTurn | None, timeline: TurnTimeline, early: EarlyReply | None = None) -> None:
        self.started.append((user, timeline))
        self.took_over.append(early)
        if early is not None:
            early.take()
        self.responding = True
        self.paused = False

    def prepare(self, user_text: str) -> EarlyReply:
        async def no_reply() -> AsyncGenerator[LLMEvent, None]:
            return
            yield

        async def open_stream() -> AsyncGenerator[LLMEvent, None]:
            return no_reply()

        self.prepared.append(EarlyReply(user_text, open_stream))
        return self.prepared[-1]

    async def cancel(self, reason: CancelReason) -> None:
        self.cancelled.append(reason)
        self.responding = self.paused = False

    def pause(self) -> None:
        if self.responding:
            self.pauses += 1
            self.paused = True

    def resume(self) -> None:
        if self.paused:
            self.resumes += 1
        self.paused = False


class Turns:
    def __init__(
        self,
        *,
        vad: bool = True,
        transcript: str = QUESTION,
        idle_timeout_ms: int | None = None,
        limits: SessionLimits | None = None,
        create_response: bool = True,
        interrupt_response: bool = True,
        semantic: bool = False,
    ) -> None:
        self.events: list[object] = []
        self.replies = ScriptedReplies()
        self.conversation = Conversation()
        self.stt = SimulatedSTTEngine(transcript, finalize_delay_ms=150)
        turn_detection = VadConfig(
            idle_timeout_ms=idle_timeout_ms,
            create_response=create_response,
            interrupt_response=interrupt_response,
            eagerness="auto" if semantic else None,
            pause_ms=PAUSE_MS if semantic else None,
        )
        self.turns = TurnStateMachine(
            replies=self.replies,
            emit=self._emit,
            options=SessionOptions(instructions="", turn_detection=turn_detection if vad else None),
            conversation=self.conversation,
            input_ms=lambda: 42_000,
            limits=limits,
        )

    async def _emit(self, event: object) -> None:
        self.events.append(event)

    def of(self, kind: type) -> list:
        return [e for e in self.events if isinstance(e, kind)]

    async def utterance(self, ms: int = 800) -> Utterance:
        async def ignore(*_: object) -> None:
            pass

        spoken = Utterance(self.stt, 3200, ignore, ignore, SessionLimits())
        spoken.push(tone(ms, 16_000))
        return spoken

    async def settle(self) -> None:
        await asyncio.sleep(1)  # transcription runs in the background

    async def speak_over_reply(self, ms: int) -> Utterance:
        """A reply is playing; the user speaks for `ms` (the speech's start and its commit)."""
        self.replies.start(None, TurnTimeline())
        began = clock()
        await self.turns.speech_started(began)
        await asyncio.sleep(ms / 1000)
        utterance = await self.utterance(ms)
        await self.turns.commit(utterance, TurnTimeline(speech_end=began + ms / 1000, committed=clock()))
        return utterance


async def test_speech_over_a_reply_pauses_it_and_speech_in_silence_does_not() -> None:
    t = Turns()
    await t.turns.speech_started()
    assert t.replies.pauses == 0 and t.replies.cancelled == []
    t.replies.start(None, TurnTimeline())
    await t.turns.speech_started()
    assert t.replies.paused and t.replies.cancelled == []  # not cancelled before the speech proves real


async def test_a_committed_turn_is_transcribed_and_answered_at_once() -> None:
    t = Turns()
    utterance = await t.utterance()
    loop = asyncio.get_running_loop()
    committed_at = loop.time()
    await t.turns.commit(utterance, TurnTimeline(speech_end=committed_at - 0.5, committed=committed_at))
    assert t.of(AudioCommitted) == [AudioCommitted(utterance.item_id, None)]
    await t.settle()
    [done] = t.of(TranscriptCompleted)
    assert (done.transcript, done.audio_seconds) == (QUESTION, pytest.approx(0.8))
    [(user, timeline)] = t.replies.started
    assert user == UserTurn(utterance.item_id, QUESTION, spoken=True)
    assert timeline.transcript == pytest.approx(committed_at + 0.15)  # the reply's metrics include STT
    assert t.conversation.last_item_id == utterance.item_id


async def test_a_pause_prepares_the_reply_and_the_confirmed_turn_takes_it_over() -> None:
    t = Turns()
    utterance = await t.utterance()
    await t.turns.speech_paused(utterance)
    await t.settle()
    [early] = t.replies.prepared
    assert early.text == QUESTION and not t.replies.started  # prepared, not started
    await t.turns.commit(utterance, TurnTimeline())
    await t.settle()
    [(user, _)] = t.replies.started
    assert user == UserTurn(utterance.item_id, QUESTION, spoken=True) and t.replies.took_over == [early]


async def test_speech_after_the_pause_discards_what_was_prepared() -> None:
    t = Turns()
    utterance = await t.utterance()
    await t.turns.speech_paused(utterance)
    await t.settle()
    await t.turns.speech_resumed()
    utterance.resume(0)
    utterance.push(tone(600, 16_000))
    await t.turns.commit(utterance, TurnTimeline())
    await t.settle()
    [(user, _)] = t.replies.started
    assert user is not None and user.text == f"{QUESTION} {QUESTION}"  # both parts, each transcribed
    assert t.replies.took_over == [None]


async def test_no_reply_is_prepared_over_one_still_playing() -> None:
    t = Turns()
    t.replies.start(None, TurnTimeline())  # interrupt_response off would keep it playing
    await t.turns.speech_paused(await t.utterance())
    await t.settle()
    assert t.replies.prepared == []


async def test_a_new_turn_replaces_the_reply_still_playing() -> None:
    t = Turns()
    t.replies.start(None, TurnTimeline())
    await t.turns.commit(await t.utterance(), TurnTimeline())
    await t.settle()
    assert t.replies.cancelled == ["turn_detected"] and len(t.replies.started) == 2


async def test_silence_that_transcribes_to_nothing_gets_no_reply() -> None:
    t = Turns(transcript="")
    await t.turns.commit(await t.utterance(), TurnTimeline())
    await t.settle()
    assert t.of(TranscriptCompleted)[0].transcript == "" and not t.replies.started


async def test_push_to_talk_waits_for_the_client_to_ask_for_the_reply() -> None:
    t = Turns(vad=False)
    await t.turns.commit_buffer(None)
    assert t.of(SessionError)[-1].code == "input_audio_buffer_commit_empty"
    utterance = await t.utterance()
    await t.turns.commit_buffer(utterance)
    await t.settle()
    assert not t.replies.started and t.turns.pending == UserTurn(utterance.item_id, QUESTION, spoken=True)
    await t.turns.create_response()
    assert t.replies.started[0][0] == UserTurn(utterance.item_id, QUESTION, spoken=True)
    assert t.turns.pending is None
    await t.turns.create_response()  # one reply at a time
    assert t.of(SessionError)[-1].code == "conversation_already_has_active_response"
    assert len(t.replies.started) == 1


async def test_typed_items_chain_and_cancel_needs_a_reply_in_progress() -> None:
    t = Turns(vad=False)
    first = await t.turns.add_user_text("hello")
    second = await t.turns.add_user_text("are you there?")
    assert t.of(UserItemAdded) == [
        UserItemAdded(first, None, "hello"),
        UserItemAdded(second, first, "are you there?"),
    ]
    await t.turns.cancel_response()
    assert t.of(SessionError)[-1].code == "response_cancel_not_active"
    await t.turns.create_response()
    assert t.replies.started[0][0] == UserTurn(second, "are you there?")  # the latest message
    await t.turns.cancel_response()
    assert t.replies.cancelled == ["client_cancelled"]


async def test_a_user_silent_for_the_idle_timeout_after_a_reply_is_prompted() -> None:
    t = Turns(idle_timeout_ms=5000)
    t.turns.reply_finished("completed", played_until=clock() + 2.0)  # 2 s of reply still to be heard
    await asyncio.sleep(6.9)
    assert t.of(InputTimedOut) == []  # 5 s after the reply was heard, not after it was sent
    await asyncio.sleep(0.2)
    [timed_out] = t.of(InputTimedOut)
    assert (timed_out.audio_start_ms, timed_out.audio_end_ms) == (37_000, 42_000)
    [committed] = t.of(AudioCommitted)
    assert committed.item_id == timed_out.item_id
    assert t.replies.started == [(None, t.replies.started[0][1])]  # the agent speaks again


async def test_speech_or_text_before_the_idle_timeout_disarms_it() -> None:
    for act in ("speech", "text"):
        t = Turns(idle_timeout_ms=5000)
        t.turns.reply_finished("completed", played_until=clock())
        await asyncio.sleep(3)
        if act == "speech":
            await t.turns.speech_started()
        else:
            await t.turns.add_user_text("hold on")
        await asyncio.sleep(10)
        assert t.of(InputTimedOut) == [] and t.replies.started == [], act


async def test_no_idle_timeout_after_a_cancelled_reply_or_without_the_setting() -> None:
    t = Turns(idle_timeout_ms=5000)
    t.turns.reply_finished("cancelled", played_until=clock())
    u = Turns()
    u.turns.reply_finished("completed", played_until=clock())
    await asyncio.sleep(20)
    assert t.of(InputTimedOut) == [] and u.of(InputTimedOut) == []


async def test_speech_with_enough_words_and_long_enough_cancels_the_reply_and_is_answered() -> None:
    t = Turns(limits=SessionLimits(barge_in_min_speech_ms=400, barge_in_min_words=2))
    t.replies.start(None, TurnTimeline())
    await t.turns.speech_started(clock())
    await asyncio.sleep(0.1)
    await t.turns.barge_in.interim_transcript("what")
    await asyncio.sleep(0.1)
    await t.turns.barge_in.interim_transcript("what time")  # enough words, but only 200 ms of speech
    await asyncio.sleep(0.15)
    assert t.replies.cancelled == [] and t.replies.paused
    await asyncio.sleep(0.1)  # 400 ms of speech: a real interruption, before the speech even ends
    assert t.replies.cancelled == ["turn_detected"]
    utterance = await t.utterance(600)
    await t.turns.commit(utterance, TurnTimeline(speech_end=clock(), committed=clock()))
    await t.settle()
    assert t.replies.started[-1][0] == UserTurn(
        utterance.item_id, QUESTION, spoken=True
    )  # the new turn is answered
    assert t.replies.resumes == 0


async def test_speech_too_short_over_a_reply_resumes_it_at_once_and_is_not_answered() -> None:
    t = Turns(limits=SessionLimits(barge_in_min_speech_ms=300, barge_in_min_words=0))
    utterance = await t.speak_over_reply(200)  # a cough, a door
    assert t.replies.resumes == 1 and not t.replies.paused  # at its end, not after its transcript
    await t.settle()
    assert t.of(TranscriptCompleted)[0].item_id == utterance.item_id  # still an item, transcribed
    assert t.replies.cancelled == [] and len(t.replies.started) == 1  # but not answered


async def test_speech_over_a_reply_too_short_to_interrupt_lets_it_play_on_once_quiet() -> None:
    """With semantic turn detection a sound's turn can take seconds to end: the reply does not wait."""
    t = Turns(limits=SessionLimits(barge_in_min_speech_ms=500, barge_in_min_words=2), semantic=True)
    t.replies.start(None, TurnTimeline())
    await t.turns.speech_started(clock())
    await asyncio.sleep(0.1)
    utterance = await t.utterance(100)
    await asyncio.sleep(0.2)
    await t.turns.speech_paused(utterance)  # "mm" and 200 ms of quiet
    assert t.replies.paused  # the user may go on ("Stop. What is ...")
    await asyncio.sleep(0.31)  # quiet for the silence window (500 ms): the reply plays on
    assert not t.replies.paused and t.replies.resumes == 1
    await t.turns.speech_resumed()  # the user goes on: the reply pauses again until judged
    assert t.replies.paused
    await asyncio.sleep(0.3)
    await t.turns.barge_in.interim_transcript("wait what")
    await asyncio.sleep(0.01)
    assert t.replies.cancelled == ["turn_detected"]  # long enough and two words: a real interruption


@pytest.mark.parametrize("transcript", ["", "mm-hmm"])
async def test_speech_with_too_few_words_over_a_reply_resumes_it_and_is_not_answered(transcript: str) -> None:
    t = Turns(transcript=transcript, limits=SessionLimits(barge_in_min_speech_ms=300, barge_in_min_words=2))
    await t.speak_over_reply(800)
    assert t.replies.paused  # long enough: its words decide
    await t.settle()
    assert t.replies.resumes == 1 and not t.replies.paused
    assert t.replies.cancelled == [] and len(t.replies.started) == 1
    assert t.turns.pending is None


async def test_without_interim_words_the_final_transcript_proves_the_interruption() -> None:
    t = Turns(limits=SessionLimits(barge_in_min_speech_ms=300, barge_in_min_words=2))
    utterance = await t.speak_over_reply(1500)  # an STT with no interim results
    assert t.replies.paused and t.replies.cancelled == []
    await t.settle()
    assert t.replies.cancelled == ["turn_detected"] and t.replies.resumes == 0
    assert t.replies.started[-1][0] == UserTurn(utterance.item_id, QUESTION, spoken=True)


async def test_without_minimums_speech_over_a_reply_cancels_it_at_once() -> None:
    t = Turns(limits=SessionLimits(barge_in_min_speech_ms=0, barge_in_min_words=0))
    t.replies.start(None, TurnTimeline())
    await t.turns.speech_started()
    assert t.replies.paused  # at once; cancelled right after the speech's start is announced
    await asyncio.sleep(0.01)
    assert t.replies.cancelled == ["turn_detected"] and not t.replies.responding


async def test_interrupt_response_off_neither_pauses_nor_cancels() -> None:
    t = Turns(interrupt_response=False)
    await t.speak_over_reply(1500)
    await t.settle()
    assert (t.replies.pauses, t.replies.cancelled, len(t.replies.started)) == (0, [], 1)
    assert t.turns.pending is not None  # the reply goes on; the client may answer this later


async def test_create_response_off_a_real_interruption_cancels_and_waits_and_a_cough_is_no_turn() -> None:
    t = Turns(create_response=False)
    utterance = await t.speak_over_reply(1500)
    await t.settle()
    assert t.replies.cancelled == ["turn_detected"] and len(t.replies.started) == 1
    assert t.turns.pending == UserTurn(
        utterance.item_id, QUESTION, spoken=True
    )  # for the client's response.create

    c = Turns(create_response=False, transcript="")
    await c.speak_over_reply(800)
    await c.settle()
    assert c.replies.cancelled == [] and c.replies.resumes == 1 and c.turns.pending is None


async def test_the_reply_stays_paused_while_any_speech_over_it_is_undecided() -> None:
    t = Turns(transcript="", limits=SessionLimits(barge_in_min_speech_ms=300, barge_in_min_words=2))
    t.replies.start(None, TurnTimeline())
    await t.turns.speech_started(clock())
    await asyncio.sleep(0.5)  # long enough: its transcript decides
    await t.turns.commit(await t.utterance(500), TurnTimeline(speech_end=clock(), committed=clock()))
    await asyncio.sleep(0.05)
    await t.turns.speech_started(clock())  # the user speaks again before the first is transcribed
    await asyncio.sleep(0.3)
    assert len(t.of(TranscriptCompleted)) == 1  # the first proved no interruption...
    assert t.replies.paused and t.replies.resumes == 0  # ...but the second is still being spoken
    await t.turns.commit(await t.utterance(300), TurnTimeline(speech_end=clock(), committed=clock()))
    await t.settle()
    assert t.replies.resumes == 1 and t.replies.cancelled == [] and len(t.replies.started) == 1


class FailingStream(STTStream):
    async def feed(self, pcm16: bytes) -> str | None:
        return None

    async def finish(self) -> str:
        raise ConnectionError("the STT replica went away")


async def test_dropped_or_untranscribable_speech_over_a_reply_resumes_it() -> None:
    t = Turns()
    t.replies.start(None, TurnTimeline())
    await t.turns.speech_started()
    await t.turns.barge_in.speech_dropped()  # the client cleared the buffer, or STT failed mid-speech
    assert t.replies.resumes == 1 and t.replies.cancelled == []

    f = Turns()
    f.replies.start(None, TurnTimeline())
    await f.turns.speech_started(clock())
    await asyncio.sleep(0.8)

    async def ignore(*_: object) -> None:
        pass

    class FailingSTT:
        def open_stream(self) -> STTStream:
            return FailingStream()

    utterance = Utterance(FailingSTT(), 3200, ignore, ignore, SessionLimits())
    await f.turns.commit(utterance, TurnTimeline(speech_end=clock(), committed=clock()))
    await f.settle()
    assert f.of(SessionError)[-1].code == "transcription_failed"
    assert f.replies.resumes == 1 and f.replies.cancelled == [] and len(f.replies.started) == 1
