"""A router replica being replaced: each session finishes the turn it is in, then is told to reconnect
(a `server_restarting` error event and close code 1012), and a late connection gets the same notice."""

from __future__ import annotations

import asyncio
import base64
import json
import threading

import pytest
from starlette.websockets import WebSocketDisconnect

from actors.memory.sink import RecentTurnsSink
from serve_app.api.auth import SERVICE_RESTART
from testkit.fakes import silence, tone
from testkit.harness import SERVER_EVENT, make_app, receive_until


class Replacement:
    """Stands in for the controller's word that this replica is being replaced; set from the test."""

    def __init__(self) -> None:
        self._now = threading.Event()
        self.told = threading.Event()  # the router has been told (its drain begins right after)

    def now(self) -> None:
        self._now.set()
        assert self.told.wait(10), "the router never picked up its replacement"

    async def replaced(self) -> None:
        while not self._now.is_set():  # noqa: ASYNC110  # set from another thread
            await asyncio.sleep(0.01)
        self.told.set()


def append(ws, pcm: bytes) -> None:
    ws.send_text(json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm).decode()}))


def assert_told_to_reconnect(ws, *, next_event: bool = True) -> None:
    """The notice (the very next event, unless `next_event` is False), then the close."""
    if next_event:
        event = json.loads(ws.receive_text())
        SERVER_EVENT.validate_python(event)
    else:
        before = receive_until(ws, "error")
        assert "response.done" not in [e["type"] for e in before]  # the turn was cut, not finished
        event = before[-1]
    assert event["type"] == "error", event
    assert event["error"]["code"] == "server_restarting"
    assert "reconnect" in event["error"]["message"]
    with pytest.raises(WebSocketDisconnect) as closed:
        ws.receive_text()
    assert closed.value.code == SERVICE_RESTART


def test_the_turn_being_spoken_is_answered_and_remembered_before_the_notice() -> None:
    replacement, sink = Replacement(), RecentTurnsSink()
    app = make_app(replaced=replacement.replaced, memory_sink=sink)
    with app as client, client.websocket_connect("/v1/realtime?user=ada") as ws:
        receive_until(ws, "session.created")
        append(ws, tone(800))  # the user is speaking ...
        receive_until(ws, "input_audio_buffer.speech_started")
        replacement.now()  # ... when the replica starts draining
        append(ws, silence(700))  # and ends the question after that
        events = receive_until(ws, "response.done")
        kinds = [e["type"] for e in events]
        assert "conversation.item.input_audio_transcription.completed" in kinds
        assert "response.output_audio.delta" in kinds
        done = events[-1]["response"]
        assert done["status"] == "completed"
        assert_told_to_reconnect(ws)
    # The answered turn went to memory before the session ended.
    assert [(t.turn_id, t.user_id) for t in sink.turns] == [(done["id"], "ada")]


def test_an_idle_session_is_told_at_once_and_a_late_connection_too() -> None:
    replacement = Replacement()
    with make_app(replaced=replacement.replaced) as client:
        with client.websocket_connect("/v1/realtime") as ws:
            receive_until(ws, "session.created")
            replacement.now()
            assert_told_to_reconnect(ws)
        with client.websocket_connect("/v1/realtime") as late:
            assert_told_to_reconnect(late)


def test_a_turn_that_outlasts_the_grace_is_cut_with_the_same_notice() -> None:
    replacement = Replacement()
    with (
        make_app(replaced=replacement.replaced, drain_grace_s=0.0) as client,
        client.websocket_connect("/v1/realtime") as ws,
    ):
        receive_until(ws, "session.created")
        append(ws, tone(800))  # still speaking when the replica drains, with no grace to finish
        receive_until(ws, "input_audio_buffer.speech_started")
        replacement.now()
        assert_told_to_reconnect(ws, next_event=False)
