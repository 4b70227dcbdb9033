"""The reply player alone (`actors.conversation.reply`): paced audio, cancellation, failures and what a
finished reply leaves behind, with fake stages on virtual time."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

import pytest

from actors.audio.pcm import duration_ms
from actors.conversation.events import (
    ResponseAudioDelta,
    ResponseFinished,
    ResponseStarted,
    ResponseTextDelta,
)
from actors.conversation.items import ConversationItem
from actors.conversation.metrics import TurnTimeline
from actors.conversation.options import SessionLimits, SessionOptions
from actors.conversation.reply import ReplyPlayer
from actors.conversation.stages import LLMEvent, LLMRequest, PhraseLLMClient
from actors.conversation.turns import Conversation, UserTurn
from actors.llm.stage import LLMStage
from actors.memory.sink import RecentTurnsSink
from actors.tts.simulated import SimulatedTTSEngine
from actors.tts.stage import TTSStage
from testkit.fakes import FakeLLMEngine

pytestmark = pytest.mark.looptime

LONG_REPLY = " ".join(f"This is sentence number {i} of a long answer." for i in range(8))
RATE = 24_000


class BrokenLLM:
    """An LLM stage that fails before its first phrase."""

    async def stream_phrases(self, request: LLMRequest) -> AsyncGenerator[LLMEvent, None]:
        await asyncio.sleep(0.1)
        raise ConnectionError("the model server went away")
        yield {"type": "phrase", "text": "unreachable"}


class Player:
    def __init__(
        self,
        reply: str = LONG_REPLY,
        *,
        audio: bool = True,
        lead_ms: int = 500,
        llm: PhraseLLMClient | None = None,
    ) -> None:
        self.events: list[tuple[float, object]] = []  # (loop time, event)
        self._emitted = asyncio.Event()
        self.llm = FakeLLMEngine(reply, ttft_ms=200, tokens_per_s=50)
        self.sink = RecentTurnsSink()
        self.conversation = Conversation()
        self.player = ReplyPlayer(
            llm=llm or LLMStage(self.llm),
            tts=TTSStage(SimulatedTTSEngine(ttfb_ms=50, realtime_factor=1000)),
            emit=self._emit,
            options=SessionOptions(instructions="Be brief.", output_audio=audio),
            limits=SessionLimits(audio_lead_ms=lead_ms),
            conversation=self.conversation,
            session_id="sess_1",
            user_id="ada",
            memory_sink=self.sink,
        )

    async def _emit(self, event: object) -> None:
        self.events.append((asyncio.get_running_loop().time(), event))
        self._emitted.set()

    def of(self, kind: type) -> list:
        return [e for _, e in self.events if isinstance(e, kind)]

    async def wait_for(self, kind: type, count: int = 1) -> None:
        async with asyncio.timeout(60):
            while len(self.of(kind)) < count:
                self._emitted.clear()
                await self._emitted.wait()


async def test_audio_is_paced_to_real_time_plus_the_lead() -> None:
    p = Player(lead_ms=500)
    p.player.start(UserTurn("item_1", "talk to me"), TurnTimeline())
    await p.wait_for(ResponseFinished)
    audio = [(at, e) for at, e in p.events if isinstance(e, ResponseAudioDelta)]
    first_at = audio[0][0]
    sent_s = 0.0
    for at, event in audio:
        # What the client holds unplayed when this chunk goes out: never more than the lead.
        assert sent_s - (at - first_at) <= 0.5 + 1e-6
        sent_s += duration_ms(event.pcm16, RATE) / 1000
    assert sent_s > 10  # a long reply...
    assert audio[-1][0] - first_at >= sent_s - 0.5 - 0.2  # ...played out over about its own length
    assert p.of(ResponseFinished)[0].status == "completed"


async def test_a_cancelled_reply_stops_its_audio_and_keeps_only_what_was_heard() -> None:
    p = Player(lead_ms=200)
    p.player.start(UserTurn("item_1", "talk to me"), TurnTimeline())
    await p.wait_for(ResponseAudioDelta)
    await asyncio.sleep(1)
    await p.player.cancel("client_cancelled")
    assert not p.player.responding
    [done] = p.of(ResponseFinished)
    assert (done.status, done.reason) == ("cancelled", "client_cancelled")
    audio_then = len(p.of(ResponseAudioDelta))
    await asyncio.sleep(5)
    assert len(p.of(ResponseAudioDelta)) == audio_then  # nothing after the cancellation
    assert isinstance(p.events[-1][1], ResponseFinished)
    assert p.llm.cancelled == 1  # the LLM stops generating too
    assert done.text and LONG_REPLY.startswith(done.text) and len(done.text) < len(LONG_REPLY)
    assert "".join(e.delta for e in p.of(ResponseTextDelta)) == done.text
    assert p.conversation.history == [
        {"role": "user", "content": "talk to me"},
        {"role": "assistant", "content": done.text},
    ]
    assert p.sink.turns[0].interrupted is True


async def test_a_reply_cancelled_before_it_ran_still_starts_and_finishes() -> None:
    p = Player()
    p.player.start(None, TurnTimeline())
    await p.player.cancel("turn_detected")
    assert [type(e) for _, e in p.events] == [ResponseStarted, ResponseFinished]
    assert p.of(ResponseFinished)[0].reason == "turn_detected"


async def test_a_failed_reply_apologises_and_ends_as_failed() -> None:
    p = Player(llm=BrokenLLM())
    p.player.start(UserTurn("item_1", "hello"), TurnTimeline())
    await p.wait_for(ResponseFinished)
    [done] = p.of(ResponseFinished)
    apology = SessionLimits().apology
    assert (done.status, done.reason, done.text) == ("failed", "llm_failed", apology)
    assert p.of(ResponseAudioDelta)  # the apology is spoken
    assert p.conversation.history == [{"role": "user", "content": "hello"}]  # and not remembered


async def test_a_text_only_reply_sends_phrases_as_text_and_no_audio() -> None:
    p = Player("Sure. Paris is the capital.", audio=False)
    p.conversation.add_message("user", "Hi.")
    p.conversation.add_message("assistant", "Hello.")
    p.player.start(UserTurn("item_1", "What is the capital of France?"), TurnTimeline())
    await p.wait_for(ResponseFinished)
    assert not p.of(ResponseAudioDelta)
    assert [e.delta for e in p.of(ResponseTextDelta)] == ["Sure.", " Paris is the capital."]
    assert [m["role"] for m in p.llm.requests[0]] == ["system", "user", "assistant", "user"]
    turn = p.sink.turns[0]
    assert (turn.session_id, turn.user_id, turn.user_item_id) == ("sess_1", "ada", "item_1")
    assert p.conversation.last_item_id == p.of(ResponseFinished)[0].item_id


def audio_s(events: list) -> float:
    return sum(duration_ms(e.pcm16, RATE) for e in events if isinstance(e, ResponseAudioDelta)) / 1000


async def test_a_paused_reply_sends_nothing_then_resumes_where_it_stopped_paced_again() -> None:
    whole = Player(lead_ms=500)
    whole.player.start(UserTurn("item_1", "talk to me"), TurnTimeline())
    await whole.wait_for(ResponseFinished)

    p = Player(lead_ms=500)
    p.player.start(UserTurn("item_1", "talk to me"), TurnTimeline())
    await p.wait_for(ResponseAudioDelta)
    await asyncio.sleep(2)
    loop = asyncio.get_running_loop()
    p.player.pause()
    paused_at = loop.time()
    assert p.player.paused
    await asyncio.sleep(4)  # the user speaks; the client plays out what it holds
    assert not [at for at, e in p.events if at > paused_at]  # not one event while paused
    p.player.resume()
    resumed_at = loop.time()
    await p.wait_for(ResponseFinished)
    [done] = p.of(ResponseFinished)
    assert done.status == "completed" and done.text == LONG_REPLY  # nothing lost...
    assert audio_s(p.of(ResponseAudioDelta)) == pytest.approx(audio_s(whole.of(ResponseAudioDelta)))
    # ...and paced from the lead again: no burst of the 4 s the pause seemed to owe.
    sent_s = 0.0
    for at, event in p.events:
        if at >= resumed_at and isinstance(event, ResponseAudioDelta):
            assert sent_s - (at - resumed_at) <= 0.5 + 1e-6
            sent_s += duration_ms(event.pcm16, RATE) / 1000
    assert sent_s > 5


async def test_a_reply_that_finishes_generating_while_paused_plays_all_of_it_after() -> None:
    p = Player(lead_ms=500)
    p.player.start(UserTurn("item_1", "talk to me"), TurnTimeline())
    await p.wait_for(ResponseAudioDelta)
    p.player.pause()
    sent = len(p.of(ResponseAudioDelta))
    await asyncio.sleep(30)  # the LLM and TTS are long done
    assert p.player.responding and len(p.of(ResponseAudioDelta)) == sent
    assert p.llm.cancelled == 0
    p.player.resume()
    await p.wait_for(ResponseFinished)
    assert p.of(ResponseFinished)[0].text == LONG_REPLY


async def test_a_paused_reply_can_be_cancelled_and_the_next_one_is_not_paused() -> None:
    p = Player(lead_ms=500)
    p.player.start(UserTurn("item_1", "talk to me"), TurnTimeline())
    await p.wait_for(ResponseAudioDelta)
    await asyncio.sleep(1)
    p.player.pause()
    heard = "".join(e.delta for e in p.of(ResponseTextDelta))
    await asyncio.sleep(1)
    await p.player.cancel("client_cancelled")  # response.cancel (or the session closing) while paused
    [done] = p.of(ResponseFinished)
    assert (done.status, done.reason, done.text) == ("cancelled", "client_cancelled", heard)
    assert not p.player.paused and not p.player.responding
    p.player.start(UserTurn("item_2", "again"), TurnTimeline())
    await p.wait_for(ResponseFinished, 2)
    assert p.of(ResponseFinished)[1].status == "completed"


def test_the_last_reply_is_the_last_finished_one_as_the_user_heard_it() -> None:
    conversation = Conversation()
    assert conversation.last_reply() == ""
    conversation.add_message("assistant", "Hello. Who is the appointment for?")
    conversation.add_message("user", "my daughter")
    assert conversation.last_reply() == "Hello. Who is the appointment for?"
    # A reply still being spoken is not in the dialogue yet; one cut short counts as far as it was heard.
    playing = ConversationItem("i2", "assistant", audio=True, phrases=["On which day?"], in_dialogue=False)
    conversation.items.append(playing)
    assert conversation.last_reply() == "Hello. Who is the appointment for?"
    playing.phrases, playing.starts_s, playing.audio_s = ["On which day?", "Or next week?"], [0.0, 1.0], 2.0
    playing.in_dialogue, playing.heard_ms = True, 1000
    assert conversation.last_reply() == "On which day?"
