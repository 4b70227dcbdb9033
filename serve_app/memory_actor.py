"""The one long-lived memory actor: journal → batches → Letta, and the users' core memory for prompts;
and the router's sides of it: the sink that hands it turns, the memory read path, and the backend of
the built-in memory tools (`search_memory`, `remember`).

A detached, named Ray actor (not a Serve deployment): Serve may restart or scale the router and stages at
will, while memory writes must have exactly one owner of the journal. `get_if_exists` makes every router
replica find the same actor; `max_restarts=-1` brings it back after a crash, and on start it replays
whatever the journal still holds. Calls to it are retried across a restart (`max_task_retries=-1`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import ray
from ray.exceptions import RayActorError

from actors.config import Settings, load_settings
from actors.conversation.events import FinishedTurn
from actors.memory.cache import MemoryCache, MemoryChanges
from actors.memory.journal import JournalError
from actors.memory.tools import build_memory_tools
from actors.retry import RetryCallState, retry_forever
from actors.tools.base import ServerTool, ToolError

if TYPE_CHECKING:
    from actors.memory.service import MemoryService

log = logging.getLogger(__name__)

ACTOR_NAME = "voice-agent-memory"
NAMESPACE = "voice-agent"
DRAIN_TIMEOUT_S = 10.0
HEAD_NODE_RESOURCE = "node:__internal_head__"


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class MemoryActor:
    """Ray wiring around `actors.memory.service.MemoryService`; see that module for the behaviour."""

    async def __init__(self, config: dict[str, Any]) -> None:  # type: ignore[misc]  # Ray awaits it
        # Replays what the journal holds, at once (after a crash too); the journal opens off the loop.
        # Imported here: only the memory actor's process needs the Letta client (~0.45 s of imports that
        # every router replica would otherwise pay at start).
        from actors.memory.service import MemoryService

        self.service: MemoryService = await MemoryService.open(load_settings(config))

    async def submit(self, turn: dict[str, Any]) -> None:
        await self.service.submit(FinishedTurn(**turn))

    async def session_ended(self, user_id: str) -> None:
        await self.service.session_ended(user_id)

    async def read_memory(self, user_id: str) -> str:
        return await self.service.read_memory(user_id)

    async def memory_changes(self, log_id: str | None, seq: int) -> MemoryChanges:
        return await self.service.memory_changes(log_id, seq)

    # The memory tools' calls answer {"ok": ...} or {"error": message}: a `ToolError` raised here would
    # reach the router wrapped in Ray's traceback, and its message is what the model reads.
    async def search_memory(self, user_id: str, query: str, limit: int) -> dict[str, Any]:
        try:
            return {"ok": await self.service.search_memory(user_id, query, limit)}
        except ToolError as exc:
            return {"error": str(exc)}

    async def remember(self, user_id: str, text: str) -> dict[str, Any]:
        try:
            return {"ok": await self.service.remember(user_id, text)}
        except ToolError as exc:
            return {"error": str(exc)}

    async def health(self) -> str | None:
        return await self.service.health()

    async def pending(self) -> int:
        return await asyncio.to_thread(self.service.pending)

    async def metrics_text(self) -> bytes:
        return self.service.metrics_text()

    def __ray_shutdown__(self) -> None:
        # Graceful exit (`__ray_terminate__`, the last handle gone): the actor's event loop has
        # stopped by now, so the drain runs on a loop of its own. A crash skips this; the journal
        # then replays on the next start.
        left = self.service.drain_blocking(DRAIN_TIMEOUT_S)
        log.info("memory actor stopped with %d turns still journaled", left)


def memory_actor(config: dict[str, Any]) -> Any:
    """The cluster's memory actor, created by the first router replica that asks."""
    return MemoryActor.options(  # type: ignore[attr-defined]
        name=ACTOR_NAME,
        namespace=NAMESPACE,
        lifetime="detached",
        get_if_exists=True,
        # Always on the head node, where the journal's volume is mounted (k8s/base/rayservice.yaml), so a
        # restarted actor finds its journal; this is Ray's own head-node resource (HEAD_NODE_RESOURCE_NAME).
        resources={HEAD_NODE_RESOURCE: 0.001},
    ).remote(config)


class ActorMemorySink:
    """Hands finished turns to the memory actor; the session never waits on it.

    The actor journals a turn before its `submit` returns. A turn it refuses as invalid (`JournalError`:
    oversized text, a malformed user id) is logged with the reason. While the actor is dead (say its
    journal could not be opened), the turn is held here and retried with backoff and jitter, the actor
    looked up (or created) again each time; only beyond `max_held` turns held does a turn get dropped,
    with an error naming it. A restarting actor needs none of this: Ray retries the call itself.
    """

    def __init__(self, resolve: Callable[[], Any], max_held: int = 10_000) -> None:
        self._resolve = resolve
        self.actor = resolve()
        self.max_held = max_held
        self._pending: set[asyncio.Task[None]] = set()

    def reconnect(self) -> None:
        """The actor is gone for good: look it up (or create it) again."""
        self.actor = self._resolve()

    def submit(self, turn: FinishedTurn) -> None:
        if len(self._pending) >= self.max_held:
            log.error(
                "memory actor unreachable with %d turns held: dropping turn %s of user %s",
                len(self._pending),
                turn.turn_id,
                turn.user_id,
            )
            return
        self._in_background(self._deliver(turn))

    def session_ended(self, user_id: str) -> None:
        # After the session's last turn: Ray runs an actor's calls from one caller in order.
        self._in_background(self._end_session(user_id))

    def _in_background(self, call: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(call)
        self._pending.add(task)  # referenced until done, so the loop cannot drop it
        task.add_done_callback(self._pending.discard)

    async def _end_session(self, user_id: str) -> None:
        try:
            await self.actor.session_ended.remote(user_id)
        except Exception as exc:  # only hastens delivery: the turns are journaled either way
            log.warning("memory actor did not take the end of %s's session: %r", user_id, exc)

    async def _deliver(self, turn: FinishedTurn) -> None:
        def on_failure(exc: BaseException | None, state: RetryCallState) -> None:
            log.error(
                "memory actor unreachable (%r): holding turn %s of user %s, retry %d in %.1f s",
                exc,
                turn.turn_id,
                turn.user_id,
                state.attempt_number,
                state.upcoming_sleep,
            )
            self.reconnect()

        retrying = retry_forever(retry_on=RayActorError, min_wait_s=0.5, max_wait_s=30, on_retry=on_failure)
        try:
            async for attempt in retrying:
                with attempt:
                    await self.actor.submit.remote(asdict(turn))
        except JournalError as exc:  # Ray re-raises the actor's exception as this type too
            log.error("memory actor rejected turn %s of user %s: %s", turn.turn_id, turn.user_id, exc)
        if retrying.statistics.get("attempt_number", 1) > 1:
            log.info("memory actor reachable again: turn %s delivered", turn.turn_id)


async def memory_problem(sink: ActorMemorySink, timeout_s: float = 3.0) -> str | None:
    """What `/readyz` says about long-term memory: None while the memory actor reaches Letta, else its
    own account of what is down, or that the actor itself is not answering (Ray restarts it; the
    router holds the turns meanwhile). `timeout_s` stays inside the router's 5 s guard."""
    try:
        async with asyncio.timeout(timeout_s):
            problem: str | None = await sink.actor.health.remote()
            return problem
    except Exception as exc:
        log.warning("memory actor health check failed: %r", exc)
        if isinstance(exc, RayActorError):
            sink.reconnect()  # gone for good, not restarting: look it up (or create it) again
        return "the memory actor is not answering; finished turns wait in the router until it does"


class ActorMemoryTools:
    """The memory tools' backend on the router: each call goes to the memory actor, which owns the
    Letta client and the journal (`actors.memory.tools.MemoryToolBackend`). A dead actor is looked up
    again and the call fails as a `ToolError`; the tool's timeout bounds a call across a restart."""

    def __init__(self, sink: ActorMemorySink) -> None:
        self.sink = sink

    async def search_memory(self, user_id: str, query: str, limit: int) -> dict[str, Any]:
        return dict(await self._call("search_memory", user_id, query, limit))

    async def remember(self, user_id: str, text: str) -> str:
        return str(await self._call("remember", user_id, text))

    async def _call(self, method: str, *args: Any) -> Any:
        try:
            answer = await getattr(self.sink.actor, method).remote(*args)
        except RayActorError as exc:
            self.sink.reconnect()
            raise ToolError("long-term memory is not answering right now; try again later") from exc
        if "error" in answer:
            raise ToolError(answer["error"])
        return answer["ok"]


def actor_memory_tools(sink: ActorMemorySink, settings: Settings) -> list[ServerTool]:
    """The router's built-in memory tools, calling the memory actor; none when `memory_tools` is off."""
    return build_memory_tools(ActorMemoryTools(sink)) if settings.memory_tools else []


def actor_memory_context(sink: ActorMemorySink, settings: Settings) -> MemoryCache:
    """The router's memory read path: the one `MemoryCache` (see `actors.memory.cache` for why it lives
    here and how stale it may be), reading through the memory actor and following its change log. Its
    `context` is what a turn awaits."""

    async def read(user_id: str) -> str:
        return await sink.actor.read_memory.remote(user_id)

    async def changes(log_id: str | None, seq: int) -> MemoryChanges:
        try:
            return await sink.actor.memory_changes.remote(log_id, seq)
        except RayActorError:
            sink.reconnect()  # a restarting actor needs none of this: Ray retries the call itself
            raise

    return MemoryCache(
        read,
        changes,
        ttl_s=settings.memory_cache_ttl_s,
        budget_s=settings.memory_read_budget_ms / 1000,
    )
