"""The end-of-turn model and its features, on real human recordings (Debian's LibriVox sentences)."""

from __future__ import annotations

import statistics

import numpy as np
import pytest

from actors.audio.end_of_turn import WINDOW_SAMPLES, SmartTurnModel
from actors.audio.log_mel import SAMPLE_RATE, log_mel, mel_filters
from actors.audio.pcm import float_to_pcm
from testkit.recordings import librivox
from testkit.speech import with_noise_floor

pytestmark = pytest.mark.slow

# Where each sentence can be cut so that the clause is plainly unfinished (seconds, after the word shown).
MID_CLAUSE = {
    "0920": (3.35, 4.24),  # "had he married a more amiable woman he might have been | made still more | ..."
    "0870": (2.88, 3.94),  # "and mister john dashwood had then leisure to | consider how | much ..."
    "0890": (2.37, 3.97),  # "unless to be rather cold hearted and | rather selfish is to | be ill disposed"
}
PAUSE = 200  # ms of room noise after the last word, as when a speaker stops


def tone(hz: float, seconds: float, amplitude: float = 0.3) -> np.ndarray:
    return amplitude * np.sin(2 * np.pi * hz * np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE)


def test_log_mel_has_100_frames_a_second_and_puts_a_tone_in_its_own_band() -> None:
    features = log_mel(tone(1000.0, 8.0))
    assert features.shape == (80, 800) and features.dtype == np.float32
    centres_hz = np.linspace(0, SAMPLE_RATE / 2, 201) @ mel_filters() / mel_filters().sum(axis=0)
    loudest = int(np.argmax(features[:, 400]))
    assert abs(centres_hz[loudest] - 1000.0) < 60.0
    assert np.isfinite(features).all()


def test_log_mel_does_not_depend_on_loudness() -> None:
    quiet = log_mel(tone(440.0, 2.0, amplitude=0.01))
    loud = log_mel(tone(440.0, 2.0, amplitude=0.5))
    assert np.allclose(quiet, loud, atol=1e-3)


def spoken(uid: str, until_s: float | None = None) -> bytes:
    pcm, _ = librivox(uid, SAMPLE_RATE)
    if until_s is not None:
        pcm = pcm[: 2 * int(until_s * SAMPLE_RATE)]
    return with_noise_floor(pcm + bytes(2 * SAMPLE_RATE * PAUSE // 1000))


def test_finished_sentences_score_complete_and_the_same_voices_cut_mid_clause_score_lower() -> None:
    model = SmartTurnModel()
    complete = [model.probability_complete(spoken(uid)) for uid in MID_CLAUSE]
    cut = [model.probability_complete(spoken(uid, t)) for uid, times in MID_CLAUSE.items() for t in times]
    assert min(complete) > 0.5, complete
    assert statistics.mean(cut) < 0.5 < statistics.mean(complete), (complete, cut)


def test_only_the_last_eight_seconds_count() -> None:
    model = SmartTurnModel()
    last = spoken("0920")
    longer = spoken("0870") + last
    window = longer[-2 * WINDOW_SAMPLES :]
    assert model.probability_complete(longer) == pytest.approx(model.probability_complete(window))
    assert 0.0 <= model.probability_complete(float_to_pcm(tone(300.0, 0.5))) <= 1.0
