"""The whole deployment's `/metrics` from each router replica's own Prometheus text.

Counters and histograms are summed over every replica that ever reported, including replicas that have
since stopped (their last report stays in), so the sums never go down when Serve replaces or scales
down a replica. Gauges (open sessions, requests in flight, tasks) are summed over the live replicas only.
Only the `voice_*` families are merged: per-process figures (CPU, RSS) are per replica, and Ray exports
those for every process itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

PREFIX = "voice_"


@dataclass
class _Family:
    kind: str
    help: str
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = field(default_factory=dict)


def merge_expositions(reports: Mapping[str, str], live: Iterable[str]) -> str:
    """One Prometheus text exposition from `reports` (replica id → its text); `live` ids count for gauges."""
    live_ids = set(live)
    families: dict[str, _Family] = {}
    for replica, text in sorted(reports.items()):
        for parsed in text_string_to_metric_families(text):
            if not parsed.name.startswith(PREFIX) or (parsed.type == "gauge" and replica not in live_ids):
                continue
            family = families.setdefault(parsed.name, _Family(parsed.type, parsed.documentation))
            for sample in parsed.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                if sample.name.endswith("_created"):  # when the series began: the earliest replica's
                    family.samples[key] = min(family.samples.get(key, sample.value), sample.value)
                else:
                    family.samples[key] = family.samples.get(key, 0.0) + sample.value
    lines: list[str] = []
    for name, family in sorted(families.items()):
        lines.append(f"# HELP {name} {_escape_help(family.help)}")
        lines.append(f"# TYPE {name} {family.kind}")
        for (sample_name, labels), value in family.samples.items():
            rendered = ",".join(f'{k}="{_escape_label(v)}"' for k, v in labels)
            lines.append(f"{sample_name}{{{rendered}}} {value!r}" if labels else f"{sample_name} {value!r}")
    return "\n".join(lines) + "\n" if lines else ""


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
