"""Batched memory writes from the journal: batching, retries while the backend is down, replay."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path

from actors.conversation.events import FinishedTurn
from actors.memory.journal import Fact, TurnJournal
from actors.memory.writer import MemoryWriter, WriterConfig
from testkit.fakes import finished_turn


def turn(n: int, user: str = "alice") -> FinishedTurn:
    return finished_turn(n, user)


class FakeBackend:
    """Stores turns as Letta does (deduplicated only on a flagged resend); latency and outage knobs."""

    def __init__(self, latency_s: float = 0.0) -> None:
        self.latency_s = latency_s
        self.down = False
        self.stored: dict[str, list[str]] = {}
        self.facts: dict[str, list[str]] = {}  # user id -> fact ids, in the order stored
        self.calls: list[tuple[str, int]] = []

    async def write_turns(
        self, user_id: str, turns: Sequence[FinishedTurn], maybe_delivered: bool = True
    ) -> None:
        self.calls.append((user_id, len(turns)))
        if self.down:
            await asyncio.sleep(self.latency_s)
            raise ConnectionError("memory backend unreachable")
        # Like Letta: turns are taken as the call arrives (a caller that dies mid-call has still
        # delivered them), and only a call flagged as a possible resend is checked for duplicates.
        have = self.stored.setdefault(user_id, [])
        have += [t.turn_id for t in turns if not (maybe_delivered and t.turn_id in have)]
        await asyncio.sleep(self.latency_s)

    async def write_fact(self, fact: Fact, maybe_delivered: bool = True) -> None:
        if self.down:
            raise ConnectionError("memory backend unreachable")
        have = self.facts.setdefault(fact.user_id, [])
        if not (maybe_delivered and fact.fact_id in have):
            have.append(fact.fact_id)


CONFIG = WriterConfig(batch_size=4, flush_interval_s=0.3, retry_min_s=0.05, retry_max_s=0.2)


async def wait_until(condition, limit_s: float = 10.0) -> None:
    deadline = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


async def test_turns_go_in_batches_in_order_per_user(tmp_path: Path) -> None:
    backend = FakeBackend()
    writer = MemoryWriter(TurnJournal(tmp_path / "j.db"), backend, CONFIG)
    for n in range(10):
        await writer.submit(turn(n))
    await writer.submit(turn(0, user="bob"))
    await wait_until(lambda: len(writer.journal) == 0)
    assert backend.stored["alice"] == [f"resp_alice_{n}" for n in range(10)]
    assert backend.stored["bob"] == ["resp_bob_0"]
    assert sorted(size for user, size in backend.calls if user == "alice") == [2, 4, 4]
    await writer.close()


async def test_a_dead_backend_loses_nothing_and_delivery_resumes(tmp_path: Path) -> None:
    backend = FakeBackend()
    backend.down = True
    writer = MemoryWriter(TurnJournal(tmp_path / "j.db"), backend, CONFIG)
    for n in range(6):
        await writer.submit(turn(n))
    await wait_until(lambda: len(backend.calls) >= 3)  # retried with backoff
    assert len(writer.journal) == 6 and not backend.stored
    assert writer.journal.pending()[0].attempts >= 1
    backend.down = False
    await wait_until(lambda: len(writer.journal) == 0)
    assert backend.stored["alice"] == [f"resp_alice_{n}" for n in range(6)]
    await writer.close()


async def test_a_crashed_writer_is_replayed_from_the_journal_exactly_once(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    backend = FakeBackend(latency_s=0.5)
    first = MemoryWriter(TurnJournal(path), backend, CONFIG)
    for n in range(4):
        await first.submit(turn(n))
    await wait_until(lambda: backend.calls)  # a batch is in flight...
    await first.close()  # ...when the writer dies: nothing confirmed
    assert len(TurnJournal(path)) == 4
    backend.latency_s = 0.0
    second = MemoryWriter(TurnJournal(path), backend, CONFIG)
    await second.start()
    await wait_until(lambda: len(second.journal) == 0)
    assert backend.stored["alice"] == [f"resp_alice_{n}" for n in range(4)]
    await second.close()


async def test_a_users_session_end_delivers_their_partial_batch_at_once(tmp_path: Path) -> None:
    backend = FakeBackend()
    writer = MemoryWriter(
        TurnJournal(tmp_path / "j.db"), backend, WriterConfig(batch_size=50, flush_interval_s=60)
    )
    await writer.submit(turn(1, user="ann"))
    await writer.submit(turn(2, user="ann"))
    await writer.submit(turn(1, user="ben"))
    await writer.flush_user("ann")
    await wait_until(lambda: "ann" in backend.stored)
    assert backend.stored["ann"] == ["resp_ann_1", "resp_ann_2"] and backend.calls == [("ann", 2)]
    assert [e.turn.user_id for e in writer.journal.pending()] == ["ben"]  # ben's window still runs
    await writer.submit(turn(3, user="ann"))  # a new session's turn waits for its batch again
    await asyncio.sleep(0.3)
    assert backend.stored["ann"] == ["resp_ann_1", "resp_ann_2"]
    await writer.close()


async def test_a_session_end_right_after_its_last_turn_delivers_that_turn_too(tmp_path: Path) -> None:
    class SlowJournal(TurnJournal):
        def append(self, turn: FinishedTurn) -> bool:
            time.sleep(0.2)  # a slow disk: the fsync'd write is still under way when the session ends
            return super().append(turn)

    backend = FakeBackend()
    writer = MemoryWriter(
        SlowJournal(tmp_path / "j.db"), backend, WriterConfig(batch_size=50, flush_interval_s=60)
    )
    # As the memory actor runs them: the last turn's submit starts first, the session's end right after.
    submitting = asyncio.create_task(writer.submit(turn(1, user="ann")))
    await asyncio.sleep(0)
    await writer.flush_user("ann")
    await submitting
    await wait_until(lambda: "ann" in backend.stored, limit_s=5)
    assert backend.stored["ann"] == ["resp_ann_1"]
    await writer.close()


async def test_flush_delivers_a_partial_batch_at_once(tmp_path: Path) -> None:
    backend = FakeBackend()
    writer = MemoryWriter(
        TurnJournal(tmp_path / "j.db"), backend, WriterConfig(batch_size=50, flush_interval_s=60)
    )
    await writer.submit(turn(1))
    await asyncio.wait_for(writer.flush(), 5)
    assert backend.stored["alice"] == ["resp_alice_1"]
    await writer.close()


async def test_a_fact_is_delivered_at_once_without_waiting_for_a_batch(tmp_path: Path) -> None:
    backend = FakeBackend()
    config = WriterConfig(batch_size=8, flush_interval_s=3600, retry_min_s=0.05, retry_max_s=0.2)
    writer = MemoryWriter(TurnJournal(tmp_path / "j.db"), backend, config)
    await writer.submit(turn(1))  # a turn waits for its batch (an hour here)...
    await writer.submit_fact(Fact("f1", "alice", "Alice likes tea."))
    await wait_until(lambda: writer.journal.fact_count() == 0)  # ...the fact does not
    assert backend.facts == {"alice": ["f1"]} and "alice" not in backend.stored
    assert len(writer.journal) == 1
    await writer.close()


async def test_facts_journaled_while_the_backend_is_down_are_delivered_once_after(tmp_path: Path) -> None:
    backend = FakeBackend()
    backend.down = True
    journal = TurnJournal(tmp_path / "j.db")
    writer = MemoryWriter(journal, backend, CONFIG)
    for n in range(3):
        await writer.submit_fact(Fact(f"f{n}", "alice", f"Fact {n}."))
    await asyncio.sleep(0.3)  # several failed attempts
    assert journal.fact_count() == 3 and journal.pending_facts()[0].attempts >= 2
    await writer.close()  # the process stops: the facts stay in the journal
    backend.down = False
    writer = MemoryWriter(journal, backend, CONFIG)
    await writer.start()
    await wait_until(lambda: journal.fact_count() == 0)
    assert backend.facts == {"alice": ["f0", "f1", "f2"]}  # in order, each once
    await writer.close()
