"""Fuzzing the Realtime protocol: `session.update` validation is total, and batches of generated client
events (valid, mutated, garbage) over the in-process WebSocket never drop a session, each bad event gets
exactly one error, no task outlives its session, and a typed turn still works afterwards.

A seeded, bounded set (the same examples every run); `python -m bench.fuzz` runs thousands.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, get_args

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from actors.conversation.session import SessionOptions
from bench.realtime_fuzz import (
    ANY_VALUE,
    LIMITS,
    SERVER_EVENT,
    SESSION_PATHS,
    FuzzEvent,
    as_sdk_types,
    batches,
    fuzz_app,
    run_batch,
    session_updates,
)
from serve_app.api import protocol
from serve_app.api.protocol import ClientEvent, ProtocolError, apply_session_update, session_created

SEEDED = settings(derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck))
OPTIONS = SessionOptions(instructions="Be brief.")


def _nested(path: str, value: Any) -> dict[str, Any]:
    for part in reversed(path.split(".")):
        value = {part: value}
    return value


@settings(SEEDED, max_examples=1500)
@given(
    session=st.one_of(
        ANY_VALUE,
        session_updates().map(lambda drawn: drawn[0]),
        st.tuples(st.sampled_from(SESSION_PATHS), ANY_VALUE).map(lambda pv: _nested(*pv)),
    )
)
def test_any_session_update_applies_or_is_refused_plainly(session: Any) -> None:
    event = ClientEvent("session.update", "evt_1", {"type": "session.update", "session": session})
    try:
        options = apply_session_update(OPTIONS, event, LIMITS)
    except ProtocolError as exc:
        assert exc.code in {"invalid_session", "text_too_long", "unsupported_audio_format",
                            "unsupported_sample_rate", "unsupported_turn_detection"}  # fmt: skip
        assert exc.event_id == "evt_1" and len(exc.message) > 10
        assert len(exc.message) < 300  # a value is quoted, never echoed whole
        return
    # Whatever was accepted makes a session.updated the SDK's models accept.
    text = json.dumps(session_created("sess_1", options, "m", updated=True))
    SERVER_EVENT.validate_python(as_sdk_types(json.loads(text), text))


def test_payload_models_keep_the_sdks_names() -> None:
    """Where the protocol validates with its own models (it accepts more or less than the SDK's), each
    is a narrowing of the SDK's model: the same field names, and event types the SDK knows."""
    from openai.types.realtime import (
        RealtimeAudioConfig,
        RealtimeAudioConfigInput,
        RealtimeAudioConfigOutput,
        RealtimeClientEvent,
        RealtimeConversationItemUserMessage,
        RealtimeSessionCreateRequest,
    )
    from openai.types.realtime.realtime_audio_formats import AudioPCM
    from openai.types.realtime.realtime_audio_input_turn_detection import SemanticVad, ServerVad
    from openai.types.realtime.realtime_conversation_item_user_message import Content

    ours_and_sdks = [
        (protocol.UserMessage, RealtimeConversationItemUserMessage),
        (protocol.TextPart, Content),
        (protocol.SessionConfig, RealtimeSessionCreateRequest),
        (protocol.Audio, RealtimeAudioConfig),
        (protocol.AudioInput, RealtimeAudioConfigInput),
        (protocol.AudioOutput, RealtimeAudioConfigOutput),
        (protocol.InputFormat, AudioPCM),
        (protocol.OutputFormat, AudioPCM),
        (protocol.ServerVad, ServerVad),
        (protocol.SemanticVad, SemanticVad),
    ]
    for ours, sdk in ours_and_sdks:
        assert set(ours.model_fields) <= set(sdk.model_fields), ours
    sdk_events = {
        arg
        for event in get_args(get_args(RealtimeClientEvent)[0])
        for arg in get_args(event.model_fields["type"].annotation)
    }
    assert protocol.CLIENT_EVENTS.issubset(sdk_events)


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with fuzz_app() as app:
        yield app


@settings(SEEDED, max_examples=200)
@given(batch=batches())
def test_fuzzed_client_events_never_break_a_session(client: TestClient, batch: list[FuzzEvent]) -> None:
    report = run_batch(client, batch)
    assert report.problems == [], "\n".join(report.problems)
