"""Fuzzing `WS /v1/realtime`: Hypothesis strategies for client events and a checker that sends batches of
them to the router app in process (Starlette's TestClient) and says what went wrong.

Every generated event carries what the server must answer: `ok` (no error), `error` (exactly one error
event), `either` (at most one: commands whose acceptance depends on the session's state). Events the
server acknowledges (`session.update` → `session.updated`, ...) get exactly one of the ack or an error.
After each event the checker sends a sync marker (an unknown event type with a known id) and reads up to
its error, so it knows which answers belong to which event. After the batch: a typed turn must still get a
completed `response.done`, and once the connection is closed no task of the session may remain.

Used by `tests/test_realtime_fuzz.py` (a small seeded set) and `bench/fuzz.py` (thousands).
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

from hypothesis import strategies as st
from openai.types.realtime import RealtimeServerEvent
from pydantic import TypeAdapter, ValidationError
from starlette.testclient import TestClient

from actors.config import Settings
from actors.llm.stage import LLMStage
from actors.stt.simulated import SimulatedSTTEngine
from actors.tts.simulated import SimulatedTTSEngine
from actors.tts.stage import TTSStage
from serve_app.api.deps import RouterDeps
from serve_app.api.json_input import MAX_DEPTH
from serve_app.api.protocol import CLIENT_EVENTS, OUTPUT_RATES, ProtocolLimits
from serve_app.api.router_app import build_router_app
from testkit.fakes import EnergySpeechDetector, FakeLLMEngine  # the suite's scripted stages

Expect = Literal["ok", "error", "either"]
REPLY = "Hi. Nice to meet you."
# Small limits, so that the fuzzer reaches them with small events.
LIMITS = ProtocolLimits(max_event_bytes=64 * 1024, max_append_bytes=8 * 1024, max_text_chars=200)
INPUT_RATES = (16_000, 24_000)
SERVER_EVENT: TypeAdapter[Any] = TypeAdapter(RealtimeServerEvent)


def fuzz_app() -> TestClient:
    """The router app with fast scripted stages and `LIMITS`; use it as a context manager."""
    settings = Settings(
        stt_engine="simulated",
        llm_engine="openai",
        tts_engine="espeak",
        max_event_bytes=LIMITS.max_event_bytes,
        max_append_bytes=LIMITS.max_append_bytes,
        max_text_chars=LIMITS.max_text_chars,
    ).resolved()
    deps = RouterDeps(
        settings=settings,
        stt=SimulatedSTTEngine("hello there", finalize_delay_ms=1),
        llm=LLMStage(FakeLLMEngine(REPLY, ttft_ms=1, tokens_per_s=5000)),
        tts=TTSStage(SimulatedTTSEngine(ttfb_ms=1, realtime_factor=1000)),
        speech_detector=EnergySpeechDetector,
    )
    return TestClient(build_router_app(deps))


# ----------------------------------------------------------------------------------------- events


@dataclass(frozen=True)
class FuzzEvent:
    raw: str | bytes  # the frame as sent (bytes: a binary frame)
    kind: str  # the client event type it is built from, or "garbage"
    expect: Expect
    event_id: str | None = None  # a string event_id it carries: errors must name it (or none)
    ack: str | None = None  # the server event that answers it when accepted


SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
# Values near the edges of what the protocol accepts.
EDGE_VALUES = st.sampled_from(
    [
        None, True, False, 0, 1, -1, 0.5, -0.0, 1.0, 4096, 4097, 2**63, 1e308, 16000, 24000, 24000.0, 44100,
        "", "inf", "24000", "server_vad", "audio/pcm", [], {}, ["audio"], ["text"], ["audio", "text"],
        {"type": "server_vad"}, {"type": "audio/pcm"},
    ]
)  # fmt: skip
ANY_VALUE = JSON_VALUES | EDGE_VALUES
EVENT_IDS = st.none() | st.text(max_size=30) | JSON_VALUES  # a non-string id is ignored


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _text_expect(text: str) -> Expect:
    return "ok" if text.strip() and len(text.strip()) <= LIMITS.max_text_chars else "error"


@st.composite
def _extras(draw: st.DrawFn, known: frozenset[str]) -> dict[str, Any]:
    """Fields the server does not know: ignored, whatever they hold."""
    keys = st.text(max_size=10).filter(lambda k: k not in known)
    return draw(st.dictionaries(keys, ANY_VALUE, max_size=3))


def _vad() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {"type": st.just("server_vad")},
        optional={
            "threshold": st.floats(min_value=0.01, max_value=0.99),
            "silence_duration_ms": st.integers(0, 10_000),
            "prefix_padding_ms": st.integers(0, 10_000),
            "create_response": st.booleans(),
        },
    )


def _valid_session() -> st.SearchStrategy[dict[str, Any]]:
    fmt_in = st.fixed_dictionaries({"type": st.just("audio/pcm"), "rate": st.sampled_from(INPUT_RATES)})
    fmt_out = st.fixed_dictionaries({"type": st.just("audio/pcm"), "rate": st.sampled_from(OUTPUT_RATES)})
    audio_in = st.fixed_dictionaries({}, optional={"format": fmt_in, "turn_detection": st.none() | _vad()})
    audio = st.fixed_dictionaries({}, optional={"input": audio_in, "output": st.fixed_dictionaries(
        {}, optional={"format": fmt_out})})  # fmt: skip
    return st.fixed_dictionaries(
        {"type": st.just("realtime")},
        optional={
            "instructions": st.text(max_size=60),
            "max_output_tokens": st.integers(1, 4096) | st.just("inf"),
            "output_modalities": st.sampled_from([["audio"], ["text"]]),
            "audio": audio,
        },
    )


# Where a session.update may be mutated, and whether a value there is accepted ("ok"), refused ("error"),
# or depends on what else is in it ("either").
def _session_field_expect(path: str, value: Any) -> Expect:
    if path == "instructions":
        return "ok" if isinstance(value, str) and len(value) <= LIMITS.max_text_chars else "error"
    if path == "max_output_tokens":
        return "ok" if value == "inf" or (_is_int(value) and 1 <= value <= 4096) else "error"
    if path == "output_modalities":
        return "ok" if value in (["audio"], ["text"]) else "error"
    if path.endswith(".rate"):
        allowed = INPUT_RATES if ".input." in path else OUTPUT_RATES
        return "ok" if _is_int(value) and value in allowed else "error"
    if path.endswith("threshold"):
        ok = isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < 1
        return "ok" if value is None or ok else "error"
    if path.endswith("_ms"):
        return "ok" if value is None or (_is_int(value) and 0 <= value <= 10_000) else "error"
    if path.endswith("turn_detection"):
        if value is None:
            return "ok"
        return "error" if not isinstance(value, dict) or value.get("type") != "server_vad" else "either"
    # audio, audio.input, audio.output, the formats: null is no change, an object depends on its content
    if value is None:
        return "ok"
    return "either" if isinstance(value, dict) else "error"


SESSION_PATHS = [
    "instructions",
    "max_output_tokens",
    "output_modalities",
    "audio",
    "audio.input",
    "audio.output",
    "audio.input.format",
    "audio.output.format",
    "audio.input.format.rate",
    "audio.output.format.rate",
    "audio.input.turn_detection",
    "audio.input.turn_detection.threshold",
    "audio.input.turn_detection.silence_duration_ms",
    "audio.input.turn_detection.prefix_padding_ms",
]


def _set_path(session: dict[str, Any], path: str, value: Any) -> None:
    """Set `value` at `path`, building valid objects on the way (a server_vad turn_detection, pcm formats)."""
    parts = path.split(".")
    node = session
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {"turn_detection": {"type": "server_vad"}, "format": {"type": "audio/pcm"}}.get(part, {})
            node[part] = child
        node = child
    node[parts[-1]] = value


@st.composite
def session_updates(draw: st.DrawFn) -> tuple[dict[str, Any], Expect]:
    """A `session` object: valid, or valid with one field set to any JSON value."""
    session = draw(_valid_session())
    if not draw(st.booleans()):
        return session, "ok"
    path = draw(st.sampled_from(SESSION_PATHS))
    value = draw(ANY_VALUE)
    _set_path(session, path, value)
    return session, _session_field_expect(path, value)


@st.composite
def _audio(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["silence", "noise", "tone"]))
    samples = draw(st.integers(0, LIMITS.max_append_bytes // 2))
    rng = random.Random(draw(st.integers(0, 2**32)))
    if kind == "silence":
        pcm = b"\x00\x00" * samples
    elif kind == "noise":
        pcm = rng.randbytes(samples * 2)
    else:
        pcm = bytes(b for i in range(samples) for b in (0, 0x40 if (i // 40) % 2 else 0xC0))
    return base64.b64encode(pcm).decode("ascii")


@st.composite
def _item(draw: st.DrawFn) -> tuple[Any, Expect]:
    """A conversation item: a valid user message, or one with one part of it wrong."""
    texts = draw(st.lists(st.text(max_size=90), min_size=1, max_size=3))
    parts: list[Any] = [{"type": draw(st.sampled_from(["input_text", "text"])), "text": t} for t in texts]
    item: dict[str, Any] = {"type": "message", "role": "user", "content": parts}
    expect = _text_expect(" ".join(texts))
    mutation = draw(st.sampled_from(["none", "none", "item", "type", "role", "content", "part", "text"]))
    bad = draw(ANY_VALUE)
    if mutation == "item":
        return bad, "error"  # not an object
    if mutation == "type" and bad not in ("message",):
        item["type"] = bad
        expect = "error"
    elif mutation == "role" and bad != "user":
        item["role"] = bad
        expect = "error"
    elif mutation == "content" and not (isinstance(bad, list) and bad):
        item["content"] = bad
        expect = "error"
    elif mutation == "part" and not isinstance(bad, dict):
        parts[0] = bad
        expect = "error"
    elif mutation == "text" and not isinstance(bad, str):
        parts[0]["text"] = bad
        expect = "error"
    return item, expect


@st.composite
def structured_events(draw: st.DrawFn) -> FuzzEvent:
    """A client event of a known type, valid or with its payload wrong, plus fields the server ignores."""
    # session.update has the most fields to get wrong: drawn three times as often.
    kind = draw(st.sampled_from([*sorted(CLIENT_EVENTS), "session.update", "session.update"]))
    event: dict[str, Any] = {"type": kind}
    expect: Expect = "ok"
    ack: str | None = None
    if kind == "session.update":
        ack = "session.updated"
        choice = draw(st.sampled_from(["session", "session", "session", "missing", "wrong"]))
        if choice == "session":
            event["session"], expect = draw(session_updates())
        elif choice == "wrong":
            event["session"] = draw(ANY_VALUE.filter(lambda v: not isinstance(v, dict)))
            expect = "error"
        else:
            expect = "error"
    elif kind == "input_audio_buffer.append":
        choice = draw(st.sampled_from(["audio", "audio", "missing", "wrong", "odd", "base64"]))
        if choice == "audio":
            event["audio"] = draw(_audio())
        elif choice == "wrong":
            event["audio"] = draw(ANY_VALUE.filter(lambda v: not isinstance(v, str)))
            expect = "error"
        elif choice == "odd":
            event["audio"] = base64.b64encode(b"\x01" * (2 * draw(st.integers(0, 50)) + 1)).decode()
            expect = "error"
        elif choice == "base64":
            event["audio"] = draw(st.text(min_size=1, max_size=20).filter(lambda s: not _is_base64(s)))
            expect = "error"
        else:
            expect = "error"
    elif kind == "conversation.item.create":
        ack = "conversation.item.added"
        if draw(st.integers(0, 9)):
            event["item"], expect = draw(_item())
        else:
            expect = "error"  # no item
    elif kind == "input_audio_buffer.clear":
        ack = "input_audio_buffer.cleared"
    elif kind == "input_audio_buffer.commit":
        ack, expect = "input_audio_buffer.committed", "either"  # refused when nothing was appended
    else:  # response.create (refused while one is active), response.cancel (refused with none active)
        expect = "either"
    raw_id = draw(EVENT_IDS)
    if raw_id is not None:
        event["event_id"] = raw_id
    event.update(draw(_extras(frozenset(event) | {"type", "event_id", "session", "audio", "item"})))
    raw = json.dumps(event, ensure_ascii=draw(st.booleans()))
    raw, expect = draw(_splices(raw, expect))
    if len(raw) > LIMITS.max_event_bytes:
        expect = "error"
    client_id = raw_id if isinstance(raw_id, str) else None
    return FuzzEvent(raw, kind, expect, client_id, ack)


def _is_base64(text: str) -> bool:
    try:
        base64.b64decode(text, validate=True)
    except ValueError:
        return False
    return True


@st.composite
def _splices(draw: st.DrawFn, raw: str, expect: Expect) -> tuple[str, Expect]:
    """Text spliced into the event as one more field: nesting, padding, and JSON that Python mis-parses."""
    splice = draw(st.sampled_from(["none", "none", "none", "deep", "pad", "big_int", "nan", "surrogate"]))
    if splice == "none":
        return raw, expect
    if splice == "deep":
        depth = draw(st.sampled_from([1, MAX_DEPTH - 2, MAX_DEPTH - 1, MAX_DEPTH, 999, 5000, 100_000]))
        value = "[" * depth + "]" * depth
        # The event object is level 1: `depth` lists inside it reach level depth + 1.
        expect = "error" if depth + 1 > MAX_DEPTH else expect
    elif splice == "pad":
        size = draw(st.sampled_from([10, LIMITS.max_event_bytes - len(raw), LIMITS.max_event_bytes]))
        value = json.dumps("x" * max(size, 0))
    elif splice == "big_int":
        value, expect = "9" * 5000, "error"  # more digits than Python converts
    elif splice == "nan":
        value, expect = draw(st.sampled_from(["NaN", "Infinity", "-Infinity"])), "error"
    else:
        value, expect = '"\\ud800 lone"', "error"
    return raw[:-1] + ', "fuzz.splice": ' + value + "}", expect


@st.composite
def garbage(draw: st.DrawFn) -> FuzzEvent:
    """Frames that are no client event at all: each must get exactly one error."""
    kind = draw(st.sampled_from(["text", "binary", "json", "object", "truncated", "type", "deep"]))
    raw: str | bytes
    if kind == "text":
        raw = draw(st.text(max_size=200))
    elif kind == "binary":
        raw = draw(st.binary(max_size=200))
    elif kind == "json":
        raw = json.dumps(draw(ANY_VALUE.filter(lambda v: not isinstance(v, dict))))
    elif kind == "object":  # an object without a usable type
        body = draw(st.dictionaries(st.text(max_size=8).filter(lambda k: k != "type"), ANY_VALUE, max_size=4))
        raw = json.dumps(body)
    elif kind == "type":
        bad_type = draw(ANY_VALUE.filter(lambda v: v not in CLIENT_EVENTS if isinstance(v, str) else True))
        raw = json.dumps({"type": bad_type})
    elif kind == "truncated":
        whole = str(draw(structured_events()).raw)
        raw = whole[: draw(st.integers(0, max(len(whole) - 1, 0)))]
    else:
        depth = draw(st.integers(1, 20_000))
        raw = draw(st.sampled_from(["[" * depth + "]" * depth, '{"a":' * depth + "1" + "}" * depth]))
    return FuzzEvent(raw, "garbage", "error")


def client_events() -> st.SearchStrategy[FuzzEvent]:
    return structured_events() | structured_events() | garbage()


def batches(max_size: int = 6) -> st.SearchStrategy[list[FuzzEvent]]:
    return st.lists(client_events(), min_size=1, max_size=max_size)


# ---------------------------------------------------------------------------------------- checking


@dataclass
class BatchReport:
    events: Counter[str] = field(default_factory=Counter)  # sent, by kind
    errors: Counter[str] = field(default_factory=Counter)  # answers to the fuzzed events, by code
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _task_names() -> list[str]:
    return sorted(getattr(task.get_coro(), "__qualname__", repr(task)) for task in asyncio.all_tasks())


def as_sdk_types(event: dict[str, Any], text: str) -> dict[str, Any]:
    """The SDK types PCM rates as 24000 only; our 16 kHz audio formats are an extension."""
    if event["type"].startswith("session.") and '"rate": 16000' in text:
        return json.loads(text.replace('"rate": 16000', '"rate": 24000'))
    return event


class _Conversation:
    def __init__(self, ws: Any, report: BatchReport) -> None:
        self.ws, self.report, self.sync = ws, report, 0

    def receive(self) -> dict[str, Any]:
        text = self.ws.receive_text()
        event = json.loads(text)
        try:
            SERVER_EVENT.validate_python(as_sdk_types(event, text))
        except ValidationError as exc:
            shown = json.dumps(event)[:300]
            self.report.problems.append(
                f"{event['type']} does not match the SDK's models ({exc.error_count()} errors): {shown}"
            )
        return event

    def until(self, kind: str, limit: int = 5000) -> list[dict[str, Any]]:
        events = []
        for _ in range(limit):
            events.append(self.receive())
            if events[-1]["type"] == kind:
                return events
        raise AssertionError(f"no {kind} in {limit} events")

    def answers(self, raw: str | bytes) -> list[dict[str, Any]]:
        """Send one frame, then a sync marker; return what the server answered before the marker."""
        if isinstance(raw, bytes):
            self.ws.send_bytes(raw)
        else:
            self.ws.send_text(raw)
        self.sync += 1
        marker = f"fuzz_sync_{self.sync}"
        self.ws.send_text(json.dumps({"type": "fuzz.sync", "event_id": marker}))
        answers = []
        while True:
            event = self.receive()
            if event["type"] == "error" and event["error"]["event_id"] == marker:
                return answers
            answers.append(event)


def _check(event: FuzzEvent, answers: list[dict[str, Any]]) -> list[str]:
    errors = [a["error"] for a in answers if a["type"] == "error"]
    acks = [a for a in answers if a["type"] == event.ack]
    shown = repr(event.raw[:120])
    problems = []
    if len(errors) > 1:
        problems.append(f"{len(errors)} errors for one event {shown}: {[e['code'] for e in errors]}")
    if event.expect == "error" and not errors:
        problems.append(f"no error for the bad event {shown}")
    if event.expect == "ok" and errors:
        problems.append(f"error {errors[0]['code']} ({errors[0]['message']}) for the valid event {shown}")
    if event.ack is not None and len(errors) + len(acks) != 1:
        problems.append(f"{len(acks)} {event.ack} and {len(errors)} errors for {shown}")
    for error in errors:
        if error["code"] == "server_error":
            problems.append(f"server_error (a handler failed) for {shown}")
        if error["event_id"] not in (None, event.event_id):
            problems.append(f"error names event {error['event_id']!r}, not {event.event_id!r}")
        if not isinstance(error["message"], str) or len(error["message"]) < 10:
            problems.append(f"error without a useful message: {error}")
    return problems


def _final_turn(talk: _Conversation) -> list[str]:
    """Reset to push-to-talk text replies, cancel whatever runs, and ask a typed question."""
    reset = {
        "output_modalities": ["text"],
        "max_output_tokens": "inf",
        "audio": {"input": {"turn_detection": None}},
    }
    talk.ws.send_text(json.dumps({"type": "session.update", "session": reset}))
    talk.until("session.updated")
    talk.answers(json.dumps({"type": "response.cancel"}))
    item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "still there?"}]}
    talk.ws.send_text(json.dumps({"type": "conversation.item.create", "item": item}))
    talk.ws.send_text(json.dumps({"type": "response.create"}))
    events = talk.until("response.done")
    problems = [f"error in the final turn: {e['error']}" for e in events if e["type"] == "error"]
    done = events[-1]["response"]
    text = done["output"][0]["content"][0].get("text") if done["output"] else None
    if done["status"] != "completed" or text != REPLY:
        problems.append(f"final turn ended {done['status']} with {text!r}")
    return problems


def run_batch(client: TestClient, batch: list[FuzzEvent]) -> BatchReport:
    """Send `batch` over one new connection of `client` (entered as a context manager) and check it."""
    report = BatchReport()
    started = time.monotonic()
    portal = client.portal
    assert portal is not None, "enter the TestClient first: `with fuzz_app() as client:`"
    before = portal.call(_task_names)
    try:
        with client.websocket_connect("/v1/realtime") as ws:
            talk = _Conversation(ws, report)
            if talk.receive()["type"] != "session.created":
                report.problems.append("the session did not start with session.created")
            for event in batch:
                report.events[event.kind] += 1
                answers = talk.answers(event.raw)
                report.errors.update(a["error"]["code"] for a in answers if a["type"] == "error")
                report.problems += _check(event, answers)
            report.problems += _final_turn(talk)
            # Disconnect as a client does and let the server finish, before TestClient cancels the app.
            ws.close(1000)
            report.problems += _leaks(portal, before, extra=1)  # the TestClient's own task still waits
    except Exception as exc:  # the connection dropped, or the server raised
        report.problems.append(f"the connection failed: {exc!r}"[:500])
    report.problems += _leaks(portal, before, extra=0)
    report.seconds = time.monotonic() - started
    return report


def _leaks(portal: Any, before: list[str], extra: int, wait_s: float = 2.0) -> list[str]:
    deadline = time.monotonic() + wait_s
    while True:
        now = portal.call(_task_names)
        if len(now) <= len(before) + extra:
            return []
        if time.monotonic() > deadline:
            left = Counter(now) - Counter(before)
            return [f"{len(now) - len(before) - extra} tasks outlived the session: {dict(left)}"]
        time.sleep(0.005)
