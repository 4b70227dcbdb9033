"""When a router replica learns it is being replaced (`serve_app.replica_state`), from a scripted Serve
controller that answers with Ray's own `ReplicaDetails` models, one answer per poll."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from ray.serve._private.common import ReplicaState
from ray.serve.schema import ReplicaDetails

from serve_app.replica_state import replica_replaced

ME = "me"
LONG_AGO = time.time() - 3600


def replica(replica_id: str, state: ReplicaState, started: float = LONG_AGO) -> ReplicaDetails:
    return ReplicaDetails(replica_id=replica_id, state=state, start_time_s=started)


@dataclass
class Details:
    replicas: list[ReplicaDetails]


class ScriptedController:
    """Answers `get_deployment_details` with the next scripted answer (an exception is raised), the last
    one for ever after; counts the polls."""

    def __init__(self, script: list[list[ReplicaDetails] | Exception]) -> None:
        self.script = script
        self.polls = 0
        self.get_deployment_details = self

    def remote(self, app: str, deployment: str) -> Any:
        answer = self.script[min(self.polls, len(self.script) - 1)]
        self.polls += 1

        async def reply() -> Details:
            if isinstance(answer, Exception):
                raise answer
            return Details(answer)

        return reply()


def polls_until_replaced(controller: ScriptedController, handover_s: float = 3600.0) -> int:
    async def watch() -> None:
        async with asyncio.timeout(30):  # a guard against a watch that never returns, not a timing check
            await replica_replaced(
                "app", "Router", ME, poll_s=0, handover_s=handover_s, controller=controller
            )

    asyncio.run(watch())
    return controller.polls


def test_a_stopping_replica_moves_its_sessions_once_its_replacement_has_run_for_a_poll() -> None:
    running, stopping, starting = ReplicaState.RUNNING, ReplicaState.STOPPING, ReplicaState.STARTING
    old = replica("old", running)  # another replica of the old version: not a replacement
    new_started = time.time()
    script: list[list[ReplicaDetails] | Exception] = [
        [replica(ME, running), old],
        [replica(ME, stopping), old],
        [replica(ME, stopping), old, replica("new", starting, new_started)],
        [replica(ME, stopping), old, replica("new", running, new_started)],
        [replica(ME, stopping), old, replica("new", running, new_started)],  # 5th poll: returns
        [replica(ME, stopping), old, replica("new", running, new_started)],
    ]
    assert polls_until_replaced(ScriptedController(script)) == 5


def test_without_a_replacement_it_waits_the_handover_at_most() -> None:
    # A scale-down starts no replica: the drain goes ahead once the handover time has passed.
    script: list[list[ReplicaDetails] | Exception] = [
        [replica(ME, ReplicaState.RUNNING), replica("old", ReplicaState.RUNNING)],
        [replica(ME, ReplicaState.STOPPING), replica("old", ReplicaState.RUNNING)],
    ]
    assert polls_until_replaced(ScriptedController(script), handover_s=0) == 2


def test_a_failed_poll_or_one_missing_answer_is_not_a_drain_but_two_missing_ones_are() -> None:
    running = [replica(ME, ReplicaState.RUNNING)]
    script: list[list[ReplicaDetails] | Exception] = [
        RuntimeError("the controller is restarting"),
        running,
        [],  # missing once (the controller recovering its state)
        running,
        TimeoutError(),
        [],
        [],  # missing twice in a row: removed (7th poll)
    ]
    assert polls_until_replaced(ScriptedController(script), handover_s=0) == 7
