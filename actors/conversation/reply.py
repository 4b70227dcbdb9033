"""The reply player: one reply at a time, LLM phrases → TTS → audio paced out to the client.

A reply runs in a task of its own: the LLM streams phrases, TTS synthesises them one phrase ahead of
the one playing, and the audio goes out paced to real time plus `audio_lead_ms`, so a cancellation
(barge-in, `response.cancel`) still stops what has not been heard; `pause` holds the audio back while
the user may be interrupting (generation goes on) and `resume` plays on from there. However it ends
(completed, cancelled, or failed with a spoken apology) it ends with one `ResponseFinished` carrying the
turn's metrics; what was said joins the conversation history, and the exchange goes to the memory sink.

The model may call tools (the server's, `actors.conversation.server_calls`, and the client's, declared in
`session.update`). Each call becomes a `function_call` item of the response, its arguments streamed to
the client as they come. Server calls run inside the response; their outputs become items, go back to
the model, and its answer streams on in a new message item, for up to `tool_max_rounds` rounds. Calls to
the client's tools end the response: the client runs them and asks for the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable

from actors.audio.pcm import duration_ms
from actors.conversation.early_reply import EarlyReply
from actors.conversation.events import (
    CallArgumentsDelta,
    CallArgumentsDone,
    Emit,
    FinishedTurn,
    ResponseAudioDelta,
    ResponseFinished,
    ResponseItemAdded,
    ResponseItemDone,
    ResponseStarted,
    ResponseStatus,
    ResponseTextDelta,
    SessionError,
    new_id,
)
from actors.conversation.faults import PublicError, StageError, public_error
from actors.conversation.items import (
    ConversationItem,
    FunctionCallItem,
    FunctionCallOutputItem,
    Item,
    ItemStatus,
)
from actors.conversation.metrics import TurnTimeline, clock, observe_turn
from actors.conversation.options import SessionLimits, SessionOptions
from actors.conversation.prompt import with_memory
from actors.conversation.server_calls import ServerCalls
from actors.conversation.stages import LLMEvent, LLMRequest, PhraseLLMClient, SynthesizerClient
from actors.conversation.turns import CancelReason, Conversation, UserTurn
from actors.llm.base import ChatMessage, FinishReason, LLMToolCallDelta, ToolChoice
from actors.memory.sink import MemorySink
from actors.tasks import cancel_and_wait, close_quietly
from actors.tools.base import ToolContext
from actors.tools.calls import round_messages
from actors.tools.toolbox import Toolbox
from actors.tts.base import SpeechStyle

log = logging.getLogger(__name__)


class ReplyPlayer:
    """Generates and plays the session's replies, one at a time (`start`, `cancel`, `pause`, `resume`)."""

    def __init__(
        self,
        *,
        llm: PhraseLLMClient,
        tts: SynthesizerClient,
        emit: Emit,
        options: SessionOptions,
        limits: SessionLimits,
        conversation: Conversation,
        session_id: str,
        user_id: str,
        memory_sink: MemorySink | None = None,
        memory_context: Callable[[str], Awaitable[str | None]] | None = None,
        on_finished: Callable[[ResponseStatus, float], None] | None = None,
        toolbox: Toolbox | None = None,
    ) -> None:
        self.options = options
        self._toolbox = toolbox or Toolbox()  # server tools (the client's are in `options.tools`)
        self._tools = ServerCalls(self._toolbox, limits, conversation, ToolContext(user_id, session_id))
        # Told each reply's status and when the client will have played all of its audio (clock time).
        self._on_finished = on_finished
        self._played_until = 0.0
        self._limits = limits
        self._llm = llm
        self._tts = tts
        self._emit = emit
        self._conversation = conversation
        self._session_id = session_id
        self._user_id = user_id
        self._sink = memory_sink
        self._memory_context = memory_context  # the user's long-term memory (budgeted, cached)
        self._task: asyncio.Task[None] | None = None
        self._began = False  # the reply task has run its first step
        self._cancel_reason: CancelReason | None = None
        self._unpaused = asyncio.Event()  # cleared while the reply's audio is held back
        self._unpaused.set()

    @property
    def responding(self) -> bool:
        """A reply is being generated or played."""
        return self._task is not None and not self._task.done()

    def start(self, user: UserTurn | None, timeline: TurnTimeline, early: EarlyReply | None = None) -> None:
        """Start answering `user` (None: continue the conversation) in a task of its own; `early`: the
        LLM call already started for this same text at a pause (preemptive generation)."""
        response_id = new_id("resp")
        self._cancel_reason = None
        self._began = False
        self._played_until = clock()
        self._unpaused.set()
        # Taken over now, not when the task first runs: the caller may discard what it did not hand over.
        early_events = early.take() if early is not None else None
        self._task = asyncio.create_task(self._respond(response_id, user, timeline, early, early_events))

    def prepare(self, user_text: str) -> EarlyReply:
        """Start the LLM on `user_text` now, for a turn not yet confirmed; unheard until `start` takes
        it over, cancelled by its `discard`."""

        async def open_stream() -> AsyncGenerator[LLMEvent, None]:
            return self._llm.stream_phrases(await self._request(user_text))

        speaking = self.options.output_audio
        return EarlyReply(
            user_text,
            open_stream,
            self._tts if speaking else None,
            self.options.output_sample_rate,
            self._style(),
        )

    def _style(self) -> SpeechStyle:
        """The session's voice and speed (`session.update`)."""
        return SpeechStyle(voice=self.options.voice, speed=self.options.speed)

    @property
    def paused(self) -> bool:
        """The reply in progress holds its audio back (`pause`)."""
        return self.responding and not self._unpaused.is_set()

    def pause(self) -> None:
        """Send no more of the reply's audio until `resume` (or the end of the reply). The LLM and TTS
        go on meanwhile, so a resumed reply has its next audio ready."""
        if self.responding:
            self._unpaused.clear()

    def resume(self) -> None:
        """Play on from where `pause` stopped, paced as if the reply had just started again."""
        self._unpaused.set()

    async def cancel(self, reason: CancelReason) -> None:
        """Stop the reply in progress, if any, and wait until it has sent its `ResponseFinished`."""
        task = self._task
        if task is None or task.done():
            return
        # Kept here too: a cancellation that crosses a stage call (a Serve handle's stream)
        # can arrive as a new CancelledError without the message.
        self._cancel_reason = reason
        # A task cancelled before its first step never runs at all, and the client would get no
        # response.done: let it start first (it is next in the loop's queue).
        if not self._began:
            await asyncio.sleep(0)
        task.cancel(reason)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _request(
        self,
        user_text: str | None,
        rounds: list[ChatMessage] | None = None,
        tool_choice: ToolChoice | None = None,
    ) -> LLMRequest:
        """The prompt for a reply to `user_text`; `rounds`: this turn's calls and outputs so far, for the
        round after them, asked with `tool_choice` (None: the session's)."""
        memory = await self._memory_context(self._user_id) if self._memory_context else None
        request: LLMRequest = {
            "messages": self._messages(user_text, memory) + (rounds or []),
            "max_tokens": self.options.max_tokens,
            "temperature": self.options.temperature,
            "user_id": self._user_id,
        }
        tools = [definition.spec() for definition in self._toolbox.definitions()]
        tools += [spec for spec in self.options.tools if spec["function"]["name"] not in self._toolbox]
        if tools:  # a turn without tools sends what it always sent
            request["tools"] = tools
            request["tool_choice"] = self.options.tool_choice if tool_choice is None else tool_choice
        return request

    def _messages(self, user_text: str | None, memory: str | None = None) -> list[ChatMessage]:
        system = with_memory(self.options.instructions, memory)
        messages: list[ChatMessage] = [{"role": "system", "content": system}]
        messages += self._conversation.recent(self._limits.history_turns * 2)
        if user_text is not None:
            messages.append({"role": "user", "content": user_text})
        return messages

    async def _respond(
        self,
        response_id: str,
        user: UserTurn | None,
        timeline: TurnTimeline,
        early: EarlyReply | None,
        early_events: AsyncGenerator[tuple[LLMEvent, float], None] | None,
    ) -> None:
        item_id = new_id("item")
        user_item, user_text = (user.item_id, user.text) if user else (None, None)
        started_wall = time.time()
        # The turn's items exist from now on (a client may read or truncate them while the reply
        # plays); the LLM sees them once the turn has ended.
        if user is not None:
            self._conversation.add_user(user.item_id, user.text, user.spoken)
        reply = ConversationItem(
            item_id, "assistant", audio=self.options.output_audio, status="in_progress", in_dialogue=False
        )
        self._conversation.items.append(reply)
        output: list[Item] = []  # the response's items after `reply`, in order
        heard: list[str] = []  # what the client got: the spoken reply, then any apology
        status: ResponseStatus = "completed"
        reason: str | None = None
        failure: PublicError | None = None
        self._began = True
        try:
            await self._emit(ResponseStarted(response_id, item_id))
            try:
                finish = await self._run_pipeline(
                    response_id, reply, output, user_text, timeline, early, early_events
                )
                # A reply ending on the client's calls is complete: the client answers them.
                if finish not in ("stop", "tool_calls"):  # the LLM was cut short: OpenAI says incomplete
                    status = "incomplete"
                    reason = "max_output_tokens" if finish == "length" else finish
            except Exception as exc:
                failure = public_error(exc)
                # The details (a traceback, a replica's pid and address) are for the log only.
                log.warning("response %s failed (%s)", response_id, failure.code, exc_info=exc)
                status, reason = "failed", failure.code
                heard = [said] if (said := _said(reply, output)) else []
                await self._apologise(response_id, item_id, failure, exc, heard)
        except asyncio.CancelledError as exc:
            # Cancelled by barge-in or response.cancel: finish the turn properly instead of propagating.
            status = "cancelled"
            reason = self._cancel_reason or (str(exc.args[0]) if exc.args else "cancelled")
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
        if early is not None:  # however the reply ended, its early LLM call ends with it
            await early.close()
        text = _said(reply, output)  # what was said (or heard, if the client truncated it meanwhile)
        metrics = timeline.metrics_ms()
        turn_items = {user_item, item_id, *(item.id for item in output)}
        for item in self._conversation.items:
            if item.id in turn_items:
                item.in_dialogue = True
        item_status: ItemStatus = "completed" if status == "completed" else "incomplete"
        reply.status = item_status
        for index, item in enumerate(output, start=1):
            if isinstance(item, ConversationItem):
                item.status = item_status
                await self._emit(ResponseItemDone(response_id, index, item))
            elif isinstance(item, FunctionCallItem) and item.status == "in_progress":
                item.status = "incomplete"  # cut off while its arguments streamed
        observe_turn(metrics, status)
        await self._emit(
            ResponseFinished(
                response_id,
                item_id,
                status,
                " ".join(heard) if failure is not None else reply.text,
                reason,
                metrics,
                failure.message if failure is not None else None,
                tuple(output),
            )
        )
        self._conversation.last_item_id = output[-1].id if output else item_id
        # A reply that ended on the client's calls waits for their outputs: the user is not being
        # ignored meanwhile, so no idle prompt is armed.
        awaiting_client = any(isinstance(item, FunctionCallItem) and not item.server for item in output)
        if self._on_finished is not None and not (awaiting_client and status == "completed"):
            self._on_finished(status, max(self._played_until, clock()))
        if self._sink is not None and (user_text or text):
            self._sink.submit(
                FinishedTurn(
                    session_id=self._session_id,
                    user_id=self._user_id,
                    turn_id=response_id,
                    user_item_id=user_item,
                    user_text=user_text or "",
                    assistant_text=text,
                    started_at=started_wall,
                    ended_at=time.time(),
                    interrupted=status in ("cancelled", "failed"),
                    metrics=metrics,
                )
            )

    async def _apologise(
        self, response_id: str, item_id: str, failure: PublicError, exc: Exception, heard: list[str]
    ) -> None:
        """Tell the user the reply failed: spoken through TTS (text in a text-only session). The
        apology is not part of the conversation history. When TTS is what failed, or cannot say the
        apology within `stage_timeout_s`, an `error` event says what happened instead."""
        apology = self._limits.apology
        delta = apology if not heard else " " + apology
        if not self.options.output_audio:
            heard.append(apology)
            await self._emit(ResponseTextDelta(response_id, item_id, delta))
            return
        if isinstance(exc, StageError) and exc.stage == "tts":
            await self._emit(SessionError(failure.code, failure.message))
            return
        chunks = self._tts.synthesize(apology, self.options.output_sample_rate, self._style())
        first = True
        try:
            while True:
                async with asyncio.timeout(self._limits.stage_timeout_s):
                    chunk = await anext(chunks, None)
                if chunk is None:
                    break
                await self._unpaused.wait()  # the user may be speaking: no audio over them
                if first:
                    first = False
                    heard.append(apology)
                    await self._emit(ResponseTextDelta(response_id, item_id, delta))
                await self._emit(ResponseAudioDelta(response_id, item_id, chunk))
        except Exception as tts_exc:
            log.warning("response %s: the apology could not be spoken", response_id, exc_info=tts_exc)
            await self._emit(SessionError(failure.code, failure.message))
        finally:
            await close_quietly(chunks)

    async def _run_pipeline(
        self,
        response_id: str,
        reply: ConversationItem,
        output: list[Item],
        user_text: str | None,
        timeline: TurnTimeline,
        early: EarlyReply | None,
        early_events: AsyncGenerator[tuple[LLMEvent, float], None] | None,
    ) -> FinishReason:
        """Play the reply (its phrases go into `reply` as they are said, and after a round of tool calls
        into a new message item); its calls, their outputs and later messages go into `output` (and the
        conversation). Returns why the LLM stopped."""
        if early is None or early_events is None:
            request = await self._request(user_text)
            timeline.llm_start = clock()
            events = _arrivals(self._llm.stream_phrases(request))
        else:
            timeline.llm_start = early.llm_start
            events = early_events
        phrases: asyncio.Queue[tuple[str, ConversationItem, int] | None] = asyncio.Queue()
        finish: FinishReason = "stop"
        speaking = self.options.output_audio
        message: ConversationItem | None = reply  # the message this round's words go into

        async def say(text: str) -> None:
            """A phrase of the reply (the LLM's, or a filler): spoken, or in a text session sent."""
            nonlocal message
            if message is None:  # the first words after a round of calls start a new message
                message = ConversationItem(
                    new_id("item"), "assistant", audio=speaking, status="in_progress", in_dialogue=False
                )
                await self._add_output(response_id, output, message)
            index = 0 if message is reply else output.index(message) + 1
            if not speaking:  # text-only session: the phrase is the output
                message.phrases.append(text)
                delta = text if len(message.phrases) == 1 else " " + text
                await self._emit(ResponseTextDelta(response_id, message.id, delta, index))
            else:
                phrases.put_nowait((text, message, index))

        async def produce() -> None:
            nonlocal finish, events, message
            rounds: list[ChatMessage] = []  # this turn's calls and outputs, for the next round's prompt
            for round_no in range(1, self._limits.tool_max_rounds + 2):
                words: list[str] = []
                calls: dict[int, FunctionCallItem] = {}
                try:
                    async for event, arrived in events:
                        if event["type"] == "first_token":
                            if timeline.first_token is None:
                                timeline.first_token = arrived
                            continue
                        if event["type"] == "finish":
                            finish = event["finish_reason"]
                            continue
                        if event["type"] == "tool_call":
                            if timeline.first_token is None:  # a call is the model's first output too
                                timeline.first_token = arrived
                            await self._call_piece(response_id, output, calls, event)
                            continue
                        if timeline.first_phrase is None:
                            timeline.first_phrase = arrived
                        words.append(event["text"])
                        await say(event["text"])
                except Exception as exc:
                    raise StageError("llm") from exc
                if not calls:
                    break
                if round_no > self._limits.tool_max_rounds:
                    break  # told to answer without tools and called anyway: these calls are not run
                made = [calls[index] for index in sorted(calls)]
                for item in made:
                    item.status = "completed"
                    index = output.index(item) + 1
                    await self._emit(
                        CallArgumentsDone(
                            response_id, item.id, index, item.call_id, item.name, item.arguments
                        )
                    )
                    await self._emit(ResponseItemDone(response_id, index, item))
                client_names = {spec["function"]["name"] for spec in self.options.tools}
                for item in made:
                    item.server = item.name in self._toolbox or item.name not in client_names
                server = [item.call() for item in made if item.server]
                results = await self._tools.run(
                    server, timeline, say if not words else None, say if speaking else None
                )
                outputs = []
                for result in results:
                    done = FunctionCallOutputItem(
                        new_id("item"), result.call["id"], result.output, in_dialogue=False
                    )
                    await self._add_output(response_id, output, done, finished=True)
                    outputs.append((done.call_id, done.output))
                if len(server) < len(made):
                    break  # the client runs its calls and asks for the next response
                # The next round hears the outputs; past the limit it must answer without tools, and a
                # forced tool_choice applied to the first round only.
                rounds += round_messages(" ".join(words), [item.call() for item in made], outputs)
                choice: ToolChoice = "none" if round_no >= self._limits.tool_max_rounds else "auto"
                request = await self._request(user_text, rounds, choice)
                events = _arrivals(self._llm.stream_phrases(request))
                message = None
            if speaking:
                phrases.put_nowait(None)

        # The LLM and the speaker run side by side; whichever fails first ends the reply at once
        # (a dead TTS must not wait for the whole LLM reply, nor a dead LLM for the audio queued).
        tasks = [asyncio.create_task(produce())]
        if speaking:
            speak = self._speak(response_id, phrases, timeline, early)
            tasks.append(asyncio.create_task(speak))
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in tasks:
                if task in done and (failed := task.exception()) is not None:
                    raise failed
        finally:
            await cancel_and_wait(tasks)
            await close_quietly(events)
        return finish

    async def _add_output(
        self, response_id: str, output: list[Item], item: Item, finished: bool = False
    ) -> None:
        """A new item in the response's output (and the conversation), announced to the client."""
        output.append(item)
        self._conversation.items.append(item)
        await self._emit(ResponseItemAdded(response_id, len(output), item))
        if finished:
            await self._emit(ResponseItemDone(response_id, len(output), item))

    async def _call_piece(
        self,
        response_id: str,
        output: list[Item],
        calls: dict[int, FunctionCallItem],
        piece: LLMToolCallDelta,
    ) -> None:
        """A streamed piece of a call: the first opens its item, each streams its arguments to the client."""
        item = calls.get(piece["index"])
        if item is None:
            # Some OpenAI-compatible servers send no call id: the client still needs one to answer.
            item = FunctionCallItem(new_id("item"), piece.get("id") or new_id("call"), "", in_dialogue=False)
            item.name = piece.get("name") or ""
            calls[piece["index"]] = item
            await self._add_output(response_id, output, item)
        elif piece.get("name"):
            item.name += piece.get("name") or ""
        if piece["arguments"]:
            item.arguments += piece["arguments"]
            index = output.index(item) + 1
            await self._emit(
                CallArgumentsDelta(response_id, item.id, index, item.call_id, piece["arguments"])
            )

    async def _speak(
        self,
        response_id: str,
        phrases: asyncio.Queue[tuple[str, ConversationItem, int] | None],
        timeline: TurnTimeline,
        early: EarlyReply | None = None,
    ) -> None:
        """Synthesise phrases in order, one phrase ahead of the one playing, and send the audio paced
        to real time plus `audio_lead_ms`, so a barge-in can still stop what has not been heard. Each
        phrase goes into its message item (with its output index) once its audio starts."""
        rate, style = self.options.output_sample_rate, self._style()
        lead_s = self._limits.audio_lead_ms / 1000
        # The next chunk of a phrase: the provider's own timeout plus the hop's.
        chunk_timeout_s = self._limits.tts_timeout_s + self._limits.stage_timeout_s
        slots = asyncio.Semaphore(2)  # the phrase playing + one synthesising ahead
        ordered: asyncio.Queue[
            tuple[str, ConversationItem, int, asyncio.Queue[bytes | Exception | None]] | None
        ] = asyncio.Queue()
        synth_tasks: list[asyncio.Task[None]] = []

        async def synthesize(text: str, out: asyncio.Queue[bytes | Exception | None]) -> None:
            # The first phrase of a reply prepared at a pause was synthesised then.
            ahead = early.first_audio(text, rate, style) if early is not None else None
            chunks = ahead if ahead is not None else self._tts.synthesize(text, rate, style)
            try:
                async for chunk in chunks:
                    out.put_nowait(chunk)
                out.put_nowait(None)
            except Exception as exc:  # handed to the player, which fails the reply in order
                out.put_nowait(exc)
            finally:
                await close_quietly(chunks)

        async def schedule() -> None:
            while (queued := await phrases.get()) is not None:
                text, item, index = queued
                await slots.acquire()
                if timeline.tts_start is None:
                    timeline.tts_start = clock()
                out: asyncio.Queue[bytes | Exception | None] = asyncio.Queue()
                synth_tasks.append(asyncio.create_task(synthesize(text, out)))
                ordered.put_nowait((text, item, index, out))
            ordered.put_nowait(None)

        async def next_chunk(out: asyncio.Queue[bytes | Exception | None]) -> bytes | None:
            try:
                async with asyncio.timeout(chunk_timeout_s):
                    item = await out.get()
            except TimeoutError as exc:
                raise StageError("tts") from exc
            if isinstance(item, Exception):
                raise StageError("tts") from item
            return item

        scheduler = asyncio.create_task(schedule())
        audio_sent_s = 0.0
        origin: float | None = None  # clock time the client's playback of this reply began, for pacing
        item_origin: dict[str, float] = {}  # where each message's audio starts in the reply's audio
        try:
            while (playing := await ordered.get()) is not None:
                text, item, index, out = playing
                item_id, spoken = item.id, item.phrases
                first_chunk = True
                while (chunk := await next_chunk(out)) is not None:
                    if timeline.first_audio_out is None:
                        timeline.first_audio_out = clock()
                    origin = await self._send_when_due(origin, audio_sent_s, lead_s)
                    if first_chunk:
                        first_chunk = False
                        spoken.append(text)
                        start_s = item_origin.setdefault(item_id, audio_sent_s)
                        item.starts_s.append(audio_sent_s - start_s)
                        delta = text if len(spoken) == 1 else " " + text
                        await self._emit(ResponseTextDelta(response_id, item_id, delta, index))
                    await self._emit(ResponseAudioDelta(response_id, item_id, chunk, index))
                    if timeline.first_audio_sent is None:
                        timeline.first_audio_sent = clock()
                    if origin is None:
                        origin = timeline.first_audio_sent
                    audio_sent_s += duration_ms(chunk, rate) / 1000
                    item.audio_s = audio_sent_s - item_origin[item_id]
                    self._played_until = origin + audio_sent_s
                slots.release()
            await asyncio.gather(*synth_tasks)
        finally:
            await cancel_and_wait([scheduler, *synth_tasks])

    async def _send_when_due(self, origin: float | None, sent_s: float, lead_s: float) -> float | None:
        """Wait until the next chunk may go out: the reply is not paused, and the client then holds at
        most `lead_s` of audio it has not played (`sent_s` sent so far; playback began at `origin`).
        Returns `origin`, moved on by a pause: the client played out what it held and then heard
        nothing, so the time paused is not audio played and the resumed reply is paced again from the
        lead instead of bursting out everything the pause seemed to owe."""
        while True:
            if not self._unpaused.is_set():
                await self._unpaused.wait()
                if origin is not None:
                    origin = max(origin, clock() - sent_s)
                continue
            if origin is None:
                return None
            ahead = sent_s - (clock() - origin)
            if ahead <= lead_s:
                return origin
            await asyncio.sleep(ahead - lead_s)
            if self._unpaused.is_set():
                return origin


async def _arrivals(events: AsyncGenerator[LLMEvent, None]) -> AsyncGenerator[tuple[LLMEvent, float], None]:
    """The LLM's events with the clock time each arrived."""
    try:
        async for event in events:
            yield event, clock()
    finally:
        await close_quietly(events)


def _said(reply: ConversationItem, output: list[Item]) -> str:
    """What a response's messages said, in order."""
    messages = [reply, *(item for item in output if isinstance(item, ConversationItem))]
    return " ".join(text for message in messages if (text := message.text))
