"""The deployment's /metrics from each router replica's own: sums that never go down when a replica
stops, gauges only from the replicas still running."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from serve_app.api.metrics_merge import merge_expositions


def replica(turns: int, latencies: list[float], sessions: int) -> str:
    """A replica's exposition, made by prometheus_client itself."""
    registry = CollectorRegistry()
    counter = Counter("voice_turns", "Finished responses by status", ["status"], registry=registry)
    counter.labels(status="completed").inc(turns)
    histogram = Histogram("voice_e2e_latency_ms", "e2e", buckets=(100, 1000), registry=registry)
    for value in latencies:
        histogram.observe(value)
    Gauge("voice_sessions_open", "open", registry=registry).set(sessions)
    Gauge("process_resident_memory_bytes", "rss", registry=registry).set(1e8)
    return generate_latest(registry).decode()


def samples(text: str) -> dict[tuple[str, tuple], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_counters_and_histograms_add_up_over_replicas_and_gauges_over_live_ones() -> None:
    reports = {"a": replica(3, [50, 500], 2), "b": replica(4, [2000], 5), "gone": replica(10, [50], 7)}
    merged = samples(merge_expositions(reports, live=["a", "b"]))
    assert merged[("voice_turns_total", (("status", "completed"),))] == 17  # the stopped replica's stay in
    assert merged[("voice_e2e_latency_ms_count", ())] == 4
    assert merged[("voice_e2e_latency_ms_sum", ())] == 2600
    assert merged[("voice_e2e_latency_ms_bucket", (("le", "100.0"),))] == 2
    assert merged[("voice_e2e_latency_ms_bucket", (("le", "+Inf"),))] == 4
    assert merged[("voice_sessions_open", ())] == 7  # 2 + 5: not the stopped replica's 7
    assert not any(name.startswith("process_") for name, _ in merged)  # per process, not summed


def test_nothing_reported_is_an_empty_exposition() -> None:
    assert merge_expositions({}, live=[]) == ""
