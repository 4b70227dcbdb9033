"""Tools in voice replies: what a turn without tools pays for them (nothing), what a fast tool adds to the
first audio, and the filler that covers a slow one.

    .venv/bin/python -m bench.tool_turns          # ~2 min → bench/results/tool_turns.{md,json,png}
    .venv/bin/python -m bench.tool_turns --quick

Typed turns on a whole `VoiceSession` (no network), one at a time, each on a fresh session, in real time.
The providers are simulated with `bench.latency`'s latencies: the real LLM stage around a scripted model
with its first token after 300 ms then 50 tokens/s (a call streams as OpenAI streams one: its id and name,
then its arguments in pieces of a third, a token each), TTS first byte after 100 ms. Scenarios:
- **no tools**: the session has no server tools; the model answers in words;
- **tools offered, none called**: the session has a server tool; the model answers in words (the same
  turn: what offering tools costs the voice path);
- **tool 50 ms**: the model calls a server tool answering in 50 ms, then answers;
- **tool 3 s**: the same tool taking 3 s (filler speech).
Measured: **request → first audio** (`response.create` → first `response.output_audio.delta`); for a
tool turn the part the pipeline adds: first audio − (the no-tool turn's first audio + the call's streaming
+ the tool's time + the second round's first token) — the issue's target is ≤ 20 ms; for the 3 s tool,
**call start → filler audio** (target: filler delay 400 ms + TTS first byte + 30 ms) and the **longest
silence** the client hears from the first filler to the answer (target: ≤ 1.5 s), assuming the client
plays each chunk as it arrives.
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

from actors.audio.pcm import duration_ms
from actors.conversation.events import ResponseAudioDelta, ResponseFinished, SessionEvent
from actors.conversation.options import SessionLimits, SessionOptions
from actors.conversation.session import VoiceSession
from actors.llm.stage import LLMStage
from actors.stt.simulated import SimulatedSTTEngine
from actors.tools.base import ToolContext, ToolDefinition
from actors.tools.toolbox import Toolbox
from actors.tts.simulated import SimulatedTTSEngine
from actors.tts.stage import TTSStage
from bench.latency import REPLY, TOKENS_PER_S, TTFT_MS, TTS_TTFB_MS
from bench.load import percentile
from testkit.fakes import EnergySpeechDetector, FakeLLMEngine, ScriptedRound

RATE = 24_000
FILLER_DELAY_MS = SessionLimits().tool_filler_delay_ms
CALL = ("get_weather", '{"city": "Paris"}')
# The call's first piece, then its arguments in pieces of a third (as the scripted model streams them),
# a token each.
CALL_TOKENS = 1 + len(range(0, len(CALL[1]), max(len(CALL[1]) // 3, 1)))


class Weather:
    """A server tool answering after `seconds`; records when each call started (loop time)."""

    definition = ToolDefinition("get_weather", "The weather in a city.")

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.started: list[float] = []

    async def call(self, arguments: dict[str, Any], context: ToolContext) -> str:
        self.started.append(asyncio.get_running_loop().time())
        await asyncio.sleep(self.seconds)
        return '{"temp_c": 21, "sky": "clear"}'


@dataclass
class Turn:
    asked_at: float = 0.0
    audio: list[tuple[float, float]] = field(default_factory=list)  # (arrival, seconds of audio)
    finished: ResponseFinished | None = None


async def one_turn(tool_s: float | None, offer_tool: bool) -> tuple[Turn, Weather]:
    """One typed turn on a fresh session; `tool_s`: the model calls the tool, which takes this long."""
    weather = Weather(tool_s or 0.0)
    rounds = (
        [ScriptedRound(calls=(CALL,)), ScriptedRound(REPLY)] if tool_s is not None else [ScriptedRound(REPLY)]
    )
    turn = Turn()
    done = asyncio.Event()
    loop = asyncio.get_running_loop()

    async def emit(event: SessionEvent) -> None:
        if isinstance(event, ResponseAudioDelta):
            turn.audio.append((loop.time(), duration_ms(event.pcm16, RATE) / 1000))
        elif isinstance(event, ResponseFinished):
            turn.finished = event
            done.set()

    session = VoiceSession(
        stt=SimulatedSTTEngine("unused"),
        llm=LLMStage(FakeLLMEngine("", ttft_ms=TTFT_MS, tokens_per_s=TOKENS_PER_S, rounds=rounds)),
        tts=TTSStage(SimulatedTTSEngine(ttfb_ms=TTS_TTFB_MS)),
        emit=emit,
        options=SessionOptions(instructions="Be brief.", turn_detection=None),
        speech_detector=EnergySpeechDetector,
        toolbox=Toolbox([weather]) if offer_tool else Toolbox(),
    )
    try:
        await session.add_user_text("What's the weather in Paris?")
        turn.asked_at = loop.time()
        await session.create_response()
        async with asyncio.timeout(30):
            await done.wait()
    finally:
        await session.close()
    return turn, weather


def longest_silence(audio: list[tuple[float, float]], start: float) -> float:
    played_until, longest = start, 0.0
    for at, seconds in audio:
        if at >= start:
            longest = max(longest, at - played_until)
            played_until = max(played_until, at) + seconds
    return longest


def stats(values: list[float]) -> dict[str, float]:
    return {"p50": percentile(values, 50), "p95": percentile(values, 95)}


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    turns = 6 if args.quick else 20
    slow_turns = 3 if args.quick else 8
    scenarios = [
        ("no tools", None, False, turns),
        ("tools offered, none called", None, True, turns),
        ("tool 50 ms", 0.05, True, turns),
        ("tool 3 s", 3.0, True, slow_turns),
    ]
    results: dict[str, Any] = {}
    with tqdm(total=sum(s[3] for s in scenarios), desc="turns", unit="turn") as bar:
        for name, tool_s, offer, count in scenarios:
            first_audio, filler, silence, tool_ms = [], [], [], []
            for _ in range(count):
                turn, weather = await one_turn(tool_s, offer)
                assert turn.finished is not None and turn.finished.status == "completed", turn.finished
                first_audio.append(1000 * (turn.audio[0][0] - turn.asked_at))
                if tool_s is not None:
                    tool_ms.append(turn.finished.metrics["tool_ms"])
                if tool_s is not None and tool_s > 1:
                    called = weather.started[0]
                    filler.append(1000 * (turn.audio[0][0] - called))
                    silence.append(1000 * longest_silence(turn.audio, turn.audio[0][0]))
                bar.update()
            results[name] = {
                "turns": count,
                "first_audio_ms": stats(first_audio),
                **({"tool_ms": stats(tool_ms)} if tool_ms else {}),
                **(
                    {"call_to_filler_ms": stats(filler), "longest_silence_ms": stats(silence)}
                    if filler
                    else {}
                ),
            }
    base = results["no tools"]["first_audio_ms"]["p50"]
    call_ms = CALL_TOKENS * 1000 / TOKENS_PER_S
    fast = results["tool 50 ms"]
    fast["added_by_pipeline_ms"] = fast["first_audio_ms"]["p50"] - (
        base + call_ms + fast["tool_ms"]["p50"] + TTFT_MS
    )
    results["offered_minus_none_ms"] = results["tools offered, none called"]["first_audio_ms"]["p50"] - base
    return results


def table(r: dict[str, Any]) -> str:
    lines = [
        "| scenario | request → first audio p50 / p95 (ms) | tool_ms p50"
        " | call start → filler audio p50 / p95 (ms) | longest silence p50 / p95 (ms) |",
        "|---|---|---|---|---|",
    ]
    for name in ("no tools", "tools offered, none called", "tool 50 ms", "tool 3 s"):
        row = r[name]
        fa = row["first_audio_ms"]
        tool = f"{row['tool_ms']['p50']:.0f}" if "tool_ms" in row else "—"
        filler = (
            f"{row['call_to_filler_ms']['p50']:.0f} / {row['call_to_filler_ms']['p95']:.0f}"
            if "call_to_filler_ms" in row
            else "—"
        )
        silence = (
            f"{row['longest_silence_ms']['p50']:.0f} / {row['longest_silence_ms']['p95']:.0f}"
            if "longest_silence_ms" in row
            else "—"
        )
        lines.append(f"| {name} | {fa['p50']:.0f} / {fa['p95']:.0f} | {tool} | {filler} | {silence} |")
    lines += [
        "",
        f"Offering tools, none called: {r['offered_minus_none_ms']:+.1f} ms at p50 against no tools.",
        f"Tool 50 ms: the pipeline added {r['tool 50 ms']['added_by_pipeline_ms']:+.1f} ms at p50 beyond"
        f" the no-tool turn + the call's streaming ({CALL_TOKENS * 1000 / TOKENS_PER_S:.0f} ms)"
        f" + the tool + the second round's first token ({TTFT_MS:.0f} ms); target ≤ 20 ms.",
        f"Tool 3 s: target call start → filler audio ≤ {FILLER_DELAY_MS + TTS_TTFB_MS + 30:.0f} ms"
        " (filler delay + TTS first byte + 30 ms), longest silence ≤ 1500 ms.",
        f"Simulated providers: LLM first token {TTFT_MS:.0f} ms at {TOKENS_PER_S:.0f} tok/s, TTS first byte"
        f" {TTS_TTFB_MS:.0f} ms.",
    ]
    return "\n".join(lines)


def plot(r: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    names = ["no tools", "tools offered, none called", "tool 50 ms", "tool 3 s"]
    ax1.bar([n.replace(", ", ",\n") for n in names], [r[n]["first_audio_ms"]["p50"] for n in names])
    ax1.set_ylabel("request → first audio, p50 (ms)")
    ax1.set_title("first audio of a typed turn")
    slow = r["tool 3 s"]
    ax2.bar(
        ["call start → filler audio", "longest silence"],
        [slow["call_to_filler_ms"]["p50"], slow["longest_silence_ms"]["p50"]],
        color=["tab:orange", "tab:red"],
    )
    ax2.axhline(FILLER_DELAY_MS + TTS_TTFB_MS + 30, color="tab:orange", ls="--", lw=1, label="filler target")
    ax2.axhline(1500, color="tab:red", ls="--", lw=1, label="silence target")
    ax2.set_ylabel("ms (p50)")
    ax2.set_title("a tool taking 3 s")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer turns")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    results = asyncio.run(main_async(args))
    text = table(results)
    print(text)
    (out / "tool_turns.md").write_text(text + "\n")
    (out / "tool_turns.json").write_text(json.dumps(results, indent=2))
    plot(results, out / "tool_turns.png")
    print(f"{time.perf_counter() - began:.0f} s; results in {out}/tool_turns.*")


if __name__ == "__main__":
    main()
