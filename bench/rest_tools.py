"""What tools cost a REST chat turn: the time to the reply's first word with no tools, with tools offered
and not called, and with a server tool called, side by side in one run.

    .venv/bin/python -m bench.rest_tools            # 40 requests per scenario (~1 min)
    .venv/bin/python -m bench.rest_tools --quick    # 10

The router app runs in this process under uvicorn with one server tool that answers in 50 ms; the LLM is
the simulated OpenAI-compatible server in its own process at TTFT 300 ms and 50 tok/s (as in
`bench.latency`), which calls a tool when the user's message says `call:NAME`. The official `openai`
SDK streams each request and times its first content delta.

Scenarios:
- `no tools`: the baseline;
- `client tools, not called` / `server tools, not called`: tools offered (the client's, or the
  server's with `server_tools`), the model answers in words: the cost of offering them;
- `server tool called`: the model calls the 50 ms tool, the server runs it and asks again, and the answer
  streams. Expected above the baseline: the call's pieces (one 20 ms gap between its two chunks), the tool
  (50 ms) and the second round's TTFT (300 ms); `overhead` is what the server adds beyond that.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from openai import AsyncOpenAI
from tqdm import tqdm

from actors.config import Settings
from actors.llm.openai_engine import OpenAILLMEngine
from actors.llm.stage import LLMStage
from actors.stt.simulated import SimulatedSTTEngine
from actors.tools.base import ToolContext, ToolDefinition
from actors.tools.toolbox import Toolbox
from actors.tts.simulated import SimulatedTTSEngine
from actors.tts.stage import TTSStage
from bench.latency import TOKENS_PER_S, TTFT_MS, percentile, start_sim_llm
from serve_app.api.deps import RouterDeps
from serve_app.api.router_app import build_router_app
from testkit.fakes import served

TOOL_MS = 50.0
# The call's two chunks (its head, then "{}") come one token gap apart.
CALL_STREAM_MS = 1000 / TOKENS_PER_S
WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}},
}


class Lookup:
    """A server tool that answers in `TOOL_MS`."""

    definition = ToolDefinition(name="lookup", description="Look something up.")

    async def call(self, arguments: dict[str, Any], context: ToolContext) -> str:
        await asyncio.sleep(TOOL_MS / 1000)
        return "found"


SCENARIOS: list[tuple[str, str, dict[str, Any], float]] = [
    # name, user message, extra request fields, what the providers add above the baseline (ms)
    ("no tools", "Hello there.", {}, 0.0),
    ("client tools, not called", "Hello there.", {"tools": [WEATHER]}, 0.0),
    ("server tools, not called", "Hello there.", {"extra_body": {"server_tools": True}}, 0.0),
    (
        "server tool called",
        "call:lookup",
        {"extra_body": {"server_tools": True}},
        CALL_STREAM_MS + TOOL_MS + TTFT_MS,
    ),
]


async def first_word_ms(client: AsyncOpenAI, text: str, extra: dict[str, Any]) -> float:
    started = time.perf_counter()
    stream = await client.chat.completions.create(
        model="sim", messages=[{"role": "user", "content": text}], stream=True, **extra
    )
    first = float("nan")
    async for chunk in stream:
        if first != first and chunk.choices and chunk.choices[0].delta.content:
            first = (time.perf_counter() - started) * 1000
    return first


def print_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| scenario | requests | first word p50 (ms) | p95 | above no tools p50 | providers add"
        " | overhead p50 |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['scenario']} | {r['requests']} | {r['p50']:.1f} | {r['p95']:.1f} | {r['above']:.1f}"
            f" | {r['providers']:.0f} | {r['overhead']:.1f} |"
        )
    table = "\n".join(lines)
    print(table)
    return table


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    x = range(len(rows))
    ax.bar([i - 0.2 for i in x], [r["p50"] for r in rows], 0.4, label="p50")
    ax.bar([i + 0.2 for i in x], [r["p95"] for r in rows], 0.4, label="p95")
    base = rows[0]["p50"]
    ax.plot(list(x), [base + r["providers"] for r in rows], "k_", ms=30, label="no tools p50 + providers")
    ax.set_xticks(list(x), [r["scenario"] for r in rows], fontsize=8)
    ax.set_ylabel("ms")
    ax.set_title("REST chat: request → first word of the reply (streamed)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


async def main_async(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once, before any timing
    sim, base_url = start_sim_llm(Path(tempfile.mkdtemp(prefix="voice-bench-")))
    try:
        settings = Settings(
            stt_engine="simulated", llm_engine="openai", llm_base_url=base_url, tts_engine="simulated"
        ).resolved()
        app = build_router_app(
            RouterDeps(
                settings=settings,
                stt=SimulatedSTTEngine("hello", finalize_delay_ms=1),
                llm=LLMStage(OpenAILLMEngine(base_url=base_url, model="sim")),
                tts=TTSStage(SimulatedTTSEngine(ttfb_ms=1, realtime_factor=1000)),
                tools=Toolbox([Lookup()]),
            )
        )
        times: dict[str, list[float]] = {name: [] for name, *_ in SCENARIOS}
        async with served(app) as url:
            client = AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
            for _name, text, extra, _ in SCENARIOS:  # one warm-up each: connections, first imports
                await first_word_ms(client, text, extra)
            # Interleaved, so a slow patch of this shared machine hits every scenario alike.
            with tqdm(total=args.requests * len(SCENARIOS), unit="request", desc="rest tools") as bar:
                for _ in range(args.requests):
                    for name, text, extra, _ in SCENARIOS:
                        times[name].append(await first_word_ms(client, text, extra))
                        bar.update()
            await client.close()
    finally:
        sim.terminate()
        sim.wait()
    base = statistics.median(times["no tools"])
    rows = []
    for name, _, _, providers in SCENARIOS:
        p50 = statistics.median(times[name])
        rows.append(
            {
                "scenario": name,
                "requests": len(times[name]),
                "p50": p50,
                "p95": percentile(times[name], 95),
                "above": p50 - base,
                "providers": providers,
                "overhead": p50 - base - providers,
            }
        )
    table = print_table(rows)
    (out / "rest_tools.json").write_text(json.dumps(rows, indent=2))
    (out / "rest_tools.md").write_text(table + "\n")
    plot(rows, out / "rest_tools.png")
    print(f"results in {out}/")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=40, help="requests per scenario")
    parser.add_argument("--quick", action="store_true", help="10 requests per scenario")
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()
    if args.quick:
        args.requests = 10
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
