"""End-of-turn model: how likely it is that the user has finished speaking, judged from how their last
seconds of speech sound (words, intonation, pace) rather than from the length of the silence after them.

Smart Turn v3.2 (BSD 2-Clause; `actors/models/smart_turn_v3.2_cpu.onnx` with its licence beside it): a
Whisper-tiny-sized audio encoder with a classifier, on ONNX Runtime. It reads the log-mel spectrogram of
the last 8 s of 16 kHz audio (zero-padded in front when shorter) and answers the probability that the turn
is complete. On human recordings it separates whole sentences from the same sentences cut mid-clause
(tests/test_end_of_turn.py); a call costs ~6 ms of features and ~50 ms of inference on one core here, so
callers run it in a worker thread (ONNX Runtime releases the GIL) once per pause, not per frame.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from actors.audio.log_mel import SAMPLE_RATE, log_mel
from actors.audio.pcm import pcm_to_float

MODEL_PATH = Path(__file__).parents[1] / "models" / "smart_turn_v3.2_cpu.onnx"
WINDOW_SAMPLES = 8 * SAMPLE_RATE

# Semantic turn detection, as OpenAI's Realtime API names it: at each pause in the user's speech the model
# judges the turn. Likely finished → the turn ends at once; likely unfinished → the agent keeps listening,
# the longer the less likely the turn is finished, up to a cap that `eagerness` sets (OpenAI documents
# 8 / 4 / 2 s for low / medium / high; auto is medium).
Eagerness = Literal["low", "medium", "high", "auto"]
MAX_WAIT_MS: dict[Eagerness, int] = {"low": 8000, "medium": 4000, "high": 2000, "auto": 4000}
PAUSE_MS = 200  # silence before the model is asked: it was trained on speech followed by ~200 ms of it
COMPLETE_THRESHOLD = 0.5


# The words said so far can overrule a verdict of "finished" or "barely unfinished": after words no
# sentence ends on (a language model's probability of a sentence end after them below
# `WORDS_OPEN_BELOW`: "to", "the", "and", "have been"; `actors.llm.sentence_end`), the pause is waited
# for as if the model were in doubt: half the eagerness cap. Between that and `WORDS_SURE_ABOVE` the
# words leave some doubt (a sentence could end there, but the model thinks it unlikely: "… a more a"),
# and the wait shrinks from half the cap to nothing as the probability rises. Words never shorten a
# wait: a sentence that can end may still go on. Only turns of `WORDS_MIN` words or more: one word
# ("yes", "thanks", a name) says little about where a sentence ends, and is judged by its sound.
WORDS_OPEN_BELOW = 0.05
WORDS_SURE_ABOVE = 0.15
WORDS_OPEN_PROBABILITY = COMPLETE_THRESHOLD / 2
WORDS_MIN = 2


def words_can_matter(probability: float) -> bool:
    """Whether the words could lengthen the wait the model's verdict alone sets."""
    return probability > WORDS_OPEN_PROBABILITY


def with_words(probability: float, sentence_end: float | None) -> float:
    """The model's verdict at a pause, given the probability that a sentence ends after the words so
    far (None: no words known, or too few)."""
    if sentence_end is None or sentence_end >= WORDS_SURE_ABOVE:
        return probability
    if sentence_end < WORDS_OPEN_BELOW:
        return min(probability, WORDS_OPEN_PROBABILITY)
    share = (sentence_end - WORDS_OPEN_BELOW) / (WORDS_SURE_ABOVE - WORDS_OPEN_BELOW)
    return min(probability, WORDS_OPEN_PROBABILITY + share * (COMPLETE_THRESHOLD - WORDS_OPEN_PROBABILITY))


def wait_after_pause_ms(probability: float, eagerness: Eagerness) -> int:
    """How much longer than `PAUSE_MS` to wait for more speech, given the model's verdict at the pause:
    0 when the turn sounds finished, then growing linearly to the eagerness cap as the probability that
    it is finished falls to 0."""
    if probability >= COMPLETE_THRESHOLD:
        return 0
    doubt = 1.0 - probability / COMPLETE_THRESHOLD
    return round(doubt * (MAX_WAIT_MS[eagerness] - PAUSE_MS))


class EndOfTurnModel(Protocol):
    def probability_complete(self, pcm16k: bytes) -> float:
        """Probability (0–1) that the speech ending `pcm16k` (16 kHz PCM16) is a finished turn."""
        ...


@functools.cache
def _smart_turn_session() -> Any:
    """One ONNX Runtime session per process (`run` is thread-safe). One intra-op thread: the other
    sessions on the replica need the other core more than one call needs to finish sooner."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    return onnxruntime.InferenceSession(str(MODEL_PATH), options, providers=["CPUExecutionProvider"])


class SmartTurnModel:
    """Smart Turn v3.2: the probability that a turn is complete, from its last 8 s of audio."""

    def __init__(self) -> None:
        self._session = _smart_turn_session()

    def probability_complete(self, pcm16k: bytes) -> float:
        samples = pcm_to_float(pcm16k)[-WINDOW_SAMPLES:]
        samples = np.pad(samples, (WINDOW_SAMPLES - len(samples), 0))
        features = log_mel(samples)[np.newaxis]
        (scores,) = self._session.run(None, {"input_features": features})
        return float(scores[0, 0])  # the classifier's sigmoid is part of the model
