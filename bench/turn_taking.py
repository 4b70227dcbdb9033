"""Turn-taking: when does the agent decide the user has finished? Server VAD (a 500 ms silence window)
against semantic turn detection (the end-of-turn model at each pause) per eagerness, on real human speech;
and barge-in: does a noise burst during a reply cost the reply, and how soon does real speech stop it?

    .venv/bin/python -m bench.turn_taking          # ~2 min → bench/results/turn_taking.{md,json,png}

The test set is built from Debian's recordings of human speakers (LibriVox sentences, and the short
commands of pocketsphinx's test data), over room noise (−55 dBFS):
- **complete**: each recording whole, then 9 s of room noise (more than the longest wait). Measured:
  the end-of-turn delay, from the acoustic end of the speech (its last 10 ms above −40 dBFS) to the
  moment the agent ends the turn.
- **paused**: each LibriVox sentence with a pause of 300, 600, 1000 or 1500 ms of room noise inserted
  after a word in its middle where the clause cannot end (after "a", "to", "and", "been", ... : word
  times from pocketsphinx's forced alignment of the reference transcript), then the rest of the
  sentence. A **false cut-off** is a turn ended inside the pause: the agent would answer a question the
  user had not finished.

Each utterance goes through the session's own input (`actors.conversation.input.AudioInput`) with the
real Silero VAD and the real end-of-turn model. Audio is fed faster than real time, except while a
pause's verdict is being worked out: then in real time, so the models' run time and the wait for the
words' transcript count in the delays as they would live. At each pause the utterance's transcription is
finished (as a session preparing its reply at pauses does); semantic modes "+ words" also check those
words (`actors.llm.sentence_end`), transcribed either by a stand-in for an accurate STT without interim
results (the reference words spoken so far, final 150 ms after the audio, as `bench.latency`'s
simulated STT) or by the offline pocketsphinx.

**Barge-in**: a whole `VoiceSession` (real Silero VAD, real pocketsphinx STT with its interim results,
the end-of-turn model in semantic modes; a scripted LLM and simulated TTS speaking a ~30 s reply), on a
virtual clock (looptime: the audio is fed in 20 ms frames as a microphone would, without waiting for
them; time the CPU spends in worker threads, such as pocketsphinx's, counts only when it holds the
session up). While the reply plays, after 1 s of room noise comes one sound, then room noise for the
turn detection's longest silence window plus 1.5 s:
- **sounds that are no interruption** (12): white noise (300 ms), a knock (100 ms), synthesised vocal
  sounds without words (a cough-like burst, throat clearing, "mm", "mm-hmm", "uh", "ahh": a glottal pulse
  train and breath noise through formant filters), and four single words cut from the LibriVox
  recordings (standing for a one-word backchannel such as "yeah"). A **false barge-in** is a reply
  cancelled by one; the time the reply was held paused is what the user hears as a gap.
- **real interruptions**: the LibriVox sentences and the spoken commands (2 to 20 words each). Measured
  from the acoustic start of the speech: when the reply's audio stopped (no audio is sent after that;
  the bench counts any that is) and when the reply was cancelled; a **missed** one is a reply that
  resumed or ran on.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import looptime
import numpy as np
import soundfile as sf
from tqdm import tqdm

from actors.audio.end_of_turn import MAX_WAIT_MS, SmartTurnModel, wait_after_pause_ms, with_words
from actors.audio.pcm import STT_SAMPLE_RATE
from actors.audio.vad import SileroSpeechDetector, VadConfig
from actors.conversation.events import (
    ResponseAudioDelta,
    ResponseFinished,
    SessionEvent,
    SpeechStarted,
    SpeechStopped,
)
from actors.conversation.input import AudioInput, Utterance
from actors.conversation.metrics import TurnTimeline
from actors.conversation.options import SessionLimits, SessionOptions
from actors.conversation.session import VoiceSession
from actors.llm.sentence_end import GemmaSentenceEnd
from actors.llm.stage import LLMStage
from actors.stt.base import STTEngine, STTStream
from actors.stt.pocketsphinx_engine import PocketsphinxEngine
from actors.stt.simulated import SimulatedSTTEngine
from actors.tts.simulated import SimulatedTTSEngine
from actors.tts.stage import TTSStage
from bench.latency import STT_DELAY_MS
from bench.load import mix_noise, percentile, room_noise
from testkit.fakes import FakeLLMEngine
from testkit.recordings import LIBRIVOX
from testkit.serve_cluster import ROOT
from testkit.speech import noise_burst, speech_end_byte

RATE = STT_SAMPLE_RATE
PAUSES_MS = (300, 600, 1000, 1500)
# Room noise after each utterance: longer than the longest wait (low eagerness), so every turn can end.
TAIL_S = max(MAX_WAIT_MS.values()) / 1000 + 1.0
# Words after which an English clause cannot end: a pause there is the speaker thinking, not finishing.
OPEN_WORDS = {"a", "an", "the", "to", "of", "and", "in", "his", "her", "be", "been", "have", "had", "might"}
OPEN_WORDS |= {"would", "was", "is", "how", "more", "rather", "there", "much", "made", "he", "must", "still"}
COMMANDS = Path("/usr/share/pocketsphinx/test/data/cards")
MODES: dict[str, VadConfig] = {
    "server_vad 500 ms": VadConfig(),
    "semantic_vad high": VadConfig.semantic("high"),
    "semantic_vad auto": VadConfig.semantic("auto"),
    "semantic_vad low": VadConfig.semantic("low"),
}
# Turn ends: each mode by the sound of its pauses alone, then the semantic ones with the words checked,
# transcribed by an accurate STT ("reference") or by pocketsphinx.
TURN_END_MODES: list[tuple[str, VadConfig, str | None]] = [(name, vad, None) for name, vad in MODES.items()]
TURN_END_MODES += [
    (f"{name} + words", vad, "reference") for name, vad in MODES.items() if vad.eagerness is not None
]
TURN_END_MODES.append(
    ("semantic_vad auto + words (pocketsphinx)", MODES["semantic_vad auto"], "pocketsphinx")
)
TRANSCRIPTS = {LIBRIVOX: "transcription", COMMANDS: "cards.transcription"}
STT_FINAL_S = STT_DELAY_MS / 1000  # the simulated STT's final result, as in bench.latency
# A stream's audio starts this long before the speech it was opened for (the default prefix padding).
PREFIX_PADDING_S = 0.3


@dataclass
class Utterance16k:
    name: str
    pcm: bytes
    speech_end_s: float  # acoustic end of the last word
    words: list[tuple[str, float]]  # the reference words and where each ends (seconds)
    pause_s: tuple[float, float] | None = None  # the inserted pause (paused set only)


def read16k(path: Path) -> bytes:
    audio, rate = sf.read(path, dtype="int16")
    assert rate == RATE, path
    return bytes(audio.tobytes())


def reference_transcript(path: Path) -> str:
    for line in (path.parent / TRANSCRIPTS[path.parent]).read_text().splitlines():
        match = re.match(r"<s>(.*)</s> \((.*)\)", line)
        if match and path.stem.endswith(match.group(2)):
            return " ".join(match.group(1).split())
    raise LookupError(path)


def word_ends(pcm: bytes, transcript: str) -> list[tuple[str, float]]:
    """(word, end in seconds) from pocketsphinx's forced alignment of the reference transcript."""
    from pocketsphinx import Decoder

    decoder = Decoder(samprate=RATE, loglevel="ERROR")
    decoder.set_align_text(transcript)
    decoder.start_utt()
    decoder.process_raw(pcm, full_utt=True)
    decoder.end_utt()
    return [(s.word.split("(")[0], (s.end_frame + 1) / 100) for s in decoder.seg() if s.word[0].isalpha()]


def with_room(pcm: bytes, seed: int) -> bytes:
    return mix_noise(pcm, room_noise(len(pcm) / 2 / RATE + 0.1, seed=seed, rate=RATE), 0)


def speech_end_s(pcm: bytes) -> float:
    return speech_end_byte(pcm, RATE) / 2 / RATE


def test_set() -> tuple[list[Utterance16k], list[Utterance16k]]:
    tail = room_noise(TAIL_S, seed=3, rate=RATE)
    complete: list[Utterance16k] = []
    for path in sorted(LIBRIVOX.glob("*.wav")) + sorted(COMMANDS.glob("*.wav")):
        clean = read16k(path)
        pcm = with_room(clean, seed=len(complete))
        words = word_ends(clean, reference_transcript(path))
        complete.append(Utterance16k(path.stem[-4:], pcm + tail, speech_end_s(pcm), words))
    paused: list[Utterance16k] = []
    for path in sorted(LIBRIVOX.glob("*.wav")):
        pcm = read16k(path)
        words = word_ends(pcm, reference_transcript(path))
        middle = [(w, t) for i, (w, t) in enumerate(words) if len(words) / 4 <= i + 1 <= len(words) * 3 / 4]
        cuts = [(w, t) for w, t in middle if w in OPEN_WORDS][:2]
        for word, cut_s in cuts:
            cut = int(cut_s * RATE) * 2
            for pause_ms in PAUSES_MS:
                gap = room_noise(pause_ms / 1000, seed=pause_ms, rate=RATE)
                joined = with_room(pcm[:cut], seed=1) + gap + with_room(pcm[cut:], seed=2)
                paused.append(
                    Utterance16k(
                        f"{path.stem[-4:]} after '{word}' +{pause_ms} ms",
                        joined + tail,
                        speech_end_s(joined),
                        [(w, t if t <= cut_s else t + pause_ms / 1000) for w, t in words],
                        (cut_s, cut_s + pause_ms / 1000),
                    )
                )
    return complete, paused


async def run_mode(
    name: str,
    vad: VadConfig,
    words: str | None,
    complete: list[Utterance16k],
    paused: list[Utterance16k],
    bar: tqdm,
) -> dict[str, Any]:
    delays, unanswered = [], 0
    for u in complete:
        decided = await decision_times(u, vad, words)
        bar.update()
        if not decided:
            unanswered += 1
            continue
        delays.append(1000 * (decided[0] - u.speech_end_s))
    cut_offs, examples = 0, []
    for u in paused:
        decided = await decision_times(u, vad, words)
        bar.update()
        assert u.pause_s is not None
        if any(t < u.pause_s[1] for t in decided):
            cut_offs += 1
            examples.append(u.name)
    return {
        "mode": name,
        "complete": len(complete),
        "unanswered": unanswered,
        "eot_delay_p50_ms": percentile(delays, 50),
        "eot_delay_p95_ms": percentile(delays, 95),
        "paused": len(paused),
        "false_cut_offs": cut_offs,
        "false_cut_off_rate": cut_offs / len(paused) if paused else float("nan"),
        "cut_off_examples": examples[:6],
    }


class ReferenceSTT(STTEngine):
    """An accurate STT without interim results: a stream's transcript is the reference words that ended
    within the audio it was sent, final `final_s` after its end."""

    name = "reference"
    interim_results = False

    def __init__(
        self, words: list[tuple[str, float]], position: Callable[[], float], final_s: float = STT_FINAL_S
    ) -> None:
        self.words = words
        self.position = position  # seconds of the utterance's audio received so far
        self.final_s = final_s

    def open_stream(self) -> STTStream:
        return ReferenceStream(self, self.position() - PREFIX_PADDING_S)


class ReferenceStream(STTStream):
    def __init__(self, stt: ReferenceSTT, opened_s: float) -> None:
        self._stt = stt
        self._opened_s = opened_s

    async def feed(self, pcm16: bytes) -> str | None:
        return None

    async def finish(self) -> str:
        heard_s = self._stt.position()
        await asyncio.sleep(self._stt.final_s)
        return " ".join(w for w, end in self._stt.words if self._opened_s < end <= heard_s)


async def decision_times(u: Utterance16k, vad: VadConfig, words: str | None) -> list[float]:
    """Where in the utterance (seconds of audio received) the session's input ended each turn, fed in
    20 ms frames: at once, but in real time while a pause's verdict is being worked out."""
    decided: list[float] = []
    position = 0.0

    async def emit(event: SessionEvent) -> None:
        if isinstance(event, SpeechStopped):
            decided.append(position)

    async def stopped(utterance: Utterance, timeline: TurnTimeline) -> None:
        await utterance.abort()

    async def started(began: float) -> None:
        return None

    async def paused(utterance: Utterance) -> None:
        utterance.checkpoint()

    stt: STTEngine
    if words == "reference":
        stt = ReferenceSTT(u.words, lambda: position)
    elif words == "pocketsphinx":
        stt = PocketsphinxEngine()
    else:
        stt = SimulatedSTTEngine("", finalize_delay_ms=STT_DELAY_MS)
    audio_input = AudioInput(
        stt=stt,
        emit=emit,
        options=SessionOptions(instructions="", input_sample_rate=RATE, turn_detection=vad),
        limits=SessionLimits(),
        speech_detector=SileroSpeechDetector,
        on_speech_started=started,
        on_speech_stopped=stopped,
        on_speech_paused=paused,
        sentence_end=GemmaSentenceEnd if words else None,
    )
    step = RATE // 50 * 2
    for i in range(0, len(u.pcm), step):
        position = (i + step) / 2 / RATE
        await audio_input.append(u.pcm[i : i + step])
        if audio_input.judging:
            await asyncio.sleep(step / 2 / RATE)
    await audio_input.close()
    return decided


STORY = " ".join(f"This is sentence number {i} of a long story." for i in range(12))  # ~30 s spoken
LEAD_S = 1.0  # the reply plays this long before the sound
FRAME_BYTES = RATE // 50 * 2  # 20 ms
DEFAULTS = SessionLimits()
# Barge-in settings compared under server VAD: the old immediate cancel, and the minimums one at a time.
BARGE_IN: dict[str, SessionLimits] = {
    "none (cancel at once)": SessionLimits(barge_in_min_speech_ms=0, barge_in_min_words=0),
    "500 ms, no words": SessionLimits(barge_in_min_speech_ms=500, barge_in_min_words=0),
    "500 ms, 1 word": SessionLimits(barge_in_min_speech_ms=500, barge_in_min_words=1),
    "300 ms, 2 words": SessionLimits(barge_in_min_speech_ms=300, barge_in_min_words=2),
    "300 ms, 3 words": SessionLimits(barge_in_min_speech_ms=300, barge_in_min_words=3),
}


@dataclass
class Sound:
    name: str
    pcm: bytes  # 16 kHz, over room noise
    onset_s: float  # where the burst or the speech begins in `pcm`


@dataclass
class Trial:
    paused: bool  # the VAD heard speech: the reply's audio stopped
    cancelled: bool  # the reply was cancelled
    held_s: float | None  # paused → the reply's next audio (None: it never resumed)
    stop_s: float | None  # onset → the reply's audio stopped
    cancel_s: float | None  # onset → the reply cancelled
    late_audio: int  # audio sent after the pause, before the reply resumed or ended


def word_spans(pcm: bytes) -> list[tuple[str, float, float]]:
    """(word, start, end in seconds) from pocketsphinx's alignment of its own recognition."""
    from pocketsphinx import Decoder

    decoder = Decoder(samprate=RATE, loglevel="ERROR")
    decoder.start_utt()
    decoder.process_raw(pcm, full_utt=True)
    decoder.end_utt()
    return [
        (s.word.split("(")[0], s.start_frame / 100, (s.end_frame + 1) / 100)
        for s in decoder.seg()
        if s.word[0].isalpha()
    ]


def speech_onset_s(pcm: bytes) -> float:
    """Where speech begins in a recording: the first 30 ms louder than its own noise floor (the 10th
    percentile of its 10 ms windows) by 15 dB. An absolute threshold does not fit every recording: the
    spoken commands' floor reaches −40 dBFS."""
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64) / 32768.0
    window = RATE // 100
    n = len(samples) // window
    db = 20 * np.log10(np.sqrt(np.mean(samples[: n * window].reshape(n, window) ** 2, axis=1)) + 1e-9)
    loud = db > np.percentile(db, 10) + 15
    first = next((i for i in range(n - 2) if loud[i : i + 3].all()), 0)
    return first * window / RATE


def vocal_burst(
    ms: int,
    *,
    f0: tuple[float, float],
    formants: tuple[tuple[float, float], ...],
    breath: float,
    level_dbfs: float,
    decay_ms: float | None = None,
    voiced: tuple[tuple[float, float], ...] | None = None,
    seed: int = 0,
) -> bytes:
    """A wordless vocal sound, PCM16 at 16 kHz: a glottal pulse train gliding from `f0[0]` to `f0[1]`
    Hz mixed with `breath` of noise, shaped by `formants` ((centre, width) in Hz), sounding during the
    `voiced` spans (seconds; all of it by default), dying away over `decay_ms` if given."""
    rng = np.random.default_rng(seed)
    n = RATE * ms // 1000
    phase = np.cumsum(2 * np.pi * np.linspace(f0[0], f0[1], n) / RATE)
    source = (1 - breath) * (np.sin(phase) > 0.95) + breath * rng.standard_normal(n)
    freqs = np.fft.rfftfreq(n, 1 / RATE)
    envelope = sum(np.exp(-0.5 * ((freqs - centre) / width) ** 2) for centre, width in formants)
    sound = np.fft.irfft(np.fft.rfft(source) * envelope, n)
    amplitude = np.ones(n) if decay_ms is None else np.exp(-np.arange(n) / (RATE * decay_ms / 1000))
    if voiced is not None:
        mask = np.zeros(n)
        for start, end in voiced:
            mask[int(start * RATE) : int(end * RATE)] = 1
        amplitude *= mask
    ramp = RATE // 100  # 10 ms in and out: no clicks
    amplitude[:ramp] *= np.linspace(0, 1, ramp)
    amplitude[-ramp:] *= np.linspace(1, 0, ramp)
    sound *= amplitude
    sound *= 10 ** (level_dbfs / 20) / np.sqrt(np.mean(sound[amplitude > 0.1] ** 2) + 1e-12)
    return bytes((np.clip(sound, -1, 1) * 32767).astype("<i2").tobytes())


VOWEL_A = ((700.0, 130.0), (1200.0, 150.0), (2500.0, 200.0))
NASAL = ((250.0, 80.0), (2200.0, 200.0))


def barge_in_set() -> tuple[list[Sound], list[Sound]]:
    """Twelve sounds that are no interruption, and ten real ones (each of 2 words or more)."""
    sounds = {
        "noise 300 ms": noise_burst(300, RATE, -20.0),
        "knock": noise_burst(100, RATE, -5.0, decay_ms=20),
        "cough-like": vocal_burst(
            300, f0=(200, 150), formants=VOWEL_A, breath=0.8, level_dbfs=-15, decay_ms=100
        ),
        "throat clearing": vocal_burst(
            350, f0=(100, 90), formants=((400, 150), (900, 150)), breath=0.5, level_dbfs=-18, seed=2
        ),
        "'mm'": vocal_burst(300, f0=(120, 110), formants=NASAL, breath=0.05, level_dbfs=-20),
        "'mm-hmm'": vocal_burst(
            650, f0=(110, 150), formants=NASAL, breath=0.05, level_dbfs=-20, voiced=((0, 0.25), (0.4, 0.65))
        ),
        "'uh'": vocal_burst(
            250, f0=(120, 100), formants=((600, 100), (1200, 120), (2500, 200)), breath=0.1, level_dbfs=-20
        ),
        "'ahh'": vocal_burst(600, f0=(130, 100), formants=VOWEL_A, breath=0.2, level_dbfs=-18),
    }
    bursts = [Sound(name, with_room(pcm, i), 0.0) for i, (name, pcm) in enumerate(sounds.items())]
    for path in sorted(LIBRIVOX.glob("*.wav"))[1:5]:  # one word, cut from a recorded sentence
        pcm = read16k(path)
        word, start, end = next((w, a, b) for w, a, b in word_spans(pcm) if 0.25 <= b - a <= 0.6)
        clip = pcm[int(start * RATE) * 2 : int(end * RATE) * 2]
        bursts.append(Sound(f"one word '{word}'", with_room(clip, 5), 0.0))
    speech: list[Sound] = []
    for path in sorted(LIBRIVOX.glob("*.wav")) + sorted(COMMANDS.glob("*.wav")):
        pcm = read16k(path)
        speech.append(Sound(path.stem[-4:], with_room(pcm, 7), speech_onset_s(pcm)))
    return bursts, speech


async def barge_in_trial(sound: Sound, vad: VadConfig, limits: SessionLimits, stt: STTEngine) -> Trial:
    """One reply, one sound over it: what became of the reply (on the loop's virtual clock)."""
    loop = asyncio.get_running_loop()
    events: list[tuple[float, SessionEvent]] = []

    async def emit(event: SessionEvent) -> None:
        events.append((loop.time(), event))

    session = VoiceSession(
        stt=stt,
        llm=LLMStage(FakeLLMEngine(STORY, ttft_ms=100, tokens_per_s=50)),
        tts=TTSStage(SimulatedTTSEngine(ttfb_ms=50, realtime_factor=1000)),
        emit=emit,
        options=SessionOptions(instructions="", input_sample_rate=RATE, turn_detection=vad),
        limits=limits,
        speech_detector=SileroSpeechDetector,
    )
    await session.add_user_text("Tell me a story.")
    await session.create_response()
    tail = room_noise(vad.window_ms / 1000 + 1.5, seed=12, rate=RATE)
    audio = room_noise(LEAD_S, seed=11, rate=RATE) + sound.pcm + tail
    first_at = loop.time()
    for i in range(0, len(audio), FRAME_BYTES):
        await session.append_audio(audio[i : i + FRAME_BYTES])
        await asyncio.sleep(0.02)
        if any(isinstance(e, ResponseFinished) for _, e in events):
            break  # the reply is over (cancelled): nothing more to see
    await session.close()
    # A frame appended at t was spoken over the 20 ms before t.
    onset = first_at + LEAD_S + sound.onset_s - 0.02
    pause = next((t for t, e in events if isinstance(e, SpeechStarted) and t >= onset - 0.1), None)
    finished = next(((t, e) for t, e in events if isinstance(e, ResponseFinished)), None)
    ended = finished[0] if finished is not None and finished[1].reason == "turn_detected" else None
    after = [t for t, e in events if isinstance(e, ResponseAudioDelta) and pause is not None and t > pause]
    return Trial(
        paused=pause is not None,
        cancelled=ended is not None,
        # Not cancelled: how long the reply was held before it played on (None: it never did).
        held_s=after[0] - pause if pause is not None and ended is None and after else None,
        stop_s=None if pause is None else pause - onset,
        cancel_s=None if ended is None else ended - onset,
        late_audio=0 if pause is None or ended is None else sum(t < ended for t in after),
    )


async def run_barge_in(
    name: str, vad: VadConfig, limits: SessionLimits, sounds: tuple[list[Sound], list[Sound]], bar: tqdm
) -> dict[str, Any]:
    stt = PocketsphinxEngine()
    await stt.warmup()
    bursts, speech = sounds
    heard: list[Trial] = []
    for sound in bursts:
        heard.append(await barge_in_trial(sound, vad, limits, stt))
        bar.update()
    spoken: list[Trial] = []
    for sound in speech:
        spoken.append(await barge_in_trial(sound, vad, limits, stt))
        bar.update()
    held = [1000 * t.held_s for t in heard if t.held_s is not None]
    stops = [1000 * t.stop_s for t in spoken if t.stop_s is not None]
    cancels = [1000 * t.cancel_s for t in spoken if t.cancel_s is not None]
    return {
        "mode": name,
        "barge_in": f"{limits.barge_in_min_speech_ms} ms, {words(limits.barge_in_min_words)}",
        "bursts": len(bursts),
        "bursts_paused": sum(t.paused for t in heard),
        "paused_sounds": [s.name for s, t in zip(bursts, heard, strict=True) if t.paused],
        "false_barge_ins": sum(t.cancelled for t in heard),
        "false_barge_in_sounds": [s.name for s, t in zip(bursts, heard, strict=True) if t.cancelled],
        "held_p50_ms": percentile(held, 50),
        "held_max_ms": max(held, default=float("nan")),
        "never_resumed": sum(t.paused and not t.cancelled and t.held_s is None for t in heard),
        "speech": len(speech),
        "missed": sum(not t.cancelled for t in spoken),
        "missed_sounds": [s.name for s, t in zip(speech, spoken, strict=True) if not t.cancelled],
        "stop_p50_ms": percentile(stops, 50),
        "stop_p95_ms": percentile(stops, 95),
        "cancel_p50_ms": percentile(cancels, 50),
        "cancel_p95_ms": percentile(cancels, 95),
        "late_audio": sum(t.late_audio for t in spoken),
    }


def words(n: int) -> str:
    return {0: "no words", 1: "1 word"}.get(n, f"{n} words")


def ms(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:.0f}"  # NaN: nothing was measured


def barge_in_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| turn detection | barge-in minimum | sounds that paused the reply | false barge-ins (reply lost)"
        " | reply held by one p50 / max (ms) | real interruptions missed"
        " | speech → audio stopped p50 / p95 (ms) | speech → reply cancelled p50 / p95 (ms) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['mode']} | {r['barge_in']} | {r['bursts_paused']} of {r['bursts']}"
            f" | {r['false_barge_ins']} of {r['bursts']} | {ms(r['held_p50_ms'])} / {ms(r['held_max_ms'])}"
            f" | {r['missed']} of {r['speech']} | {ms(r['stop_p50_ms'])} / {ms(r['stop_p95_ms'])}"
            f" | {ms(r['cancel_p50_ms'])} / {ms(r['cancel_p95_ms'])} |"
        )
    late = sum(r["late_audio"] for r in rows)
    never = sum(r["never_resumed"] for r in rows)
    lines.append("")
    lines.append(
        f"Reply audio sent after speech had paused it: {late} chunks; replies paused by a sound that"
        f" never resumed: {never}."
    )
    return "\n".join(lines)


async def barge_in_rows() -> list[dict[str, Any]]:
    """Every turn detection mode with the default minimums, then the other minimums under server VAD."""
    sounds = barge_in_set()
    server = MODES["server_vad 500 ms"]
    configs = [(name, vad, DEFAULTS) for name, vad in MODES.items()]
    configs += [("server_vad 500 ms", server, limits) for limits in BARGE_IN.values()]
    total = len(configs) * (len(sounds[0]) + len(sounds[1]))
    with tqdm(total=total, desc="barge-in trials", unit="trial") as bar:
        return [await run_barge_in(name, vad, limits, sounds, bar) for name, vad, limits in configs]


def model_cost_ms(calls: int = 20) -> tuple[float, float]:
    model = SmartTurnModel()
    audio = room_noise(8.0, rate=RATE)
    model.probability_complete(audio)
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        model.probability_complete(audio)
        times.append(1000 * (time.perf_counter() - started))
    return statistics.median(times), max(times)


def sentence_model_cost_ms() -> tuple[float, float]:
    """Per call on the reference transcripts' words, growing a word at a time as a turn's pauses do."""
    model = GemmaSentenceEnd()
    times = []
    for path in sorted(LIBRIVOX.glob("*.wav")):
        words = reference_transcript(path).split()
        for n in range(1, len(words) + 1):
            started = time.perf_counter()
            model.probability_sentence_ends(" ".join(words[:n]))
            times.append(1000 * (time.perf_counter() - started))
    return statistics.median(times), max(times)


# Typed words, not recordings: the agent's question, a whole short answer to it, and the same answer cut
# where it cannot end. Answers like these read as fragments without the question.
ANSWERS = [
    ("What can I get you today?", "a large coffee", "i would like a"),
    ("When should I book it for?", "tomorrow at noon", "tomorrow at"),
    ("Who is the appointment for?", "my daughter", "it is for my"),
    ("Which one would you like?", "the second option", "i think the"),
    ("Which card did you pick?", "ten of clubs", "the ten of"),
    ("How many tickets do you need?", "two tickets", "we will need"),
    ("When is your flight?", "next tuesday", "it is on"),
    ("Anything else on the pizza?", "extra cheese", "some extra"),
    ("Where did you leave it?", "in the kitchen", "in the"),
    ("What is the name on the booking?", "john smith", "it is under the name of"),
    ("Which room are you in?", "room four twelve", "i am in room"),
    ("How can I help you?", "my card was declined", "my card was"),
]

# Stumbles transcribed as said, cut after the repeated article: no sentence ends there.
STUMBLES = [
    "had he married a more a",
    "i want a more a",
    "could you give me a a",
    "i need the the",
    "book me a uh a",
    "it was a really a",
    "we went to the to the",
    "she is a very a",
    "can i get a large a",
    "he bought a new a",
    "send it to my to my",
    "give me a bigger a",
    "find a cheaper a",
    "it is a much more a",
    "tell me about the uh the",
    "i would like a less a",
    "is there a a",
    "we need a faster a",
]


def answers_check() -> dict[str, list[int]]:
    """What the words add to the wait at a pause that sounds finished (the end-of-turn model at 0.9,
    auto eagerness): short answers and cut ones, alone and after the agent's question, and stumbles."""
    model = GemmaSentenceEnd()

    def waits(words: list[tuple[str, str]]) -> list[int]:
        return [
            wait_after_pause_ms(with_words(0.9, model.probability_sentence_ends(w, asked)), "auto")
            for w, asked in words
        ]

    return {
        "whole answers, alone": waits([(a, "") for _, a, _ in ANSWERS]),
        "whole answers, after the question": waits([(a, q) for q, a, _ in ANSWERS]),
        "cut answers, alone": waits([(c, "") for _, _, c in ANSWERS]),
        "cut answers, after the question": waits([(c, q) for q, _, c in ANSWERS]),
        "stumbles cut after a repeated article": waits([(w, "") for w in STUMBLES]),
    }


def answers_table(waits: dict[str, list[int]]) -> str:
    lines = [
        "| words at a pause that sounds finished | ended at once | extra wait min / p50 / max (ms) |",
        "|---|---|---|",
    ]
    for name, ms in waits.items():
        at_once = sum(w == 0 for w in ms)
        spread = f"{min(ms)} / {statistics.median(ms):.0f} / {max(ms)}"
        lines.append(f"| {name} | {at_once} of {len(ms)} | {spread} |")
    return "\n".join(lines)


def table(rows: list[dict[str, Any]], cost: tuple[float, float], words_cost: tuple[float, float]) -> str:
    lines = [
        "| mode | end-of-turn delay p50 (ms) | p95 | complete turns never ended | false cut-offs |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['mode']} | {r['eot_delay_p50_ms']:.0f} | {r['eot_delay_p95_ms']:.0f}"
            f" | {r['unanswered']} of {r['complete']}"
            f" | {r['false_cut_offs']} of {r['paused']} ({100 * r['false_cut_off_rate']:.0f} %) |"
        )
    lines.append("")
    lines.append(
        f"End-of-turn model: {cost[0]:.0f} ms per call (median of 20; max {cost[1]:.0f}), one core,"
        " once per pause, in a worker thread."
        f" Sentence-end model: {words_cost[0]:.0f} ms per call (median; max {words_cost[1]:.0f}), one core,"
        " at the pauses that sound finished."
    )
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(14, 5))
    names = [r["mode"].replace(" ", "\n", 1).replace(" + ", "\n+ ") for r in rows]
    ax1.bar(names, [r["eot_delay_p50_ms"] for r in rows], label="p50")
    ax1.scatter(names, [r["eot_delay_p95_ms"] for r in rows], color="black", zorder=3, label="p95")
    ax1.set_ylabel("ms")
    ax1.set_title("end of speech → turn ended (complete utterances)")
    ax1.legend(fontsize=8)
    ax2.bar(names, [100 * r["false_cut_off_rate"] for r in rows], color="tab:red")
    ax2.set_ylabel("% of paused utterances")
    ax2.set_title("false cut-offs (turn ended inside a mid-clause pause)")
    for ax in (ax1, ax2):
        ax.tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


async def turn_ends() -> tuple[list[dict[str, Any]], list[str]]:
    complete, paused = test_set()
    # Loaded before measuring, as a live session loads them while the user speaks its first words.
    SmartTurnModel()
    GemmaSentenceEnd()
    rows = []
    total = len(TURN_END_MODES) * (len(complete) + len(paused))
    with tqdm(total=total, desc="utterances", unit="utt") as bar:
        for name, vad, words in TURN_END_MODES:
            rows.append(await run_mode(name, vad, words, complete, paused, bar))
    return rows, [u.name for u in paused]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, paused = asyncio.run(turn_ends())
    cost, words_cost = model_cost_ms(), sentence_model_cost_ms()
    # Barge-in trials run on a virtual clock: a reply, a sound over it, the silence window after it.
    with asyncio.Runner(loop_factory=looptime.new_event_loop) as runner:
        barge_in = runner.run(barge_in_rows())
    answers = answers_check()
    text = table(rows, cost, words_cost) + "\n\n" + answers_table(answers) + "\n\n" + barge_in_table(barge_in)
    print(text)
    (out / "turn_taking.md").write_text(text + "\n")
    (out / "turn_taking.json").write_text(
        json.dumps(
            {
                "modes": rows,
                "model_ms_per_call": cost[0],
                "sentence_model_ms_per_call": words_cost[0],
                "paused": paused,
                "answers": answers,
                "barge_in": barge_in,
            },
            indent=2,
        )
    )
    plot(rows, out / "turn_taking.png")
    print(f"results in {out}/turn_taking.*")


if __name__ == "__main__":
    main()
