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
from prometheus_client.parser import text_string_to_metric_families

from serve_app import cluster_state
from testkit.fakes import user_text_event
from testkit.serve_cluster import ServeRun

pytestmark = pytest.mark.slow

# Run as a Ray driver: each live Router replica's PID and the sessions it holds (its own gauge), as JSON;
# with WAIT_FOR set, first wait until that many replicas answer, none of them the process VICTIM.
ROUTERS = """
import json, os, time
def figures(replica):
    from actors.conversation.metrics import SESSIONS_OPEN
    return os.getpid(), SESSIONS_OPEN.collect()[0].samples[0].value
def routers():
    found = {}
    for actor in ray.util.list_named_actors(all_namespaces=True):
        if "#Router#" not in actor["name"]:
            continue
        try:
            handle = ray.get_actor(actor["name"], namespace=actor["namespace"])
            pid, sessions = ray.get(handle.__ray_call__.remote(figures), timeout=5)
        except Exception:  # a replica that is gone or still starting
            continue
        found[pid] = sessions
    return found
deadline = time.time() + 120
found = routers()
while WAIT_FOR and not (len(found) >= WAIT_FOR and VICTIM not in found) and time.time() < deadline:
    time.sleep(0.2)
    found = routers()
print(time.time())
print(json.dumps(found))
"""

CLOSED_WITHIN_S = 3.0  # the client learns its connection is gone
ANSWERED_WITHIN_S = 5.0  # a reconnect is answered (session.created and a completed turn), from the kill


def routers(agent: ServeRun, wait_for: int = 0, victim: int = 0) -> tuple[float, dict[int, float]]:
    """(when, {PID: sessions open}) of the live Router replicas; `wait_for` replicas without `victim`."""
    code = f"WAIT_FOR, VICTIM = {wait_for}, {victim}\n" + ROUTERS
    when, found = agent.run_driver(code, timeout=180).strip().splitlines()[-2:]
    return float(when), {int(pid): n for pid, n in json.loads(found).items()}


async def sessions_open(http: httpx.AsyncClient, agent: ServeRun) -> float:
    text = (await http.get(f"{agent.base_url}/metrics")).text
    return sum(
        s.value
        for f in text_string_to_metric_families(text)
        if f.name == "voice_sessions_open"
        for s in f.samples
    )


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
    _, before = await asyncio.to_thread(routers, agent)
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
            _, now = await asyncio.to_thread(routers, agent)
            grew = [p for p, n in now.items() if n > counts.get(p, 0)]
            assert len(grew) == 1, (counts, now)
            pid, counts = grew[0], now
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
        replaced = asyncio.create_task(asyncio.to_thread(routers, agent, len(before), victim_pid))

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
        replaced_at, after = await replaced
        replaced_s = replaced_at - killed_at
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

    # The dead replica's sessions stop counting in the deployment's gauge once its last report has aged
    # out; then the fixture is as it was found.
    deadline = time.monotonic() + cluster_state.LIVE_S + 2 * cluster_state.REPORT_S
    async with httpx.AsyncClient(timeout=10) as http:
        while (open_now := await sessions_open(http, agent)) != 0:
            assert time.monotonic() < deadline, f"voice_sessions_open stays at {open_now}"
            await asyncio.sleep(1)
