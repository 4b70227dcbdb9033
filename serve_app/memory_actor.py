"""The one long-lived memory actor: journal → batches → Letta, and the users' core memory for prompts.

A detached, named Ray actor (not a Serve deployment): Serve may restart or scale the router and stages at
will, while memory writes must have exactly one owner of the journal. `get_if_exists` makes every router
replica find the same actor; `max_restarts=-1` brings it back after a crash, and on start it replays
whatever the journal still holds. Calls to it are retried across a restart (`max_task_retries=-1`).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import ray

from actors.config import load_settings
from actors.events import FinishedTurn
from actors.journal import TurnJournal
from actors.letta_memory import LettaConfig, LettaMemory
from actors.memory_writer import MemoryWriter, WriterConfig

log = logging.getLogger(__name__)

ACTOR_NAME = "voice-agent-memory"
NAMESPACE = "voice-agent"


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class MemoryActor:
    def __init__(self, config: dict[str, Any]) -> None:
        settings = load_settings(config)
        assert settings.letta_base_url, "the memory actor needs letta_base_url"
        self.letta = LettaMemory(
            LettaConfig(
                base_url=settings.letta_base_url,
                api_key=settings.letta_key,
                llm_config=settings.letta_llm_config,
                embedding_config=settings.letta_embedding_config,
            )
        )
        journal = TurnJournal(Path(settings.memory_journal_path).expanduser())
        self.writer = MemoryWriter(
            journal,
            self.letta,
            WriterConfig(
                batch_size=settings.memory_batch_size,
                flush_interval_s=settings.memory_flush_interval_s,
            ),
        )
        self._started = False
        log.info(
            "memory actor: Letta at %s, journal %s (%d turns pending)",
            settings.letta_base_url,
            journal.path,
            len(journal),
        )

    def _start(self) -> None:
        if not self._started:  # needs the actor's event loop, which __init__ does not have
            self._started = True
            self.writer.start()

    async def submit(self, turn: dict[str, Any]) -> None:
        self._start()
        self.writer.submit(FinishedTurn(**turn))

    async def read_memory(self, user_id: str) -> str:
        self._start()
        return await self.letta.read_memory(user_id)

    async def pending(self) -> int:
        self._start()
        return len(self.writer.journal)

    async def flush(self) -> None:
        self._start()
        await self.writer.flush()


def memory_actor(config: dict[str, Any]) -> Any:
    """The cluster's memory actor, created by the first router replica that asks."""
    return MemoryActor.options(  # type: ignore[attr-defined]
        name=ACTOR_NAME, namespace=NAMESPACE, lifetime="detached", get_if_exists=True
    ).remote(config)


class ActorMemorySink:
    """Hands finished turns to the memory actor without waiting; failures are logged, never silent."""

    def __init__(self, actor: Any) -> None:
        self.actor = actor
        self._pending: set[asyncio.Task[None]] = set()

    def submit(self, turn: FinishedTurn) -> None:
        task = asyncio.get_running_loop().create_task(self._deliver(turn))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _deliver(self, turn: FinishedTurn) -> None:
        try:
            await self.actor.submit.remote(asdict(turn))
        except Exception as exc:
            log.error("memory actor rejected turn %s of user %s: %r", turn.turn_id, turn.user_id, exc)
