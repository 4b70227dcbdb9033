"""What the built-in memory tools cost a tool call, against a real Letta server, with the memory service
in process (on Ray, a call to the memory actor adds its hop, ~3 ms).

    .venv/bin/python -m bench.memory_tools             # 40 calls of each → bench/results/memory_tools.*
    .venv/bin/python -m bench.memory_tools --calls 10  # a smoke run

A real Letta 0.16.8 server (its own Postgres) with embeddings from the simulated OpenAI-compatible
server (no model time: what is measured is Letta, the journal and this code). Rows:
- `remember`: the call, from the tool to the fact on disk in the journal (what the model waits for);
- `remember → in Letta`: from the call to the fact confirmed in the user's archival memory;
- `search_memory`: archival + conversation search of a user holding `--calls` facts and 20 turns;
- `search_memory, Letta down`: until the error the model reads.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

from tqdm import tqdm

from actors.config import Settings
from actors.memory.service import MemoryService
from actors.memory.tools import build_memory_tools
from actors.tools.base import ToolContext
from actors.tools.toolbox import Toolbox
from testkit.fakes import finished_turn
from testkit.letta_server import LettaServer, memory_args
from testkit.sim_openai_server import SimOpenAIConfig, start_sim_openai_server

RESULTS = Path(__file__).resolve().parent / "results"


def call(name: str, arguments: dict[str, str]) -> dict:
    return {
        "id": "call_bench",
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(arguments)},
    }


def row(name: str, samples: list[float]) -> dict[str, float | str | int]:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"row": name, "n": len(samples), "p50_ms": statistics.median(samples), "p95_ms": p95}


async def measure(letta: LettaServer, sim_url: str, journal: Path, calls: int) -> list[dict]:
    settings = Settings(
        **memory_args(letta.base_url, sim_url, "sim-llm", journal), memory_flush_interval_s=0.5
    )
    service = await MemoryService.open(settings)
    toolbox = Toolbox(build_memory_tools(service))
    context = ToolContext(user_id=f"bench{time.time_ns()}", session_id="sess_bench")
    await service.letta.agent_id(context.user_id)  # agent creation is a first call's cost, not a tool's
    for n in range(20):
        await service.submit(finished_turn(n, context.user_id, user_text=f"Turn {n}: I like topic {n}."))
    await service.session_ended(context.user_id)

    remembered, delivered = [], []
    for n in tqdm(range(calls), desc="remember", unit="call"):
        started = time.perf_counter()
        result = await toolbox.run(
            call("remember", {"fact": f"Fact {n}: the user's item {n} is blue."}), context
        )
        remembered.append((time.perf_counter() - started) * 1000)
        assert result.outcome == "ok", result.output
        while service.journal.fact_count():  # noqa: ASYNC110 - polls the journal on disk
            await asyncio.sleep(0.005)
        delivered.append((time.perf_counter() - started) * 1000)
    while service.pending():  # noqa: ASYNC110 - the turns reach Letta too
        await asyncio.sleep(0.05)

    searched = []
    for n in tqdm(range(calls), desc="search_memory", unit="call"):
        started = time.perf_counter()
        result = await toolbox.run(call("search_memory", {"query": f"item {n} topic"}), context)
        searched.append((time.perf_counter() - started) * 1000)
        assert result.outcome == "ok", result.output

    letta.stop_letta()
    down = []
    try:
        for _ in tqdm(range(min(calls, 10)), desc="search_memory, Letta down", unit="call"):
            started = time.perf_counter()
            result = await toolbox.run(call("search_memory", {"query": "item"}), context)
            down.append((time.perf_counter() - started) * 1000)
            assert result.outcome == "tool_error", result.output
    finally:
        letta.restart_letta()
    await service.close()
    return [
        row("remember", remembered),
        row("remember → in Letta", delivered),
        row("search_memory", searched),
        row("search_memory, Letta down", down),
    ]


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    x = range(len(rows))
    ax.bar([i - 0.2 for i in x], [r["p50_ms"] for r in rows], 0.4, label="p50")
    ax.bar([i + 0.2 for i in x], [r["p95_ms"] for r in rows], 0.4, label="p95")
    ax.set_xticks(list(x), [str(r["row"]) for r in rows], fontsize=8)
    ax.set_yscale("log")  # from a journal write (under a millisecond) to Letta's searches (~100 ms)
    ax.set_ylabel("ms")
    ax.set_title("memory tools against a real Letta: time per call")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=40)
    args = parser.parse_args()
    sim = start_sim_openai_server(SimOpenAIConfig(reply="Noted."))
    workdir = Path(tempfile.mkdtemp(prefix="bench-memory-tools-"))
    letta = LettaServer(workdir / "letta")
    try:
        letta.start()
        rows = asyncio.run(measure(letta, sim.base_url, workdir / "journal.db", args.calls))
    finally:
        letta.stop()
        sim.stop()
    lines = ["| call | n | p50 ms | p95 ms |", "|---|---|---|---|"]
    lines += [f"| {r['row']} | {r['n']} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} |" for r in rows]
    table = "\n".join(lines)
    print(table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "memory_tools.md").write_text(table + "\n")
    (RESULTS / "memory_tools.json").write_text(json.dumps(rows, indent=2) + "\n")
    plot(rows, RESULTS / "memory_tools.png")


if __name__ == "__main__":
    main()
