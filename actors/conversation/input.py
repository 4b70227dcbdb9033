"""Input: the client's audio on its way to STT. Resampling to 16 kHz, a preroll of recent audio,
endpointing (VAD), and one `Utterance` per user turn that feeds STT in chunks while the user speaks.

It decides nothing about turns: it says where speech starts and stops (`on_speech_started`,
`on_speech_stopped`) and hands over the utterance it holds when the turn is committed
(`take_utterance`); `actors.conversation.turns` decides what that means for the conversation.

Where speech stops: after the silence window (server VAD), or with semantic turn detection at a pause
the end-of-turn model judges finished, else after a wait that grows with its doubt
(`actors.audio.end_of_turn`). Unless the model is already in doubt, the words said so far have the
last say (`actors.llm.sentence_end`, read as an answer to the agent's last reply): after words no
sentence ends on, the turn is waited for as if the model were in doubt. Both models run in a worker
thread; audio keeps flowing meanwhile, and a verdict that arrives after the user spoke again is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import assert_never

from actors.audio.end_of_turn import (
    PAUSE_MS,
    WINDOW_SAMPLES,
    WORDS_MIN,
    EndOfTurnModel,
    SmartTurnModel,
    wait_after_pause_ms,
    with_words,
    words_can_matter,
)
from actors.audio.pcm import PCM_SAMPLE_WIDTH, STT_SAMPLE_RATE, StreamResampler, duration_ms
from actors.audio.vad import Endpointer, SpeechDetector, VadEvent
from actors.conversation.events import (
    Emit,
    InputCleared,
    SessionError,
    SpeechStarted,
    SpeechStopped,
    TranscriptDelta,
    new_id,
)
from actors.conversation.faults import public_error
from actors.conversation.metrics import TurnTimeline, clock
from actors.conversation.options import SessionLimits, SessionOptions
from actors.conversation.stages import TranscriberClient
from actors.llm.sentence_end import SentenceEndModel
from actors.stt.base import STTClient, STTStream
from actors.tasks import cancel_and_wait

log = logging.getLogger(__name__)

# Audio chunks longer than this are scored by the VAD in a worker thread (ONNX Runtime releases the GIL),
# so a client sending seconds of audio at once never holds up the event loop other sessions share.
VAD_INLINE_MAX_MS = 200
# Audio per STT call unless `stt_chunk_ms` says otherwise: often enough for interim results to follow the
# speech; an STT without them gains nothing from being fed often (each call is a hop), and the finish
# call (on the turn's critical path) carries at most this much.
CHUNK_MS_WITH_INTERIM = 100
CHUNK_MS_WITHOUT_INTERIM = 1000

# How long a pause's verdict waits for the transcript of the words before it: past this, the sound alone
# decides (a slow STT must not hold a finished turn up).
WORDS_WAIT_S = 1.0


class _Segment:
    """One STT stream of an utterance, fed in chunks of at least `chunk_bytes`, one call at a time.

    Audio never waits for STT: it is appended here and a feeder task sends whatever accumulated
    since the previous call finished (so a slow STT gets bigger, fewer calls, never a backlog of hops).
    """

    def __init__(
        self,
        stream: STTStream,
        chunk_bytes: int,
        on_interim: Callable[[str], Awaitable[None]],
        on_failure: Callable[[Exception], Awaitable[None]],
        limits: SessionLimits,
    ):
        self._stream = stream
        self._chunk_bytes = chunk_bytes
        self._on_interim = on_interim
        self._on_failure = on_failure
        self._limits = limits
        self._pending = bytearray()
        self.failure: Exception | None = None  # a feed call failed: the segment cannot be transcribed
        self._wake = asyncio.Event()
        self._closing = False
        self._task = asyncio.create_task(self._feed_loop())

    def push(self, pcm16k: bytes) -> None:
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
                await self._on_failure(exc)

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


class Utterance:
    """One user turn's audio on its way to STT, as one or more segments (STT streams).

    Normally one segment. At a pause the session may `checkpoint` it: the segment is finished (its
    transcript is what the user said so far, for a reply prepared before the turn is confirmed) and
    the audio after it is held back; if the user goes on (`resume`), a new segment starts with the
    held audio, and the turn's transcript is the segments' transcripts joined.
    """

    def __init__(
        self,
        stt: STTClient,
        chunk_bytes: int,
        on_interim: Callable[[str], Awaitable[None]],
        on_failure: Callable[[Utterance, Exception], Awaitable[None]],
        limits: SessionLimits,
    ):
        self.item_id = new_id("item")
        self._stt = stt
        self._chunk_bytes = chunk_bytes
        self._on_interim = on_interim
        self._on_failure = on_failure
        self._limits = limits
        self.audio_bytes = 0
        self._closed: list[_Segment] = []  # segments finished at pauses (or at the end)
        self._finished: list[asyncio.Task[str]] = []  # their transcripts
        self._texts: list[str] = []  # the latest text of each segment, to prefix the next one's interims
        self._held: bytearray | None = None  # audio after a checkpoint, until the user goes on
        self._segment: _Segment | None = self._open_segment()

    @property
    def audio_seconds(self) -> float:
        """How much audio the utterance holds."""
        return self.audio_bytes / (PCM_SAMPLE_WIDTH * STT_SAMPLE_RATE)

    @property
    def checkpointed(self) -> bool:
        """The utterance was checkpointed at a pause and the user has not gone on since."""
        return self._held is not None

    def push(self, pcm16k: bytes) -> None:
        """Add 16 kHz audio; it goes to STT once a chunk's worth has accumulated (held after a checkpoint)."""
        self.audio_bytes += len(pcm16k)
        if self._segment is not None:
            self._segment.push(pcm16k)
        elif self._held is not None:
            self._held += pcm16k

    def checkpoint(self) -> None:
        """The user paused: finish the current segment in the background, hold the audio that follows."""
        if self._segment is None:
            return
        self._held = bytearray()
        self._finish_segment()

    def resume(self, keep_bytes: int) -> None:
        """The user went on after a checkpoint: a new segment starts with the last `keep_bytes` held."""
        if self._held is None:
            return
        held, self._held = self._held, None
        self._segment = self._open_segment()
        self._segment.push(bytes(held[-keep_bytes:]) if keep_bytes else b"")

    @property
    def interim_text(self) -> str:
        """What the STT has heard so far, as far as its interim results tell ("" without them)."""
        return _join(self._texts)

    async def heard_so_far(self) -> str:
        """The transcript of the segments finished at checkpoints (the current one's audio excluded)."""
        # Shielded: a caller giving up must not cancel the transcription the turn itself needs.
        return _join([await asyncio.shield(task) for task in list(self._finished)])

    async def finish(self) -> str:
        """The turn is over: finish the current segment (audio held after a checkpoint is only the
        silence that ended the turn, and is dropped) and join every segment's transcript."""
        self._held = None
        self._finish_segment()
        try:
            return _join(await asyncio.gather(*self._finished))
        finally:
            await cancel_and_wait(self._finished)  # one failed: the others' results are not needed

    async def abort(self) -> None:
        """Drop the utterance: stop feeding and close the STT streams without a transcript."""
        self._held = None
        await cancel_and_wait(self._finished)
        for segment in self._closed:  # a finish cancelled before it ran leaves its feeder waiting
            await segment.abort()
        if self._segment is not None:
            await self._segment.abort()
            self._segment = None

    async def close_stream(self) -> None:
        """Close the current STT stream, whatever state it is in."""
        if self._segment is not None:
            await self._segment.close_stream()

    def _finish_segment(self) -> None:
        if self._segment is None:
            return
        segment, self._segment = self._segment, None
        self._closed.append(segment)
        self._finished.append(asyncio.create_task(segment.finish()))

    def _open_segment(self) -> _Segment:
        index = len(self._finished)
        self._texts.append("")

        async def on_interim(text: str) -> None:
            self._texts[index] = text
            await self._on_interim(_join(self._texts))

        async def on_failure(exc: Exception) -> None:
            await self._on_failure(self, exc)

        return _Segment(self._stt.open_stream(), self._chunk_bytes, on_interim, on_failure, self._limits)


def _join(texts: list[str]) -> str:
    return " ".join(text.strip() for text in texts if text.strip())


class AudioInput:
    """The session's input audio: resampled, remembered for the preroll, endpointed, fed to STT.

    With turn detection (a VAD) an utterance opens where speech starts, `prefix_padding_ms` early,
    and ends where it stops; without, everything appended between commits is one utterance. Emits
    `SpeechStarted`, `SpeechStopped`, `TranscriptDelta`, `InputCleared` and the input's errors.
    """

    def __init__(
        self,
        *,
        stt: TranscriberClient,
        emit: Emit,
        options: SessionOptions,
        limits: SessionLimits,
        speech_detector: Callable[[], SpeechDetector] | None,
        on_speech_started: Callable[[float], Awaitable[None]],
        on_speech_stopped: Callable[[Utterance, TurnTimeline], Awaitable[None]],
        on_speech_paused: Callable[[Utterance], Awaitable[None]] | None = None,
        on_speech_resumed: Callable[[], Awaitable[None]] | None = None,
        end_of_turn: Callable[[], EndOfTurnModel] = SmartTurnModel,
        sentence_end: Callable[[], SentenceEndModel] | None = None,
        agent_said: Callable[[], str] = lambda: "",
        on_interim_transcript: Callable[[str], Awaitable[None]] | None = None,
        on_speech_dropped: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.options = options
        self._limits = limits
        self._stt = stt
        self._emit = emit
        self._make_detector = speech_detector
        self._on_speech_started = on_speech_started  # after `SpeechStarted`: when speech began (clock)
        self._on_speech_stopped = on_speech_stopped  # after `SpeechStopped`: the utterance, to commit
        # At a pause in speech and at its end (for preemptive generation); with them, server VAD reports
        # pauses too (`PAUSE_MS` of silence).
        self._on_speech_paused = on_speech_paused
        self._on_speech_resumed = on_speech_resumed
        self._on_interim_transcript = on_interim_transcript  # the whole interim text, after its delta
        self._on_speech_dropped = on_speech_dropped  # the utterance being spoken ends uncommitted
        self._resampler = StreamResampler(options.input_sample_rate, STT_SAMPLE_RATE)
        self._endpointer: Endpointer | None = None
        self._configure_vad()
        self._samples_in = 0  # 16 kHz samples received so far
        self._preroll: deque[bytes] = deque()
        self._preroll_samples = 0
        self._utterance: Utterance | None = None
        self._speech_start = 0  # sample where the speech being spoken (if any) started
        self._make_end_of_turn = end_of_turn
        self._make_sentence_end = sentence_end  # None: the sound of a pause alone decides
        self._agent_said = agent_said  # what the user is answering: the agent's last reply, as heard
        # Semantic detection's models, loaded in a worker thread as soon as it is switched on.
        self._turn_models: asyncio.Future[tuple[EndOfTurnModel, SentenceEndModel | None]] | None = None
        self._pauses = 0  # pauses seen: a verdict applies only to the pause it was asked about
        self._judging: set[asyncio.Task[None]] = set()
        # The endpointer is used from `append` and from a verdict's task: one at a time.
        self._vad_lock = asyncio.Lock()
        self._load_turn_models()

    def _load_turn_models(self) -> None:
        """With semantic detection on, start loading its models (~1 s the first time in a process), so
        that the first pause does not wait for them."""
        vad = self.options.turn_detection
        if self._turn_models is None and vad is not None and vad.eagerness is not None:
            loop = asyncio.get_running_loop()
            self._turn_models = loop.create_task(asyncio.to_thread(self._make_turn_models))

    def _make_turn_models(self) -> tuple[EndOfTurnModel, SentenceEndModel | None]:
        end_of_turn = self._make_end_of_turn()
        try:
            sentence_end = self._make_sentence_end() if self._make_sentence_end is not None else None
        except Exception:
            log.exception("the sentence-end model did not load; the sound of a pause alone decides")
            sentence_end = None
        return end_of_turn, sentence_end

    def _configure_vad(self) -> None:
        vad = self.options.turn_detection
        if vad is not None and vad.pause_ms is None and self._on_speech_paused is not None:
            vad = dataclasses.replace(vad, pause_ms=PAUSE_MS)
        if vad is None or self._make_detector is None:
            self._endpointer = None
        elif self._endpointer is None:
            self._endpointer = Endpointer(self._make_detector(), vad)
        else:
            self._endpointer.config = vad

    def update_options(self, options: SessionOptions) -> None:
        """Apply new options: the input sample rate and turn detection."""
        if options.input_sample_rate != self.options.input_sample_rate:
            self._resampler = StreamResampler(options.input_sample_rate, STT_SAMPLE_RATE)
        self.options = options
        self._configure_vad()
        self._load_turn_models()

    async def append(self, pcm16: bytes, received_at: float | None = None) -> None:
        """Accept client audio at the session's input rate (already validated PCM16 mono)."""
        now = clock() if received_at is None else received_at
        pcm16k = self._resampler.process(pcm16)
        max_utterance_bytes = int(self._limits.max_utterance_s * STT_SAMPLE_RATE) * PCM_SAMPLE_WIDTH
        if self._endpointer is None:
            # Manual turns: everything between commits is one utterance, up to the limit.
            held = self._utterance.audio_bytes if self._utterance is not None else 0
            if held + len(pcm16k) > max_utterance_bytes:
                await self._emit(
                    SessionError(
                        "input_audio_buffer_full",
                        f"the input audio buffer holds {self._limits.max_utterance_s:.0f} s at most: "
                        "commit or clear it; this audio was dropped",
                    )
                )
                return
            self._samples_in += len(pcm16k) // PCM_SAMPLE_WIDTH
            if self._utterance is None:
                self._utterance = self._open_utterance()
            self._utterance.push(pcm16k)
            return
        async with self._vad_lock:
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
                await self._on_vad_event(event, now)
            if self._utterance is not None and self._utterance.audio_bytes > max_utterance_bytes:
                # Nobody speaks for minutes without a pause: end the turn here rather than grow unbounded.
                endpointer.reset()
                await self._speech_stopped(self._samples_in, now, now)

    async def _on_vad_event(self, event: VadEvent, now: float) -> None:
        # When the event's sample arrived: chunk arrival minus the audio after it in this chunk,
        # i.e. the moment it was spoken for a client streaming in real time.
        at = now - max(self._samples_in - event.sample, 0) / STT_SAMPLE_RATE
        match event.kind:
            case "speech_started":
                await self._speech_started(event.sample, at)
            case "speech_stopped":
                await self._speech_stopped(event.sample, at, now)
            case "speech_paused":
                self._pauses += 1
                vad = self.options.turn_detection
                if vad is not None and vad.eagerness is not None:
                    audio = self._preroll_from(self._samples_in - WINDOW_SAMPLES)
                    task = asyncio.create_task(self._judge_pause(self._pauses, audio, self._utterance))
                    self._judging.add(task)
                    task.add_done_callback(self._judging.discard)
                if self._on_speech_paused is not None and self._utterance is not None:
                    await self._on_speech_paused(self._utterance)
            case "speech_resumed":
                # A verdict on the pause that ended is dropped when it arrives.
                if self._utterance is not None and self._utterance.checkpointed:
                    vad = self.options.turn_detection
                    padding_ms = vad.prefix_padding_ms if vad is not None else 0
                    keep = (self._samples_in - event.sample) + padding_ms * STT_SAMPLE_RATE // 1000
                    self._utterance.resume(keep * PCM_SAMPLE_WIDTH)
                if self._on_speech_resumed is not None:
                    await self._on_speech_resumed()
            case _:
                assert_never(event.kind)

    async def _judge_pause(self, pause: int, audio: bytes, utterance: Utterance | None) -> None:
        """Ask the end-of-turn model about this pause (and, unless it is already in doubt, whether the
        words before it can end a sentence), then set how long it may last."""
        vad = self.options.turn_detection
        if vad is None or vad.eagerness is None:
            return
        self._load_turn_models()
        assert self._turn_models is not None
        try:
            end_of_turn, sentence_end = await asyncio.shield(self._turn_models)
            probability = await asyncio.to_thread(end_of_turn.probability_complete, audio)
        except Exception:
            # Without a verdict the pause lasts the eagerness cap: slow, but the turn still ends.
            log.exception("the end-of-turn model failed; this pause waits the full window")
            return
        if words_can_matter(probability) and utterance is not None and sentence_end is not None:
            probability = with_words(probability, await self._sentence_end_after(utterance, sentence_end))
        async with self._vad_lock:
            endpointer = self._endpointer
            if endpointer is None or pause != self._pauses or not endpointer.paused:
                return  # the user spoke again, or the turn ended, meanwhile
            pause_ms = vad.pause_ms or PAUSE_MS
            event = endpointer.stop_after(pause_ms + wait_after_pause_ms(probability, vad.eagerness))
            if event is not None:
                await self._on_vad_event(event, clock())

    async def _sentence_end_after(self, utterance: Utterance, model: SentenceEndModel) -> float | None:
        """The probability that a sentence ends after the words said before this pause; None when
        they are not known in time."""
        words = utterance.interim_text
        if utterance.checkpointed:  # the segment before the pause is being transcribed: its final words
            try:
                async with asyncio.timeout(WORDS_WAIT_S):
                    words = await utterance.heard_so_far()
            except Exception:  # late or failed: the turn's own transcription reports a failure
                return None
        if len(words.split()) < WORDS_MIN:
            return None
        try:
            return await asyncio.to_thread(model.probability_sentence_ends, words, self._agent_said())
        except Exception:
            log.exception("the sentence-end model failed; the sound of the pause alone decides")
            return None

    @property
    def speech_ms(self) -> int | None:
        """How long the speech being spoken has been voiced, in audio time (a silence at its end not
        counted, since it may be the end of the turn); None when no one is speaking."""
        endpointer = self._endpointer
        if endpointer is None or not endpointer.in_speech:
            return None
        return _ms(max(endpointer.voiced_until - self._speech_start, 0))

    @property
    def received_ms(self) -> int:
        """How much input audio has arrived, in milliseconds."""
        return _ms(self._samples_in)

    @property
    def judging(self) -> bool:
        """A pause's verdict is being worked out."""
        return bool(self._judging)

    async def settled(self) -> None:
        """Wait for the end-of-turn verdicts still being worked out: for callers that feed recorded audio
        faster than real time and want each verdict applied where a live speaker's would be."""
        while self._judging:
            await asyncio.gather(*self._judging, return_exceptions=True)

    def take_utterance(self) -> Utterance | None:
        """Hand over the utterance being spoken (the turn is committed); the next audio starts a new one."""
        utterance, self._utterance = self._utterance, None
        return utterance

    async def clear(self) -> None:
        """Drop the audio not yet committed (and the utterance being transcribed)."""
        async with self._vad_lock:
            if self._utterance is not None:
                await self._utterance.abort()
                self._utterance = None
                await self._speech_dropped()
            if self._endpointer is not None:
                self._endpointer.reset()
        await self._emit(InputCleared())

    async def close(self) -> None:
        """Abort the utterance being spoken, if any (the client left)."""
        await cancel_and_wait(list(self._judging))
        if self._utterance is not None:
            await self._utterance.abort()
            self._utterance = None

    def _remember_preroll(self, pcm16k: bytes) -> None:
        vad = self.options.turn_detection
        keep = (vad.prefix_padding_ms if vad else 0) * STT_SAMPLE_RATE // 1000 + 16_000  # + 1 s of slack
        if vad is not None and vad.eagerness is not None:
            keep = max(keep, WINDOW_SAMPLES)  # what the end-of-turn model hears
        self._preroll.append(pcm16k)
        self._preroll_samples += len(pcm16k) // PCM_SAMPLE_WIDTH
        while self._preroll and self._preroll_samples - len(self._preroll[0]) // PCM_SAMPLE_WIDTH >= keep:
            self._preroll_samples -= len(self._preroll.popleft()) // PCM_SAMPLE_WIDTH

    def _preroll_from(self, sample: int) -> bytes:
        audio = b"".join(self._preroll)
        first = self._samples_in - len(audio) // PCM_SAMPLE_WIDTH
        return audio[max(sample - first, 0) * PCM_SAMPLE_WIDTH :]

    def _open_utterance(self) -> Utterance:
        chunk_ms = self._limits.stt_chunk_ms or (
            CHUNK_MS_WITH_INTERIM if self._stt.interim_results else CHUNK_MS_WITHOUT_INTERIM
        )
        chunk_bytes = STT_SAMPLE_RATE * PCM_SAMPLE_WIDTH * chunk_ms // 1000
        sent: list[str] = []  # words already sent as deltas

        async def on_interim(text: str) -> None:
            # Clients append the deltas (OpenAI's contract; LiveKit's STT plugin does), so a word once
            # sent cannot be taken back: send the hypothesis's words but its last (the likeliest to
            # change), only while they extend what was sent. The completed event has the final text.
            stable = text.split()[:-1]
            if len(stable) > len(sent) and stable[: len(sent)] == sent:
                delta = " ".join(stable[len(sent) :])
                await self._emit(TranscriptDelta(utterance.item_id, " " + delta if sent else delta))
                sent.extend(stable[len(sent) :])
            if self._on_interim_transcript is not None:
                await self._on_interim_transcript(text)

        utterance = Utterance(self._stt, chunk_bytes, on_interim, self._on_utterance_failed, self._limits)
        return utterance

    async def _on_utterance_failed(self, utterance: Utterance, exc: Exception) -> None:
        """STT failed while the user was still speaking: report it at once and drop the utterance
        (the user's next utterance starts afresh, on a replacement replica if need be)."""
        failure = public_error(exc, "stt")
        log.warning("transcription of %s failed (%s)", utterance.item_id, failure.code, exc_info=exc)
        if self._utterance is utterance:
            self._utterance = None
            await self._speech_dropped()
        await utterance.close_stream()  # called from its feed task, which ends right after
        await self._emit(SessionError("transcription_failed", failure.message))

    async def _speech_dropped(self) -> None:
        if self._on_speech_dropped is not None:
            await self._on_speech_dropped()

    async def _speech_started(self, sample: int, began_at: float) -> None:
        if self._utterance is not None:  # a previous utterance was never committed
            await self._utterance.abort()
        vad = self.options.turn_detection
        padding = (vad.prefix_padding_ms if vad else 0) * STT_SAMPLE_RATE // 1000
        start = max(sample - padding, 0)
        self._speech_start = sample
        self._utterance = self._open_utterance()
        # The current chunk was already pushed to the preroll; feed everything from `start`.
        self._utterance.push(self._preroll_from(start))
        item_id = self._utterance.item_id
        # The reply being spoken pauses first: no audio of it may follow the client's speech_started.
        await self._on_speech_started(began_at)
        await self._emit(SpeechStarted(item_id, _ms(start)))

    async def _speech_stopped(self, sample: int, speech_end_at: float, now: float) -> None:
        if self._utterance is None:
            return
        await self._emit(SpeechStopped(self._utterance.item_id, _ms(sample)))
        timeline = TurnTimeline(speech_end=speech_end_at, committed=now)
        utterance = self.take_utterance()
        assert utterance is not None
        await self._on_speech_stopped(utterance, timeline)


def _ms(sample: int) -> int:
    return sample * 1000 // STT_SAMPLE_RATE
