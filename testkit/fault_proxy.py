"""A TCP proxy in front of an HTTP provider (e.g. `testkit.sim_openai_server`) that injects faults.

Each new connection takes the next `Fault` of `plan` (then `default`): pass it through, reset it,
answer an HTTP error status (with an optional Retry-After), accept the request and never answer, or
pass the response through until some server-sent events have gone by and then go silent. `refuse()`
stops listening (the OS then refuses connections) and `accept()` listens again on the same port.

    sim = start_sim_openai_server(SimOpenAIConfig(reply="Hello there."))
    proxy = start_fault_proxy(sim.base_url)
    proxy.plan.extend([Fault("status", status=503), Fault("pass")])
    client = AsyncOpenAI(api_key="test", base_url=proxy.base_url)
    ...
    proxy.stop()

Faulty answers close the connection, so a client's retry arrives on a new one and takes the next fault.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit

REASONS = {
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


@dataclass(frozen=True)
class Fault:
    kind: Literal["pass", "reset", "status", "hang", "stall"] = "pass"
    status: int = 500  # "status": the HTTP status answered
    retry_after: float | None = None  # "status": sent as a Retry-After header (seconds)
    after_events: int = 1  # "stall": complete server-sent events passed through before the silence


@dataclass
class FaultProxy:
    upstream: tuple[str, int]
    port: int
    path: str  # the upstream base URL's path ("/v1"), kept in `base_url`
    plan: deque[Fault] = field(default_factory=deque)
    default: Fault = field(default_factory=Fault)
    connections: int = 0  # connections accepted so far
    _loop: asyncio.AbstractEventLoop | None = None
    _server: asyncio.Server | None = None
    _thread: threading.Thread | None = None
    _handlers: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path}"

    def refuse(self) -> None:
        """Stop listening: new connections are refused; open ones are dropped."""
        self._call(self._close_all())

    def accept(self) -> None:
        """Listen again on the same port."""
        self._call(self._listen())

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        self._call(self._close_all())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    def _call(self, coro: object) -> None:
        assert self._loop is not None
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=5)  # type: ignore[arg-type]

    async def _listen(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(
                self._handle, "127.0.0.1", self.port, reuse_address=True
            )

    async def _close_all(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self.connections += 1
        fault = self.plan.popleft() if self.plan else self.default
        try:
            if fault.kind == "reset":
                sock = writer.get_extra_info("socket")
                # Linger 0: close sends RST, as a crashed server's kernel would.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            elif fault.kind == "status":
                await _read_request(reader)
                writer.write(_error_response(fault))
                await writer.drain()
            elif fault.kind == "hang":
                await _read_request(reader)
                while await reader.read(65536):  # until the client gives up and closes
                    pass
            else:
                await self._forward(reader, writer, fault)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._handlers.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _forward(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, fault: Fault
    ) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)

        async def upstream() -> None:
            while data := await reader.read(65536):
                up_writer.write(data)
                await up_writer.drain()
            up_writer.close()

        sending = asyncio.create_task(upstream())
        events = 0
        try:
            while data := await up_reader.read(65536):
                if fault.kind == "stall":
                    # Pass whole events until the quota is reached, then keep the connection silent.
                    cut = 0
                    while events < fault.after_events and (end := data.find(b"\n\n", cut)) != -1:
                        events += 1
                        cut = end + 2
                    if events >= fault.after_events:
                        writer.write(data[:cut])
                        await writer.drain()
                        await sending  # silent until the client gives up and closes
                        return
                writer.write(data)
                await writer.drain()
        finally:
            sending.cancel()
            up_writer.close()


async def _read_request(reader: asyncio.StreamReader) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    if length:
        await reader.readexactly(length)


def _error_response(fault: Fault) -> bytes:
    body = json.dumps(
        {"error": {"message": "injected fault", "type": "server_error", "param": None, "code": None}}
    ).encode()
    headers = [
        f"HTTP/1.1 {fault.status} {REASONS.get(fault.status, 'Error')}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    if fault.retry_after is not None:
        headers.append(f"Retry-After: {fault.retry_after:g}")
    return ("\r\n".join(headers) + "\r\n\r\n").encode() + body


def start_fault_proxy(upstream_base_url: str, *faults: Fault) -> FaultProxy:
    """Listen on a free 127.0.0.1 port (its own thread and event loop), forwarding to the upstream
    base URL's host and port; `faults` are the plan for the first connections."""
    url = urlsplit(upstream_base_url)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proxy = FaultProxy(
        upstream=(url.hostname or "127.0.0.1", url.port or 80),
        port=port,
        path=url.path.rstrip("/"),
        plan=deque(faults),
    )
    loop = asyncio.new_event_loop()
    proxy._loop = loop
    proxy._thread = threading.Thread(target=loop.run_forever, daemon=True)
    proxy._thread.start()
    proxy.accept()
    return proxy
