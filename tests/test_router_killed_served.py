"""A router replica's process killed in the middle of a turn, on the real Ray Serve app (`agent`): its
client's connection closes at once, a reconnect is answered by the other router within seconds, the
other router's session never notices, and Serve replaces the replica (the fixture stays healthy)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time

import httpx
import pytest
import websockets

from bench.serve_cluster import ServeRun
from tests.fakes import user_text_event

pytestmark = pytest.mark.slow

# Run as a Ray driver: each live Router replica's PID and the sessions it holds (its own gauge).
ROUTERS = """
import json, os
def figures(replica):
    from actors.metrics import SESSIONS_OPEN
    return os.getpid(), SESSIONS_OPEN.collect()[0].samples[0].value
found = {}
for actor in ray.util.list_named_actors(all_namespaces=True):
    if "#Router#" not in actor["name"]:
        continue
    try:
        handle = ray.get_actor(actor["name"], namespace=actor["namespace"])
        pid, sessions = ray.get(handle.__ray_call__.remote(figures), timeout=10)
    except Exception:  # a replica that is gone or still starting
        continue
    found[pid] = sessions
print(json.dumps(found))
"""

# Run as a Ray driver: wait until the Router deployment has `count` running replicas; print when.
WAIT_ROUTERS = """
import time
from ray import serve
deadline = time.time() + 120
while time.time() < deadline:
    router = serve.status().applications["voice-agent"].deployments["Router"]
    states = router.replica_states
    if states.get("RUNNING", 0) >= {count} and not states.keys() - {"RUNNING"}:
        break
    time.sleep(0.2)
print(time.time())
"""

CLOSED_WITHIN_S = 3.0  # the client learns its connection is gone
ANSWERED_WITHIN_S = 5.0  # a reconnect is answered (session.created and a completed turn), from the kill


def routers(agent: ServeRun) -> dict[int, float]:
    return {int(pid): n for pid, n in json.loads(agent.run_driver(ROUTERS).strip().splitlines()[-1]).items()}


async def next_event(ws, limit_s: float = 60.0) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), limit_s))


async def until(ws, kind: str, limit_s: float = 60.0) -> dict:
    while (event := await next_event(ws, limit_s))["type"] != kind:
        assert event["type"] != "error", event
    return event


async def start_turn(ws, text: str) -> None:
    await ws.send(user_text_event(text))
    await ws.send(json.dumps({"type": "response.create"}))


async def test_router_replica_killed_mid_turn(agent: ServeRun) -> None:
    before = await asyncio.to_thread(routers, agent)
    assert len(before) >= 2, before
    url = f"{agent.ws_url}/realtime"

    # One session on each of two routers: open one at a time and see whose gauge went up (the ingress
    # sends each new connection to the router with the fewest).
    opened: list[websockets.ClientConnection] = []
    placed: dict[int, websockets.ClientConnection] = {}
    try:
        counts = before
        for _ in range(6):
            ws = await websockets.connect(url, max_size=None)
            opened.append(ws)
            await until(ws, "session.created")
            now = await asyncio.to_thread(routers, agent)
            pid = next(p for p, n in now.items() if n > counts.get(p, 0))
            counts = now
            placed.setdefault(pid, ws)
            if len(placed) == 2:
                break
        assert len(placed) == 2, "every session went to the same router"
        (victim_pid, victim_ws), (other_pid, other_ws) = placed.items()

        # A turn in flight on both; then the victim's router process dies.
        await start_turn(victim_ws, "Tell me about the sea.")
        await start_turn(other_ws, "Tell me about the sky.")
        await until(victim_ws, "response.created")
        await until(other_ws, "response.created")
        os.kill(victim_pid, signal.SIGKILL)
        killed, killed_at = time.monotonic(), time.time()
        replaced = asyncio.create_task(
            asyncio.to_thread(agent.run_driver, WAIT_ROUTERS.replace("{count}", str(len(before))))
        )

        # The client sees its connection closed, promptly, without a close frame from the server.
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:
                await asyncio.wait_for(victim_ws.recv(), CLOSED_WITHIN_S)
        closed_s = time.monotonic() - killed
        assert closed_s < CLOSED_WITHIN_S
        assert closed.value.rcvd is None  # close code 1006: the connection dropped

        # A client reconnects (retrying, as it would) and gets a session and an answered turn.
        while True:
            try:
                again = await websockets.connect(url, max_size=None, open_timeout=2)
                break
            except (OSError, websockets.InvalidStatus, TimeoutError):
                assert time.monotonic() - killed < ANSWERED_WITHIN_S, "no session after the kill"
                await asyncio.sleep(0.2)
        async with again:
            await until(again, "session.created")
            reconnected_s = time.monotonic() - killed
            await start_turn(again, "Are you there?")
            done = (await until(again, "response.done", ANSWERED_WITHIN_S))["response"]
            answered_s = time.monotonic() - killed
        assert done["status"] == "completed", done
        assert answered_s < ANSWERED_WITHIN_S, answered_s

        # The other router's session was not disturbed: its turn completed, and so does the next one.
        done = (await until(other_ws, "response.done"))["response"]
        assert done["status"] == "completed", done
        await start_turn(other_ws, "And the stars?")
        assert (await until(other_ws, "response.done"))["response"]["status"] == "completed"

        # Serve replaces the replica: the fixture is left as it was found.
        replaced_s = float((await replaced).strip().splitlines()[-1]) - killed_at
        after = await asyncio.to_thread(routers, agent)
        assert len(after) == len(before) and victim_pid not in after and other_pid in after, after
        async with httpx.AsyncClient(timeout=10) as http:
            assert (await http.get(f"{agent.base_url}/readyz")).status_code == 200
        print(
            f"closed {closed_s:.2f} s after the kill; reconnected {reconnected_s:.2f} s, turn answered"
            f" {answered_s:.2f} s; replica replaced {replaced_s:.1f} s after the kill"
        )
    finally:
        for ws in opened:
            await ws.close()
