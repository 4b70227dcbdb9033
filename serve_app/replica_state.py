"""Whether this router replica is being replaced, asked of the Serve controller.

Serve tells a replica nothing when it starts draining it (for an upgrade or a scale-down): it stops
routing new requests there and waits for the open ones, and a WebSocket session is an open request that
never ends by itself. The controller knows: the replica's state turns `STOPPING`. Each router replica
asks for its own state every `POLL_S` and returns once it is stopping, so that its sessions can end
cleanly (`serve_app.api.drain`) well before Serve cuts them. The call is the controller's
`get_deployment_details`, which Ray 2.60 has (the project pins Ray); a failed call is retried at the
next poll and never taken for a drain.
"""

from __future__ import annotations

import asyncio
import logging

import ray
from ray.serve._private.common import ReplicaState
from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

log = logging.getLogger("ray.serve")

POLL_S = 2.0  # the drain starts at most this late; a replica's poll costs the controller ~1 ms
ABSENT_POLLS = 2  # a replica missing from its deployment this many times in a row has been removed


async def replica_replaced(app: str, deployment: str, replica_id: str, poll_s: float = POLL_S) -> None:
    """Return once the controller reports replica `replica_id` of `deployment` stopping (or gone)."""
    controller = None
    absent = 0
    while True:
        await asyncio.sleep(poll_s)
        try:
            if controller is None:
                controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
            details = await controller.get_deployment_details.remote(app, deployment)
        except Exception as exc:
            log.debug("replica state unknown this time (%r): asked again in %.0f s", exc, poll_s)
            controller = None
            continue
        state = next((r.state for r in details.replicas if r.replica_id == replica_id), None)
        absent = absent + 1 if state is None else 0
        if state == ReplicaState.STOPPING or absent >= ABSENT_POLLS:
            log.info("router replica %s is being replaced (%s)", replica_id, state or "gone")
            return
