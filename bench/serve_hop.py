"""What one Ray Serve call costs on this machine, from inside a replica as the router makes its stage
calls, with the app's Serve settings (`serve_app/serve_env.py`: gRPC between deployments, replica code
on the replica's own event loop) and access logs off, as in `serve_config.yaml`.

    .venv/bin/python -m bench.serve_hop              # ~1 min; → bench/results/serve_hop.{md,json,png}

A turn's critical path after the user stops speaking crosses three such calls in a row on the Ray path
(the STT finish, the LLM stream's first item, the TTS stream's first chunk), where one process makes
three coroutine calls; what one call costs here is a floor under what the Ray path can add. Measured:
- `unary`: `await handle.method.remote(payload)` of a method that returns it;
- `stream, first item`: a streaming call, until its first item arrives (then cancelled), as the LLM and
  TTS stages are called;
- `by reference`: the same unary call as a Ray actor task (`_by_reference=True`) instead of gRPC;
- `Ray actor`: a plain Ray actor's method (no Serve), what Ray's core takes for a call;
- `in process`: the same coroutine awaited directly, for scale.
Payloads of 0, 3.2 KB (100 ms of 16 kHz audio, an STT chunk) and 32 KB. Calls are 20 ms apart, as a
session's are, one at a time, on a private local Ray without its dashboard.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

from tqdm import tqdm

from bench.latency import percentile
from serve_app.serve_env import SERVE_ENV
from testkit.serve_cluster import ROOT, free_port

PAYLOADS = (0, 3_200, 32_000)
KINDS = ("unary", "stream, first item", "by reference", "Ray actor", "in process")
GAP_S = 0.02


class Echo:
    """The called side: returns or streams back what it is given."""

    async def unary(self, payload: bytes) -> bytes:
        return payload

    async def stream(self, payload: bytes) -> AsyncGenerator[bytes, None]:
        yield payload
        await asyncio.sleep(0.001)
        yield payload


class Caller:
    """The calling side, a replica like the router: times `calls` calls of one kind."""

    def __init__(self, echo: Any) -> None:
        import ray

        self._actor = ray.remote(Echo).options(num_cpus=0).remote()
        self._echo = echo
        self._stream = echo.options(stream=True)
        self._by_reference = echo.options(_by_reference=True)
        self._local = Echo()

    async def measure(self, kind: str, size: int, calls: int) -> list[float]:
        payload = b"x" * size
        times = []
        for _ in range(calls):
            started = time.perf_counter()
            if kind == "unary":
                await self._echo.unary.remote(payload)
            elif kind == "by reference":
                await self._by_reference.unary.remote(payload)
            elif kind == "Ray actor":
                await self._actor.unary.remote(payload)
            elif kind == "stream, first item":
                response = self._stream.stream.remote(payload)
                async for _ in response:
                    break
                response.cancel()
            else:
                await self._local.unary(payload)
            times.append(1000 * (time.perf_counter() - started))
            await asyncio.sleep(GAP_S)
        return times


def run(calls: int) -> list[dict[str, Any]]:
    import ray
    from ray import serve

    os.environ.update({k: v for k, v in SERVE_ENV.items() if not k.startswith("RAY_SERVE_HAPROXY")})
    os.environ["RAY_SERVE_ENABLE_HA_PROXY"] = "0"  # no HTTP here: handle calls only
    temp = tempfile.mkdtemp(prefix="rt-hop-")
    ray.init(include_dashboard=False, _temp_dir=temp, logging_level="WARNING")
    rows: list[dict[str, Any]] = []
    try:
        serve.start(http_options={"port": free_port()}, logging_config={"enable_access_log": False})
        echo = serve.deployment(Echo).bind()
        serve.run(
            serve.deployment(Caller).bind(echo),
            name="hop",
            route_prefix=None,
            logging_config={"enable_access_log": False},
        )

        async def measure_all() -> None:
            handle = serve.get_app_handle("hop")
            for kind in KINDS:  # warm every path first
                await handle.measure.remote(kind, 0, 20)
            with tqdm(total=len(KINDS) * len(PAYLOADS), desc="call kinds", unit="kind") as bar:
                for size in PAYLOADS:
                    for kind in KINDS:
                        times = await handle.measure.remote(kind, size, calls)
                        rows.append(
                            {
                                "kind": kind,
                                "payload_bytes": size,
                                "calls": calls,
                                "p50_ms": statistics.median(times),
                                "p95_ms": percentile(times, 95),
                            }
                        )
                        bar.update()

        asyncio.run(measure_all())
    finally:
        serve.shutdown()
        ray.shutdown()
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| call | payload | p50 (ms) | p95 (ms) |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['kind']} | {r['payload_bytes']} B | {r['p50_ms']:.2f} | {r['p95_ms']:.2f} |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    width = 0.8 / len(PAYLOADS)
    for n, size in enumerate(PAYLOADS):
        picked = [r for r in rows if r["payload_bytes"] == size]
        xs = [k + n * width for k in range(len(picked))]
        ax.bar(xs, [r["p50_ms"] for r in picked], width, label=f"{size} B p50")
        ax.scatter(xs, [r["p95_ms"] for r in picked], color="black", s=10, zorder=3)
    ax.set_xticks([k + width for k in range(len(KINDS))], KINDS)
    ax.set_ylabel("ms per call (dots: p95)")
    ax.set_title("one Ray Serve call from a replica, this machine")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=200, help="calls per kind and payload")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = run(args.calls)
    text = table(rows)
    print(text)
    (out / "serve_hop.md").write_text(text + "\n")
    (out / "serve_hop.json").write_text(json.dumps(rows, indent=2))
    plot(rows, out / "serve_hop.png")
    print(f"results in {out}/serve_hop.*")


if __name__ == "__main__":
    main()
