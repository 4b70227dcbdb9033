"""Whether this router replica is being replaced, asked of the Serve controller.

Serve tells a replica nothing when it starts draining it (for an upgrade or a scale-down): it stops
routing new requests there and waits for the open ones, and a WebSocket session is an open request that
never ends by itself. The controller knows: the replica's state turns `STOPPING`. Each router replica
asks for its own state every `POLL_S` and returns once it is stopping, so that its sessions can end
cleanly (`serve_app.api.drain`) well before Serve cuts them.

It returns only once a replacement has been running for a poll, too: a replica started at most
`RECENT_S` before this one began stopping, or after (or `HANDOVER_S` after it began stopping, as a
scale-down starts none).
In a rolling update Serve starts the replacement while the old replica drains, and sessions told to
reconnect before it runs would land on another old replica, to be moved again when that one goes.

The call is the controller's `get_deployment_details`, which Ray 2.60 has (the project pins Ray); a
failed call is retried at the next poll and never taken for a drain.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import ray
from ray.serve._private.common import ReplicaState
from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

log = logging.getLogger("ray.serve")

POLL_S = 2.0  # the drain starts at most this late; a replica's poll costs the controller ~1 ms
ABSENT_POLLS = 2  # a replica missing from its deployment this many times in a row has been removed
# Longest wait for a newer replica once this one is stopping. With POLL_S and the drain's grace (20 s)
# it stays within the 30 s Serve's HAProxy ingress keeps a draining replica reachable.
HANDOVER_S = 8.0
RECENT_S = 10.0  # a replica started this close before the drain began counts as its replacement


async def replica_replaced(
    app: str,
    deployment: str,
    replica_id: str,
    poll_s: float = POLL_S,
    handover_s: float = HANDOVER_S,
    controller: Any = None,
) -> None:
    """Return once the controller reports replica `replica_id` of `deployment` stopping (or gone) and
    a replacement running, or `handover_s` after it began stopping. `controller`: the Serve
    controller's actor handle (looked up by name when None)."""
    handle = controller
    absent = 0
    stopping_since: float | None = None
    stopped_at_wall = 0.0  # when it began stopping, as time.time() (replica start times are)
    seen_running: set[str] = set()  # replacements running at the previous poll
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(poll_s)
        try:
            if handle is None:
                handle = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
            details = await handle.get_deployment_details.remote(app, deployment)
        except Exception as exc:
            log.debug("replica state unknown this time (%r): asked again in %.0f s", exc, poll_s)
            handle = controller  # looked up again, unless given
            continue
        mine = next((r for r in details.replicas if r.replica_id == replica_id), None)
        absent = absent + 1 if mine is None else 0
        if stopping_since is None and (
            (mine is not None and mine.state == ReplicaState.STOPPING) or absent >= ABSENT_POLLS
        ):
            stopping_since, stopped_at_wall = loop.time(), time.time()
            log.info("router replica %s is being replaced", replica_id)
        if stopping_since is None:
            continue
        running = {
            r.replica_id
            for r in details.replicas
            if r.state == ReplicaState.RUNNING
            and r.replica_id != replica_id
            and r.start_time_s >= stopped_at_wall - RECENT_S
        }
        # Running at two polls in a row: the ingress (HAProxy reloads and health-checks it) has had a
        # poll's time to take it in.
        ready = running & seen_running
        seen_running = running
        if ready or loop.time() - stopping_since >= handover_s:
            log.info("its sessions move on (%s)", f"replica {min(ready)} runs" if ready else "no replacement")
            return
