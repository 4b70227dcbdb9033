"""The turn state machine alone (`actors.conversation.turns`): commits, the pending turn, barge-in,
with a scripted reply player and simulated STT on virtual time."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

import pytest

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
from actors.stt.simulated import SimulatedSTTEngine
from testkit.fakes import tone

pytestmark = pytest.mark.looptime

QUESTION = "what time is it"


class ScriptedReplies:
    """A reply player that records what it was asked to do; a reply runs until cancelled."""

    def __init__(self) -> None:
        self.responding = False
        self.started: list[tuple[UserTurn | None, TurnTimeline]] = []
        self.cancelled: list[CancelReason] = []
        self.prepared: list[EarlyReply] = []
        self.took_over: list[EarlyReply | None] = []

    def start(self, user: UserTurn | None, timeline: TurnTimeline, early: EarlyReply | None = None) -> None:
        self.started.append((user, timeline))
        self.took_over.append(early)
        if early is not None:
            early.take()
        self.responding = True

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
        self.responding = False


class Turns:
    def __init__(
        self, *, vad: bool = True, transcript: str = QUESTION, idle_timeout_ms: int | None = None
    ) -> None:
        self.events: list[object] = []
        self.replies = ScriptedReplies()
        self.conversation = Conversation()
        self.stt = SimulatedSTTEngine(transcript, finalize_delay_ms=150)
        self.turns = TurnStateMachine(
            replies=self.replies,
            emit=self._emit,
            options=SessionOptions(
                instructions="",
                turn_detection=VadConfig(idle_timeout_ms=idle_timeout_ms) if vad else None,
            ),
            conversation=self.conversation,
            input_ms=lambda: 42_000,
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


async def test_speech_during_a_reply_is_a_barge_in_and_speech_in_silence_is_not() -> None:
    t = Turns()
    await t.turns.speech_started()
    assert t.replies.cancelled == []
    t.replies.start(None, TurnTimeline())
    await t.turns.speech_started()
    assert t.replies.cancelled == ["turn_detected"] and not t.replies.responding


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
    assert user == UserTurn(utterance.item_id, QUESTION)
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
    assert user == UserTurn(utterance.item_id, QUESTION) and t.replies.took_over == [early]


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
    assert not t.replies.started and t.turns.pending == UserTurn(utterance.item_id, QUESTION)
    await t.turns.create_response()
    assert t.replies.started[0][0] == UserTurn(utterance.item_id, QUESTION)
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
