"""The user's long-term memory as it goes into prompts: one read path, one cache, one staleness rule.

The path: a turn asks `MemoryCache.context(user_id)` in its own process and gets the cached copy at
once. Reads run in the background: `fetch` reads the user's core memory blocks from Letta (under Serve,
through the memory actor that owns the user's agent, `serve_app.memory_actor`), and the cache follows
the writer's `MemoryChangeLog` to learn which users' memory a write changed.

Why the cache lives with the turn (in each router replica), not in the memory actor: a prompt must
never wait more than the read budget (`memory_read_budget_ms`, 50 ms), and a call to another process
costs a hop (~3 ms) and queues behind whatever that process is doing; a copy in the turn's own
process costs nothing. Only a user with no copy yet waits, and at most `budget_s`: past it the turn
goes on without memory and the read completes in the background for the next turn. The actor keeps no
copy of its own, so there is one cache and one budget.

The staleness rule, the only one: a prompt gets the cached copy as it is, and the copy is read again
in the background once it is older than `ttl_s` (`memory_cache_ttl_s`) and as soon as the writer has
delivered a batch of that user's turns to Letta (the agent may have rewritten its blocks while reading
them). When the change log cannot say which users changed (the memory actor restarted, or this cache
fell too far behind), every copy counts as older than `ttl_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from actors.retry import RetryCallState, retry_forever
from actors.tasks import cancel_and_wait

log = logging.getLogger(__name__)

Fetch = Callable[[str], Awaitable[str]]


@dataclass(frozen=True)
class MemoryChanges:
    """The users whose memory was written after a cursor (`seq` of log `log_id`), and the new cursor."""

    log_id: str
    seq: int
    users: tuple[str, ...] | None  # None: the log cannot say (another log, or the cursor fell out of it)


ChangesSince = Callable[[str | None, int], Awaitable[MemoryChanges]]


class MemoryChangeLog:
    """The writer's side: which users' memory was written, in order, for caches to follow (`since`).

    Held in memory by whoever writes (the memory actor); a new log (after a restart) has a new id, so a
    cache that followed the old one knows it may have missed changes.
    """

    def __init__(self, keep: int = 10_000) -> None:
        self.log_id = uuid.uuid4().hex
        self._seq = 0
        self._recent: deque[tuple[int, str]] = deque(maxlen=keep)
        self._changed = asyncio.Event()

    def record(self, user_id: str) -> None:
        """A batch of `user_id`'s turns reached the memory backend: their memory may have changed."""
        self._seq += 1
        self._recent.append((self._seq, user_id))
        # Wake every waiter, and give later ones a fresh event.
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def since(self, log_id: str | None, seq: int, wait_s: float = 30.0) -> MemoryChanges:
        """The users changed after `seq` of log `log_id`; when there are none yet, waits up to `wait_s`
        for one (a long poll: followers hear of a write at once without polling)."""
        if log_id == self.log_id and seq == self._seq:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), wait_s)
        lost = bool(self._recent) and self._recent[0][0] > seq + 1  # dropped from the bounded log
        if log_id != self.log_id or seq > self._seq or lost:
            return MemoryChanges(self.log_id, self._seq, None)
        users = tuple(dict.fromkeys(user for at, user in self._recent if at > seq))
        return MemoryChanges(self.log_id, self._seq, users)


@dataclass
class _Entry:
    text: str
    fetched_at: float


class MemoryCache:
    """Each user's memory text for prompts (see the module docstring for the path and the staleness
    rule). `changes`, when given, is the writer's `MemoryChangeLog.since` (or a call to it), followed
    in the background from the first read on."""

    def __init__(
        self,
        fetch: Fetch,
        changes: ChangesSince | None = None,
        ttl_s: float = 60.0,
        budget_s: float = 0.05,
        max_users: int = 10_000,
        retry_max_s: float = 30.0,
    ) -> None:
        self._fetch = fetch
        self._changes = changes
        self.ttl_s = ttl_s
        self.budget_s = budget_s
        self.max_users = max_users  # least recently used entries beyond this are dropped
        self.retry_max_s = retry_max_s  # longest wait between attempts to reach the change log
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self._follower: asyncio.Task[None] | None = None

    async def context(self, user_id: str) -> str | None:
        """The user's memory text for a prompt, or None (none yet, or not read within the budget)."""
        self._follow()
        entry = self._entries.get(user_id)
        if entry is not None:
            self._entries.move_to_end(user_id)
            if asyncio.get_running_loop().time() - entry.fetched_at > self.ttl_s:
                self._refresh(user_id)
            return entry.text or None
        task = self._refresh(user_id)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(task), self.budget_s)
        entry = self._entries.get(user_id)
        return (entry.text or None) if entry else None

    def invalidate(self, user_id: str) -> None:
        """Memory changed: fetch it again now (the old copy serves until then)."""
        self._refresh(user_id, force=True)

    def expire_all(self) -> None:
        """Every copy counts as older than the TTL: each is read again on its next use (and still
        served at once). For when the change log cannot say which users changed."""
        for entry in self._entries.values():
            entry.fetched_at = float("-inf")

    async def close(self) -> None:
        """Stop following the change log and cancel reads in flight."""
        tasks = [*self._inflight.values(), *([self._follower] if self._follower else [])]
        await cancel_and_wait(tasks)

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
            text = None
        newest = self._inflight.get(user_id) is asyncio.current_task()
        if newest:
            del self._inflight[user_id]
        # A read started before a write may end after the read the write started: the newer one wins,
        # and the older one only fills a gap.
        if text is None or not (newest or user_id not in self._entries):
            return
        self._entries[user_id] = _Entry(text, asyncio.get_running_loop().time())
        self._entries.move_to_end(user_id)
        while len(self._entries) > self.max_users:
            self._entries.popitem(last=False)

    def _follow(self) -> None:
        if self._changes is not None and (self._follower is None or self._follower.done()):
            self._follower = asyncio.create_task(self._follow_changes(self._changes))

    async def _follow_changes(self, changes: ChangesSince) -> None:
        def on_failure(exc: BaseException | None, state: RetryCallState) -> None:
            log.warning(
                "memory change log unreachable (%r): cached memory refreshes on its TTL meanwhile; "
                "retry %d in %.1f s",
                exc,
                state.attempt_number,
                state.upcoming_sleep,
            )

        log_id: str | None = None
        seq = 0
        while True:
            retrying = retry_forever(
                retry_on=Exception, min_wait_s=0.5, max_wait_s=self.retry_max_s, on_retry=on_failure
            )
            update: MemoryChanges = await retrying(changes, log_id, seq)
            if update.users is None:
                self.expire_all()
            else:
                for user_id in update.users:
                    # Only users this cache holds (or is reading): others are read when first asked.
                    if user_id in self._entries or user_id in self._inflight:
                        self.invalidate(user_id)
            log_id, seq = update.log_id, update.seq
