"""Fuzz `WS /v1/realtime` with many batches of generated client events → bench/results/fuzz.md.

    .venv/bin/python -m bench.fuzz --examples 10000     # ~5 min on 2 cores
    .venv/bin/python -m bench.fuzz --examples 500 --seed 7

The router app runs in process with scripted stages (`bench.realtime_fuzz.fuzz_app`). Each example is a
batch of up to `--batch-size` events (valid ones, mutated ones, garbage) over a new connection, checked
by `bench.realtime_fuzz.run_batch`: the answer each event needed, a typed turn afterwards, no task left
behind. The test suite runs a seeded 200 of these (`tests/test_realtime_fuzz.py`).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import HealthCheck, Phase, given, seed, settings
from tqdm import tqdm

from bench.realtime_fuzz import BatchReport, FuzzEvent, batches, fuzz_app, run_batch

RESULTS = Path(__file__).parent / "results"


@dataclass
class Summary:
    batches: int = 0
    events: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    problems: Counter[str] = field(default_factory=Counter)  # by class
    examples: list[str] = field(default_factory=list)  # the first few problems, verbatim
    seconds: float = 0.0

    def add(self, report: BatchReport) -> None:
        self.batches += 1
        self.events.update(report.events)
        self.errors.update(report.errors)
        for problem in report.problems:
            self.problems[_problem_class(problem)] += 1
            if len(self.examples) < 10:
                self.examples.append(problem[:300])

    @property
    def crashes(self) -> int:
        return self.problems["connection failed"] + self.problems["server_error"]


def _problem_class(problem: str) -> str:
    if problem.startswith("the connection failed"):
        return "connection failed"
    if problem.startswith("server_error"):
        return "server_error"
    if "outlived the session" in problem:
        return "task leaked"
    if "final turn" in problem:
        return "final turn failed"
    return "wrong answer"


def run(examples: int, batch_size: int, seed_value: int) -> Summary:
    summary = Summary()
    started = time.monotonic()
    with fuzz_app() as client, tqdm(total=examples, unit="batch", desc="fuzz") as bar:

        @seed(seed_value)
        @settings(
            max_examples=examples,
            database=None,
            deadline=None,
            phases=[Phase.generate],  # the checker never raises: nothing to shrink
            suppress_health_check=list(HealthCheck),
        )
        @given(batch=batches(batch_size))
        def one(batch: list[FuzzEvent]) -> None:
            summary.add(run_batch(client, batch))
            bar.update()
            bar.set_postfix(events=sum(summary.events.values()), problems=sum(summary.problems.values()))

        one()
    summary.seconds = time.monotonic() - started
    return summary


def _table(title: str, counts: Counter[str], unit: str) -> list[str]:
    lines = [f"| {title} | {unit} |", "|---|---:|"]
    lines += [f"| `{name}` | {n} |" for name, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    return [*lines, f"| **total** | **{sum(counts.values())}** |", ""]


def report(summary: Summary, args: argparse.Namespace) -> str:
    events = sum(summary.events.values())
    command = (
        f"python -m bench.fuzz --examples {args.examples} --batch-size {args.batch_size} --seed {args.seed}"
    )
    rate = events / max(summary.seconds, 1e-9)
    lines = [
        "# Realtime protocol fuzzing",
        "",
        f"`{command}`: {summary.batches} batches, {events} client events over {summary.batches} connections",
        f"to the router app in process, {summary.seconds:.0f} s ({rate:.0f} events/s).",
        "",
        "Each batch: events sent one at a time, each followed by a sync marker, so every answer is matched",
        "to its event; a valid event must get no error, a bad one exactly one, an acknowledged one",
        "(session.update, conversation.item.create, input_audio_buffer.clear/commit) its ack or an error;",
        "every server event must match the `openai` SDK's models; then a typed turn must complete, and no",
        "task may outlive the closed connection.",
        "",
        "| outcome | count |",
        "|---|---:|",
        f"| crashes (connection dropped or `server_error`) | {summary.crashes} |",
        f"| tasks left behind | {summary.problems['task leaked']} |",
        f"| final typed turn failed | {summary.problems['final turn failed']} |",
        f"| wrong answers (missing, extra or unexpected errors) | {summary.problems['wrong answer']} |",
        "",
        *_table("client events sent, by kind", summary.events, "events"),
        *_table("errors answered, by code", summary.errors, "errors"),
    ]
    if summary.examples:
        lines += ["First problems:", "", *[f"- `{p}`" for p in summary.examples], ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--examples", type=int, default=10_000, help="batches (one connection each)")
    parser.add_argument("--batch-size", type=int, default=6, help="most events in one batch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "fuzz.md")
    args = parser.parse_args()
    summary = run(args.examples, args.batch_size, args.seed)
    text = report(summary, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    print(f"wrote {args.out}")
    sys.exit(1 if sum(summary.problems.values()) else 0)


if __name__ == "__main__":
    main()
