"""The memory service: every finished turn journaled, batched to Letta, and each user's core memory cached
for prompts. Plain asyncio with no Ray: `serve_app.memory_actor` runs one of these as the cluster's
single long-lived memory actor; tests and tools can run it in process.

- `submit` journals a turn durably before returning (it raises `JournalError`, with the reason, for a
  turn that can never be stored) and leaves delivery to the background writer.
- `memory_context` answers from a per-user cache within the read budget; the cache refreshes on its TTL
  and right after each batch of that user's turns is confirmed by Letta (the agent may have changed
  its memory blocks while reading them).
- `drain_blocking` delivers what is held (graceful shutdown, after the event loop stopped), bounded by a
  deadline: whatever is left stays in the journal for the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from prometheus_client import generate_latest

from actors.config import Settings
from actors.conversation.events import FinishedTurn
from actors.memory.cache import MemoryCache
from actors.memory.journal import TurnJournal
from actors.memory.letta import LettaMemory, letta_config
from actors.memory.writer import MEMORY_REGISTRY, MemoryWriter, WriterConfig

log = logging.getLogger(__name__)


class MemoryService:
    """What the memory actor runs (see the module docstring): the journal, the writer to Letta, and the
    users' memory for prompts."""

    def __init__(self, settings: Settings, letta: LettaMemory | None = None) -> None:
        self.letta = letta or LettaMemory(letta_config(settings))
        # Raises JournalError (with the path and the reason) when the journal cannot be written.
        self.journal = TurnJournal(Path(settings.memory_journal_path).expanduser())
        self.cache = MemoryCache(
            self.letta.read_memory,
            ttl_s=settings.memory_cache_ttl_s,
            budget_s=settings.memory_read_budget_ms / 1000,
        )
        self.writer = MemoryWriter(
            self.journal,
            self.letta,
            WriterConfig(
                batch_size=settings.memory_batch_size,
                flush_interval_s=settings.memory_flush_interval_s,
                retry_max_s=settings.memory_retry_max_s,
            ),
            on_delivered=self._delivered,
        )
        self._started = False
        log.info(
            "memory service: Letta at %s, journal %s (%d turns pending)",
            settings.letta_base_url,
            self.journal.path,
            len(self.journal),
        )

    def start(self) -> None:
        """Resume delivering what the journal holds; needs the running event loop. Idempotent."""
        if not self._started:
            self._started = True
            self.writer.start()

    async def submit(self, turn: FinishedTurn) -> None:
        self.start()
        await self.writer.submit(turn)

    async def session_ended(self, user_id: str) -> None:
        self.start()
        await self.writer.flush_user(user_id)

    async def memory_context(self, user_id: str) -> str | None:
        self.start()
        return await self.cache.context(user_id)

    def pending(self) -> int:
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
            return len(self.journal)

        return asyncio.run(run())

    async def close(self) -> None:
        await self.writer.close()
        await self.letta.close()
        self.journal.close()

    @staticmethod
    def metrics_text() -> bytes:
        """The memory metrics in Prometheus text format (queue depth, batches, flush time, errors, lag)."""
        return generate_latest(MEMORY_REGISTRY)

    def _delivered(self, user_id: str) -> None:
        # Letta's agent read the turns and may have rewritten its blocks: refetch them for prompts.
        self.cache.invalidate(user_id)
