"""The memory service: every finished turn journaled and batched to Letta, and each user's core memory
read back for prompts. Plain asyncio with no Ray: `serve_app.memory_actor` runs one of these as the
cluster's single long-lived memory actor; tests and tools can run it in process.

- `submit` journals a turn durably before returning (it raises `JournalError`, with the reason, for a
  turn that can never be stored) and leaves delivery to the background writer.
- `read_memory` reads the user's core memory blocks from Letta, uncached: the one cache, with the read
  budget and the staleness rule, is `actors.memory.cache.MemoryCache`, next to the turns that use it.
  `memory_changes` tells that cache which users' memory a delivered batch may have changed.
- `remember` journals a fact for the user's archival memory and returns (delivered at once in the
  background, retried like turns); `search_memory` searches the user's archival memory and past
  conversation in Letta, plus the facts still waiting in the journal. These back the built-in memory
  tools (`actors.memory.tools`); both take the user id from the caller's identity, never from the model.
- `drain_blocking` delivers what is held (graceful shutdown, after the event loop stopped), bounded by a
  deadline: whatever is left stays in the journal for the next start.

Journal calls (SQLite, fsync'd) never run on the event loop: the loop also answers reads and the change
log's long polls. The constructor opens the journal, so async callers build the service in a worker
thread (`open`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

from prometheus_client import generate_latest

from actors.config import Settings
from actors.conversation.events import FinishedTurn
from actors.memory.cache import MemoryChangeLog, MemoryChanges
from actors.memory.journal import Fact, JournalError, TurnJournal, user_id_problem
from actors.memory.letta import LettaMemory, MemoryHit, letta_config, word_matches
from actors.memory.writer import MEMORY_REGISTRY, MemoryWriter, WriterConfig
from actors.probe import CachedProbe
from actors.tools.base import ToolError

log = logging.getLogger(__name__)

# Inside the 3 s the router gives the memory actor to answer `/readyz`'s check (and its 5 s guard), so a
# silent Letta is reported as such, not as a silent actor.
LETTA_PROBE_TIMEOUT_S = 2.0
MAX_QUERY_CHARS = 500
MAX_HIT_CHARS = 400  # each result's text, so the model's context stays small


class MemoryService:
    """What the memory actor runs (see the module docstring): the journal, the writer to Letta, the
    users' memory for prompts and the log of whose memory changed."""

    def __init__(self, settings: Settings, letta: LettaMemory | None = None) -> None:
        """Blocking (opens and checks the journal); from async code use `open`."""
        self.letta = letta or LettaMemory(letta_config(settings))
        # Raises JournalError (with the path and the reason) when the journal cannot be written.
        self.journal = TurnJournal(Path(settings.memory_journal_path).expanduser())
        self.changes = MemoryChangeLog()
        self.writer = MemoryWriter(
            self.journal,
            self.letta,
            WriterConfig(
                batch_size=settings.memory_batch_size,
                flush_interval_s=settings.memory_flush_interval_s,
                retry_max_s=settings.memory_retry_max_s,
            ),
            # Letta's agent read the turns and may have rewritten its blocks: caches read them again.
            on_delivered=self.changes.record,
        )
        self._letta_probe = CachedProbe(
            lambda: self.letta.server_problem(LETTA_PROBE_TIMEOUT_S), ttl_s=settings.readyz_probe_ttl_s
        )
        self._started = False
        log.info(
            "memory service: Letta at %s, journal %s (%d turns pending)",
            settings.letta_base_url,
            self.journal.path,
            len(self.journal),
        )

    @classmethod
    async def open(cls, settings: Settings) -> MemoryService:
        """Build the service in a worker thread (the journal's open and integrity check are disk I/O)
        and start delivering what the journal holds."""
        service = await asyncio.to_thread(cls, settings)
        await service.start()
        return service

    async def start(self) -> None:
        """Resume delivering what the journal holds; needs the running event loop. Idempotent."""
        if not self._started:
            self._started = True
            await self.writer.start()

    async def submit(self, turn: FinishedTurn) -> None:
        """Journal `turn` durably (raises `JournalError` for a turn that can never be stored)."""
        await self.start()
        await self.writer.submit(turn)

    async def session_ended(self, user_id: str) -> None:
        """Deliver the user's waiting turns now rather than at the end of the flush window."""
        await self.start()
        await self.writer.flush_user(user_id)

    async def remember(self, user_id: str, text: str) -> str:
        """Journal `text` as a fact for the user's archival memory; returns its fact id once it is on
        disk (raises `ToolError` for a fact that can never be stored)."""
        await self.start()
        fact = Fact(uuid.uuid4().hex, user_id, text.strip())
        try:
            await self.writer.submit_fact(fact)
        except JournalError as exc:
            raise ToolError(str(exc)) from exc
        return fact.fact_id

    async def search_memory(self, user_id: str, query: str, limit: int = 5) -> dict[str, Any]:
        """What the user's memory holds about `query`: `facts` (archival memory, facts still waiting
        for Letta first) and `conversation` (their past turns), at most `limit` of each, texts cut to
        `MAX_HIT_CHARS`. Raises `ToolError` when Letta does not answer within its search timeout."""
        if (problem := user_id_problem(user_id)) is not None:
            raise ToolError(problem)
        query = query.strip()
        if not query:
            raise ToolError("the query is empty")
        if len(query) > MAX_QUERY_CHARS:
            raise ToolError(f"the query has {len(query)} characters; the limit is {MAX_QUERY_CHARS}")
        waiting = await asyncio.to_thread(self.journal.pending_facts, user_id)
        saved = [MemoryHit(e.fact.text, "just now (not yet in Letta)") for e in waiting]
        try:
            async with asyncio.timeout(self.letta.config.search_timeout_s):
                archival, conversation = await asyncio.gather(
                    self.letta.search_archival(user_id, query, limit),
                    self.letta.search_conversation(user_id, query, limit),
                )
        except Exception as exc:
            log.warning("memory search for %s failed: %r", user_id, exc)
            raise ToolError("long-term memory is unreachable right now; try again later") from exc
        # A fact delivered while this search ran is both waiting and in Letta: listed once.
        facts = list({hit.text: hit for hit in [*word_matches(query, saved, limit), *archival]}.values())
        facts = facts[:limit]
        return {
            "facts": [_compact(hit) for hit in facts],
            "conversation": [_compact(hit) for hit in conversation[:limit]],
        }

    async def read_memory(self, user_id: str) -> str:
        """The user's core memory blocks as prompt text, read from Letta now."""
        return await self.letta.read_memory(user_id)

    async def memory_changes(self, log_id: str | None, seq: int) -> MemoryChanges:
        """Users whose memory changed after `seq` of log `log_id` (waits a while for one; see
        `MemoryChangeLog.since`)."""
        return await self.changes.since(log_id, seq)

    async def health(self) -> str | None:
        """None while Letta answers; else what is wrong, and how many finished turns wait in the journal
        for it (delivered once it answers). Cached like the stages' upstream checks."""
        problem = await self._letta_probe.check()
        if problem is None:
            return None
        waiting = await asyncio.to_thread(self.pending)
        return f"{problem}; finished turns waiting in the journal for it: {waiting}"

    def pending(self) -> int:
        """Turns in the journal (blocking: from async code, call it in a worker thread)."""
        return len(self.journal)

    def drain_blocking(self, timeout_s: float) -> int:
        """Deliver what the journal holds, for at most `timeout_s`, from a caller with no running event
        loop (a shutdown hook after the loop stopped): a fresh writer and Letta client on a loop of their
        own. Returns the turns still in the journal (delivered on the next start)."""

        async def run() -> int:
            letta = LettaMemory(self.letta.config)
            writer = MemoryWriter(self.journal, letta, self.writer.config)
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(writer.flush(), timeout_s)
            finally:
                await writer.close()
                await letta.close()
            return await asyncio.to_thread(len, self.journal)

        return asyncio.run(run())

    async def close(self) -> None:
        """Stop delivering (what is left stays journaled) and release Letta's client and the journal."""
        await self.writer.close()
        await self.letta.close()
        await asyncio.to_thread(self.journal.close)

    @staticmethod
    def metrics_text() -> bytes:
        """The memory metrics in Prometheus text format (queue depth, batches, flush time, errors, lag)."""
        return generate_latest(MEMORY_REGISTRY)


def _compact(hit: MemoryHit) -> dict[str, str]:
    text = hit.text if len(hit.text) <= MAX_HIT_CHARS else hit.text[: MAX_HIT_CHARS - 1] + "…"
    return asdict(MemoryHit(text, hit.at))
