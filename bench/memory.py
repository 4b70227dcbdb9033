"""What long-term memory costs a conversation, side by side in one run, against a real Letta server.

    .venv/bin/python -m bench.memory            # everything (~12 min on 2 cores)
    .venv/bin/python -m bench.memory --quick    # fewer turns, one flush window

Providers are simulated as in `bench.latency` (STT final 150 ms after the audio, an OpenAI-compatible
LLM at TTFT 300 ms and 50 tok/s, TTS first byte 100 ms), and a real Letta 0.16.8 server (its own
Postgres) runs each user's agent with its LLM simulated so that one Letta agent turn takes 5 s: the
figure of the system this project replaces. Clients stream an eSpeak question in real time over
`WS /v1/realtime`, one user per session.

Scenarios (each a fresh `serve run serve_config.yaml` on a private Ray cluster):
- `memory off`: no Letta at all, the baseline;
- `memory on (hybrid)`: the memory actor journals every turn and batches it to Letta off the request
  path; memory read into every prompt. Then 10 concurrent sessions of 8 turns, with several flush
  windows (the first one also gives the latency rows): Letta write calls per turn and memory lag (turn
  end → confirmed in Letta, from the actor's own `voice_memory_lag_seconds` histogram, interpolated
  within buckets as Prometheus' histogram_quantile does). Each session's end flushes its user's turns;
- `full Letta`: `use_hybrid_streaming: false`, every reply streamed from the user's Letta agent.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from letta_client import AsyncLetta

from bench.latency import (
    QUESTION,
    SIM_ARGS,
    run_scenario,
    start_sim_llm,
    summarize,
)
from testkit.letta_server import LettaServer, memory_args
from testkit.serve_cluster import ROOT, ServeRun
from testkit.speech import espeak_speech

LETTA_TURN_S = 5.0
LETTA_MODEL = "sim-letta-llm"
LETTA_REPLY = "It will be sunny tomorrow."


def letta_args(letta: LettaServer, letta_llm: str, workdir: Path) -> dict[str, Any]:
    return memory_args(letta.base_url, letta_llm, LETTA_MODEL, workdir / "journal.db")


async def letta_turn_seconds(letta: LettaServer, args: dict[str, Any], samples: int = 3) -> float:
    """Median time of one Letta agent turn (`messages.create` with one short message)."""
    client = AsyncLetta(base_url=letta.base_url, api_key="unused", timeout=120)
    agent = await client.agents.create(
        name=f"calibration-{time.monotonic_ns()}",
        memory_blocks=[{"label": "human", "value": "A benchmark user."}],
        llm_config=args["letta_llm_config"],
        embedding_config=args["letta_embedding_config"],
    )
    times = []
    for n in range(samples):
        started = time.perf_counter()
        await client.agents.messages.create(agent.id, messages=[{"role": "user", "content": f"Hello {n}."}])
        times.append(time.perf_counter() - started)
    await client.agents.delete(agent.id)
    await client.close()
    return statistics.median(times)


def memory_metrics(run: ServeRun) -> dict[str, float]:
    """The memory actor's series from the router's /metrics (labels kept in the key)."""
    text = httpx.get(f"{run.base_url}/metrics", timeout=10).text
    return {
        m.group(1): float(m.group(2))
        for m in re.finditer(r"^(voice_memory_\w+(?:\{[^}]*\})?) (\S+)$", text, re.MULTILINE)
    }


def histogram_quantile(q: float, before: dict[str, float], after: dict[str, float], name: str) -> float:
    """Quantile `q` of the observations made between two snapshots of a Prometheus histogram."""
    buckets = []
    for key, value in after.items():
        match = re.fullmatch(rf'{name}_bucket\{{le="([^"]+)"\}}', key)
        if match:
            buckets.append((float(match.group(1)), value - before.get(key, 0.0)))
    buckets.sort()
    total = buckets[-1][1] if buckets else 0.0
    if total <= 0:
        return float("nan")
    rank, lower, below = q * total, 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            if upper == float("inf"):
                return lower
            return lower + (upper - lower) * (rank - below) / max(count - below, 1e-9)
        lower, below = upper, count
    return lower


async def wait_drained(run: ServeRun, limit_s: float) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if memory_metrics(run).get("voice_memory_queue_depth", 1) == 0:
            return
        await asyncio.sleep(1)
    raise TimeoutError("the memory journal did not drain")


async def memory_load(
    run: ServeRun, label: str, sessions: int, turns: int, utterance: bytes, flush_s: float
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The latency summary of `sessions` concurrent sessions, and what their memory writes cost."""
    await wait_drained(run, flush_s + LETTA_TURN_S * 4 + 30)  # earlier turns are not counted here
    before = memory_metrics(run)
    result = await run_scenario(
        label, run.ws_url, sessions, turns, utterance, user_prefix=f"load{int(flush_s)}"
    )
    await wait_drained(run, flush_s + LETTA_TURN_S * 4 + 30)
    after = memory_metrics(run)

    def delta(key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    delivered = delta("voice_memory_batch_turns_sum")
    calls = delta("voice_memory_batch_turns_count") + delta("voice_memory_backend_errors_total")
    flushes = delta("voice_memory_flush_seconds_count")
    latency = summarize(result, True)
    return latency, {
        "sessions": sessions,
        "e2e_p50": latency["e2e_p50"],
        "flush_window_s": flush_s,
        "turns_delivered": delivered,
        "letta_calls": calls,
        "calls_per_turn": calls / delivered if delivered else float("nan"),
        "mean_batch": delivered / calls if calls else float("nan"),
        "lag_p50_s": histogram_quantile(0.5, before, after, "voice_memory_lag_seconds"),
        "lag_p95_s": histogram_quantile(0.95, before, after, "voice_memory_lag_seconds"),
        "letta_call_mean_s": delta("voice_memory_flush_seconds_sum") / flushes if flushes else float("nan"),
    }


def serve(workdir: Path, name: str, args: dict[str, Any]) -> ServeRun:
    path = workdir / name
    path.mkdir()
    run = ServeRun(path, args=args, env={"OPENAI_API_KEY": "sim"})
    run.wait_ready()
    return run


def print_tables(latency_rows: list[dict[str, Any]], load_rows: list[dict[str, Any]], letta_s: float) -> str:
    lines = [
        f"Letta agent turn (calibrated, median of 3): {letta_s:.2f} s",
        "",
        "| scenario | sessions | turns | client e2e p50 (ms) | p95 | server e2e p50 | llm_ttft p50 |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in latency_rows:
        failed = f" ({r['failures']} failed)" if r["failures"] else ""
        lines.append(
            f"| {r['scenario']} | {r['sessions']} | {r['turns']}{failed} | {r['e2e_p50']:.0f}"
            f" | {r['e2e_p95']:.0f} | {r['server_e2e_p50']:.0f} | {r['llm_ttft_p50']:.0f} |"
        )
    lines += [
        "",
        "| flush window | sessions | turns | Letta write calls / turn | mean batch | memory lag p50 (s)"
        " | p95 | Letta call mean (s) | client e2e p50 (ms) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in load_rows:
        lines.append(
            f"| {r['flush_window_s']:.0f} s | {r['sessions']} | {r['turns_delivered']:.0f}"
            f" | {r['calls_per_turn']:.2f} | {r['mean_batch']:.1f} | {r['lag_p50_s']:.1f}"
            f" | {r['lag_p95_s']:.1f} | {r['letta_call_mean_s']:.1f} | {r['e2e_p50']:.0f} |"
        )
    table = "\n".join(lines)
    print(table)
    return table


def ratios(latency_rows: list[dict[str, Any]]) -> dict[str, float]:
    by = {(r["scenario"], r["sessions"]): r for r in latency_rows}
    out = {}
    for sessions in (1, 10):
        off, on = by.get(("memory off", sessions)), by.get(("memory on (hybrid)", sessions))
        if off and on:
            out[f"memory_on_over_off_{sessions}"] = on["e2e_p50"] / off["e2e_p50"]
    full, hybrid = by.get(("full Letta", 1)), by.get(("memory on (hybrid)", 1))
    if full and hybrid:
        out["full_letta_over_hybrid"] = full["e2e_p50"] / hybrid["e2e_p50"]
    return out


def plot(latency_rows: list[dict[str, Any]], load_rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    labels = [
        r["scenario"].replace(" (", "\n(") + f"\n{r['sessions']} session{'s' if r['sessions'] > 1 else ''}"
        for r in latency_rows
    ]
    x = range(len(latency_rows))
    ax1.bar([i - 0.2 for i in x], [r["e2e_p50"] for r in latency_rows], 0.4, label="p50")
    ax1.bar([i + 0.2 for i in x], [r["e2e_p95"] for r in latency_rows], 0.4, label="p95")
    ax1.set_xticks(list(x), labels, fontsize=8)
    ax1.set_ylabel("ms")
    ax1.set_title("end of speech → first reply audio (client side)")
    ax1.legend(fontsize=8)
    windows = [r["flush_window_s"] for r in load_rows]
    ax2.plot(windows, [r["calls_per_turn"] for r in load_rows], "o-", label="Letta write calls / turn")
    ax2.axhline(0.2, color="green", ls="--", lw=1, label="target 0.2 calls / turn")
    ax2.set_xlabel("flush window (s), 10 sessions")
    ax2.set_ylabel("calls / turn")
    lag = ax2.twinx()
    lag.plot(windows, [r["lag_p95_s"] for r in load_rows], "s-", color="tab:red", label="memory lag p95 (s)")
    lag.plot(windows, [r["lag_p50_s"] for r in load_rows], "s--", color="tab:red", label="memory lag p50 (s)")
    lag.axhline(5, color="tab:red", ls=":", lw=1, label="target lag p95 5 s")
    lag.set_ylabel("s")
    handles = ax2.get_legend_handles_labels()[0] + lag.get_legend_handles_labels()[0]
    ax2.legend(handles, [str(h.get_label()) for h in handles], fontsize=7, loc="upper center")
    ax2.set_title("batching: Letta calls vs. memory lag (Letta turn 5 s)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


async def main_async(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once, before any timing
    workdir = Path(tempfile.mkdtemp(prefix="voice-mem-bench-"))
    utterance = espeak_speech(QUESTION)
    turns_1, turns_10 = (4, 3) if args.quick else (12, 8)
    windows = args.windows or ([2.0] if args.quick else [2.0, 10.0, 30.0])
    processes = []
    (workdir / "letta").mkdir()
    letta = LettaServer(workdir / "letta")
    try:
        voice_llm_proc, voice_llm = start_sim_llm(workdir)
        processes.append(voice_llm_proc)
        letta.start()
        # Calibrate Letta's own overhead with an instant LLM, then make one agent turn take 5 s.
        calib_proc, calib_llm = start_sim_llm(workdir, ttft_ms=0, reply=LETTA_REPLY, name="letta_calib")
        overhead = await letta_turn_seconds(letta, letta_args(letta, calib_llm, workdir))
        calib_proc.terminate()
        letta_proc, letta_llm = start_sim_llm(
            workdir, ttft_ms=max(LETTA_TURN_S - overhead, 0) * 1000, reply=LETTA_REPLY, name="letta_llm"
        )
        processes.append(letta_proc)
        letta_s = await letta_turn_seconds(letta, letta_args(letta, letta_llm, workdir))
        print(f"Letta overhead {overhead:.2f} s; one Letta agent turn now takes {letta_s:.2f} s")

        base = {**SIM_ARGS, "llm_base_url": voice_llm}
        latency_rows: list[dict[str, Any]] = []
        load_rows: list[dict[str, Any]] = []
        run = serve(workdir, "off", base)
        try:
            for sessions, turns in ((1, turns_1), (10, turns_10)):
                result = await run_scenario("memory off", run.ws_url, sessions, turns, utterance)
                latency_rows.append(summarize(result, True))
        finally:
            run.stop()
        for window in windows:
            journal_dir = workdir / f"journal-{window:.0f}"
            journal_dir.mkdir()
            memory = {**base, **letta_args(letta, letta_llm, journal_dir), "memory_flush_interval_s": window}
            run = serve(workdir, f"on-{window:.0f}", memory)
            try:
                if window == windows[0]:  # the default window: the latency comparison
                    result = await run_scenario("memory on (hybrid)", run.ws_url, 1, turns_1, utterance)
                    latency_rows.append(summarize(result, True))
                latency, load = await memory_load(run, "memory on (hybrid)", 10, turns_10, utterance, window)
                load_rows.append(load)
                if window == windows[0]:
                    latency_rows.append(latency)
            finally:
                run.stop()
        (workdir / "full").mkdir()
        full = {**base, **letta_args(letta, letta_llm, workdir / "full"), "use_hybrid_streaming": False}
        run = serve(workdir, "full-letta", full)
        try:
            result = await run_scenario("full Letta", run.ws_url, 1, max(turns_1 // 2, 3), utterance)
            latency_rows.append(summarize(result, True))
        finally:
            run.stop()
    finally:
        letta.stop()
        for process in processes:
            process.terminate()
            process.wait()
    table = print_tables(latency_rows, load_rows, letta_s)
    summary = ratios(latency_rows)
    lines = [f"{k}: {v:.3f}" for k, v in summary.items()]
    print("\n".join(lines))
    (out / "memory.json").write_text(
        json.dumps(
            {"letta_turn_s": letta_s, "latency": latency_rows, "load": load_rows, "ratios": summary}, indent=2
        )
    )
    (out / "memory.md").write_text(table + "\n\n" + "\n".join(lines) + "\n")
    plot(latency_rows, load_rows, out / "memory.png")
    print(f"results in {out}/")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer turns, the default flush window only")
    parser.add_argument("--windows", type=float, nargs="+", help="flush windows to compare (s)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
