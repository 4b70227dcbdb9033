"""Per-turn latency metrics (LiveKit's names, milliseconds) and their Prometheus histograms."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from prometheus_client import Counter, Gauge, Histogram

# 5 ms resolution at the low end, up to 10 s.
LATENCY_BUCKETS_MS = (
    5,
    10,
    15,
    20,
    25,
    30,
    40,
    50,
    75,
    100,
    150,
    200,
    250,
    300,
    400,
    500,
    750,
    1000,
    1500,
    2000,
    3000,
    5000,
    7500,
    10000,
)
TURN_METRIC_NAMES = (
    "end_of_turn_delay",
    "transcription_delay",
    "llm_ttft",
    "llm_ttfs",
    "tts_ttfb",
    "e2e_latency",
)

HISTOGRAMS = {
    name: Histogram(
        f"voice_{name}_ms", f"Per-turn {name.replace('_', ' ')} in milliseconds", buckets=LATENCY_BUCKETS_MS
    )
    for name in TURN_METRIC_NAMES
}
TURNS = Counter("voice_turns", "Finished responses by status", ["status"])
ERRORS = Counter("voice_client_errors", "Error events sent to clients by code", ["code"])
# What a router holds now (set by the router app; summed over live replicas in the deployment's view).
SESSIONS_OPEN = Gauge("voice_sessions_open", "Realtime sessions open")
REQUESTS_IN_FLIGHT = Gauge("voice_rest_requests_in_flight", "REST requests being answered")
LOOP_TASKS = Gauge("voice_event_loop_tasks", "asyncio tasks alive on the router's event loop")


def clock() -> float:
    """The session clock `TurnTimeline` reads."""
    # The event loop's clock: monotonic in production, virtual under tests that fake loop time.
    return asyncio.get_running_loop().time()


@dataclass
class TurnTimeline:
    """Clock readings (seconds, session clock) of one turn; metrics are differences of these."""

    speech_end: float | None = None  # end of user speech (None for typed turns)
    committed: float | None = None  # turn detected / buffer committed
    transcript: float | None = None  # final transcript available
    llm_start: float | None = None  # LLM request sent
    first_token: float | None = None
    first_phrase: float | None = None  # first phrase from the LLM
    tts_start: float | None = None  # first phrase handed to TTS (later, for a reply started early)
    first_audio_out: float | None = None  # first TTS byte received
    first_audio_sent: float | None = None  # first audio byte sent to the client
    tool_ms: float | None = None  # time spent waiting for server tool calls (None: the turn made none)

    def metrics_ms(self) -> dict[str, float]:
        def span(a: float | None, b: float | None) -> float | None:
            return None if a is None or b is None else round((b - a) * 1000.0, 3)

        origin = self.speech_end if self.speech_end is not None else self.llm_start
        lead = span(self.llm_start, self.committed)
        values = {
            "end_of_turn_delay": span(self.speech_end, self.committed),
            "transcription_delay": span(self.speech_end, self.transcript),
            "llm_ttft": span(self.llm_start, self.first_token),
            "llm_ttfs": span(self.llm_start, self.first_phrase),
            "tts_ttfb": span(self.tts_start or self.first_phrase, self.first_audio_out),
            "e2e_latency": span(origin, self.first_audio_sent),
            # A reply prepared at a pause: how long before the turn was detected its LLM call started.
            "preemptive_lead": lead if lead is not None and lead > 0 else None,
            "tool_ms": round(self.tool_ms, 3) if self.tool_ms is not None else None,
        }
        return {k: v for k, v in values.items() if v is not None}


def observe_turn(metrics: dict[str, float], status: str) -> None:
    TURNS.labels(status=status).inc()
    for name, value in metrics.items():
        if name in HISTOGRAMS:
            HISTOGRAMS[name].observe(value)
