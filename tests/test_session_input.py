"""The session's input alone (`actors.conversation.input`): what reaches STT, and where turns start and
end, with a recording STT on virtual time."""

from __future__ import annotations

import asyncio

import pytest

from actors.audio.end_of_turn import SmartTurnModel
from actors.audio.vad import VadConfig
from actors.conversation.events import InputCleared, SessionError, SpeechStarted, SpeechStopped
from actors.conversation.input import AudioInput, Utterance
from actors.conversation.metrics import TurnTimeline
from actors.conversation.options import SessionLimits, SessionOptions
from actors.stt.base import STTStream
from actors.stt.simulated import SimulatedSTTEngine
from testkit.fakes import EnergySpeechDetector, silence, tone

pytestmark = pytest.mark.looptime

RATE = 16_000  # the STT rate: no resampling, so byte counts compare exactly
CHUNK_MS = 100
CHUNK_BYTES = RATE * 2 * CHUNK_MS // 1000


class RecordingStream(STTStream):
    """A simulated STT stream that records what it was sent and takes `feed_ms` per call."""

    def __init__(self, stt: RecordingSTT) -> None:
        self._inner = SimulatedSTTEngine(stt.transcript).open_stream()
        self._stt = stt
        self.fed: list[int] = []  # bytes per feed call
        self.tail: int | None = None  # bytes sent with the finish
        self.closed = False

    async def feed(self, pcm16: bytes) -> str | None:
        if self._stt.fail:
            raise ConnectionError("the recogniser went away")
        self.fed.append(len(pcm16))
        await asyncio.sleep(self._stt.feed_ms / 1000)
        return await self._inner.feed(pcm16)

    async def finish(self) -> str:
        return await self._inner.finish()

    async def finish_with(self, tail: bytes) -> str:
        self.tail = len(tail)
        return await self._inner.finish_with(tail)

    async def aclose(self) -> None:
        self.closed = True


class RecordingSTT:
    def __init__(
        self, feed_ms: float = 5, transcript: str = "hello there", interim_results: bool = True
    ) -> None:
        self.feed_ms = feed_ms
        self.transcript = transcript
        self.interim_results = interim_results
        self.fail = False
        self.streams: list[RecordingStream] = []

    def open_stream(self) -> STTStream:
        self.streams.append(RecordingStream(self))
        return self.streams[-1]


class ScriptedTurnModel:
    """An end-of-turn model that answers the scripted probabilities in turn and records what it heard."""

    def __init__(self, probabilities: list[float]) -> None:
        self.probabilities = list(probabilities)
        self.heard: list[int] = []  # bytes of audio per call

    def probability_complete(self, pcm16k: bytes) -> float:
        self.heard.append(len(pcm16k))
        return self.probabilities.pop(0)


class ScriptedSentenceEnd:
    """A sentence-end model that answers `probability` and records the words it was asked about."""

    def __init__(self, probability: float) -> None:
        self.probability = probability
        self.asked: list[str] = []
        self.answering: list[str] = []  # what the agent had said, per call

    def probability_sentence_ends(self, words: str, answering: str = "") -> float:
        self.asked.append(words)
        self.answering.append(answering)
        return self.probability


class Input:
    def __init__(
        self,
        *,
        vad: bool = True,
        feed_ms: float = 5,
        max_utterance_s: float = 120,
        semantic: ScriptedTurnModel | None = None,
        sentence_end: ScriptedSentenceEnd | None = None,
        checkpoint_at_pauses: bool = False,  # as a session preparing replies at pauses does
        transcript: str = "hello there",
        agent_said: str = "",
        interim_results: bool = True,
        stt_chunk_ms: int | None = CHUNK_MS,
    ) -> None:
        self.stt = RecordingSTT(feed_ms, transcript, interim_results)
        self.events: list[object] = []
        self.started = 0
        self.began: list[float] = []  # clock time each speech began
        self.stopped: list[tuple[Utterance, TurnTimeline]] = []
        self.interims: list[str] = []
        self.dropped = 0
        self.input = AudioInput(
            stt=self.stt,
            emit=self._emit,
            options=SessionOptions(
                instructions="",
                input_sample_rate=RATE,
                turn_detection=(VadConfig.semantic() if semantic else VadConfig()) if vad else None,
            ),
            limits=SessionLimits(stt_chunk_ms=stt_chunk_ms, max_utterance_s=max_utterance_s),
            speech_detector=EnergySpeechDetector,
            on_speech_started=self._on_started,
            on_speech_stopped=self._on_stopped,
            end_of_turn=(lambda: semantic) if semantic else SmartTurnModel,
            sentence_end=(lambda: sentence_end) if sentence_end else None,
            agent_said=lambda: agent_said,
            on_speech_paused=self._on_paused if checkpoint_at_pauses else None,
            on_interim_transcript=self._on_interim,
            on_speech_dropped=self._on_dropped,
        )

    async def _emit(self, event: object) -> None:
        self.events.append(event)

    async def _on_started(self, began: float) -> None:
        self.started += 1
        self.began.append(began)

    async def _on_paused(self, utterance: Utterance) -> None:
        utterance.checkpoint()

    async def _on_interim(self, text: str) -> None:
        self.interims.append(text)

    async def _on_dropped(self) -> None:
        self.dropped += 1

    async def _on_stopped(self, utterance: Utterance, timeline: TurnTimeline) -> None:
        self.stopped.append((utterance, timeline))

    def of(self, kind: type) -> list:
        return [e for e in self.events if isinstance(e, kind)]

    async def stream(self, pcm: bytes, frame_ms: int = 20) -> None:
        """Send audio in real-time frames, like a microphone."""
        step = RATE * frame_ms // 1000 * 2
        for i in range(0, len(pcm), step):
            await self.input.append(pcm[i : i + step])
            await asyncio.sleep(frame_ms / 1000)


@pytest.mark.parametrize("feed_ms", [5, 250])
async def test_stt_gets_the_utterance_in_chunks_of_at_least_the_configured_size(feed_ms: float) -> None:
    i = Input(vad=False, feed_ms=feed_ms)
    await i.stream(tone(2000, RATE))
    utterance = i.input.take_utterance()
    assert utterance is not None and await utterance.finish() == "hello there"
    stream = i.stt.streams[0]
    assert stream.fed and all(size >= CHUNK_BYTES for size in stream.fed)
    assert sum(stream.fed) + (stream.tail or 0) == len(tone(2000, RATE))  # every byte, once
    if feed_ms > CHUNK_MS:  # a slow STT gets fewer, bigger calls rather than a queue of them
        assert len(stream.fed) <= 2000 / feed_ms + 1


@pytest.mark.parametrize("interim_results", [True, False])
async def test_unless_configured_the_chunk_size_follows_whether_the_stt_gives_interim_results(
    interim_results: bool,
) -> None:
    # Without interim results, feeding often would only cost calls: the finished utterance is what it
    # transcribes. With them, 100 ms keeps the interim text close behind the speech.
    i = Input(vad=False, interim_results=interim_results, stt_chunk_ms=None)
    await i.stream(tone(2500, RATE))
    utterance = i.input.take_utterance()
    assert utterance is not None and await utterance.finish() == "hello there"
    stream = i.stt.streams[0]
    chunk = RATE * 2 * (100 if interim_results else 1000) // 1000
    assert all(size >= chunk for size in stream.fed)
    if not interim_results:
        assert len(stream.fed) == 2  # 2.5 s: two calls of 1 s, the rest with the finish
    assert sum(stream.fed) + (stream.tail or 0) == len(tone(2500, RATE))  # every byte, once
    # A configured size applies whatever the STT.
    i = Input(vad=False, interim_results=interim_results, stt_chunk_ms=200)
    await i.stream(tone(1000, RATE))
    assert all(size >= RATE * 2 * 200 // 1000 for size in i.stt.streams[0].fed)
    assert len(i.stt.streams[0].fed) >= 3


async def test_speech_opens_an_utterance_with_the_prefix_padding_and_silence_hands_it_over() -> None:
    i = Input()
    await i.stream(silence(1000, RATE) + tone(600, RATE) + silence(800, RATE))
    [started] = i.of(SpeechStarted)
    [stopped] = i.of(SpeechStopped)
    # The audio before the detected onset is kept (prefix_padding_ms) so the first word is not clipped.
    assert 1000 - 300 - 32 <= started.audio_start_ms <= 1000 - 300 + 32
    assert 1600 <= stopped.audio_end_ms <= 1600 + 32
    assert i.started == 1
    [(utterance, timeline)] = i.stopped
    assert utterance.item_id == started.item_id == stopped.item_id
    assert timeline.committed is not None and timeline.speech_end is not None
    assert timeline.committed - timeline.speech_end == pytest.approx(0.5, abs=0.06)  # silence_ms
    # STT got everything from the padded start up to the moment the silence ended the turn.
    detected_ms = stopped.audio_end_ms + 500
    assert utterance.audio_seconds == pytest.approx((detected_ms - started.audio_start_ms) / 1000, abs=0.04)
    assert i.input.take_utterance() is None  # already handed over


async def test_what_barge_in_hears_onset_voiced_length_interims_and_dropped_speech() -> None:
    i = Input()
    assert i.input.speech_ms is None
    streamed_at = asyncio.get_running_loop().time()
    await i.stream(silence(500, RATE) + tone(400, RATE) + silence(300, RATE))
    assert i.began[0] == pytest.approx(streamed_at + 0.5, abs=0.04)  # the onset, not its detection
    # Voiced 400 ms (to a 32 ms VAD frame at either end): the 300 ms of silence after it may be the
    # end of the turn, so they do not count.
    assert i.input.speech_ms == pytest.approx(400, abs=64)
    assert i.interims and i.interims[-1].startswith("hello")  # the whole interim text, not deltas
    await i.stream(silence(400, RATE))
    assert i.input.speech_ms is None and len(i.stopped) == 1 and i.dropped == 0

    await i.stream(tone(300, RATE))
    await i.input.clear()  # the client drops the speech being spoken
    assert i.dropped == 1
    i.stt.fail = True
    await i.stream(silence(800, RATE) + tone(300, RATE))
    assert i.dropped == 2  # STT failed mid-utterance


async def test_manual_buffer_refuses_audio_past_the_limit_and_keeps_what_it_holds() -> None:
    i = Input(vad=False, max_utterance_s=1)
    await i.input.append(tone(800, RATE))
    await i.input.append(tone(400, RATE))  # 1.2 s > 1 s: dropped
    assert [e.code for e in i.of(SessionError)] == ["input_audio_buffer_full"]
    utterance = i.input.take_utterance()
    assert utterance is not None and utterance.audio_seconds == pytest.approx(0.8)


async def test_clear_drops_the_utterance_and_closes_its_stt_stream() -> None:
    i = Input(vad=False)
    await i.stream(tone(300, RATE))
    await i.input.clear()
    assert i.of(InputCleared) and i.stt.streams[0].closed
    assert i.input.take_utterance() is None


async def test_stt_failing_mid_utterance_is_reported_at_once_and_the_next_utterance_starts_afresh() -> None:
    i = Input()
    i.stt.fail = True
    await i.stream(silence(200, RATE) + tone(600, RATE))  # still speaking
    assert [e.code for e in i.of(SessionError)] == ["transcription_failed"]
    assert i.stt.streams[0].closed
    await i.stream(silence(800, RATE))
    assert not i.stopped  # the failed utterance is not handed over as a turn
    i.stt.fail = False
    await i.stream(tone(600, RATE) + silence(800, RATE))
    assert len(i.stopped) == 1 and len(i.stt.streams) == 2


async def test_semantic_a_pause_that_sounds_finished_ends_the_turn_without_the_silence_window() -> None:
    model = ScriptedTurnModel([0.9])
    i = Input(semantic=model)
    await i.stream(silence(500, RATE) + tone(1500, RATE) + silence(350, RATE))
    [stopped] = i.of(SpeechStopped)
    assert len(i.stopped) == 1
    assert stopped.audio_end_ms == pytest.approx(2000, abs=40)  # where the speech ended, as server VAD
    # Asked once, at the pause, about everything up to it (the speech and ~200 ms of its silence).
    [heard] = model.heard
    assert 2.2 <= heard / (2 * RATE) <= 2.3


async def test_semantic_a_pause_that_sounds_unfinished_keeps_listening_up_to_the_cap() -> None:
    i = Input(semantic=ScriptedTurnModel([0.0]))
    await i.stream(tone(1000, RATE) + silence(2000, RATE))
    assert i.stopped == []  # server VAD would have ended the turn 500 ms into the pause
    await i.stream(silence(2200, RATE))
    assert len(i.stopped) == 1  # auto eagerness: 4 s at most
    [stopped] = i.of(SpeechStopped)
    assert stopped.audio_end_ms == pytest.approx(1000, abs=40)


async def test_semantic_speech_after_a_pause_continues_the_same_turn() -> None:
    model = ScriptedTurnModel([0.1, 0.8])
    i = Input(semantic=model)
    await i.stream(tone(1000, RATE) + silence(900, RATE) + tone(800, RATE) + silence(400, RATE))
    assert len(i.of(SpeechStarted)) == 1 and len(i.stopped) == 1
    [stopped] = i.of(SpeechStopped)
    assert stopped.audio_end_ms == pytest.approx(2700, abs=40)
    assert len(model.heard) == 2


async def test_semantic_the_model_hears_the_last_eight_seconds_at_most() -> None:
    model = ScriptedTurnModel([0.9])
    i = Input(semantic=model)
    await i.stream(
        tone(
            10_000,
            RATE,
        )
        + silence(300, RATE)
    )
    assert model.heard == [8 * RATE * 2]


WORDS = "I would like to"


@pytest.mark.parametrize("checkpoint_at_pauses", [False, True])
@pytest.mark.parametrize("sounds_finished", [0.9, 0.45])
async def test_semantic_a_finished_sound_after_words_no_sentence_ends_on_waits_as_if_in_doubt(
    checkpoint_at_pauses: bool, sounds_finished: float
) -> None:
    words = ScriptedSentenceEnd(0.01)
    i = Input(
        semantic=ScriptedTurnModel([sounds_finished]),
        sentence_end=words,
        checkpoint_at_pauses=checkpoint_at_pauses,
        transcript=WORDS,
    )
    await i.stream(tone(1500, RATE) + silence(1500, RATE))
    assert i.stopped == []  # the sound alone would have ended the turn within 600 ms of the pause
    await i.stream(silence(1000, RATE))
    assert len(i.stopped) == 1  # auto eagerness: half its 4 s cap, as an unsure verdict waits
    [stopped] = i.of(SpeechStopped)
    assert stopped.audio_end_ms == pytest.approx(1500, abs=40)
    # The words before the pause: the checkpointed segment's final transcript, else the interim one.
    assert words.asked == [WORDS]


async def test_semantic_words_that_can_end_a_sentence_let_a_finished_sound_end_the_turn_at_once() -> None:
    words = ScriptedSentenceEnd(0.3)
    i = Input(
        semantic=ScriptedTurnModel([0.9]), sentence_end=words, checkpoint_at_pauses=True, transcript=WORDS
    )
    await i.stream(tone(1500, RATE) + silence(400, RATE))
    assert len(i.stopped) == 1 and words.asked == [WORDS]


async def test_semantic_words_a_sentence_could_but_seldom_does_end_on_wait_less_than_open_ones() -> None:
    # 0.10: between "no sentence ends here" (< 0.05: half the cap) and "one can" (≥ 0.15: no wait).
    words = ScriptedSentenceEnd(0.10)
    i = Input(
        semantic=ScriptedTurnModel([0.9]), sentence_end=words, checkpoint_at_pauses=True, transcript=WORDS
    )
    await i.stream(tone(1500, RATE) + silence(800, RATE))
    assert i.stopped == []  # the sound alone would have ended the turn within 600 ms of the pause
    await i.stream(silence(800, RATE))
    assert len(i.stopped) == 1  # a quarter of the 4 s cap, where open words wait half of it


async def test_semantic_words_are_judged_as_an_answer_to_what_the_agent_said_last() -> None:
    words = ScriptedSentenceEnd(0.3)
    i = Input(
        semantic=ScriptedTurnModel([0.9]),
        sentence_end=words,
        checkpoint_at_pauses=True,
        transcript="my daughter",
        agent_said="Who is the appointment for?",
    )
    await i.stream(tone(1500, RATE) + silence(400, RATE))
    assert words.asked == ["my daughter"]
    assert words.answering == ["Who is the appointment for?"]


async def test_semantic_words_are_not_consulted_when_the_sound_is_in_doubt_or_they_are_too_few() -> None:
    words = ScriptedSentenceEnd(0.01)
    i = Input(semantic=ScriptedTurnModel([0.1]), sentence_end=words, transcript=WORDS)
    await i.stream(tone(1500, RATE) + silence(4500, RATE))
    assert len(i.stopped) == 1 and words.asked == []  # the model's own doubt already waits longer
    # One word says little about where a sentence ends; the sound decides at once.
    i = Input(
        semantic=ScriptedTurnModel([0.9]), sentence_end=words, checkpoint_at_pauses=True, transcript="okay"
    )
    await i.stream(tone(1500, RATE) + silence(400, RATE))
    assert len(i.stopped) == 1 and words.asked == []
