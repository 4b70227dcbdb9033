"""Hostile but fair clients against the served app, and what everyone else sees meanwhile.

    .venv/bin/python -m bench.hostile        # ~6 min → bench/results/hostile.{md,json}

`serve run serve_config.yaml` on a private Ray cluster (the simulated providers of bench.load), then one
probe after another. During each probe a bystander measures what an innocent user sees: `/healthz`
round trips every 100 ms and a typed turn on its own session (request → `response.done`). Per probe:
the bystander's worst health check and its turn time, what the hostile client was answered, and the
routers' RSS before, during and after.

- `audio-blast`: one session sends ten 1 MiB `input_audio_buffer.append` events back to back (218 s of
  audio in well under a second).
- `push-to-talk-flood`: a session without turn detection appends audio as fast as it is accepted for
  10 s, never committing.
- `slow-bodies`: 300 REST requests declaring a 100 kB body and sending one byte every 5 s.
- `slow-headers`: 1000 connections sending a request's headers one byte every 5 s (slowloris); what
  they were answered, and after how long.
- `idle-sockets`: 200 WebSockets opened and left silent for 20 s, then closed.
- `stalled-reader`: a session asks for a long spoken reply and never reads a byte of it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import socket
import statistics
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import httpx
import websockets
from tqdm import tqdm

from bench.latency import start_sim_llm
from bench.load import Target, memory_mb, process_label, start_target
from testkit.serve_cluster import ROOT

ONE_MIB_APPEND = json.dumps(
    {"type": "input_audio_buffer.append", "audio": base64.b64encode(b"\x01\x00" * (512 * 1024)).decode()}
)


def typed_message(text: str) -> list[str]:
    """A typed user turn: the item, then the request for a response."""
    item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
    return [
        json.dumps({"type": "conversation.item.create", "item": item}),
        json.dumps({"type": "response.create"}),
    ]


def router_rss_mb(target: Target) -> float:
    pids = set()
    for pid in target.pids():
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if process_label(command) == "Router":
            pids.add(pid)
    return memory_mb(pids)[0]


class Bystander:
    """An innocent client: health checks every 100 ms, and one typed turn on its own session."""

    def __init__(self, base_url: str, ws_url: str) -> None:
        self.base_url = base_url
        self.ws_url = ws_url
        self.health_ms: list[float] = []
        self.health_failures = 0
        self.turn_ms: float | None = None
        self.turn_error: str | None = None

    async def watch_health(self, stop: asyncio.Event) -> None:
        async with httpx.AsyncClient(base_url=self.base_url, timeout=30) as http:
            while not stop.is_set():
                started = time.perf_counter()
                try:
                    ok = (await http.get("/healthz")).status_code == 200
                except httpx.HTTPError:
                    ok = False
                self.health_ms.append((time.perf_counter() - started) * 1000)
                self.health_failures += not ok
                await asyncio.sleep(0.1)

    async def typed_turn(self) -> None:
        try:
            async with websockets.connect(f"{self.ws_url}/realtime", open_timeout=30) as ws:
                await ws.recv()
                started = time.perf_counter()
                for message in typed_message("hi"):
                    await ws.send(message)
                async with asyncio.timeout(60):
                    while (event := json.loads(await ws.recv()))["type"] != "response.done":
                        pass
                self.turn_ms = (time.perf_counter() - started) * 1000
                if event["response"]["status"] != "completed":
                    self.turn_error = event["response"]["status"]
        except Exception as exc:
            self.turn_error = type(exc).__name__

    def summary(self) -> dict[str, Any]:
        return {
            "health_p50_ms": round(statistics.median(self.health_ms), 1) if self.health_ms else None,
            "health_max_ms": round(max(self.health_ms), 1) if self.health_ms else None,
            "health_failures": self.health_failures,
            "bystander_turn_ms": round(self.turn_ms) if self.turn_ms is not None else None,
            "bystander_turn_error": self.turn_error,
        }


# --------------------------------------------------------------------------------------------- probes


async def error_codes(ws: Any, seconds: float) -> list[str]:
    codes: list[str] = []
    with contextlib.suppress(TimeoutError, websockets.ConnectionClosed):
        async with asyncio.timeout(seconds):
            while True:
                event = json.loads(await ws.recv())
                if event["type"] == "error":
                    codes.append(event["error"]["code"])
    return codes


def counted(codes: list[str]) -> str:
    return ", ".join(f"{codes.count(c)}× {c}" for c in sorted(set(codes))) or "nothing"


async def audio_blast(target: Target) -> str:
    async with websockets.connect(f"{target.ws_url}/realtime", max_size=None) as ws:
        await ws.recv()
        for _ in range(10):
            await ws.send(ONE_MIB_APPEND)
        return counted(await error_codes(ws, 5))


async def push_to_talk_flood(target: Target) -> str:
    async with websockets.connect(f"{target.ws_url}/realtime", max_size=None) as ws:
        await ws.recv()
        no_vad = {"audio": {"input": {"turn_detection": None}}}
        await ws.send(json.dumps({"type": "session.update", "session": no_vad}))
        collector = asyncio.create_task(error_codes(ws, 12))
        ends = time.monotonic() + 10
        while time.monotonic() < ends:
            await ws.send(ONE_MIB_APPEND)
            await asyncio.sleep(0.05)
        return counted(await collector)


async def trickle(target: Target, count: int, head: bytes, byte: bytes, seconds: float) -> str:
    """`count` connections that send `head`, then one `byte` every 5 s for `seconds`: what each was
    answered (its status line, or a close), and how long after connecting the answers came."""
    host, port = target.ws_url.removeprefix("ws://").split("/")[0].split(":")
    statuses: list[str] = []
    answered_after: list[float] = []

    async def one() -> None:
        try:
            reader, writer = await asyncio.open_connection(host, int(port))
        except OSError:
            statuses.append("refused")
            return
        started = time.monotonic()
        writer.write(head)
        try:
            async with asyncio.timeout(seconds):
                while True:
                    writer.write(byte)
                    await writer.drain()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(5):
                            line = await reader.readline()
                            answered_after.append(time.monotonic() - started)
                            statuses.append(line.decode().split(" ")[1] if line else "closed")
                            return
        except TimeoutError:
            statuses.append(f"still open after {seconds:.0f} s")
        except OSError:
            answered_after.append(time.monotonic() - started)
            statuses.append("closed")
        finally:
            writer.close()

    await asyncio.gather(*(one() for _ in range(count)))
    answers = counted([f"HTTP {s}" if s.isdigit() else s for s in statuses])
    if answered_after:
        answers += f" (after {min(answered_after):.1f}–{max(answered_after):.1f} s)"
    return answers


async def slow_bodies(target: Target, count: int = 300) -> str:
    """REST requests whose 100 kB body comes a byte at a time."""
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100000\r\n\r\n"
    )
    return await trickle(target, count, head, b" ", 90.0)


async def slow_headers(target: Target, count: int = 1000, seconds: float = 90.0) -> str:
    """Connections that never finish their request headers."""
    return await trickle(target, count, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ", b"a", seconds)


async def idle_sockets(target: Target, count: int = 200) -> str:
    opened: list[Any] = []
    answers: list[str] = []
    for _ in range(count):
        try:
            ws = await websockets.connect(f"{target.ws_url}/realtime", open_timeout=10)
        except Exception as exc:
            answers.append(type(exc).__name__)
            continue
        first = json.loads(await ws.recv())
        answers.append(first["type"] if first["type"] != "error" else first["error"]["code"])
        opened.append(ws)
    await asyncio.sleep(20)
    for ws in opened:
        await ws.close()
    return counted(answers)


async def stalled_reader(target: Target) -> str:
    """Ask for a long reply with a tiny receive buffer, then never read."""
    host, port = target.ws_url.removeprefix("ws://").split("/")[0].split(":")
    sock = socket.create_connection((host, int(port)))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    started = time.monotonic()
    async with websockets.connect(f"{target.ws_url}/realtime", sock=sock, max_queue=1) as ws:
        for message in typed_message("tell a story"):
            await ws.send(message)
        await asyncio.sleep(60)  # never read
        try:
            await ws.send(json.dumps({"type": "response.cancel"}))
            await asyncio.wait_for(ws.ping(), 5)
            return "still connected after 60 s"
        except Exception:
            return f"disconnected by the server within {time.monotonic() - started:.0f} s"


PROBES: dict[str, Callable[[Target], Coroutine[Any, Any, str]]] = {
    "audio-blast": audio_blast,
    "push-to-talk-flood": push_to_talk_flood,
    "slow-bodies": slow_bodies,
    "slow-headers": slow_headers,
    "idle-sockets": idle_sockets,
    "stalled-reader": stalled_reader,
}


async def run_probe(name: str, target: Target, base_url: str) -> dict[str, Any]:
    bystander = Bystander(base_url, target.ws_url)
    stop = asyncio.Event()
    rss_before = router_rss_mb(target)
    watcher = asyncio.create_task(bystander.watch_health(stop))
    probe = asyncio.create_task(PROBES[name](target))
    await asyncio.sleep(0.5)  # the hostile client is under way
    await bystander.typed_turn()
    rss_during = router_rss_mb(target)
    answered = await probe
    await asyncio.sleep(2)
    stop.set()
    await watcher
    return {
        "probe": name,
        "hostile client was answered": answered,
        **bystander.summary(),
        "router_rss_mb": f"{rss_before:.0f} → {rss_during:.0f} → {router_rss_mb(target):.0f}",
    }


def table(rows: list[dict[str, Any]]) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(row[k]) for k in keys) + " |" for row in rows]
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once, before any timing
    workdir = Path(tempfile.mkdtemp(prefix="voice-hostile-"))
    sim_llm, llm_base = start_sim_llm(workdir)
    try:
        target = start_target("ray-serve", llm_base, workdir)
        base_url = target.ws_url.replace("ws://", "http://").removesuffix("/v1")
        rows = []
        try:
            for name in tqdm(args.probes, desc="probes", unit="probe"):
                rows.append(await run_probe(name, target, base_url))
                print(table([rows[-1]]).splitlines()[-1], flush=True)
        finally:
            target.stop()
    finally:
        sim_llm.terminate()
        sim_llm.wait()
    date = time.strftime("%Y-%m-%d")
    report = f"# Hostile clients against `serve run serve_config.yaml` ({date})\n\n{table(rows)}\n"
    (out / "hostile.md").write_text(report)
    (out / "hostile.json").write_text(json.dumps(rows, indent=2))
    print(report)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--probes", nargs="+", default=list(PROBES), choices=list(PROBES))
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
