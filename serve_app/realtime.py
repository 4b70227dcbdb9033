"""One `WS /v1/realtime` connection: client events → VoiceSession commands, session events → client."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from actors.events import SessionEvent
from actors.metrics import ERRORS
from actors.session import VoiceSession
from serve_app.auth import POLICY_VIOLATION
from serve_app.protocol import (
    ProtocolError,
    ProtocolLimits,
    apply_session_update,
    audio_of_append,
    error_event,
    parse_client_event,
    server_events,
    session_created,
    text_of_item,
)

log = logging.getLogger(__name__)

REVOCATION_CHECK_S = 2.0

SessionFactory = Callable[[Callable[[SessionEvent], Any]], VoiceSession]


class RealtimeConnection:
    def __init__(
        self, websocket: WebSocket, make_session: SessionFactory, limits: ProtocolLimits, model: str
    ) -> None:
        self.websocket = websocket
        self.limits = limits
        self.model = model
        self._send_lock = asyncio.Lock()
        self.session = make_session(self._emit)

    async def _send(self, event: dict[str, Any]) -> None:
        if event["type"] == "error":
            ERRORS.labels(code=event["error"]["code"]).inc()
        async with self._send_lock:
            # A client that is gone raises here; the session is being closed anyway.
            with contextlib.suppress(WebSocketDisconnect, RuntimeError):
                await self.websocket.send_text(json.dumps(event))

    async def _emit(self, event: SessionEvent) -> None:
        for wire_event in server_events(event, audio_output=self.session.options.output_audio):
            await self._send(wire_event)

    async def run(self, still_authorized: Callable[[], Awaitable[bool]] | None = None) -> None:
        """Serve the connection until the client leaves, or `still_authorized` says its credential was
        revoked (checked every few seconds)."""
        await self._send(session_created(self.session.session_id, self.session.options, self.model))
        watcher = None if still_authorized is None else asyncio.create_task(self._watch(still_authorized))
        try:
            while True:
                message = await self.websocket.receive()
                if message["type"] == "websocket.disconnect":
                    break
                raw = message.get("text")
                if raw is None:
                    raw = message.get("bytes") or b""
                try:
                    await self._handle(raw)
                except ProtocolError as exc:
                    await self._send(error_event(exc.code, exc.message, exc.event_id, exc.param))
        except WebSocketDisconnect:
            pass
        finally:
            if watcher is not None:
                watcher.cancel()
            await self.session.close()

    async def _watch(self, still_authorized: Callable[[], Awaitable[bool]]) -> None:
        # Polled: the list changes in other processes (serve_app.revocations).
        while True:
            await asyncio.sleep(REVOCATION_CHECK_S)
            if not await still_authorized():
                break
        message = "the client secret has been revoked"
        await self._send(error_event("revoked_client_secret", message))
        with contextlib.suppress(WebSocketDisconnect, RuntimeError):
            await self.websocket.close(code=POLICY_VIOLATION, reason=message)

    async def _handle(self, raw: str | bytes) -> None:
        event = parse_client_event(raw, self.limits)
        session = self.session
        match event.type:
            case "input_audio_buffer.append":
                await session.append_audio(audio_of_append(event, self.limits))
            case "input_audio_buffer.commit":
                await session.commit()
            case "input_audio_buffer.clear":
                await session.clear_audio()
            case "conversation.item.create":
                await session.add_user_text(text_of_item(event, self.limits))
            case "response.create":
                await session.create_response()
            case "response.cancel":
                await session.cancel_response()
            case "session.update":
                session.update_options(apply_session_update(session.options, event, self.limits))
                await self._send(
                    session_created(session.session_id, session.options, self.model, updated=True)
                )
