"""Fuzzing the Realtime protocol: `session.update` validation is total, and batches of generated client
events (valid, mutated, garbage) over the in-process WebSocket never drop a session, each bad event gets
exactly one error, no task outlives its session, and a typed turn still works afterwards.

A seeded, bounded set (the same examples every run); `python -m bench.fuzz` runs thousands.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

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


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with fuzz_app() as app:
        yield app


@settings(SEEDED, max_examples=200)
@given(batch=batches())
def test_fuzzed_client_events_never_break_a_session(client: TestClient, batch: list[FuzzEvent]) -> None:
    report = run_batch(client, batch)
    assert report.problems == [], "\n".join(report.problems)
