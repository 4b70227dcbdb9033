"""How a router replica that is being replaced (an upgrade, a scale-down) lets go of its sessions.

Serve stops sending a draining replica new connections, but a WebSocket session never ends by itself:
left alone it would be cut when the replica stops (under the HAProxy ingress 30 s after the drain
began, with a bare close 1012). Instead each session finishes the turn it is in (the user's utterance,
its transcript and the whole reply) for up to `drain_grace_s`, then gets a `server_restarting` error
event and close code 1012 (Service Restart): the client reconnects and lands on a replica that stays.
A connection that reaches the replica while it drains gets the same notice at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator

from starlette.websockets import WebSocket, WebSocketDisconnect

from serve_app.api.auth import SERVICE_RESTART, close_reason
from serve_app.api.protocol import error_event
from serve_app.api.realtime import RESTART_CODE, RESTART_MESSAGE, RealtimeConnection

log = logging.getLogger(__name__)


class SessionDrain:
    """The replica's open Realtime connections, and their end when the replica is replaced."""

    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self.draining = False
        self._open: set[RealtimeConnection] = set()

    @contextlib.contextmanager
    def track(self, connection: RealtimeConnection) -> Iterator[None]:
        """Hold `connection` while it runs; one accepted after the drain began is ended at once."""
        self._open.add(connection)
        late = None
        if self.draining:
            late = asyncio.ensure_future(connection.end_for_restart(0.0))
        try:
            yield
        finally:
            self._open.discard(connection)
            if late is not None and not late.done():
                late.cancel()

    async def begin(self) -> None:
        """Stop taking sessions; each open one ends after its turn in progress (see the module)."""
        if self.draining:
            return
        self.draining = True
        connections = list(self._open)
        log.info(
            "this router replica is being replaced: %d sessions end after their turn in progress"
            " (%.0f s at most) and are told to reconnect",
            len(connections),
            self.grace_s,
        )
        results = await asyncio.gather(
            *(c.end_for_restart(self.grace_s) for c in connections), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                log.warning("a session did not end cleanly for the restart: %r", result)


async def refuse_while_draining(websocket: WebSocket, offered: list[str]) -> None:
    """A connection that reached a draining replica: the same notice, before any session starts."""
    await websocket.accept(subprotocol="realtime" if "realtime" in offered else None)
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        await websocket.send_json(error_event(RESTART_CODE, RESTART_MESSAGE, kind="server_error"))
        await websocket.close(code=SERVICE_RESTART, reason=close_reason(RESTART_MESSAGE))
