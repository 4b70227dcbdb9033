"""One `WS /v1/realtime` connection: client events → VoiceSession commands, session events → client."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from actors.audio.pcm import PCM_SAMPLE_WIDTH
from actors.config import Settings
from actors.conversation.events import SessionEvent
from actors.conversation.items import ItemError
from actors.conversation.metrics import ERRORS
from actors.conversation.session import VoiceSession
from actors.tasks import cancel_and_wait
from serve_app.api.admission import TokenBucket
from serve_app.api.auth import POLICY_VIOLATION, SERVICE_RESTART, close_reason
from serve_app.api.protocol import (
    ClientEvent,
    FunctionCall,
    FunctionCallOutput,
    ItemTruncate,
    ProtocolError,
    ProtocolLimits,
    apply_session_update,
    audio_of_append,
    created_item,
    error_event,
    item_deleted,
    item_ref,
    item_retrieved,
    item_truncated,
    parse_client_event,
    server_events,
    session_created,
)

log = logging.getLogger(__name__)

REVOCATION_CHECK_S = 2.0
TURN_CHECK_S = 0.05  # how often a draining connection looks whether its turn has ended
RESTART_CODE = "server_restarting"
RESTART_MESSAGE = (
    "this server is being replaced (an upgrade or a scale-down): reconnect to continue the conversation"
)

SessionFactory = Callable[[Callable[[SessionEvent], Any]], VoiceSession]


@dataclass(frozen=True)
class ConnectionLimits:
    audio_max_speed: float = 1.2  # input audio accepted at this multiple of real time ...
    audio_burst_s: float = 10.0  # ... once this much audio has arrived ahead of it
    idle_timeout_s: float = 300.0  # no client event and no reply in progress
    max_session_s: float = 3600.0
    send_timeout_s: float = 10.0  # a client that reads nothing for this long is disconnected

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionLimits:
        return cls(
            audio_max_speed=settings.audio_max_speed,
            audio_burst_s=settings.audio_burst_s,
            idle_timeout_s=settings.idle_timeout_s,
            max_session_s=settings.max_session_s,
            send_timeout_s=settings.send_timeout_s,
        )


class RealtimeConnection:
    """One accepted `WS /v1/realtime` connection: client events in, session events out, with the
    connection's limits (audio rate, idle and total time, a client that stops reading)."""

    def __init__(
        self,
        websocket: WebSocket,
        make_session: SessionFactory,
        limits: ProtocolLimits,
        model: str,
        guard: ConnectionLimits | None = None,
    ) -> None:
        self.websocket = websocket
        self.limits = limits
        self.model = model
        self.guard = guard or ConnectionLimits()
        # Seconds of input audio: real time (times a little) after a burst allowance.
        self._audio_budget = TokenBucket(self.guard.audio_max_speed, self.guard.audio_burst_s)
        self._send_lock = asyncio.Lock()
        self._reader: asyncio.Task[Any] | None = None
        self._client_stalled = False
        self._ended_by_server = False  # told to reconnect: the reader stops without an error
        self.session = make_session(self._emit)

    async def _send(self, event: dict[str, Any]) -> None:
        if event["type"] == "error":
            ERRORS.labels(code=event["error"]["code"]).inc()
        async with self._send_lock:
            if self._client_stalled:
                return
            try:
                # Backpressure from a client that stopped reading lands here: wait a while, then drop
                # the client rather than hold its session (and buffers) forever.
                async with asyncio.timeout(self.guard.send_timeout_s):
                    await self.websocket.send_text(json.dumps(event))
            except TimeoutError:
                log.warning(
                    "session %s: the client read nothing for %.0f s: disconnecting",
                    self.session.session_id,
                    self.guard.send_timeout_s,
                )
                self._client_stalled = True
                if self._reader is not None:
                    self._reader.cancel()
            except (WebSocketDisconnect, RuntimeError):
                pass  # a client that is gone: the session is being closed anyway

    async def _emit(self, event: SessionEvent) -> None:
        for wire_event in server_events(event, audio_output=self.session.options.output_audio):
            await self._send(wire_event)

    async def run(self, still_authorized: Callable[[], Awaitable[bool]] | None = None) -> None:
        """Serve the connection until the client leaves, or `still_authorized` says its credential was
        revoked (checked every few seconds)."""
        self._reader = asyncio.current_task()
        await self._send(session_created(self.session.session_id, self.session.options, self.model))
        watcher = None if still_authorized is None else asyncio.create_task(self._watch(still_authorized))
        loop = asyncio.get_running_loop()
        ends_at = loop.time() + self.guard.max_session_s
        try:
            while True:
                message = await self._receive(ends_at)
                if message is None or message["type"] == "websocket.disconnect":
                    break
                raw = message.get("text")
                if raw is None:
                    raw = message.get("bytes") or b""
                try:
                    await self._handle(raw)
                except ProtocolError as exc:
                    await self._send(error_event(exc.code, exc.message, exc.event_id, exc.param))
                except Exception:
                    # No one message may end the session: the details stay in the log, not on the wire.
                    log.exception("session %s: a client event failed unexpectedly", self.session.session_id)
                    await self._send(
                        error_event(
                            "server_error",
                            "the server failed to handle this event; the session continues",
                            kind="server_error",
                        )
                    )
        except WebSocketDisconnect:
            pass
        except asyncio.CancelledError:
            if not (self._client_stalled or self._ended_by_server):
                raise
            if (task := asyncio.current_task()) is not None:
                task.uncancel()
        finally:
            self._reader = None  # nothing may cancel the clean-up below
            if watcher is not None:
                await cancel_and_wait([watcher])
            await self.session.close()

    async def _receive(self, ends_at: float) -> MutableMapping[str, Any] | None:
        """The next client message; None once the session has been idle or open too long (then closed)."""
        loop = asyncio.get_running_loop()
        while True:
            wait = min(self.guard.idle_timeout_s, ends_at - loop.time())
            try:
                async with asyncio.timeout(max(wait, 0)):
                    return await self.websocket.receive()
            except TimeoutError:
                if loop.time() >= ends_at:
                    limit = f"{self.guard.max_session_s:.0f} s"
                    await self._close("session_expired", f"the session reached its maximum length of {limit}")
                    return None
                if not self.session.responding:  # a client listening to a long reply is not idle
                    idle = f"{self.guard.idle_timeout_s:.0f} s"
                    await self._close("idle_timeout", f"no event from the client for {idle}")
                    return None

    async def _close(
        self, code: str, message: str, close_code: int = POLICY_VIOLATION, kind: str = "invalid_request_error"
    ) -> None:
        await self._send(error_event(code, message, kind=kind))
        with contextlib.suppress(WebSocketDisconnect, RuntimeError):
            await self.websocket.close(code=close_code, reason=close_reason(message))

    async def end_for_restart(self, grace_s: float) -> None:
        """This server is going away: let the turn in progress finish (for up to `grace_s`), then tell
        the client to reconnect (a `server_restarting` error event and close code 1012, Service
        Restart) and end the session. The finished turn has reached the memory sink by then."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        # Polled: a turn spans the input, the turn machine and the reply player; no one event says
        # when all three are done, and a drain happens once in a replica's life.
        while self.session.in_turn and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(TURN_CHECK_S)
        if self.session.in_turn:
            log.warning(
                "session %s: its turn outlasted the %.0f s drain grace: ending it for the restart",
                self.session.session_id,
                grace_s,
            )
        self._ended_by_server = True
        await self._close(RESTART_CODE, RESTART_MESSAGE, SERVICE_RESTART, kind="server_error")
        if self._reader is not None:
            self._reader.cancel()  # the client may keep streaming until it reads the close

    async def _watch(self, still_authorized: Callable[[], Awaitable[bool]]) -> None:
        # Polled: the list changes in other processes (serve_app.cluster_state).
        while True:
            await asyncio.sleep(REVOCATION_CHECK_S)
            if not await still_authorized():
                break
        await self._close("revoked_client_secret", "the client secret has been revoked")

    async def _item_command(self, event: ClientEvent) -> None:
        """Read, delete or truncate a conversation item; its server event, or an error naming the item."""
        ref = item_ref(event)
        try:
            if isinstance(ref, ItemTruncate):
                self.session.truncate_item(ref.item_id, ref.audio_end_ms)
                await self._send(item_truncated(ref.item_id, ref.audio_end_ms))
            elif event.type == "conversation.item.delete":
                self.session.delete_item(ref.item_id)
                await self._send(item_deleted(ref.item_id))
            else:
                await self._send(item_retrieved(self.session.item(ref.item_id)))
        except ItemError as exc:
            raise ProtocolError(exc.code, exc.message, event.event_id, "item_id") from exc

    async def _handle(self, raw: str | bytes) -> None:
        event = parse_client_event(raw, self.limits)
        session = self.session
        match event.type:
            case "input_audio_buffer.append":
                pcm = audio_of_append(event, self.limits)
                seconds = len(pcm) / (PCM_SAMPLE_WIDTH * session.options.input_sample_rate)
                if not self._audio_budget.take(seconds):
                    raise ProtocolError(
                        "audio_rate_exceeded",
                        f"audio is arriving faster than real time ({self.guard.audio_burst_s:.0f} s ahead at "
                        "most): this append was dropped; stream audio as it is captured",
                        event.event_id,
                        "audio",
                    )
                await session.append_audio(pcm)
            case "input_audio_buffer.commit":
                await session.commit()
            case "input_audio_buffer.clear":
                await session.clear_audio()
            case "conversation.item.create":
                item = created_item(event, self.limits)
                try:
                    if isinstance(item, FunctionCallOutput):
                        await session.add_tool_output(item.call_id, item.output)
                    elif isinstance(item, FunctionCall):
                        await session.add_tool_call(item.call_id, item.name, item.arguments)
                    else:
                        await session.add_user_text(item)
                except ItemError as exc:
                    raise ProtocolError(exc.code, exc.message, event.event_id, "item.call_id") from exc
            case "response.create":
                await session.create_response()
            case "response.cancel":
                await session.cancel_response()
            case "conversation.item.retrieve" | "conversation.item.delete" | "conversation.item.truncate":
                await self._item_command(event)
            case "session.update":
                options = apply_session_update(session.options, event, self.limits, session.server_tool_names)
                session.update_options(options)
                await self._send(
                    session_created(session.session_id, session.options, self.model, updated=True)
                )
