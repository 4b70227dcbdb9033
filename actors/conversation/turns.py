"""The turn state machine: whose turn it is, when a user turn is committed, and when a reply stops.

LISTENING (no user speech) → USER_SPEAKING (the input holds an utterance streaming to STT) → COMMITTED
(`commit`: the utterance becomes a conversation item and is transcribed in the background) → back to
LISTENING. The transcript is answered at once with turn detection (unless its `create_response` is
off); without it (push-to-talk) and for typed text it waits as the pending `UserTurn` until the client
asks for a reply. Independently a reply may be RESPONDING: user speech that starts meanwhile pauses it
and cancels it once the speech proves a real interruption (barge-in, unless `interrupt_response` is
off; `actors.conversation.barge_in` judges it, and speech that is no interruption is not answered), and
a newly transcribed turn or the client's `cancel_response` cancels it too.

It sees the input only as the `Utterance` it is handed and the reply player only through `Replies`, so
it runs (and is tested) without either.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from actors.audio.end_of_turn import PAUSE_MS
from actors.conversation.barge_in import BargeIn
from actors.conversation.early_reply import EarlyReply
from actors.conversation.events import (
    AudioCommitted,
    Emit,
    InputTimedOut,
    ItemAdded,
    ResponseStatus,
    SessionError,
    TranscriptCompleted,
    UserItemAdded,
    new_id,
)
from actors.conversation.faults import public_error
from actors.conversation.input import Utterance
from actors.conversation.items import Conversation, FunctionCallItem, FunctionCallOutputItem, ItemError
from actors.conversation.metrics import TurnTimeline, clock
from actors.conversation.options import SessionLimits, SessionOptions
from actors.tasks import cancel_and_wait

log = logging.getLogger(__name__)

# Why a reply is cancelled: the user spoke over it (or a new turn replaced it), or the client asked.
CancelReason = Literal["turn_detected", "client_cancelled"]


@dataclass(frozen=True)
class UserTurn:
    """One user message to answer: a committed utterance's transcript or typed text, and its item id."""

    item_id: str
    text: str
    spoken: bool = False  # a transcribed utterance, not typed text


class Replies(Protocol):
    """The reply player as the state machine drives it (`actors.conversation.reply.ReplyPlayer`)."""

    @property
    def responding(self) -> bool:
        """A reply is being generated or played."""
        ...

    def start(self, user: UserTurn | None, timeline: TurnTimeline, early: EarlyReply | None = None) -> None:
        """Start answering `user` (None: continue the conversation), with the LLM call `early` started
        for the same text if there is one."""
        ...

    def prepare(self, user_text: str) -> EarlyReply:
        """Start the LLM on a turn not yet confirmed (preemptive generation)."""
        ...

    async def cancel(self, reason: CancelReason) -> None:
        """Stop the reply in progress; it still ends with `ResponseFinished`."""
        ...

    def pause(self) -> None:
        """Send no more of the reply's audio until `resume`; generation goes on."""
        ...

    def resume(self) -> None:
        """Play the paused reply on from where it stopped."""
        ...


class TurnStateMachine:
    """Commits user turns, holds the one awaiting a reply, and starts or stops replies.

    Emits `AudioCommitted`, `TranscriptCompleted`, `UserItemAdded` and the errors of client commands
    that do not fit the current state.
    """

    def __init__(
        self,
        *,
        replies: Replies,
        emit: Emit,
        options: SessionOptions,
        conversation: Conversation,
        input_ms: Callable[[], int] = lambda: 0,
        limits: SessionLimits | None = None,
        speech_ms: Callable[[], int | None] = lambda: None,
    ) -> None:
        self.options = options
        self.conversation = conversation
        self._limits = limits or SessionLimits()
        self._replies = replies
        self._emit = emit
        self._input_ms = input_ms  # how much input audio has arrived (for `InputTimedOut`)
        self._pending: UserTurn | None = None  # awaiting `create_response`
        self._tasks: set[asyncio.Task[None]] = set()  # transcriptions in progress
        self._idle: asyncio.Task[None] | None = None  # the idle timeout, armed after a reply is heard
        # Preemptive generation: the reply being prepared at the user's current pause, if any.
        self._early: asyncio.Task[EarlyReply | None] | None = None
        # Judges speech over a reply; the input tells it of interim transcripts and dropped utterances.
        self.barge_in = BargeIn(
            pause=replies.pause,
            resume=replies.resume,
            cancel=lambda: replies.cancel("turn_detected"),
            limits=self._limits,
            speech_ms=speech_ms,  # how long the speech being spoken has been voiced (input's VAD)
        )

    def reply_finished(self, status: ResponseStatus, played_until: float) -> None:
        """A reply ended; the client will have heard it all at `played_until` (clock time). With an
        idle timeout, a user still silent that long after prompts the agent to speak again."""
        vad = self.options.turn_detection
        self._disarm_idle()
        if vad is None or vad.idle_timeout_ms is None or status not in ("completed", "incomplete"):
            return
        self._idle = asyncio.create_task(self._idle_timeout(played_until + vad.idle_timeout_ms / 1000))

    def _disarm_idle(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
        self._idle = None

    async def _idle_timeout(self, deadline: float) -> None:
        await asyncio.sleep(max(deadline - clock(), 0.0))
        vad = self.options.turn_detection
        if vad is None or vad.idle_timeout_ms is None or self._replies.responding:
            return
        if self.options.transcription_only:  # switched to transcribing since the reply: nothing to say
            return
        self._idle = None
        end_ms = self._input_ms()
        item_id = new_id("item")
        await self._emit(InputTimedOut(item_id, max(end_ms - vad.idle_timeout_ms, 0), end_ms))
        await self._emit(AudioCommitted(item_id, self.conversation.last_item_id))
        self.conversation.last_item_id = item_id
        self._replies.start(None, TurnTimeline())

    @property
    def transcribing(self) -> bool:
        """A committed utterance is still being transcribed (its reply has not started yet)."""
        return any(not task.done() for task in self._tasks)

    @property
    def pending(self) -> UserTurn | None:
        """The user turn the next `create_response` answers, if any."""
        return self._pending

    async def speech_paused(self, utterance: Utterance) -> None:
        """The user paused mid-utterance: with semantic detection, speech over a reply too short to
        interrupt lets it play on once quiet for the silence window; with preemptive generation,
        transcribe what they said so far and start the reply to it, unheard until the turn is
        confirmed with the same transcript."""
        vad = self.options.turn_detection
        if vad is not None and vad.eagerness is not None:  # server VAD's own commit decides as soon
            self.barge_in.speech_paused(max(vad.silence_ms - (vad.pause_ms or PAUSE_MS), 0))
        await self.discard_early()
        if not self._limits.preemptive_generation:
            return
        if vad is None or not vad.create_response or self._replies.responding:
            return  # no reply would start at the end of this turn anyway
        if self.options.transcription_only:
            return
        utterance.checkpoint()
        self._early = asyncio.create_task(self._prepare(utterance))

    async def _prepare(self, utterance: Utterance) -> EarlyReply | None:
        try:
            text = (await utterance.heard_so_far()).strip()
        except Exception:
            return None  # the turn's own transcription reports the failure
        return self._replies.prepare(text) if text else None

    async def speech_resumed(self) -> None:
        """The user went on after a pause: speech over a reply pauses it again, and the reply prepared
        for part of the turn is wasted."""
        self.barge_in.speech_resumed()
        await self.discard_early()

    async def discard_early(self) -> None:
        """Drop the reply prepared at a pause, if any (its LLM call is cancelled and counted wasted)."""
        early = await self._take_early(wait=False)
        if early is not None:
            await early.discard()

    async def _take_early(self, wait: bool) -> EarlyReply | None:
        task, self._early = self._early, None
        if task is None:
            return None
        if not wait and not task.done():
            await cancel_and_wait([task])
        try:
            return await task
        except asyncio.CancelledError:
            return None

    async def speech_started(self, began: float | None = None) -> None:
        """The user started speaking, at `began` (clock time, as for a client streaming in real time;
        None: now)."""
        self._disarm_idle()
        vad = self.options.turn_detection
        interrupts = vad is None or vad.interrupt_response
        if self._replies.responding and interrupts:
            self._replies.pause()  # before anything that waits: no more of its audio from here on
        await self.discard_early()
        # Barge-in: the reply the user talks over pauses now, and is cancelled if the speech proves real.
        await self.barge_in.speech_started(
            over_reply=self._replies.responding and interrupts, began=clock() if began is None else began
        )

    async def commit(self, utterance: Utterance, timeline: TurnTimeline) -> None:
        """The utterance is the user's turn: it becomes a conversation item and is transcribed; with
        turn detection its transcript is answered at once, without it waits for `create_response`."""
        await self._emit(AudioCommitted(utterance.item_id, self.conversation.last_item_id))
        self.conversation.last_item_id = utterance.item_id
        self.barge_in.committed(utterance.item_id, timeline.speech_end)
        # Transcription finishes in the background so audio keeps flowing (and barge-in keeps working).
        task = asyncio.create_task(self._transcribe_and_respond(utterance, timeline))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def commit_buffer(self, utterance: Utterance | None) -> None:
        """Push-to-talk: the audio appended since the last commit (`utterance`) is the user's turn."""
        if utterance is None:
            await self._emit(
                SessionError(
                    "input_audio_buffer_commit_empty",
                    "the input audio buffer is empty: append audio before committing",
                )
            )
            return
        now = clock()
        await self.commit(utterance, TurnTimeline(speech_end=now, committed=now))

    async def add_user_text(self, text: str) -> str:
        """A typed user message; the next `create_response` answers it. Returns the item id."""
        self._disarm_idle()
        item_id = new_id("item")
        self._pending = UserTurn(item_id, text)
        self.conversation.add_user(item_id, text, spoken=False)
        await self._emit(UserItemAdded(item_id, self.conversation.last_item_id, text))
        self.conversation.last_item_id = item_id
        return item_id

    async def add_tool_call(self, call_id: str, name: str, arguments: str) -> str:
        """A call the client adds (restoring a conversation). Returns the item id."""
        if self.conversation.call(call_id) is not None:
            raise ItemError("invalid_call_id", f"the conversation has a call {call_id[:80]!r} already")
        item = FunctionCallItem(new_id("item"), call_id, name, arguments, status="completed")
        return await self._add_item(item)

    async def _add_item(self, item: FunctionCallItem | FunctionCallOutputItem) -> str:
        self._disarm_idle()
        self.conversation.items.append(item)
        await self._emit(ItemAdded(item, self.conversation.last_item_id))
        self.conversation.last_item_id = item.id
        return item.id

    async def add_tool_output(self, call_id: str, output: str) -> str:
        """The client's output for one of the calls a reply asked it to make. Returns the item id."""
        if self.conversation.call(call_id) is None:
            raise ItemError(
                "invalid_call_id", f"no function_call with call_id {call_id[:80]!r} in this conversation"
            )
        if any(
            isinstance(item, FunctionCallOutputItem) and item.call_id == call_id
            for item in self.conversation.items
        ):
            raise ItemError("invalid_call_id", f"the call {call_id[:80]!r} already has its output")
        return await self._add_item(FunctionCallOutputItem(new_id("item"), call_id, output))

    async def create_response(self) -> None:
        """Answer the pending user turn (or continue the conversation); one reply at a time."""
        if self.options.transcription_only:
            await self._emit(
                SessionError(
                    "transcription_session",
                    "a transcription session transcribes and never responds: response.create is not "
                    "available (update session.type to 'realtime' for replies)",
                )
            )
            return
        if self._replies.responding:
            await self._emit(
                SessionError(
                    "conversation_already_has_active_response",
                    "a response is already in progress: cancel it first or wait for response.done",
                )
            )
            return
        self._disarm_idle()
        user, self._pending = self._pending, None
        self._replies.start(user, TurnTimeline())

    async def cancel_response(self) -> None:
        """The client stops the reply in progress."""
        if not self._replies.responding:
            await self._emit(SessionError("response_cancel_not_active", "there is no response in progress"))
            return
        await self._replies.cancel("client_cancelled")

    async def close(self) -> None:
        """Cancel the transcriptions still running, the idle timeout and the barge-in checks."""
        idle, self._idle = self._idle, None
        await self.barge_in.close()
        await cancel_and_wait([*self._tasks, *([idle] if idle is not None else [])])
        await self.discard_early()

    async def _transcribe_and_respond(self, utterance: Utterance, timeline: TurnTimeline) -> None:
        early = await self._take_early(wait=True)
        try:
            await self._respond_to(utterance, timeline, early)
        finally:
            if early is not None:  # not taken over by the reply (a no-op if it was)
                await early.discard()

    async def _respond_to(
        self, utterance: Utterance, timeline: TurnTimeline, early: EarlyReply | None
    ) -> None:
        try:
            transcript = (await utterance.finish()).strip()
        except Exception as exc:
            failure = public_error(exc, "stt")
            log.warning("transcription of %s failed (%s)", utterance.item_id, failure.code, exc_info=exc)
            await self.barge_in.transcribed(utterance.item_id, None, timeline.speech_end)
            await self._emit(SessionError("transcription_failed", failure.message))
            return
        timeline.transcript = clock()
        if transcript:
            self.conversation.add_user(utterance.item_id, transcript, spoken=True)
        await self._emit(TranscriptCompleted(utterance.item_id, transcript, utterance.audio_seconds))
        if not await self.barge_in.transcribed(utterance.item_id, transcript, timeline.speech_end):
            return  # spoken over a reply, and no interruption (a cough, "mm-hmm"): the reply resumed
        if not transcript:
            return  # nothing recognisable: no response, like a cough
        if self.options.transcription_only:
            return  # a transcription session: transcripts are all it gives
        turn = UserTurn(utterance.item_id, transcript, spoken=True)
        vad = self.options.turn_detection
        if vad is None or not vad.create_response:
            self._pending = turn
            return  # the client asks for the response (push-to-talk, or create_response off)
        if self._replies.responding:
            if not vad.interrupt_response:
                self._pending = turn  # the reply in progress goes on; the client may answer this later
                return
            await self._replies.cancel("turn_detected")
        # The reply prepared at the last pause answers this turn if the user said nothing since.
        self._replies.start(turn, timeline, early if early is not None and early.text == transcript else None)
