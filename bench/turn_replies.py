"""Turn-taking end to end: from the end of the user's speech to the first reply audio, per turn
detection mode, with and without preemptive generation, and what preemption wastes.

    .venv/bin/python -m bench.turn_replies        # ~3 min → bench/results/turn_replies.{md,json,png}

Whole voice sessions (`VoiceSession`: the real Silero VAD and end-of-turn model) hear the test set of
`bench.turn_taking` (human recordings over room noise) in real time, 20 ms frames, a few sessions at a
time. The providers are simulated with `bench.latency`'s latencies: STT final 150 ms after the end of
audio (its transcript: the reference words spoken in the audio it was sent, as an accurate STT without
interim results gives them), LLM first token after 300 ms then 50 tokens/s, TTS first byte after
100 ms. Measured:
- on the complete utterances: **end of speech → first reply audio** (what the user waits for, without
  the network), and **turn confirmed → first reply audio** (the target with preemption: TTS's first
  byte + 60 ms);
- on the paused utterances (and the complete ones): **LLM calls per turn** and the **wasted** ones, calls
  started at a pause the speaker then talked on from (every reply uses one call; the rest are waste).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from actors.audio.pcm import STT_SAMPLE_RATE
from actors.audio.vad import SileroSpeechDetector, VadConfig
from actors.conversation.events import ResponseAudioDelta, ResponseStarted, SessionEvent, SpeechStopped
from actors.conversation.options import SessionLimits, SessionOptions
from actors.conversation.session import VoiceSession
from actors.llm.stage import LLMStage
from actors.tts.simulated import SimulatedTTSEngine
from actors.tts.stage import TTSStage
from bench.latency import REPLY, STT_DELAY_MS, TTFT_MS, TTS_TTFB_MS
from bench.load import percentile
from bench.turn_taking import ReferenceSTT, Utterance16k, test_set
from testkit.fakes import FakeLLMEngine
from testkit.serve_cluster import ROOT

RATE = STT_SAMPLE_RATE
FRAME_BYTES = RATE // 50 * 2
MODES: dict[str, VadConfig] = {
    "server_vad 500 ms": VadConfig(),
    "semantic_vad auto": VadConfig.semantic("auto"),
}
CONCURRENT = 4  # sessions at a time: the end-of-turn model's calls must not queue behind each other
AFTER_REPLY_S = 0.3  # audio still sent after the first reply audio


@dataclass
class Run:
    stopped_at: list[float] = field(default_factory=list)  # turns confirmed (speech_stopped)
    first_audio_at: float | None = None  # the first reply audio after the speech ended
    replies: int = 0
    llm_calls: int = 0


async def hear(u: Utterance16k, vad: VadConfig, preemptive: bool) -> tuple[Run, float]:
    """Stream `u` to a fresh session in real time, until shortly after the reply to the whole utterance
    has started; returns the run and the clock time the speech ended."""
    run = Run()
    sent_s = 0.0  # seconds of the utterance's audio sent so far
    loop = asyncio.get_running_loop()
    started = loop.time()
    speech_end = started + u.speech_end_s

    def answers_all(run: Run) -> bool:
        """The reply is to a turn that ended after the speech (not one cut off inside a pause)."""
        return bool(run.stopped_at) and run.stopped_at[-1] >= speech_end

    async def emit(event: SessionEvent) -> None:
        if isinstance(event, SpeechStopped):
            run.stopped_at.append(loop.time())
        elif isinstance(event, ResponseStarted):
            run.replies += 1
        elif isinstance(event, ResponseAudioDelta) and run.first_audio_at is None and answers_all(run):
            run.first_audio_at = loop.time()

    llm = FakeLLMEngine(REPLY, ttft_ms=TTFT_MS, tokens_per_s=50)
    session = VoiceSession(
        # The words actually spoken up to the audio each STT stream was sent, final after STT_DELAY_MS.
        stt=ReferenceSTT(u.words, lambda: sent_s),
        llm=LLMStage(llm),
        tts=TTSStage(SimulatedTTSEngine(ttfb_ms=TTS_TTFB_MS, realtime_factor=1000)),
        emit=emit,
        options=SessionOptions(instructions="Be brief.", input_sample_rate=RATE, turn_detection=vad),
        limits=SessionLimits(preemptive_generation=preemptive),
        speech_detector=SileroSpeechDetector,
    )
    try:
        for n, i in enumerate(range(0, len(u.pcm), FRAME_BYTES)):
            sent_s = (i + FRAME_BYTES) / 2 / RATE
            await session.append_audio(u.pcm[i : i + FRAME_BYTES])
            if run.first_audio_at is not None and loop.time() > run.first_audio_at + AFTER_REPLY_S:
                break
            await asyncio.sleep(max(started + (n + 1) * 0.02 - loop.time(), 0))
    finally:
        await session.close()
    run.llm_calls = len(llm.requests)
    return run, speech_end


async def measure(
    name: str,
    vad: VadConfig,
    preemptive: bool,
    complete: list[Utterance16k],
    paused: list[Utterance16k],
    bar: tqdm,
) -> dict[str, Any]:
    gate = asyncio.Semaphore(CONCURRENT)

    async def one(u: Utterance16k) -> tuple[Run, float]:
        async with gate:
            result = await hear(u, vad, preemptive)
            bar.update()
            return result

    done = await asyncio.gather(*(one(u) for u in [*complete, *paused]))
    e2e, after_confirmed = [], []
    for run, speech_end in done[: len(complete)]:
        if run.first_audio_at is not None and run.stopped_at:
            e2e.append(1000 * (run.first_audio_at - speech_end))
            after_confirmed.append(1000 * (run.first_audio_at - run.stopped_at[0]))
    turns = sum(max(run.replies, 1) for run, _ in done)
    calls = sum(run.llm_calls for run, _ in done)
    wasted = sum(max(run.llm_calls - run.replies, 0) for run, _ in done)
    paused_runs = [run for run, _ in done[len(complete) :]]
    return {
        "mode": name,
        "preemptive": preemptive,
        "answered": len(e2e),
        "complete": len(complete),
        "e2e_p50_ms": percentile(e2e, 50),
        "e2e_p95_ms": percentile(e2e, 95),
        "after_confirmed_p50_ms": percentile(after_confirmed, 50),
        "after_confirmed_p95_ms": percentile(after_confirmed, 95),
        "llm_calls_per_turn": calls / turns,
        "wasted_per_turn": wasted / turns,
        "wasted_per_paused_utterance": sum(max(r.llm_calls - r.replies, 0) for r in paused_runs)
        / len(paused_runs)
        if paused_runs
        else float("nan"),
    }


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| mode | preemptive | end of speech → first audio p50 / p95 (ms) | turn confirmed → first audio"
        " p50 / p95 (ms) | LLM calls per turn | wasted per turn | wasted per paused utterance |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['mode']} | {'on' if r['preemptive'] else 'off'}"
            f" | {r['e2e_p50_ms']:.0f} / {r['e2e_p95_ms']:.0f}"
            f" | {r['after_confirmed_p50_ms']:.0f} / {r['after_confirmed_p95_ms']:.0f}"
            f" | {r['llm_calls_per_turn']:.2f} | {r['wasted_per_turn']:.2f}"
            f" | {r['wasted_per_paused_utterance']:.2f} |"
        )
    lines.append("")
    lines.append(
        f"Simulated providers: STT final {STT_DELAY_MS:.0f} ms, LLM first token {TTFT_MS:.0f} ms at 50 tok/s,"
        f" TTS first byte {TTS_TTFB_MS:.0f} ms; target with preemption: turn confirmed → first audio"
        f" ≤ {TTS_TTFB_MS + 60:.0f} ms."
    )
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    names = [f"{r['mode'].split()[0]}\npreempt {'on' if r['preemptive'] else 'off'}" for r in rows]
    ax1.bar(names, [r["e2e_p50_ms"] for r in rows], label="end of speech → first audio, p50")
    ax1.bar(names, [r["after_confirmed_p50_ms"] for r in rows], label="turn confirmed → first audio, p50")
    ax1.axhline(TTS_TTFB_MS + 60, color="green", ls="--", lw=1, label="TTS first byte + 60 ms")
    ax1.set_ylabel("ms")
    ax1.set_title("complete utterances")
    ax1.legend(fontsize=7)
    ax2.bar(names, [r["wasted_per_turn"] for r in rows], color="tab:red")
    ax2.set_ylabel("wasted LLM calls per turn")
    ax2.set_title("preemptive calls the speaker talked on from")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


async def main_async(args: argparse.Namespace) -> None:
    out = Path(args.out)
    complete, paused = test_set()
    if args.quick:
        paused = paused[::5]  # every pause length (the set runs cut by cut, four pauses each)
    variants = [(name, vad, preemptive) for name, vad in MODES.items() for preemptive in (False, True)]
    rows = []
    began = time.perf_counter()
    with tqdm(total=len(variants) * (len(complete) + len(paused)), desc="sessions", unit="utt") as bar:
        for name, vad, preemptive in variants:
            rows.append(await measure(name, vad, preemptive, complete, paused, bar))
    text = table(rows)
    print(text)
    (out / "turn_replies.md").write_text(text + "\n")
    (out / "turn_replies.json").write_text(json.dumps(rows, indent=2))
    plot(rows, out / "turn_replies.png")
    print(f"{time.perf_counter() - began:.0f} s; results in {out}/turn_replies.*")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--quick", action="store_true", help="a fifth of the paused utterances")
    args = parser.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
