"""What the router replicas of a Ray cluster share: revoked client secrets and their metrics.

One small detached actor holds both, in memory: a revocation lasts as long as its secret (two hours at
most), and metrics are reported again every few seconds. Each router reports its Prometheus text every
`REPORT_S` (the first report starts the actor), and `/metrics` on any replica answers the merged view
(`serve_app.api.metrics_merge`). Each router also keeps a copy of the revocation list refreshed at most once
a second, so checking a secret (at every WebSocket connect and REST request, and every few seconds for an
open session) costs no hop; a revocation made on another replica takes effect here within that second.
While the actor is unreachable the last copy stays in force, `/metrics` falls back to this replica's
own figures, and the failure is logged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import ray

from serve_app.api.credentials import LocalRevocations
from serve_app.api.metrics_merge import merge_expositions
from serve_app.memory_actor import NAMESPACE

log = logging.getLogger(__name__)

ACTOR_NAME = "voice-agent-router-state"
REFRESH_S = 1.0  # the revocation list's copy on each router
REPORT_S = 5.0  # each router's metrics report
LIVE_S = 3 * REPORT_S  # a router that has not reported for this long is gone (its gauges no longer count)
CALL_TIMEOUT_S = 2.0  # reading: a stale copy is better than a stalled request
START_TIMEOUT_S = 30.0  # the first call that starts the actor's process


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class RouterStateActor:
    def __init__(self) -> None:
        self.revoked = LocalRevocations()
        self.reports: dict[str, str] = {}
        self.reported_at: dict[str, float] = {}

    def revoke(self, secret_id: str, expires_at: float) -> None:
        self.revoked.add(secret_id, expires_at)

    def revocations(self) -> dict[str, float]:
        return self.revoked.snapshot()

    def report(self, replica_id: str, exposition: str) -> None:
        self.reports[replica_id] = exposition
        self.reported_at[replica_id] = time.monotonic()

    def merged_metrics(self) -> str:
        live = [r for r, at in self.reported_at.items() if time.monotonic() - at < LIVE_S]
        return merge_expositions(self.reports, live)


def _create() -> Any:
    return RouterStateActor.options(  # type: ignore[attr-defined]
        name=ACTOR_NAME, namespace=NAMESPACE, lifetime="detached", get_if_exists=True
    ).remote()


class SharedRouterState:
    """The router's side: `credentials.Revocations` and the metrics hub, backed by the cluster's actor."""

    def __init__(self, replica_id: str) -> None:
        self.replica_id = replica_id
        self._copy: dict[str, float] = {}
        self._fetched = float("-inf")
        self._actor: Any = None
        self._lock = asyncio.Lock()

    # ------------------------------------------------------------------ revocations
    async def revoke(self, secret_id: str, expires_at: float) -> None:
        if self._actor is None:
            self._actor = _create()
        await asyncio.wait_for(self._actor.revoke.remote(secret_id, expires_at), START_TIMEOUT_S)
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
                    self._copy = await asyncio.wait_for(self._actor.revocations.remote(), CALL_TIMEOUT_S)
            except Exception as exc:
                log.warning("revocation list unreachable, keeping the last copy: %r", exc)

    @staticmethod
    def _existing_actor() -> Any:
        try:
            return ray.get_actor(ACTOR_NAME, namespace=NAMESPACE)
        except ValueError:  # not started yet: nothing was revoked or reported
            return None

    # ------------------------------------------------------------------ metrics
    async def report_forever(self, exposition: Callable[[], str]) -> None:
        """Report this replica's metrics every REPORT_S for as long as the replica runs."""
        while True:
            try:
                if self._actor is None:
                    self._actor = _create()
                report = self._actor.report.remote(self.replica_id, exposition())
                await asyncio.wait_for(report, START_TIMEOUT_S)
            except Exception as exc:
                log.warning("metrics report failed: %r", exc)
            await asyncio.sleep(REPORT_S)

    async def merged_metrics(self, exposition: Callable[[], str]) -> str:
        """The whole deployment's metrics, with this replica's figures fresh."""
        if self._actor is None:
            self._actor = _create()
        await asyncio.wait_for(self._actor.report.remote(self.replica_id, exposition()), CALL_TIMEOUT_S)
        merged: str = await asyncio.wait_for(self._actor.merged_metrics.remote(), CALL_TIMEOUT_S)
        return merged
