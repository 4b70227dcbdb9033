"""The user's long-term memory, read into every prompt without costing the turn latency.

`MemoryCache.context(user_id)` answers from the cache when it can. A stale entry is returned at once and
refreshed in the background; a missing one is fetched, but the turn waits at most `budget_s` for it
(then goes on without memory while the fetch completes for the next turn). `invalidate` refreshes a
user's entry after a memory write changed it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

# None: not known yet (another cache's read is still under way): nothing is cached, the next turn asks again.
Fetch = Callable[[str], Awaitable[str | None]]


@dataclass
class _Entry:
    text: str
    fetched_at: float


class MemoryCache:
    def __init__(
        self, fetch: Fetch, ttl_s: float = 60.0, budget_s: float = 0.05, max_users: int = 10_000
    ) -> None:
        self._fetch = fetch
        self.ttl_s = ttl_s
        self.budget_s = budget_s
        self.max_users = max_users  # least recently used entries beyond this are dropped
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._inflight: dict[str, asyncio.Task[None]] = {}

    async def context(self, user_id: str) -> str | None:
        entry = self._entries.get(user_id)
        if entry is not None:
            self._entries.move_to_end(user_id)
            if asyncio.get_running_loop().time() - entry.fetched_at > self.ttl_s:
                self._refresh(user_id)
            return entry.text
        task = self._refresh(user_id)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(task), self.budget_s)
        entry = self._entries.get(user_id)
        return entry.text if entry else None

    def invalidate(self, user_id: str) -> None:
        """Memory changed: fetch it again now (the old copy serves until then)."""
        self._refresh(user_id, force=True)

    def _refresh(self, user_id: str, force: bool = False) -> asyncio.Task[None]:
        task = self._inflight.get(user_id)
        if task is not None and not task.done() and not force:
            return task
        task = asyncio.create_task(self._load(user_id))
        self._inflight[user_id] = task
        return task

    async def _load(self, user_id: str) -> None:
        try:
            text = await self._fetch(user_id)
        except Exception as exc:
            # Keep serving the old copy; the next turn past the TTL tries again.
            log.warning("memory read for %s failed: %r", user_id, exc)
            return
        finally:
            if self._inflight.get(user_id) is asyncio.current_task():
                del self._inflight[user_id]
        if text is None:
            return
        self._entries[user_id] = _Entry(text, asyncio.get_running_loop().time())
        self._entries.move_to_end(user_id)
        while len(self._entries) > self.max_users:
            self._entries.popitem(last=False)
