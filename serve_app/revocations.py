"""Revoked client secrets shared by every router replica of a Ray cluster.

One small detached actor holds the list (in memory: a secret lives two hours at most, so does its
entry); it is created by the first revocation, so a cluster that never revokes runs no extra process.
Each router keeps a copy refreshed at most once a second, so checking a secret (at every WebSocket
connect and REST request, and every few seconds for an open session) costs no hop; a revocation made
on another replica takes effect here within that second. While the actor is unreachable the last copy
stays in force and the failure is logged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import ray

from serve_app.credentials import LocalRevocations
from serve_app.memory_actor import NAMESPACE

log = logging.getLogger(__name__)

ACTOR_NAME = "voice-agent-revocations"
REFRESH_S = 1.0
CALL_TIMEOUT_S = 2.0  # reading the list: a stale copy is better than a stalled request
REVOKE_TIMEOUT_S = 30.0  # the first revocation starts the actor's process


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class RevocationActor:
    def __init__(self) -> None:
        self.revoked = LocalRevocations()

    def revoke(self, secret_id: str, expires_at: float) -> None:
        self.revoked.add(secret_id, expires_at)

    def snapshot(self) -> dict[str, float]:
        return self.revoked.snapshot()


class SharedRevocations:
    """The router's side: `credentials.Revocations` backed by the cluster's revocation actor."""

    def __init__(self) -> None:
        self._copy: dict[str, float] = {}
        self._fetched = float("-inf")
        self._actor: Any = None
        self._lock = asyncio.Lock()

    async def revoke(self, secret_id: str, expires_at: float) -> None:
        if self._actor is None:
            self._actor = RevocationActor.options(  # type: ignore[attr-defined]
                name=ACTOR_NAME, namespace=NAMESPACE, lifetime="detached", get_if_exists=True
            ).remote()
        await asyncio.wait_for(self._actor.revoke.remote(secret_id, expires_at), REVOKE_TIMEOUT_S)
        self._copy[secret_id] = expires_at

    async def is_revoked(self, secret_id: str) -> bool:
        await self._refresh()
        return secret_id in self._copy

    async def _refresh(self) -> None:
        if time.monotonic() - self._fetched < REFRESH_S:
            return
        async with self._lock:
            if time.monotonic() - self._fetched < REFRESH_S:
                return
            self._fetched = time.monotonic()
            try:
                if self._actor is None:
                    self._actor = await asyncio.to_thread(self._existing_actor)
                if self._actor is not None:
                    self._copy = await asyncio.wait_for(self._actor.snapshot.remote(), CALL_TIMEOUT_S)
            except Exception as exc:
                log.warning("revocation list unreachable, keeping the last copy: %r", exc)

    @staticmethod
    def _existing_actor() -> Any:
        try:
            return ray.get_actor(ACTOR_NAME, namespace=NAMESPACE)
        except ValueError:  # nothing was ever revoked in this cluster
            return None
