"""Per-turn latency and orchestration overhead, side by side in one run.

    .venv/bin/python -m bench.latency               # everything (~9 min on 2 cores)
    .venv/bin/python -m bench.latency --quick       # fewer turns

Scenarios (each a real server process, driven over `WS /v1/realtime` by clients that stream an eSpeak
utterance in 20 ms frames in real time, then silence):
- `single-process`: the router app with in-process stages under uvicorn (no Ray): the no-hop baseline;
- `single-process, 3 tools offered`: the same with three webhook tools offered to the model on every turn
  and never called: what a turn that calls no tool pays for tools;
- `ray-serve`: `serve run serve_config.yaml` on a private Ray cluster (router + 3 stage deployments);
- `offline`: `serve run` with the real offline engines (pocketsphinx, llama.cpp Gemma 3 270M, eSpeak),
  once with replies started at the confirmed turn and once with the defaults (preemptive generation);
- `phone (Twilio)`: the single-process server again, reached as a phone call: the signed-less webhook of an
  open router, then a simulated Twilio (`testkit.twilio_peer`) streaming the same utterance as 8 kHz μ-law
  in 20 ms `media` messages and playing the reply at real time (client e2e only: a phone call carries no
  per-turn metrics back).
The first two use latency-faithful simulated providers: STT final 150 ms after end of audio, an
OpenAI-compatible SSE server with TTFT 300 ms and 50 tok/s, TTS first byte after 100 ms.

Measured per turn:
- client e2e = first reply audio received − the moment the last speech frame was sent;
- orchestration overhead = server e2e − end_of_turn_delay − the providers' critical path after the turn
  is detected (STT final + TTFT + tokens of the first phrase + TTS first byte): everything the pipeline adds
  between the VAD's decision and the first audio byte (hops, chunking, queues, resampling, encoding). This
  is the quantity of the issue's target, measured as the reference harness measured other frameworks;
- endpointing lag = client e2e − orchestration − providers − the configured silence window: how much later
  than the acoustic end of speech the VAD declares the turn over (Silero's hangover + 32 ms frames).
For the offline engines, whose latencies are not fixed, orchestration is
server e2e − (transcription_delay + llm_ttfs + tts_ttfb): the hand-offs between stages.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import websockets

from testkit.serve_cluster import ROOT, ServeRun, free_port
from testkit.speech import espeak_speech, silence, speech_end_byte
from testkit.twilio_peer import call_webhook, phone_call, to_mulaw

RATE = 24_000
FRAME_MS = 20
SILENCE_MS = 500  # vad_silence_ms (the default)
STT_DELAY_MS = 150
TTFT_MS = 300
TOKENS_PER_S = 50
TTS_TTFB_MS = 100
REPLY = "It will be sunny tomorrow."  # the simulated server's tokens: "It", " will", ..., " tomorrow."
FIRST_PHRASE_TOKENS = 5
QUESTION = "What is the weather like tomorrow?"
PROVIDERS_AFTER_TURN_MS = (
    STT_DELAY_MS + TTFT_MS + (FIRST_PHRASE_TOKENS - 1) * 1000 / TOKENS_PER_S + TTS_TTFB_MS
)

# Server tools offered to the model on every turn and never called (the simulated model calls a tool only
# when the user's words name it): what a turn that calls no tool pays for having tools.
OFFERED_TOOLS = [
    {
        "name": name,
        "description": f"The {name.replace('_', ' ')} for a place.",
        "parameters": {"type": "object", "properties": {"place": {"type": "string"}}, "required": ["place"]},
        "url": "http://127.0.0.1:9/never-called",
    }
    for name in ("get_weather", "get_time", "get_news")
]

TOOLS_OFFERED = "single-process, 3 tools offered"

SIM_ARGS = {
    "stt_engine": "simulated",
    "tts_engine": "simulated",
    "llm_engine": "openai",
    "sim_stt_delay_ms": STT_DELAY_MS,
    "sim_tts_ttfb_ms": TTS_TTFB_MS,
    "sim_stt_transcript": QUESTION,
    # A final transcript only, as OpenAI's transcription endpoint gives and the peers' simulated STTs
    # (bench/peers/) do: the same provider for every framework.
    "sim_stt_interim_results": False,
    # Overhead is measured on replies started when the turn is confirmed: a reply prepared at the pause
    # hides the providers' latency instead (bench.turn_replies measures what preemption saves).
    "preemptive_generation": False,
}


@dataclass
class TurnResult:
    e2e_client_ms: float
    server: dict[str, float]


@dataclass
class ScenarioResult:
    name: str
    sessions: int
    turns: list[TurnResult] = field(default_factory=list)
    failures: int = 0


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def run_session(
    url: str, turns: int, utterance: bytes, start_delay: float, out: ScenarioResult, user: str = "anonymous"
) -> None:
    await asyncio.sleep(start_delay)
    lead, tail = silence(300), silence(1500)
    audio = lead + utterance + tail
    end_of_speech = len(lead) + speech_end_byte(utterance)
    frame = RATE * 2 * FRAME_MS // 1000
    async with websockets.connect(f"{url}/realtime?user={user}", max_size=None) as ws:
        json.loads(await ws.recv())  # session.created
        for _ in range(turns):
            first_audio: float | None = None
            speech_end_sent: float | None = None
            done: dict[str, Any] | None = None

            async def receive() -> None:
                nonlocal first_audio, done
                while True:
                    event = json.loads(await ws.recv())
                    if event["type"] == "response.output_audio.delta" and first_audio is None:
                        first_audio = time.perf_counter()
                    elif event["type"] == "response.done":
                        done = event["response"]
                        return
                    elif event["type"] == "error":
                        raise RuntimeError(event["error"])

            receiver = asyncio.create_task(receive())
            start = time.perf_counter()
            for i, offset in enumerate(range(0, len(audio), frame)):
                # Absolute schedule: real-time pacing without drift.
                await asyncio.sleep(max(0.0, start + i * FRAME_MS / 1000 - time.perf_counter()))
                await ws.send(
                    json.dumps(
                        {
                            "type": "input_audio_buffer.append",
                            "audio": base64.b64encode(audio[offset : offset + frame]).decode(),
                        }
                    )
                )
                if speech_end_sent is None and offset + frame >= end_of_speech:
                    speech_end_sent = time.perf_counter()
            try:
                await asyncio.wait_for(receiver, 60)
            except Exception:
                out.failures += 1
                receiver.cancel()
                continue
            if (
                done is None
                or done.get("status") != "completed"
                or first_audio is None
                or speech_end_sent is None
            ):
                out.failures += 1
                continue
            server = {k: float(v) for k, v in (done.get("metadata") or {}).items()}
            out.turns.append(TurnResult((first_audio - speech_end_sent) * 1000, server))


async def run_scenario(
    name: str, url: str, sessions: int, turns: int, utterance: bytes, user_prefix: str = "user"
) -> ScenarioResult:
    """`sessions` concurrent sessions (staggered starts), one user each, `turns` spoken turns each."""
    result = ScenarioResult(name, sessions)
    await asyncio.gather(
        *(
            run_session(url, turns, utterance, i * 0.37, result, user=f"{user_prefix}-{i}")
            for i in range(sessions)
        )
    )
    return result


async def run_phone_session(base_url: str, turns: int, utterance: bytes, out: ScenarioResult) -> None:
    """One phone call through the Twilio webhook and Media Streams, `turns` spoken turns; client e2e =
    first reply `media` received − the moment the last speech frame was sent."""
    speech = to_mulaw(utterance[: speech_end_byte(utterance)], RATE)
    async with httpx.AsyncClient() as http:
        answer = await call_webhook(http, f"{base_url}/v1/phone/twilio/voice", "+15551230000", None)
    async with phone_call(answer.stream_url, answer.parameters) as peer:
        await asyncio.sleep(0.3)  # line noise first, as on a real call
        for _ in range(turns):
            media_before, ended_before = len(peer.media_times), len(peer.speech_ended)
            peer.say(speech)
            try:
                await peer.wait_until(
                    lambda e=ended_before, m=media_before: (
                        len(peer.speech_ended) > e and len(peer.media_times) > m
                    )
                )
            except Exception:
                out.failures += 1
                continue
            out.turns.append(
                TurnResult((peer.media_times[media_before] - peer.speech_ended[ended_before]) * 1000, {})
            )
            # The reply plays out (and a second of quiet follows) before the caller speaks again.
            while True:
                heard = len(peer.received)
                await asyncio.sleep(1.0)
                if len(peer.received) == heard and not peer.playing:
                    break


def overhead_ms(turn: TurnResult, simulated: bool) -> float:
    s = turn.server
    if simulated:
        return s["e2e_latency"] - s["end_of_turn_delay"] - PROVIDERS_AFTER_TURN_MS
    return s["e2e_latency"] - (s["transcription_delay"] + s["llm_ttfs"] + s["tts_ttfb"])


def endpointing_lag_ms(turn: TurnResult) -> float:
    return turn.e2e_client_ms - turn.server["e2e_latency"] + turn.server["end_of_turn_delay"] - SILENCE_MS


def summarize(result: ScenarioResult, simulated: bool, overhead: bool = True) -> dict[str, Any]:
    """The scenario's row; `overhead=False` where the stages' times overlap and no overhead is separable."""
    e2e = [t.e2e_client_ms for t in result.turns]
    measured = [t for t in result.turns if "e2e_latency" in t.server]  # a phone call has no server figures
    over = [overhead_ms(t, simulated) for t in measured] if overhead else []
    server_e2e = [t.server["e2e_latency"] for t in measured]
    lag = [endpointing_lag_ms(t) for t in measured]
    parts = {
        k: statistics.median([t.server[k] for t in result.turns if k in t.server] or [float("nan")])
        for k in ("end_of_turn_delay", "transcription_delay", "llm_ttft", "llm_ttfs", "tts_ttfb")
    }
    return {
        "scenario": result.name,
        "sessions": result.sessions,
        "turns": len(result.turns),
        "failures": result.failures,
        "e2e_p50": percentile(e2e, 50),
        "e2e_p95": percentile(e2e, 95),
        "server_e2e_p50": percentile(server_e2e, 50),
        "overhead_p50": percentile(over, 50),
        "overhead_p95": percentile(over, 95),
        "overhead_kind": "above providers" if simulated else "stage hand-offs",
        "endpointing_lag_p50": percentile(lag, 50),
        **{f"{k}_p50": v for k, v in parts.items()},
    }


def start_sim_llm(
    workdir: Path, ttft_ms: float = TTFT_MS, reply: str = REPLY, name: str = "sim_llm"
) -> tuple[subprocess.Popen, str]:
    """The simulated OpenAI-compatible LLM server in its own process; returns it and its base URL."""
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "testkit.sim_openai_server",
            "--port",
            str(port),
            "--ttft-ms",
            str(ttft_ms),
            "--tokens-per-s",
            str(TOKENS_PER_S),
            "--reply",
            reply,
        ],
        cwd=ROOT,
        stdout=(workdir / f"{name}.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}/v1"
    wait_http(f"{base}/models", process)
    return process, base


def wait_http(url: str, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: server exited")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError(url)


def start_single_process(
    workdir: Path, llm_base: str, extra_env: dict[str, str] | None = None, log_name: str = "single.log"
) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {
        **os.environ,
        "OPENAI_API_KEY": "sim",
        "VOICE_LLM_BASE_URL": llm_base,
        **{f"VOICE_{k.upper()}": str(v) for k, v in SIM_ARGS.items()},
        **(extra_env or {}),
    }
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "serve_app.programs.local:create_app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env=env,
        stdout=(workdir / log_name).open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: the load benchmark counts its CPU by session
    )
    wait_http(f"http://127.0.0.1:{port}/healthz", process)
    return process, f"ws://127.0.0.1:{port}/v1"


def failed(row: dict[str, Any]) -> str:
    return f" ({row['failures']} failed)" if row["failures"] else ""


def _ms(value: float, digits: int = 0) -> str:
    return "—" if value != value else f"{value:.{digits}f}"  # NaN: not measured on this path


def print_table(rows: list[dict[str, Any]]) -> str:
    header = (
        "| scenario | sessions | turns | client e2e p50 | p95 | orchestration p50 | p95 | measured as |"
        " endpointing lag p50 | eot | stt | ttft | ttfs | tts |"
    )
    lines = [header, "|" + "---|" * 14]
    for r in rows:
        kind = r["overhead_kind"] if r["overhead_p50"] == r["overhead_p50"] else "—"
        lines.append(
            f"| {r['scenario']} | {r['sessions']} | {r['turns']}{failed(r)}"
            f" | {_ms(r['e2e_p50'])} | {_ms(r['e2e_p95'])} | {_ms(r['overhead_p50'], 1)}"
            f" | {_ms(r['overhead_p95'], 1)} | {kind} | {_ms(r['endpointing_lag_p50'])}"
            f" | {_ms(r['end_of_turn_delay_p50'])} | {_ms(r['transcription_delay_p50'])}"
            f" | {_ms(r['llm_ttft_p50'])} | {_ms(r['llm_ttfs_p50'])} | {_ms(r['tts_ttfb_p50'])} |"
        )
    table = "\n".join(lines)
    print(table)
    return table


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [
        "\n".join(
            [*textwrap.wrap(r["scenario"], 16), f"{r['sessions']} session{'s' if r['sessions'] > 1 else ''}"]
        )
        for r in rows
    ]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(12, 9))
    x = range(len(rows))
    ax1.bar([i - 0.2 for i in x], [r["overhead_p50"] for r in rows], 0.4, label="p50")
    ax1.bar([i + 0.2 for i in x], [r["overhead_p95"] for r in rows], 0.4, label="p95")
    ax1.axhline(10, color="green", ls="--", lw=1, label="target p50 10 ms")
    ax1.axhline(25, color="red", ls="--", lw=1, label="target p95 25 ms")
    ax1.set_xticks(list(x), labels, fontsize=7)
    ax1.set_ylabel("ms")
    ax1.set_title("orchestration overhead: turn detected → first audio, above providers (ms)")
    ax1.legend(fontsize=8)
    ax2.bar([i - 0.2 for i in x], [r["e2e_p50"] for r in rows], 0.4, label="p50")
    ax2.bar([i + 0.2 for i in x], [r["e2e_p95"] for r in rows], 0.4, label="p95")
    ax2.set_xticks(list(x), labels, fontsize=7)
    ax2.set_title("end of speech → first reply audio (ms, client side)")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


async def main_async(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once, before any timing
    workdir = Path(tempfile.mkdtemp(prefix="voice-bench-"))
    utterance = espeak_speech(QUESTION)
    turns_1, turns_10 = (4, 2) if args.quick else (15, 5)
    rows: list[dict[str, Any]] = []

    async def one_then_ten(name: str, url: str) -> None:
        """The scenario at one session, then at ten: a row each, on the simulated providers."""
        for sessions, turns in ((1, turns_1), (10, turns_10)):
            rows.append(summarize(await run_scenario(name, url, sessions, turns, utterance), True))

    sim_llm, llm_base = start_sim_llm(workdir)
    try:
        single, url = start_single_process(workdir, llm_base)
        try:
            await one_then_ten("single-process", url)
            phone = ScenarioResult("phone (Twilio)", 1)
            await run_phone_session(
                url.replace("ws://", "http://").removesuffix("/v1"), turns_1, utterance, phone
            )
            rows.append(summarize(phone, True))
        finally:
            single.terminate()
            single.wait()
        tooled, url = start_single_process(
            workdir, llm_base, {"VOICE_TOOLS": json.dumps(OFFERED_TOOLS)}, "single-tools.log"
        )
        try:
            await one_then_ten(TOOLS_OFFERED, url)
        finally:
            tooled.terminate()
            tooled.wait()
        if not args.skip_serve:
            serve_dir = workdir / "serve-sim"
            serve_dir.mkdir()
            run = ServeRun(
                serve_dir, args={**SIM_ARGS, "llm_base_url": llm_base}, env={"OPENAI_API_KEY": "sim"}
            )
            try:
                run.wait_ready()
                await one_then_ten("ray-serve", run.ws_url)
            finally:
                run.stop()
    finally:
        sim_llm.terminate()
        sim_llm.wait()
    if not args.skip_offline:
        # Once as the overhead is measured (replies started at the confirmed turn), once with the defaults,
        # where preemptive generation starts the reply at the pause: the stages' times then overlap the
        # end-of-turn wait, so no hand-off figure can be taken from them.
        for name, offline_args in (
            ("offline engines", {"preemptive_generation": False}),
            ("offline engines, defaults (preemptive)", None),
        ):
            offline_dir = Path(tempfile.mkdtemp(prefix="serve-offline-", dir=workdir))
            run = ServeRun(offline_dir, args=offline_args)
            try:
                run.wait_ready()
                scenario = await run_scenario(name, run.ws_url, 1, 4 if args.quick else 8, utterance)
                rows.append(summarize(scenario, False, overhead=offline_args is not None))
            finally:
                run.stop()
    table = print_table(rows)
    (out / "latency.json").write_text(json.dumps(rows, indent=2))
    (out / "latency.md").write_text(table + "\n")
    plot(rows, out / "latency.png")
    print(
        f"simulated providers after the turn is detected: {PROVIDERS_AFTER_TURN_MS:.0f} ms "
        f"(+ {SILENCE_MS} ms silence window); results in {out}/"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer turns")
    parser.add_argument("--skip-offline", action="store_true", help="skip the offline-engine scenario")
    parser.add_argument("--skip-serve", action="store_true", help="skip the Ray Serve scenarios")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
