"""One voice conversation: audio in → VAD/endpointing → STT → LLM phrases → TTS → audio out.

The session owns the turn state machine and barge-in, and measures each turn. It knows the three stages
only through `actors.conversation.stages` contracts and the wire protocol only through
`actors.conversation.events`, so it runs the same in a unit test with fakes, in one process, or as the
router of a Ray Serve application.

States: LISTENING (no user speech) → USER_SPEAKING (VAD saw speech; audio streams to STT) → back to
LISTENING once the turn is committed; independently a RESPONDING task runs LLM → TTS → audio. User speech
that starts while RESPONDING cancels the response (barge-in); so does `cancel_response()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from actors.audio.pcm import PCM_SAMPLE_WIDTH, STT_SAMPLE_RATE, StreamResampler, duration_ms
from actors.audio.vad import Endpointer, SpeechDetector, VadConfig
from actors.conversation.events import (
    AudioCommitted,
    FinishedTurn,
    InputCleared,
    ResponseAudioDelta,
    ResponseFinished,
    ResponseStarted,
    ResponseTextDelta,
    SessionError,
    SessionEvent,
    SpeechStarted,
    SpeechStopped,
    TranscriptCompleted,
    TranscriptDelta,
    UserItemAdded,
)
from actors.conversation.faults import PublicError, StageError, public_error
from actors.conversation.metrics import TurnTimeline, observe_turn
from actors.conversation.prompt import with_memory
from actors.conversation.stages import LLMRequest, PhraseLLMClient, SynthesizerClient, TranscriberClient
from actors.llm.base import ChatMessage
from actors.memory.sink import MemorySink
from actors.stt.base import STTStream
from actors.tasks import cancel_and_wait, close_quietly

log = logging.getLogger(__name__)

Emit = Callable[[SessionEvent], Awaitable[None]]


def _now() -> float:
    # The event loop's clock: monotonic in production, virtual under tests that fake loop time.
    return asyncio.get_running_loop().time()


@dataclass
class SessionOptions:
    """What a client may change with `session.update`."""

    instructions: str
    input_sample_rate: int = 24_000
    output_sample_rate: int = 24_000
    turn_detection: VadConfig | None = field(default_factory=VadConfig)  # None: the client commits
    max_tokens: int = 120
    temperature: float = 0.7
    output_audio: bool = True  # False: text-only replies, no TTS


@dataclass(frozen=True)
class SessionLimits:
    stt_chunk_ms: int = 100
    audio_lead_ms: int = 500
    history_turns: int = 8
    max_utterance_s: float = 120.0  # one user turn's audio: the end of a turn with VAD, a full buffer without
    # The session's guard on stage calls, on top of the provider's own timeout (`stt_timeout_s` for a
    # transcript, `tts_timeout_s` for the next audio chunk): a stage replica that died or hangs fails
    # the turn within seconds instead of leaving the user in silence.
    stage_timeout_s: float = 3.0
    stt_timeout_s: float = 10.0
    tts_timeout_s: float = 5.0
    apology: str = "Sorry, I'm having trouble answering right now."  # spoken when a reply fails


# Audio chunks longer than this are scored by the VAD in a worker thread (ONNX Runtime releases the GIL),
# so a client sending seconds of audio at once never holds up the event loop other sessions share.
VAD_INLINE_MAX_MS = 200


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:20]}"


class _Utterance:
    """Streams one utterance's audio to STT in chunks of at least `chunk_bytes`, one call at a time.

    Audio never waits for STT: it is appended here and a feeder task sends whatever accumulated
    since the previous call finished (so a slow STT gets bigger, fewer calls, never a backlog of hops).
    """

    def __init__(
        self,
        stream: STTStream,
        chunk_bytes: int,
        on_interim: Callable[[str], Awaitable[None]],
        on_failure: Callable[[_Utterance, Exception], Awaitable[None]],
        limits: SessionLimits,
    ):
        self.item_id = new_id("item")
        self._stream = stream
        self._chunk_bytes = chunk_bytes
        self._on_interim = on_interim
        self._on_failure = on_failure
        self._limits = limits
        self._pending = bytearray()
        self.audio_bytes = 0
        self.failure: Exception | None = None  # a feed call failed: the utterance cannot be transcribed
        self._wake = asyncio.Event()
        self._closing = False
        self._task = asyncio.create_task(self._feed_loop())

    def push(self, pcm16k: bytes) -> None:
        self.audio_bytes += len(pcm16k)
        self._pending += pcm16k
        if len(self._pending) >= self._chunk_bytes:
            self._wake.set()

    async def _feed_loop(self) -> None:
        try:
            while not self._closing:
                await self._wake.wait()
                self._wake.clear()
                if self._pending and not self._closing:
                    chunk = bytes(self._pending)
                    self._pending.clear()
                    # A chunk takes milliseconds; waiting longer means the replica is gone or stuck.
                    async with asyncio.timeout(self._limits.stage_timeout_s):
                        interim = await self._stream.feed(chunk)
                    if interim is not None and not self._closing:
                        await self._on_interim(interim)
        except Exception as exc:
            self.failure = exc
            if not self._closing:  # still being spoken: say so now, not when the user stops talking
                await self._on_failure(self, exc)

    async def finish(self) -> str:
        """Wait for the call in flight, then send the rest of the audio with the finish (one call)."""
        self._closing = True
        self._wake.set()
        await self._task
        if self.failure is not None:
            raise self.failure
        tail = bytes(self._pending)
        self._pending.clear()
        async with asyncio.timeout(self._limits.stt_timeout_s + self._limits.stage_timeout_s):
            return await self._stream.finish_with(tail)

    async def abort(self) -> None:
        await cancel_and_wait([self._task])
        await self.close_stream()

    async def close_stream(self) -> None:
        with contextlib.suppress(Exception):
            await self._stream.aclose()


class VoiceSession:
    """One conversation, whatever carries it (a Realtime WebSocket, a test, a benchmark).

    Feed it client audio (`append_audio`) or typed text (`add_user_text` + `create_response`); it emits
    `actors.conversation.events` through `emit` as the turn goes: speech started and stopped, transcript,
    reply text and audio, `ResponseFinished` with the turn's metrics. Finished turns go to `memory_sink`.
    Call `close()` when the client leaves: it cancels every stage call the session still has running.
    """

    def __init__(
        self,
        *,
        stt: TranscriberClient,
        llm: PhraseLLMClient,
        tts: SynthesizerClient,
        emit: Emit,
        options: SessionOptions,
        limits: SessionLimits | None = None,
        speech_detector: Callable[[], SpeechDetector] | None = None,
        memory_sink: MemorySink | None = None,
        memory_context: Callable[[str], Awaitable[str | None]] | None = None,
        user_id: str = "anonymous",
        session_id: str | None = None,
    ) -> None:
        self.session_id = session_id or new_id("sess")
        self.user_id = user_id
        self.options = options
        self.limits = limits or SessionLimits()
        self._stt = stt
        self._llm = llm
        self._tts = tts
        self._emit = emit
        self._sink = memory_sink
        self._memory_context = memory_context  # the user's long-term memory (budgeted, cached)
        self._make_detector = speech_detector
        self._history: list[ChatMessage] = []
        self._last_item_id: str | None = None
        # input audio state
        self._resampler = StreamResampler(options.input_sample_rate, STT_SAMPLE_RATE)
        self._endpointer: Endpointer | None = None
        self._configure_vad()
        self._samples_in = 0  # 16 kHz samples received so far
        self._preroll: deque[bytes] = deque()
        self._preroll_samples = 0
        self._utterance: _Utterance | None = None
        # turn state
        self._pending_user: tuple[str | None, str] | None = None  # (item id, text) awaiting a response
        self._turn_tasks: set[asyncio.Task[None]] = set()
        self._response_task: asyncio.Task[None] | None = None
        self._response_began = False  # the response task has run its first step
        self._response_id: str | None = None
        self._cancel_reason: str | None = None
        self._closed = False

    # ---------------------------------------------------------------- configuration
    def _configure_vad(self) -> None:
        vad = self.options.turn_detection
        if vad is None or self._make_detector is None:
            self._endpointer = None
        elif self._endpointer is None:
            self._endpointer = Endpointer(self._make_detector(), vad)
        else:
            self._endpointer.config = vad

    def update_options(self, options: SessionOptions) -> None:
        """Apply a validated `session.update` (sample rates, turn detection, instructions, limits)."""
        if options.input_sample_rate != self.options.input_sample_rate:
            self._resampler = StreamResampler(options.input_sample_rate, STT_SAMPLE_RATE)
        self.options = options
        self._configure_vad()

    @property
    def responding(self) -> bool:
        """A reply is being generated or played."""
        return self._response_task is not None and not self._response_task.done()

    # ---------------------------------------------------------------- input audio
    async def append_audio(self, pcm16: bytes, received_at: float | None = None) -> None:
        """Accept client audio at the session's input rate (already validated PCM16 mono)."""
        now = _now() if received_at is None else received_at
        pcm16k = self._resampler.process(pcm16)
        max_utterance_bytes = int(self.limits.max_utterance_s * STT_SAMPLE_RATE) * PCM_SAMPLE_WIDTH
        if self._endpointer is None:
            # Manual turns: everything between commits is one utterance, up to the limit.
            held = self._utterance.audio_bytes if self._utterance is not None else 0
            if held + len(pcm16k) > max_utterance_bytes:
                await self._emit(
                    SessionError(
                        "input_audio_buffer_full",
                        f"the input audio buffer holds {self.limits.max_utterance_s:.0f} s at most: "
                        "commit or clear it; this audio was dropped",
                    )
                )
                return
            self._samples_in += len(pcm16k) // PCM_SAMPLE_WIDTH
            if self._utterance is None:
                self._utterance = self._open_utterance()
            self._utterance.push(pcm16k)
            return
        self._samples_in += len(pcm16k) // PCM_SAMPLE_WIDTH
        self._remember_preroll(pcm16k)
        if self._utterance is not None:
            self._utterance.push(pcm16k)
        endpointer = self._endpointer
        if duration_ms(pcm16k, STT_SAMPLE_RATE) <= VAD_INLINE_MAX_MS:
            events = endpointer.process(pcm16k)
        else:
            events = await asyncio.to_thread(endpointer.process, pcm16k)
        for event in events:
            # When the event's sample arrived: chunk arrival minus the audio after it in this chunk,
            # i.e. the moment it was spoken for a client streaming in real time.
            at = now - max(self._samples_in - event.sample, 0) / STT_SAMPLE_RATE
            if event.kind == "speech_started":
                await self._on_speech_started(event.sample)
            else:
                await self._on_speech_stopped(event.sample, at, now)
        if self._utterance is not None and self._utterance.audio_bytes > max_utterance_bytes:
            # Nobody speaks for minutes without a pause: end the turn here rather than grow without bound.
            endpointer.reset()
            await self._on_speech_stopped(self._samples_in, now, now)

    def _remember_preroll(self, pcm16k: bytes) -> None:
        vad = self.options.turn_detection
        keep = (vad.prefix_padding_ms if vad else 0) * STT_SAMPLE_RATE // 1000 + 16_000  # + 1 s of slack
        self._preroll.append(pcm16k)
        self._preroll_samples += len(pcm16k) // PCM_SAMPLE_WIDTH
        while self._preroll and self._preroll_samples - len(self._preroll[0]) // PCM_SAMPLE_WIDTH >= keep:
            self._preroll_samples -= len(self._preroll.popleft()) // PCM_SAMPLE_WIDTH

    def _preroll_from(self, sample: int) -> bytes:
        audio = b"".join(self._preroll)
        first = self._samples_in - len(audio) // PCM_SAMPLE_WIDTH
        return audio[max(sample - first, 0) * PCM_SAMPLE_WIDTH :]

    def _open_utterance(self) -> _Utterance:
        chunk_bytes = STT_SAMPLE_RATE * PCM_SAMPLE_WIDTH * self.limits.stt_chunk_ms // 1000
        holder: dict[str, str] = {}

        async def on_interim(text: str) -> None:
            previous = holder.get("text", "")
            delta = text[len(previous) :] if text.startswith(previous) else text
            holder["text"] = text
            if delta:
                await self._emit(TranscriptDelta(utterance.item_id, delta))

        utterance = _Utterance(
            self._stt.open_stream(), chunk_bytes, on_interim, self._on_utterance_failed, self.limits
        )
        return utterance

    async def _on_utterance_failed(self, utterance: _Utterance, exc: Exception) -> None:
        """STT failed while the user was still speaking: report it at once and drop the utterance
        (the user's next utterance starts afresh, on a replacement replica if need be)."""
        failure = public_error(exc, "stt")
        log.warning("transcription of %s failed (%s)", utterance.item_id, failure.code, exc_info=exc)
        if self._utterance is utterance:
            self._utterance = None
        await utterance.close_stream()  # called from its feed task, which ends right after
        await self._emit(SessionError("transcription_failed", failure.message))

    async def _on_speech_started(self, sample: int) -> None:
        if self._utterance is not None:  # a previous utterance was never committed
            await self._utterance.abort()
        vad = self.options.turn_detection
        padding = (vad.prefix_padding_ms if vad else 0) * STT_SAMPLE_RATE // 1000
        start = max(sample - padding, 0)
        self._utterance = self._open_utterance()
        # The current chunk was already pushed to the preroll; feed everything from `start`.
        self._utterance.push(self._preroll_from(start))
        await self._emit(SpeechStarted(self._utterance.item_id, self._ms(start)))
        if self.responding:  # barge-in: stop the reply the user is talking over
            await self._cancel_response("turn_detected")

    async def _on_speech_stopped(self, sample: int, speech_end_at: float, now: float) -> None:
        if self._utterance is None:
            return
        await self._emit(SpeechStopped(self._utterance.item_id, self._ms(sample)))
        timeline = TurnTimeline(speech_end=speech_end_at, committed=now)
        await self._commit_utterance(timeline)

    def _ms(self, sample: int) -> int:
        return sample * 1000 // STT_SAMPLE_RATE

    # ---------------------------------------------------------------- client commands
    async def commit(self) -> None:
        """Push-to-talk: the audio appended since the last commit is the user's turn."""
        if self._utterance is None:
            await self._emit(
                SessionError(
                    "input_audio_buffer_commit_empty",
                    "the input audio buffer is empty: append audio before committing",
                )
            )
            return
        now = _now()
        await self._commit_utterance(TurnTimeline(speech_end=now, committed=now))

    async def clear_audio(self) -> None:
        """Drop the audio not yet committed (and the utterance being transcribed)."""
        if self._utterance is not None:
            await self._utterance.abort()
            self._utterance = None
        if self._endpointer is not None:
            self._endpointer.reset()
        await self._emit(InputCleared())

    async def add_user_text(self, text: str) -> str:
        """A typed user message; the next `create_response` answers it. Returns the item id."""
        item_id = new_id("item")
        self._pending_user = (item_id, text)
        await self._emit(UserItemAdded(item_id, self._last_item_id, text))
        self._last_item_id = item_id
        return item_id

    async def create_response(self) -> None:
        """Answer the pending user message (or continue the conversation); one response at a time."""
        if self.responding:
            await self._emit(
                SessionError(
                    "conversation_already_has_active_response",
                    "a response is already in progress: cancel it first or wait for response.done",
                )
            )
            return
        user = self._pending_user
        self._pending_user = None
        self._start_response(user, TurnTimeline())

    async def cancel_response(self) -> None:
        """Stop the reply in progress; it ends with `ResponseFinished(status="cancelled")`."""
        if not self.responding:
            await self._emit(SessionError("response_cancel_not_active", "there is no response in progress"))
            return
        await self._cancel_response("client_cancelled")

    async def close(self) -> None:
        """The client left: cancel the reply, the transcription and every turn task, end the session."""
        self._closed = True
        if self.responding:
            await self._cancel_response("client_cancelled")
        if self._utterance is not None:
            await self._utterance.abort()
            self._utterance = None
        await cancel_and_wait(self._turn_tasks)
        if self._sink is not None:
            self._sink.session_ended(self.user_id)

    # ---------------------------------------------------------------- turns
    async def _commit_utterance(self, timeline: TurnTimeline) -> None:
        utterance, self._utterance = self._utterance, None
        assert utterance is not None
        await self._emit(AudioCommitted(utterance.item_id, self._last_item_id))
        self._last_item_id = utterance.item_id
        # Transcription finishes in the background so audio keeps flowing (and barge-in keeps working).
        task = asyncio.create_task(self._transcribe_and_respond(utterance, timeline))
        self._turn_tasks.add(task)
        task.add_done_callback(self._turn_tasks.discard)

    async def _transcribe_and_respond(self, utterance: _Utterance, timeline: TurnTimeline) -> None:
        try:
            transcript = (await utterance.finish()).strip()
        except Exception as exc:
            failure = public_error(exc, "stt")
            log.warning("transcription of %s failed (%s)", utterance.item_id, failure.code, exc_info=exc)
            await self._emit(SessionError("transcription_failed", failure.message))
            return
        timeline.transcript = _now()
        seconds = utterance.audio_bytes / (PCM_SAMPLE_WIDTH * STT_SAMPLE_RATE)
        await self._emit(TranscriptCompleted(utterance.item_id, transcript, seconds))
        if not transcript:
            return  # nothing recognisable: no response, like a cough
        if self.options.turn_detection is None:
            self._pending_user = (utterance.item_id, transcript)
            return  # manual mode: the client asks for the response
        if self.responding:
            await self._cancel_response("turn_detected")
        self._start_response((utterance.item_id, transcript), timeline)

    def _start_response(self, user: tuple[str | None, str] | None, timeline: TurnTimeline) -> None:
        response_id = new_id("resp")
        self._response_id = response_id
        self._cancel_reason = None
        self._response_began = False
        self._response_task = asyncio.create_task(self._respond(response_id, user, timeline))

    async def _cancel_response(self, reason: str) -> None:
        task = self._response_task
        if task is None or task.done():
            return
        # Kept on the session too: a cancellation that crosses a stage call (a Serve handle's stream)
        # can arrive as a new CancelledError without the message.
        self._cancel_reason = reason
        # A task cancelled before its first step never runs at all, and the client would get no
        # response.done: let it start first (it is next in the loop's queue).
        if not self._response_began:
            await asyncio.sleep(0)
        task.cancel(reason)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    def _messages(self, user_text: str | None, memory: str | None = None) -> list[ChatMessage]:
        system = with_memory(self.options.instructions, memory)
        messages: list[ChatMessage] = [{"role": "system", "content": system}]
        keep = self.limits.history_turns * 2
        messages += self._history[-keep:] if keep else []
        if user_text is not None:
            messages.append({"role": "user", "content": user_text})
        return messages

    async def _respond(
        self, response_id: str, user: tuple[str | None, str] | None, timeline: TurnTimeline
    ) -> None:
        item_id = new_id("item")
        user_item, user_text = user if user else (None, None)
        started_wall = time.time()
        spoken: list[str] = []  # phrases whose audio started playing
        heard: list[str] = []  # what the client got: the spoken reply, then any apology
        status: str = "completed"
        reason: str | None = None
        failure: PublicError | None = None
        self._response_began = True
        try:
            await self._emit(ResponseStarted(response_id, item_id))
            try:
                await self._run_pipeline(response_id, item_id, user_text, timeline, spoken)
            except Exception as exc:
                failure = public_error(exc)
                # The details (a traceback, a replica's pid and address) are for the log only.
                log.warning("response %s failed (%s)", response_id, failure.code, exc_info=exc)
                status, reason = "failed", failure.code
                heard = [*spoken]
                await self._apologise(response_id, item_id, failure, exc, heard)
        except asyncio.CancelledError as exc:
            # Cancelled by barge-in or response.cancel: finish the turn properly instead of propagating.
            status = "cancelled"
            reason = self._cancel_reason or (str(exc.args[0]) if exc.args else "cancelled")
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
        text = " ".join(spoken)
        metrics = timeline.metrics_ms()
        if user_text is not None:
            self._history.append({"role": "user", "content": user_text})
        if text:
            self._history.append({"role": "assistant", "content": text})
        observe_turn(metrics, status)
        await self._emit(
            ResponseFinished(
                response_id,
                item_id,
                status,  # type: ignore[arg-type]
                " ".join(heard) if failure is not None else text,
                reason,
                metrics,
                failure.message if failure is not None else None,
            )
        )
        self._last_item_id = item_id
        if self._sink is not None and (user_text or text):
            self._sink.submit(
                FinishedTurn(
                    session_id=self.session_id,
                    user_id=self.user_id,
                    turn_id=response_id,
                    user_item_id=user_item,
                    user_text=user_text or "",
                    assistant_text=text,
                    started_at=started_wall,
                    ended_at=time.time(),
                    interrupted=status != "completed",
                    metrics=metrics,
                )
            )

    async def _apologise(
        self, response_id: str, item_id: str, failure: PublicError, exc: Exception, heard: list[str]
    ) -> None:
        """Tell the user the reply failed: spoken through TTS (text in a text-only session). The
        apology is not part of the conversation history. When TTS is what failed, or cannot say the
        apology within `stage_timeout_s`, an `error` event says what happened instead."""
        apology = self.limits.apology
        delta = apology if not heard else " " + apology
        if not self.options.output_audio:
            heard.append(apology)
            await self._emit(ResponseTextDelta(response_id, item_id, delta))
            return
        if isinstance(exc, StageError) and exc.stage == "tts":
            await self._emit(SessionError(failure.code, failure.message))
            return
        chunks = self._tts.synthesize(apology, self.options.output_sample_rate)
        first = True
        try:
            while True:
                async with asyncio.timeout(self.limits.stage_timeout_s):
                    chunk = await anext(chunks, None)
                if chunk is None:
                    break
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
        item_id: str,
        user_text: str | None,
        timeline: TurnTimeline,
        spoken: list[str],
    ) -> None:
        memory = await self._memory_context(self.user_id) if self._memory_context else None
        request: LLMRequest = {
            "messages": self._messages(user_text, memory),
            "max_tokens": self.options.max_tokens,
            "temperature": self.options.temperature,
            "user_id": self.user_id,
        }
        phrases: asyncio.Queue[str | None] = asyncio.Queue()
        timeline.llm_start = _now()
        events = self._llm.stream_phrases(request)

        async def produce(speaking: bool) -> None:
            try:
                async for event in events:
                    if event["type"] == "first_token":
                        timeline.first_token = _now()
                        continue
                    if timeline.first_phrase is None:
                        timeline.first_phrase = _now()
                    if not speaking:  # text-only session: the phrase is the output
                        spoken.append(event["text"])
                        delta = event["text"] if len(spoken) == 1 else " " + event["text"]
                        await self._emit(ResponseTextDelta(response_id, item_id, delta))
                    else:
                        phrases.put_nowait(event["text"])
            except Exception as exc:
                raise StageError("llm") from exc
            phrases.put_nowait(None)

        # The LLM and the speaker run side by side; whichever fails first ends the reply at once
        # (a dead TTS must not wait for the whole LLM reply, nor a dead LLM for the audio queued).
        tasks = [asyncio.create_task(produce(self.options.output_audio))]
        if self.options.output_audio:
            tasks.append(asyncio.create_task(self._speak(response_id, item_id, phrases, timeline, spoken)))
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in tasks:
                if task in done and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        finally:
            await cancel_and_wait(tasks)
            await close_quietly(events)

    async def _speak(
        self,
        response_id: str,
        item_id: str,
        phrases: asyncio.Queue[str | None],
        timeline: TurnTimeline,
        spoken: list[str],
    ) -> None:
        """Synthesise phrases in order, one phrase ahead of the one playing, and send the audio paced
        to real time plus `audio_lead_ms`, so a barge-in can still stop what has not been heard."""
        rate = self.options.output_sample_rate
        lead_s = self.limits.audio_lead_ms / 1000
        # The next chunk of a phrase: the provider's own timeout plus the hop's.
        chunk_timeout_s = self.limits.tts_timeout_s + self.limits.stage_timeout_s
        slots = asyncio.Semaphore(2)  # the phrase playing + one synthesising ahead
        ordered: asyncio.Queue[tuple[str, asyncio.Queue[bytes | Exception | None]] | None] = asyncio.Queue()
        synth_tasks: list[asyncio.Task[None]] = []

        async def synthesize(text: str, out: asyncio.Queue[bytes | Exception | None]) -> None:
            chunks = self._tts.synthesize(text, rate)
            try:
                async for chunk in chunks:
                    out.put_nowait(chunk)
                out.put_nowait(None)
            except Exception as exc:  # handed to the player, which fails the reply in order
                out.put_nowait(exc)
            finally:
                await close_quietly(chunks)

        async def schedule() -> None:
            while (text := await phrases.get()) is not None:
                await slots.acquire()
                out: asyncio.Queue[bytes | Exception | None] = asyncio.Queue()
                synth_tasks.append(asyncio.create_task(synthesize(text, out)))
                ordered.put_nowait((text, out))
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
        try:
            while (item := await ordered.get()) is not None:
                text, out = item
                first_chunk = True
                while (chunk := await next_chunk(out)) is not None:
                    if timeline.first_audio_out is None:
                        timeline.first_audio_out = _now()
                    if timeline.first_audio_sent is not None:
                        ahead = audio_sent_s - (_now() - timeline.first_audio_sent)
                        if ahead > lead_s:
                            await asyncio.sleep(ahead - lead_s)
                    if first_chunk:
                        first_chunk = False
                        spoken.append(text)
                        delta = text if len(spoken) == 1 else " " + text
                        await self._emit(ResponseTextDelta(response_id, item_id, delta))
                    await self._emit(ResponseAudioDelta(response_id, item_id, chunk))
                    if timeline.first_audio_sent is None:
                        timeline.first_audio_sent = _now()
                    audio_sent_s += duration_ms(chunk, rate) / 1000
                slots.release()
            await asyncio.gather(*synth_tasks)
        finally:
            await cancel_and_wait([scheduler, *synth_tasks])


__all__ = ["SessionLimits", "SessionOptions", "VoiceSession", "new_id"]
