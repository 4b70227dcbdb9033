"""How many finished turns one memory actor can take: the journal's durable appends, and the writer's
whole `submit` path (append, pending batch read, gauges), with a backend that confirms at once.

    .venv/bin/python -m bench.journal              # 3,000 turns, 8 per user → bench/results/journal.{md,json}
    .venv/bin/python -m bench.journal --turns 300  # a smoke run

Every turn of every session goes through the one memory actor on the head (README "Memory"), so its
sustained rate bounds the turns per second a cluster can journal: the capacity plan (README "Capacity
plan") compares it with the turn rate of 1,000 / 10,000 / 100,000 sessions. The journal lives in a
private temporary directory on this machine's disk (SQLite WAL, `synchronous=FULL`: one fsync per turn).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from actors.conversation.events import FinishedTurn
from actors.memory.journal import TurnJournal
from actors.memory.writer import MemoryWriter, WriterConfig

RESULTS = Path(__file__).resolve().parent / "results"


def turn(n: int, users: int) -> FinishedTurn:
    now = time.time()
    user = f"user-{n % users}"
    return FinishedTurn(
        session_id=f"s-{user}",
        user_id=user,
        turn_id=f"resp_{n}",
        user_item_id=f"item_{n}",
        user_text="What's the weather like in Lisbon this weekend, and should I bring a jacket?",
        assistant_text="Mild, around eighteen degrees, and windy by the sea: bring a light jacket.",
        started_at=now - 6,
        ended_at=now,
        interrupted=False,
        metrics={"e2e_latency": 812.5},
    )


class ConfirmingBackend:
    """Stores nothing and confirms every batch at once: measures our side of the write path only."""

    def __init__(self, expected_turns: int) -> None:
        self.calls = 0
        self.turns = 0
        self.expected_turns = expected_turns
        self.all_delivered = asyncio.Event()

    async def write_turns(
        self, user_id: str, turns: Sequence[FinishedTurn], maybe_delivered: bool = True
    ) -> None:
        self.calls += 1
        self.turns += len(turns)
        if self.turns >= self.expected_turns:
            self.all_delivered.set()


def appends_per_s(directory: Path, turns: int, users: int) -> float:
    journal = TurnJournal(directory / "append.db")
    start = time.perf_counter()
    for n in tqdm(range(turns), desc="journal appends", unit="turn"):
        journal.append(turn(n, users))
    elapsed = time.perf_counter() - start
    journal.close()
    return turns / elapsed


async def submits_per_s(directory: Path, turns: int, users: int, concurrency: int) -> tuple[float, int]:
    journal = TurnJournal(directory / "submit.db")
    backend = ConfirmingBackend(turns)
    writer = MemoryWriter(journal, backend, WriterConfig(batch_size=8, flush_interval_s=30.0))
    await writer.start()
    progress = tqdm(total=turns, desc=f"writer submits ({concurrency} at once)", unit="turn")
    queue = iter(range(turns))

    async def worker() -> None:
        for n in queue:
            await writer.submit(turn(n, users))
            progress.update()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    await asyncio.wait_for(backend.all_delivered.wait(), timeout=120)  # every batch delivered
    elapsed = time.perf_counter() - start
    progress.close()
    await writer.close()
    journal.close()
    return turns / elapsed, backend.calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--turns", type=int, default=3000)
    parser.add_argument("--users", type=int, help="default: turns ÷ 8, so that every batch fills")
    parser.add_argument("--concurrency", type=int, default=64, help="submits in flight (sessions sending)")
    args = parser.parse_args()
    args.users = args.users or max(1, args.turns // 8)
    with tempfile.TemporaryDirectory(prefix="bench-journal-") as tmp:
        appends = appends_per_s(Path(tmp), args.turns, args.users)
        submits, calls = asyncio.run(submits_per_s(Path(tmp), args.turns, args.users, args.concurrency))
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "turns": args.turns,
        "users": args.users,
        "concurrency": args.concurrency,
        "journal_appends_per_s": round(appends, 1),
        "writer_submits_per_s": round(submits, 1),
        "backend_calls": calls,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "journal.json").write_text(json.dumps(result, indent=2) + "\n")
    table = (
        "| turns | users | submits in flight | journal appends / s | writer submits / s |\n"
        "|---|---|---|---|---|\n"
        f"| {args.turns} | {args.users} | {args.concurrency} | {appends:.0f} | {submits:.0f} |\n"
    )
    (RESULTS / "journal.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
