"""Turn-taking: when does the agent decide the user has finished? Server VAD (a 500 ms silence window)
against semantic turn detection (the end-of-turn model at each pause) per eagerness, on real human speech.

    .venv/bin/python -m bench.turn_taking          # ~2 min → bench/results/turn_taking.{md,json,png}

The test set is built from Debian's recordings of human speakers (LibriVox sentences, and the short
commands of pocketsphinx's test data), over room noise (−55 dBFS):
- **complete**: each recording whole, then 9 s of room noise (more than the longest wait). Measured:
  the end-of-turn delay, from the acoustic end of the speech (its last 10 ms above −40 dBFS) to the
  moment the agent ends the turn.
- **paused**: each LibriVox sentence with a pause of 300, 600, 1000 or 1500 ms of room noise inserted
  after a word in its middle where the clause cannot end (after "a", "to", "and", "been", ... : word
  times from pocketsphinx's alignment), then the rest of the sentence. A **false cut-off** is a turn
  ended inside the pause: the agent would answer a question the user had not finished.

Each utterance goes through the session's own input (`actors.conversation.input.AudioInput`) with the
real Silero VAD and the real end-of-turn model, faster than real time; each verdict is applied where the
pause was when the model was asked, so the model's own run time (reported separately, per call) comes on
top of the end-of-turn delays shown.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import soundfile as sf
from tqdm import tqdm

from actors.audio.end_of_turn import MAX_WAIT_MS, SmartTurnModel
from actors.audio.pcm import STT_SAMPLE_RATE
from actors.audio.vad import SileroSpeechDetector, VadConfig
from actors.conversation.events import SessionEvent, SpeechStopped
from actors.conversation.input import AudioInput, Utterance
from actors.conversation.metrics import TurnTimeline
from actors.conversation.options import SessionLimits, SessionOptions
from actors.stt.simulated import SimulatedSTTEngine
from bench.load import mix_noise, percentile, room_noise
from testkit.recordings import LIBRIVOX
from testkit.serve_cluster import ROOT
from testkit.speech import speech_end_byte

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


@dataclass
class Utterance16k:
    name: str
    pcm: bytes
    speech_end_s: float  # acoustic end of the last word
    pause_s: tuple[float, float] | None = None  # the inserted pause (paused set only)


def read16k(path: Path) -> bytes:
    audio, rate = sf.read(path, dtype="int16")
    assert rate == RATE, path
    return bytes(audio.tobytes())


def word_ends(pcm: bytes) -> list[tuple[str, float]]:
    """(word, end in seconds) from pocketsphinx's alignment of its own recognition."""
    from pocketsphinx import Decoder

    decoder = Decoder(samprate=RATE, loglevel="ERROR")
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
        pcm = with_room(read16k(path), seed=len(complete))
        complete.append(Utterance16k(path.stem[-4:], pcm + tail, speech_end_s(pcm)))
    paused: list[Utterance16k] = []
    for path in sorted(LIBRIVOX.glob("*.wav")):
        pcm = read16k(path)
        words = word_ends(pcm)
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
                        (cut_s, cut_s + pause_ms / 1000),
                    )
                )
    return complete, paused


async def run_mode(
    name: str, vad: VadConfig, complete: list[Utterance16k], paused: list[Utterance16k], bar: tqdm
) -> dict[str, Any]:
    delays, unanswered = [], 0
    for u in complete:
        decided = await decision_times(u.pcm, vad)
        bar.update()
        if not decided:
            unanswered += 1
            continue
        delays.append(1000 * (decided[0] - u.speech_end_s))
    cut_offs, examples = 0, []
    for u in paused:
        decided = await decision_times(u.pcm, vad)
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


async def decision_times(pcm: bytes, vad: VadConfig) -> list[float]:
    """Where in `pcm` (seconds of audio received) the session's input ended each turn, fed in 20 ms
    frames, each pause's verdict applied before the next frame."""
    decided: list[float] = []
    position = 0.0

    async def emit(event: SessionEvent) -> None:
        if isinstance(event, SpeechStopped):
            decided.append(position)

    async def stopped(utterance: Utterance, timeline: TurnTimeline) -> None:
        await utterance.abort()

    async def started(began: float) -> None:
        return None

    audio_input = AudioInput(
        stt=SimulatedSTTEngine("", finalize_delay_ms=0),
        emit=emit,
        options=SessionOptions(instructions="", input_sample_rate=RATE, turn_detection=vad),
        limits=SessionLimits(),
        speech_detector=SileroSpeechDetector,
        on_speech_started=started,
        on_speech_stopped=stopped,
    )
    step = RATE // 50 * 2
    for i in range(0, len(pcm), step):
        position = (i + step) / 2 / RATE
        await audio_input.append(pcm[i : i + step])
        await audio_input.settled()
    await audio_input.close()
    return decided


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


def table(rows: list[dict[str, Any]], cost: tuple[float, float]) -> str:
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
    )
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    names = [r["mode"].replace(" ", "\n", 1) for r in rows]
    ax1.bar(names, [r["eot_delay_p50_ms"] for r in rows], label="p50")
    ax1.scatter(names, [r["eot_delay_p95_ms"] for r in rows], color="black", zorder=3, label="p95")
    ax1.set_ylabel("ms")
    ax1.set_title("end of speech → turn ended (complete utterances)")
    ax1.legend(fontsize=8)
    ax2.bar(names, [100 * r["false_cut_off_rate"] for r in rows], color="tab:red")
    ax2.set_ylabel("% of paused utterances")
    ax2.set_title("false cut-offs (turn ended inside a mid-clause pause)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


async def main_async(args: argparse.Namespace) -> None:
    out = Path(args.out)
    complete, paused = test_set()
    rows = []
    with tqdm(total=len(MODES) * (len(complete) + len(paused)), desc="utterances", unit="utt") as bar:
        for name, vad in MODES.items():
            rows.append(await run_mode(name, vad, complete, paused, bar))
    cost = model_cost_ms()
    text = table(rows, cost)
    print(text)
    (out / "turn_taking.md").write_text(text + "\n")
    (out / "turn_taking.json").write_text(
        json.dumps(
            {"modes": rows, "model_ms_per_call": cost[0], "paused": [u.name for u in paused]}, indent=2
        )
    )
    plot(rows, out / "turn_taking.png")
    print(f"results in {out}/turn_taking.*")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
