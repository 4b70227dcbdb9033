"""Tools inside a voice reply (`actors.conversation.reply`): server calls run within the response and the
answer streams on, filler speech while a call runs, barge-in and cancel-safe calls, the per-turn round
limit, `tool_ms`, and the dialogue the LLM sees afterwards. The real LLM stage around a scripted model
that streams calls as OpenAI does, on virtual time."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from actors.audio.pcm import duration_ms
from actors.conversation.events import (
    CallArgumentsDelta,
    CallArgumentsDone,
    ResponseAudioDelta,
    ResponseFinished,
    ResponseItemAdded,
    ResponseItemDone,
    ResponseTextDelta,
)
from actors.conversation.items import (
    Conversation,
    ConversationItem,
    FunctionCallItem,
    FunctionCallOutputItem,
)
from actors.conversation.metrics import TurnTimeline
from actors.conversation.options import SessionLimits, SessionOptions
from actors.conversation.reply import ReplyPlayer
from actors.conversation.turns import UserTurn
from actors.llm.stage import LLMStage
from actors.tools.base import ToolContext, ToolDefinition
from actors.tools.toolbox import Toolbox
from actors.tts.simulated import SimulatedTTSEngine
from actors.tts.stage import TTSStage
from testkit.fakes import FakeLLMEngine, ScriptedRound

pytestmark = pytest.mark.looptime

RATE = 24_000
TTS_TTFB_S = 0.05
FILLERS = ("One moment.", "Let me check.")


class SlowTool:
    """A server tool that answers after `seconds` (virtual time), recording its calls and cancellations."""

    def __init__(self, name: str, seconds: float, output: str = '{"temp_c": 21}', cancel_safe: bool = True):
        self.definition = ToolDefinition(
            name,
            f"{name} (test tool)",
            {"type": "object", "properties": {"city": {"type": "string"}}},
            cancel_safe=cancel_safe,
        )
        self.seconds = seconds
        self.output = output
        self.calls: list[tuple[dict[str, Any], ToolContext, float]] = []
        self.finished = 0
        self.cancelled = 0

    async def call(self, arguments: dict[str, Any], context: ToolContext) -> str:
        self.calls.append((arguments, context, asyncio.get_running_loop().time()))
        try:
            await asyncio.sleep(self.seconds)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        self.finished += 1
        return self.output


class Player:
    def __init__(
        self,
        rounds: list[ScriptedRound],
        tools: list[SlowTool],
        *,
        audio: bool = True,
        limits: SessionLimits | None = None,
        client_tools: tuple[str, ...] = (),
    ) -> None:
        self.events: list[tuple[float, object]] = []
        self._emitted = asyncio.Event()
        self.llm = FakeLLMEngine("", ttft_ms=200, tokens_per_s=50, rounds=rounds)
        self.conversation = Conversation()
        specs = tuple(ToolDefinition(name).spec() for name in client_tools)
        self.player = ReplyPlayer(
            llm=LLMStage(self.llm),
            tts=TTSStage(SimulatedTTSEngine(ttfb_ms=TTS_TTFB_S * 1000, realtime_factor=1000)),
            emit=self._emit,
            options=SessionOptions(instructions="Be brief.", output_audio=audio, tools=specs),
            limits=limits or SessionLimits(audio_lead_ms=200, tool_filler_phrases=FILLERS),
            conversation=self.conversation,
            session_id="sess_1",
            user_id="ada",
            toolbox=Toolbox(tools),
            on_finished=lambda status, _: self.finished_statuses.append(status),
        )
        self.finished_statuses: list[str] = []  # what the turn machine was told (it arms the idle prompt)

    async def _emit(self, event: object) -> None:
        self.events.append((asyncio.get_running_loop().time(), event))
        self._emitted.set()

    def of(self, kind: type) -> list:
        return [e for _, e in self.events if isinstance(e, kind)]

    def at(self, kind: type) -> list[float]:
        return [at for at, e in self.events if isinstance(e, kind)]

    async def turn(self, text: str = "What's the weather in Paris?") -> ResponseFinished:
        self.player.start(UserTurn("item_user", text), TurnTimeline())
        return await self.finished()

    async def wait_for(self, kind: type, count: int = 1) -> None:
        async with asyncio.timeout(120):
            while len(self.of(kind)) < count:
                self._emitted.clear()
                await self._emitted.wait()

    async def finished(self) -> ResponseFinished:
        await self.wait_for(ResponseFinished)
        return self.of(ResponseFinished)[-1]

    def said(self) -> str:
        """What the client was told, message by message."""
        messages: dict[str, str] = {}
        for e in self.of(ResponseTextDelta):
            messages[e.item_id] = messages.get(e.item_id, "") + e.delta
        return " ".join(messages.values())

    def silences(self, after: float) -> list[float]:
        """The gaps in what the client plays (audio played as it arrives, each chunk after the one
        before), from `after` on."""
        played_until = after
        gaps = []
        for at, event in self.events:
            if isinstance(event, ResponseAudioDelta) and at >= after:
                gaps.append(max(at - played_until, 0.0))
                played_until = max(played_until, at) + duration_ms(event.pcm16, RATE) / 1000
        return gaps


WEATHER_CALL = ("get_weather", '{"city": "Paris"}')


async def test_a_server_call_runs_inside_the_response_and_the_answer_streams_on() -> None:
    weather = SlowTool("get_weather", 0.05)
    p = Player([ScriptedRound(calls=(WEATHER_CALL,)), ScriptedRound("It is 21 degrees in Paris.")], [weather])
    done = await p.turn()

    assert done.status == "completed"
    call, output, answer = done.output
    assert isinstance(call, FunctionCallItem) and isinstance(output, FunctionCallOutputItem)
    assert isinstance(answer, ConversationItem)
    assert (call.name, call.arguments, call.status) == ("get_weather", '{"city": "Paris"}', "completed")
    assert output.call_id == call.call_id and output.output == '{"temp_c": 21}'
    assert answer.text == "It is 21 degrees in Paris."
    # The call's events in OpenAI's order, then the output's, then the answer's words on item 3.
    kinds = [type(e) for _, e in p.events]
    assert kinds.index(ResponseItemAdded) < kinds.index(CallArgumentsDelta) < kinds.index(CallArgumentsDone)
    assert "".join(d.delta for d in p.of(CallArgumentsDelta)) == '{"city": "Paris"}'
    added = p.of(ResponseItemAdded)
    assert [(a.output_index, type(a.item)) for a in added] == [
        (1, FunctionCallItem),
        (2, FunctionCallOutputItem),
        (3, ConversationItem),
    ]
    assert {(d.output_index, type(d.item)) for d in p.of(ResponseItemDone)} == {
        (1, FunctionCallItem),
        (2, FunctionCallOutputItem),
        (3, ConversationItem),
    }
    assert {(e.item_id, e.output_index) for e in p.of(ResponseAudioDelta)} == {(answer.id, 3)}
    # The tool heard the model's arguments, for this user; the second round heard its output.
    [(arguments, context, _)] = weather.calls
    assert arguments == {"city": "Paris"} and (context.user_id, context.session_id) == ("ada", "sess_1")
    second = p.llm.requests[1]
    assert second[-2]["role"] == "assistant" and second[-2]["tool_calls"] == [call.call()]
    assert second[-1] == {"role": "tool", "tool_call_id": call.call_id, "content": '{"temp_c": 21}'}
    assert p.llm.calls[0]["tools"][0]["function"]["name"] == "get_weather"
    # A fast call: no filler, and its time is the turn's tool_ms.
    assert not any(f in p.said() for f in FILLERS)
    assert done.metrics["tool_ms"] == pytest.approx(50, abs=1)
    assert p.finished_statuses == ["completed"]
    assert done.metrics["llm_ttft"] == pytest.approx(200 + 20, abs=1)  # the call's first piece
    # Afterwards the dialogue has the call and its output, in order.
    assert [m["role"] for m in p.conversation.history] == ["user", "assistant", "tool", "assistant"]


async def test_a_turn_without_tools_sends_no_tools_and_has_no_tool_ms() -> None:
    p = Player([ScriptedRound("Hello there.")], [])
    done = await p.turn("Hi")
    assert "tools" not in p.llm.calls[0]
    assert "tool_ms" not in done.metrics and done.output == ()


async def test_a_slow_call_gets_filler_speech_with_no_long_silence() -> None:
    weather = SlowTool("get_weather", 3.0)
    p = Player([ScriptedRound(calls=(WEATHER_CALL,)), ScriptedRound("It is 21 degrees in Paris.")], [weather])
    done = await p.turn()
    [(_, _, called_at)] = weather.calls

    # The first filler's audio starts at the filler delay + the TTS's first byte after the call.
    first_audio = p.at(ResponseAudioDelta)[0]
    assert first_audio - called_at == pytest.approx(0.4 + TTS_TTFB_S, abs=0.03)
    assert p.said().startswith("One moment. Let me check.")  # a second one for a long call
    assert done.output[-1].text == "It is 21 degrees in Paris."
    # The client never hears more than 1.5 s of silence from the first filler to the answer.
    assert max(p.silences(after=first_audio)) <= 1.5
    # The filler is part of what the assistant said (its first message, before the call).
    history = p.conversation.history
    assert history[1]["content"] == "One moment. Let me check." and history[1]["tool_calls"]
    assert done.metrics["tool_ms"] == pytest.approx(3000, abs=1)


async def test_words_before_the_call_stand_for_the_first_filler() -> None:
    weather = SlowTool("get_weather", 1.0)
    rounds = [ScriptedRound("Let me look that up.", (WEATHER_CALL,)), ScriptedRound("Sunny and 21.")]
    p = Player(rounds, [weather])
    await p.turn()
    assert p.said() == "Let me look that up. Sunny and 21."
    # The words were spoken before the call ended, not held until the answer.
    [(_, _, called_at)] = weather.calls
    assert p.at(ResponseAudioDelta)[0] < called_at + weather.seconds


async def test_a_text_session_gets_no_filler() -> None:
    weather = SlowTool("get_weather", 3.0)
    p = Player([ScriptedRound(calls=(WEATHER_CALL,)), ScriptedRound("Sunny.")], [weather], audio=False)
    done = await p.turn()
    assert p.said() == "Sunny." and done.status == "completed"


async def test_barge_in_cancels_the_calls_safe_to_cancel_and_the_others_run_to_their_end() -> None:
    lookup = SlowTool("lookup", 5.0, cancel_safe=True)
    booking = SlowTool("book_table", 2.0, '{"booked": true}', cancel_safe=False)
    calls = (("lookup", '{"city": "Paris"}'), ("book_table", '{"city": "Paris"}'))
    p = Player([ScriptedRound(calls=calls), ScriptedRound("Done.")], [lookup, booking])
    p.player.start(UserTurn("item_user", "Book me a table."), TurnTimeline())
    await p.wait_for(ResponseItemDone, 2)  # both calls made: they run from now
    await asyncio.sleep(1.0)
    assert len(lookup.calls) + len(booking.calls) == 2
    await p.player.cancel("turn_detected")
    done = await p.finished()
    assert (done.status, done.reason) == ("cancelled", "turn_detected")
    assert lookup.cancelled == 1
    await asyncio.sleep(2.0)
    assert booking.finished == 1  # ran to its end after the reply was cancelled...
    outputs = [i for i in p.conversation.items if isinstance(i, FunctionCallOutputItem)]
    assert [o.output for o in outputs] == ['{"booked": true}']  # ...and its result was recorded
    # The dialogue has the booking and its result, and not the abandoned lookup.
    history = p.conversation.history
    [assistant] = [m for m in history if m.get("tool_calls")]
    assert [c["function"]["name"] for c in assistant["tool_calls"]] == ["book_table"]
    assert history[-1] == {"role": "tool", "tool_call_id": outputs[0].call_id, "content": '{"booked": true}'}
    assert p.llm.requests[1:] == []  # no second round after the cancellation


async def test_after_the_round_limit_the_model_must_answer_without_tools() -> None:
    weather = SlowTool("get_weather", 0.01)
    rounds = [ScriptedRound("Sunny.", (WEATHER_CALL,))]  # a model that would call forever
    limits = SessionLimits(audio_lead_ms=200, tool_max_rounds=2, tool_filler_phrases=FILLERS)
    p = Player(rounds, [weather], limits=limits)
    done = await p.turn()
    assert done.status == "completed"
    assert len(weather.calls) == 2
    assert [c["tool_choice"] for c in p.llm.calls] == ["auto", "auto", "none"]


async def test_a_round_mixing_server_and_client_calls_ends_with_the_client_calls_pending() -> None:
    weather = SlowTool("get_weather", 0.05)
    calls = (WEATHER_CALL, ("show_map", '{"city": "Paris"}'))
    p = Player(
        [ScriptedRound(calls=calls), ScriptedRound("Here it is.")], [weather], client_tools=("show_map",)
    )
    done = await p.turn()
    assert done.status == "completed"
    server_call, client_call, server_output = done.output
    assert isinstance(server_call, FunctionCallItem) and server_call.server
    assert isinstance(client_call, FunctionCallItem) and not client_call.server
    assert isinstance(server_output, FunctionCallOutputItem) and server_output.call_id == server_call.call_id
    assert len(p.llm.requests) == 1  # no further round: the client answers its call first
    assert p.finished_statuses == []  # waiting for the client is not the user's silence: no idle prompt
    # Until it does, the dialogue has the server call and leaves the client's out.
    assert [c["id"] for c in p.conversation.history[1]["tool_calls"]] == [server_call.call_id]
    p.conversation.items.append(FunctionCallOutputItem("item_out", client_call.call_id, '{"shown": true}'))
    history = p.conversation.history
    assert [c["id"] for c in history[1]["tool_calls"]] == [server_call.call_id, client_call.call_id]
    assert [m.get("tool_call_id") for m in history[2:]] == [server_call.call_id, client_call.call_id]
    assert json.loads(history[-1]["content"]) == {"shown": True}


def test_the_dialogue_never_shows_half_a_call() -> None:
    conversation = Conversation()
    items = conversation.items
    items.append(ConversationItem("u1", "user", False, ["Weather and news?"]))
    items.append(ConversationItem("a1", "assistant", True, ["Let me see."]))
    items.append(FunctionCallItem("c1", "call_w", "get_weather", "{}", status="completed"))
    items.append(FunctionCallItem("c2", "call_n", "get_news", "{}", status="completed"))
    items.append(FunctionCallItem("c3", "call_cut", "get_news", '{"to', status="incomplete"))
    items.append(FunctionCallOutputItem("o1", "call_w", "sunny"))
    items.append(FunctionCallOutputItem("o2", "call_n", "quiet"))
    items.append(FunctionCallOutputItem("o9", "call_gone", "orphan"))
    items.append(ConversationItem("a2", "assistant", True, ["Sunny, and all quiet."]))
    history = conversation.history
    assert [(m["role"], m["content"]) for m in history] == [
        ("user", "Weather and news?"),
        ("assistant", "Let me see."),
        ("tool", "sunny"),
        ("tool", "quiet"),
        ("assistant", "Sunny, and all quiet."),
    ]
    assert [c["id"] for c in history[1]["tool_calls"]] == ["call_w", "call_n"]
    # An output deleted: its call goes too; a cut history never starts with a "tool" message.
    conversation.delete("o2")
    assert [c["id"] for c in conversation.history[1]["tool_calls"]] == ["call_w"]
    assert [m["role"] for m in conversation.recent(3)] == ["assistant", "tool", "assistant"]
    assert [m["content"] for m in conversation.recent(2)] == ["Sunny, and all quiet."]
    assert conversation.recent(0) == []
