"""Batched, journaled memory writes, off the request path.

`MemoryWriter.submit` journals a finished turn durably and returns; a background task per user sends
that user's pending turns to the memory backend (Letta) in one call when `batch_size` turns are waiting
or the oldest has waited `flush_interval_s`. A failed call is retried with exponential backoff and
jitter (`actors.retry.retry_forever`), forever: turns leave the journal only once the backend
confirmed them, so a dead backend delays memory but loses nothing, and a restart replays the journal.

Every journal call (SQLite, fsync'd) runs in a worker thread, replay and shutdown included: the event
loop it would block also answers memory reads.

Facts for the user's archival memory (the `remember` tool) take the same road with no batching window:
`submit_fact` journals the fact and wakes the user's task, which delivers waiting facts (one call each)
before it looks at turns, retried like turns until Letta confirms them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from actors.conversation.events import FinishedTurn
from actors.memory.journal import Fact, TurnJournal
from actors.retry import RetryCallState, retry_forever
from actors.tasks import cancel_and_wait

log = logging.getLogger(__name__)

# Their own registry: the memory actor's process exports exactly these, and the router's /metrics
# appends them (the actor serves no HTTP of its own).
MEMORY_REGISTRY = CollectorRegistry()
QUEUE_DEPTH = Gauge(
    "voice_memory_queue_depth",
    "Turns journaled and not yet confirmed by the memory backend",
    registry=MEMORY_REGISTRY,
)
FACTS_DEPTH = Gauge(
    "voice_memory_facts_queue_depth",
    "Facts (the remember tool's) journaled and not yet confirmed by the memory backend",
    registry=MEMORY_REGISTRY,
)
JOURNAL_BYTES = Gauge(
    "voice_memory_journal_bytes", "Size of the memory journal on disk", registry=MEMORY_REGISTRY
)
BATCH_SIZE = Histogram(
    "voice_memory_batch_turns",
    "Turns per memory write",
    buckets=(1, 2, 4, 8, 16, 32, 64),
    registry=MEMORY_REGISTRY,
)
FLUSH_SECONDS = Histogram(
    "voice_memory_flush_seconds",
    "Duration of one memory write call",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=MEMORY_REGISTRY,
)
LAG_SECONDS = Histogram(
    "voice_memory_lag_seconds",
    "Turn end to confirmed in the memory backend",
    buckets=(0.1, 0.25, 0.5, 1, 1.5, 2, 3, 4, 5, 6, 7.5, 10, 15, 20, 30, 45, 60, 120, 300),
    registry=MEMORY_REGISTRY,
)
BACKEND_ERRORS = Counter("voice_memory_backend_errors", "Failed memory write calls", registry=MEMORY_REGISTRY)


class MemoryBackend(Protocol):
    async def write_turns(
        self, user_id: str, turns: Sequence[FinishedTurn], maybe_delivered: bool = True
    ) -> None:
        """Deliver `turns` (one user's, in order) in one call; return only once they are stored.

        `maybe_delivered` says some of them were sent before (a failed attempt, or a crash between a
        call and the journal's confirmation): then the backend must skip the turns it already holds.
        """
        ...

    async def write_fact(self, fact: Fact, maybe_delivered: bool = True) -> None:
        """Store `fact` in the user's archival memory; with `maybe_delivered`, not a second time."""
        ...


@dataclass(frozen=True)
class WriterConfig:
    batch_size: int = 8
    flush_interval_s: float = 2.0
    retry_min_s: float = 0.5
    retry_max_s: float = 30.0


class MemoryWriter:
    def __init__(
        self,
        journal: TurnJournal,
        backend: MemoryBackend,
        config: WriterConfig | None = None,
        on_delivered: Callable[[str], None] | None = None,  # called with the user id after each batch
    ) -> None:
        self.journal = journal
        self.on_delivered = on_delivered
        self.backend = backend
        self.config = config or WriterConfig()
        self._wake: dict[str, asyncio.Event] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._failing = False
        self._flushing = False  # deliver partial batches at once (shutdown)
        self._flush_users: set[str] = set()  # deliver these users' partial batches at once
        # Journal writes under way, per user: a session's end must see the turns submitted before it
        # (the actor starts calls in the order they were sent, but runs them concurrently).
        self._journaling: dict[str, set[asyncio.Future[bool]]] = {}

    async def start(self) -> None:
        """Resume delivery of whatever the journal holds (a replay after a restart or crash)."""
        for user_id in await asyncio.to_thread(self.journal.users_with_pending):
            self._ensure_task(user_id)
        await asyncio.to_thread(self._update_gauges)

    async def submit(self, turn: FinishedTurn) -> None:
        """Journal `turn` durably (raises JournalError for an invalid turn) and schedule its delivery."""
        writing = asyncio.ensure_future(asyncio.to_thread(self.journal.append, turn))
        journaling = self._journaling.setdefault(turn.user_id, set())
        journaling.add(writing)
        try:
            await writing
        finally:
            journaling.discard(writing)
            if not journaling:
                del self._journaling[turn.user_id]
        self._ensure_task(turn.user_id)
        waiting = await asyncio.to_thread(self.journal.pending, turn.user_id, self.config.batch_size)
        if len(waiting) >= self.config.batch_size:
            self._wake[turn.user_id].set()
        await asyncio.to_thread(self._update_gauges)

    async def submit_fact(self, fact: Fact) -> None:
        """Journal `fact` durably (raises JournalError for an invalid fact) and deliver it at once."""
        await asyncio.to_thread(self.journal.append_fact, fact)
        self._ensure_task(fact.user_id)
        self._wake[fact.user_id].set()
        await asyncio.to_thread(self._update_gauges)

    async def flush_user(self, user_id: str) -> None:
        """Deliver the user's waiting turns now, without waiting for the batch to fill (session end):
        those journaled and those still being journaled by a `submit` that started before this call."""
        await asyncio.gather(*self._journaling.get(user_id, ()), return_exceptions=True)
        if await asyncio.to_thread(self.journal.pending, user_id, 1):
            self._flush_users.add(user_id)
            self._ensure_task(user_id)
            self._wake[user_id].set()

    async def flush(self) -> None:
        """Deliver everything now (graceful shutdown); waits while the backend is down."""
        self._flushing = True
        try:
            while users := await asyncio.to_thread(self.journal.users_with_pending):
                for user_id in users:
                    self._ensure_task(user_id)
                    self._wake[user_id].set()
                await asyncio.sleep(0.05)
        finally:
            self._flushing = False

    async def close(self) -> None:
        await cancel_and_wait(self._tasks.values())

    def _ensure_task(self, user_id: str) -> None:
        if user_id not in self._wake:
            self._wake[user_id] = asyncio.Event()
        task = self._tasks.get(user_id)
        if task is None or task.done():
            self._tasks[user_id] = asyncio.create_task(self._deliver(user_id))

    async def _deliver(self, user_id: str) -> None:
        wake = self._wake[user_id]
        while True:
            if await self._deliver_facts(user_id):
                continue  # more may have come meanwhile
            entries = await asyncio.to_thread(self.journal.pending, user_id, self.config.batch_size)
            if not entries:
                if wake.is_set():  # a fact journaled while the journal was being read
                    wake.clear()
                    continue
                self._flush_users.discard(user_id)
                return  # a new submit starts a new task
            oldest_wait = time.time() - entries[0].journaled_at
            batch_due = len(entries) >= self.config.batch_size or oldest_wait >= self.config.flush_interval_s
            if not (batch_due or self._flushing or user_id in self._flush_users):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), self.config.flush_interval_s - oldest_wait)
                wake.clear()
                continue
            turns = [e.turn for e in entries]
            started = time.perf_counter()
            ids = [t.turn_id for t in turns]
            await self._write_with_retries(
                user_id,
                f"{len(ids)} turns",
                partial(self.backend.write_turns, user_id, turns),
                any(e.attempts for e in entries),
                partial(self.journal.record_send, ids),
                partial(self.journal.record_failure, ids),
            )
            FLUSH_SECONDS.observe(time.perf_counter() - started)
            BATCH_SIZE.observe(len(turns))
            now = time.time()
            for t in turns:
                LAG_SECONDS.observe(max(now - t.ended_at, 0.0))
            await asyncio.to_thread(self.journal.confirm, ids)
            await asyncio.to_thread(self._update_gauges)
            if self.on_delivered is not None:
                self.on_delivered(user_id)

    async def _deliver_facts(self, user_id: str) -> bool:
        """Deliver the user's waiting facts, each retried until Letta has it; False when none waited."""
        entries = await asyncio.to_thread(self.journal.pending_facts, user_id, self.config.batch_size)
        for entry in entries:
            ids = [entry.fact.fact_id]
            await self._write_with_retries(
                user_id,
                "a fact",
                partial(self.backend.write_fact, entry.fact),
                entry.attempts > 0,
                partial(self.journal.record_fact_send, ids),
                partial(self.journal.record_fact_failure, ids),
            )
            await asyncio.to_thread(self.journal.confirm_facts, ids)
            await asyncio.to_thread(self._update_gauges)
        return bool(entries)

    async def _write_with_retries(
        self,
        user_id: str,
        what: str,
        send: Callable[[bool], Awaitable[None]],  # called with `maybe_delivered`
        maybe_delivered: bool,
        record_send: Callable[[], None],
        record_failure: Callable[[str], None],
    ) -> None:
        """`send(maybe_delivered)` until it succeeds; `record_send` / `record_failure` keep the journal's
        account (blocking: they run in a worker thread)."""

        async def on_failure(exc: BaseException | None, state: RetryCallState) -> None:
            BACKEND_ERRORS.inc()
            await asyncio.to_thread(record_failure, repr(exc))
            self._failing = True
            delay = state.upcoming_sleep
            log.warning(
                "memory write for %s failed (attempt %d, %s kept in the journal): %r; retrying in %.1f s",
                user_id,
                state.attempt_number,
                what,
                exc,
                delay,
            )

        retrying = retry_forever(
            retry_on=Exception,
            min_wait_s=self.config.retry_min_s,
            max_wait_s=self.config.retry_max_s,
            on_retry=on_failure,
        )
        async for attempt in retrying:
            with attempt:
                await asyncio.to_thread(record_send)
                # A failed attempt may still have landed (say Letta timed out but went on).
                first_send = attempt.retry_state.attempt_number == 1 and not maybe_delivered
                await send(not first_send)
        if self._failing:
            log.info("memory backend recovered: delivered %s for %s", what, user_id)
            self._failing = False

    def _update_gauges(self) -> None:
        """Reads the journal: from async code, call it in a worker thread."""
        QUEUE_DEPTH.set(len(self.journal))
        FACTS_DEPTH.set(self.journal.fact_count())
        JOURNAL_BYTES.set(self.journal.size_bytes())
