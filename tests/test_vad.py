"""Endpointing semantics: min speech to start, silence window to stop, offsets in input samples."""

from __future__ import annotations

from actors.audio.vad import Endpointer, VadConfig, VadEvent

FRAME = 512  # samples per detector frame (32 ms at 16 kHz)


class ScriptedDetector:
    """Returns the next scripted probability for each frame."""

    frame_samples = FRAME

    def __init__(self, probabilities: list[float]) -> None:
        self.probabilities = list(probabilities)
        self.resets = 0

    def probability(self, frame: bytes) -> float:
        assert len(frame) == FRAME * 2
        return self.probabilities.pop(0)

    def reset(self) -> None:
        self.resets += 1


def run(probabilities: list[float], config: VadConfig, chunk_frames: float = 1.0) -> list[VadEvent]:
    endpointer = Endpointer(ScriptedDetector(probabilities), config)
    audio = b"\x00\x00" * FRAME * len(probabilities)
    step = int(FRAME * 2 * chunk_frames) // 2 * 2
    return [e for i in range(0, len(audio), step) for e in endpointer.process(audio[i : i + step])]


def test_speech_starts_at_its_first_frame_and_stops_where_silence_began() -> None:
    # 5 silent frames, 10 speech frames, then 20 silent frames; 96 ms min speech = 3 frames.
    probs = [0.0] * 5 + [0.9] * 10 + [0.1] * 20
    events = run(probs, VadConfig(threshold=0.5, silence_ms=320, min_speech_ms=96))
    assert events == [VadEvent("speech_started", 5 * FRAME), VadEvent("speech_stopped", 15 * FRAME)]


def test_too_short_bursts_and_dips_do_not_count() -> None:
    # 2-frame bursts never start a turn; a 3-frame dip inside speech does not end it.
    probs = [0.9, 0.9, 0.0] * 3 + [0.9] * 6 + [0.1] * 3 + [0.9] * 4 + [0.0] * 12
    events = run(probs, VadConfig(threshold=0.5, silence_ms=320, min_speech_ms=96))
    assert [e.kind for e in events] == ["speech_started", "speech_stopped"]
    assert events[0].sample == 9 * FRAME
    assert events[1].sample == (9 + 6 + 3 + 4) * FRAME


def test_hysteresis_between_thresholds_keeps_speech_going() -> None:
    # 0.4 is below the threshold but above threshold - 0.15: still speech for stopping purposes.
    probs = [0.9] * 4 + [0.4] * 20 + [0.1] * 11
    events = run(probs, VadConfig(threshold=0.5, silence_ms=320, min_speech_ms=96))
    assert [e.kind for e in events] == ["speech_started", "speech_stopped"]
    assert events[1].sample == 24 * FRAME


def test_chunk_size_does_not_change_the_decisions() -> None:
    probs = [0.0] * 7 + [0.8] * 9 + [0.0] * 17
    config = VadConfig(threshold=0.5, silence_ms=500, min_speech_ms=64)
    assert (
        run(probs, config, chunk_frames=1) == run(probs, config, chunk_frames=0.37) == run(probs, config, 5)
    )


def test_a_pause_is_reported_and_so_is_speech_resuming_before_the_window_ends() -> None:
    # 10 speech frames, 8 silent (256 ms), 6 speech, then silence to the end; pause at 192 ms = 6 frames.
    probs = [0.9] * 10 + [0.1] * 8 + [0.9] * 6 + [0.1] * 20
    events = run(probs, VadConfig(silence_ms=500, min_speech_ms=96, pause_ms=192))
    assert events == [
        VadEvent("speech_started", 0),
        VadEvent("speech_paused", 10 * FRAME),
        VadEvent("speech_resumed", 18 * FRAME),
        VadEvent("speech_paused", 24 * FRAME),
        VadEvent("speech_stopped", 24 * FRAME),
    ]


def test_without_pause_ms_there_are_no_pause_events() -> None:
    probs = [0.9] * 10 + [0.1] * 8 + [0.9] * 6 + [0.1] * 20
    events = run(probs, VadConfig(silence_ms=500, min_speech_ms=96))
    assert [e.kind for e in events] == ["speech_started", "speech_stopped"]


def test_stop_after_ends_this_pause_at_its_own_window() -> None:
    endpointer = Endpointer(ScriptedDetector([0.9] * 10 + [0.1] * 20), VadConfig(pause_ms=192))
    assert endpointer.stop_after(0) is None  # nothing said yet
    events = endpointer.process(b"\x00\x00" * FRAME * 10)
    assert endpointer.stop_after(0) is None  # speaking, not silent
    events += endpointer.process(b"\x00\x00" * FRAME * 8)
    assert [e.kind for e in events] == ["speech_started", "speech_paused"]
    # Judged unfinished: wait until 640 ms of silence (20 frames), not the configured 500 ms.
    assert endpointer.stop_after(640) is None
    assert endpointer.process(b"\x00\x00" * FRAME * 8) == []  # 16 frames: past 500 ms, still waiting
    assert endpointer.process(b"\x00\x00" * FRAME * 4) == [VadEvent("speech_stopped", 10 * FRAME)]


def test_stop_after_a_window_already_reached_stops_at_once() -> None:
    endpointer = Endpointer(ScriptedDetector([0.9] * 10 + [0.1] * 8), VadConfig(pause_ms=192))
    endpointer.process(b"\x00\x00" * FRAME * 18)
    assert endpointer.stop_after(192) == VadEvent("speech_stopped", 10 * FRAME)
    assert not endpointer.in_speech and endpointer.stop_after(0) is None


def test_a_pause_window_does_not_outlive_its_pause() -> None:
    # Judged unfinished at the first pause (wait long); speech resumes; the next pause has the default.
    probs = [0.9] * 10 + [0.1] * 7 + [0.9] * 5 + [0.1] * 17
    endpointer = Endpointer(ScriptedDetector(probs), VadConfig(silence_ms=500, pause_ms=192))
    events = endpointer.process(b"\x00\x00" * FRAME * 17)
    endpointer.stop_after(8000)
    events += endpointer.process(b"\x00\x00" * FRAME * 22)
    assert [e.kind for e in events] == [
        "speech_started",
        "speech_paused",
        "speech_resumed",
        "speech_paused",
        "speech_stopped",
    ]
    assert events[-1] == VadEvent("speech_stopped", 22 * FRAME)
