"""Memory in the served app: a real Ray cluster and a real Letta server. Turns reach the user's Letta
agent off the request path, exactly once, through a Letta outage and through a crash of the memory
actor; the user's core memory reaches the LLM's system prompt, never another user's; and the router's
memory tools, calling the actor, reach only their caller's memory, through a Letta outage too."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import websockets

from actors.memory.letta import LettaConfig, LettaMemory
from bench.memory import memory_metrics
from serve_app.memory_actor import ACTOR_NAME, NAMESPACE
from testkit.fakes import realtime_text_turn
from testkit.serve_cluster import ServeRun
from testkit.sim_openai_server import SimOpenAIConfig, SimOpenAIServer, start_sim_openai_server
from tests.letta_fixtures import LettaEnv, delivered_turn_ids

pytestmark = pytest.mark.slow

VOICE_REPLY = "Here is a short answer for you."


@pytest.fixture(scope="module")
def voice_llm() -> Iterator[SimOpenAIServer]:
    """The voice pipeline's LLM, apart from the one Letta's agents think with (letta_env.sim), so a
    test can slow Letta down without slowing replies."""
    sim = start_sim_openai_server(SimOpenAIConfig(reply=VOICE_REPLY))
    yield sim
    sim.stop()


@pytest.fixture(scope="module")
def agent_with_memory(
    letta_env: LettaEnv, voice_llm: SimOpenAIServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServeRun]:
    workdir = tmp_path_factory.mktemp("agent-memory")
    run = ServeRun(
        workdir,
        args={
            "stt_engine": "simulated",
            "tts_engine": "simulated",
            "llm_engine": "openai",
            "llm_base_url": voice_llm.base_url,
            **letta_env.serve_args(workdir / "journal.db"),
            "memory_batch_size": 3,
            "memory_flush_interval_s": 5.0,  # replies take ~2 s (audio at real time): batches of 3
            "memory_retry_max_s": 2.0,
        },
        env={"OPENAI_API_KEY": "sim"},
    )
    try:
        run.wait_ready()
        yield run
    finally:
        run.stop()


@pytest.fixture
async def letta(letta_env: LettaEnv) -> AsyncIterator[LettaMemory]:
    """A client of the same Letta server, finding each user's agent by the same name as the app."""
    memory = LettaMemory(
        LettaConfig(
            base_url=letta_env.base_url,
            llm_config=dict(letta_env.llm_config),
            embedding_config=dict(letta_env.embedding_config),
        )
    )
    yield memory
    await memory.close()


async def conversation(url: str, user: str, texts: list[str]) -> list[tuple[dict, float]]:
    """One session of typed turns; per turn, the response and the seconds from sending to its end."""
    results = []
    async with websockets.connect(f"{url}/realtime?user={user}", max_size=None) as ws:
        await ws.recv()
        for text in texts:
            started = time.perf_counter()
            done = await realtime_text_turn(ws, text)
            results.append((done, time.perf_counter() - started))
    return results


async def text_turn(url: str, user: str, text: str) -> tuple[dict, float]:
    """A session of one typed turn."""
    return (await conversation(url, user, [text]))[0]


async def wait_for_turns(letta: LettaMemory, user: str, expected: list[str], limit_s: float) -> list[str]:
    deadline = time.monotonic() + limit_s
    while True:
        found = await delivered_turn_ids(letta, user)
        if set(expected) <= set(found) or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.5)


def system_prompts(sim: SimOpenAIServer, since: int) -> list[str]:
    return [
        str(r["body"]["messages"][0]["content"])
        for r in sim.requests[since:]
        if r["path"] == "/v1/chat/completions" and r["body"]["messages"][0]["role"] == "system"
    ]


async def test_turns_reach_letta_and_memory_reaches_the_prompt(
    agent_with_memory: ServeRun, voice_llm: SimOpenAIServer, letta: LettaMemory
) -> None:
    ada = await letta.agent_id("ada")
    await letta.client.agents.blocks.update("human", agent_id=ada, value="Ada's cat is called Miso.")
    since = len(voice_llm.requests)
    turns = await conversation(
        agent_with_memory.ws_url, "ada", [f"Tell me fact number {n}." for n in range(4)]
    )
    ended = time.monotonic()
    assert all(done["status"] == "completed" for done, _ in turns)
    ids = [done["id"] for done, _ in turns]
    # Every turn reaches Ada's agent in order, off the request path: three when the batch filled, the
    # fourth when her session ended, before the 5 s window could have run out.
    assert await wait_for_turns(letta, "ada", ids, limit_s=30) == ids
    assert time.monotonic() - ended < 4.5
    ada_prompts = system_prompts(voice_llm, since)
    since = len(voice_llm.requests)
    await text_turn(agent_with_memory.ws_url, "bob", "Do you know my cat?")
    # Ada's memory is in her prompts (from the first cached read on), never in Bob's.
    assert any("Miso" in p for p in ada_prompts)
    bob_prompts = system_prompts(voice_llm, since)
    assert bob_prompts and all("Miso" not in p for p in bob_prompts)
    # The router's /metrics shows the memory actor's side of it: fewer Letta calls than turns.
    metrics = memory_metrics(agent_with_memory)
    assert metrics["voice_memory_batch_turns_sum"] >= 4
    assert metrics["voice_memory_batch_turns_count"] < metrics["voice_memory_batch_turns_sum"]
    assert metrics["voice_memory_lag_seconds_count"] >= 4
    assert "voice_memory_queue_depth" in metrics and "voice_memory_journal_bytes" in metrics


async def test_letta_outage_costs_no_latency_and_loses_no_turn(
    agent_with_memory: ServeRun, letta_env: LettaEnv, letta: LettaMemory
) -> None:
    url = agent_with_memory.ws_url
    ids, before, during = [], [], []
    for n in range(3):
        done, seconds = await text_turn(url, "lee", f"Before the outage, turn {n}.")
        ids.append(done["id"])
        before.append(seconds)
    errors_before = memory_metrics(agent_with_memory).get("voice_memory_backend_errors_total", 0)
    letta_env.server.stop_letta()
    try:
        for n in range(4):
            done, seconds = await text_turn(url, "lee", f"During the outage, turn {n}.")
            assert done["status"] == "completed"
            ids.append(done["id"])
            during.append(seconds)
        await asyncio.sleep(3)  # a flush window passes: the actor is now retrying
        metrics = memory_metrics(agent_with_memory)
        assert metrics["voice_memory_queue_depth"] >= 1  # held in the journal, not dropped
        assert metrics["voice_memory_backend_errors_total"] > errors_before
    finally:
        letta_env.server.restart_letta()
    # Replies did not wait for Letta: a turn blocked on it would take seconds, not milliseconds.
    assert statistics.median(during) < statistics.median(before) + 0.25, (before, during)
    found = await wait_for_turns(letta, "lee", ids, limit_s=60)
    assert found == ids  # every turn once, in order
    # The journal empties once the actor has Letta's answer; the gauge reaches /metrics with Ray's next
    # metrics export, a few seconds after.
    assert await queue_depth_reaches_zero(agent_with_memory, limit_s=30)


async def queue_depth_reaches_zero(run: ServeRun, limit_s: float) -> bool:
    deadline = time.monotonic() + limit_s
    while memory_metrics(run)["voice_memory_queue_depth"] != 0:
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(1)
    return True


async def test_memory_actor_killed_mid_batch_replays_each_turn_once(
    agent_with_memory: ServeRun, letta_env: LettaEnv, letta: LettaMemory
) -> None:
    url = agent_with_memory.ws_url
    await letta.agent_id("kim")
    letta_env.sim.config.ttft_ms = 3000  # Letta's agent thinks slowly: the batch stays in flight
    try:
        since = len(letta_env.sim.requests)
        ids = [
            done["id"] for done, _ in await conversation(url, "kim", [f"Kim's fact {n}." for n in range(3)])
        ]
        # The third turn fills the batch (size 3): wait until Letta's agent is working on it.
        async with asyncio.timeout(20):
            while not any(  # noqa: ASYNC110 - polls requests recorded by another thread
                "Kim's fact 2" in json.dumps(r["body"]) for r in letta_env.sim.requests[since:]
            ):
                await asyncio.sleep(0.1)
        agent_with_memory.run_driver(
            f"ray.kill(ray.get_actor({ACTOR_NAME!r}, namespace={NAMESPACE!r}), no_restart=False)"
        )
        # A turn while the actor restarts is held by Ray's retry, not lost.
        done, _ = await text_turn(url, "kim", "Kim's fact 3.")
        ids.append(done["id"])
    finally:
        letta_env.sim.config.ttft_ms = 0
    found = await wait_for_turns(letta, "kim", ids, limit_s=60)
    assert found == ids  # the cut-off batch is in Letta once, and the later turn after it
    pending = agent_with_memory.run_driver(
        f"print(ray.get(ray.get_actor({ACTOR_NAME!r}, namespace={NAMESPACE!r}).pending.remote()))"
    )
    assert pending.strip() == "0"


ACTOR_PID = (
    f"import os\nactor = ray.get_actor({ACTOR_NAME!r}, namespace={NAMESPACE!r})\n"
    "print(ray.get(actor.__ray_call__.remote(lambda self: os.getpid())))\n"
)


async def test_concurrent_sessions_through_a_letta_outage_and_an_actor_crash_lose_no_turn(
    agent_with_memory: ServeRun, letta_env: LettaEnv, letta: LettaMemory
) -> None:
    """Six sessions talk at once while Letta is down and the memory actor is killed between their
    turns: every reply still comes, `/readyz` stays ready and says memory is degraded, and once Letta
    is back every finished turn is in its user's agent exactly once, in order."""
    url, users, per_session = agent_with_memory.ws_url, [f"crowd-{n}" for n in range(6)], 5
    for user in users:  # their agents exist; what is tested is the turns' way to them
        await letta.agent_id(user)
    before_kill = 2  # turns each session finishes before the actor is killed; the rest come after
    ready_to_kill = asyncio.Barrier(len(users) + 1)
    killed = asyncio.Event()

    async def session(user: str) -> list[str]:
        ids = []
        async with websockets.connect(f"{url}/realtime?user={user}", max_size=None) as ws:
            await ws.recv()
            for n in range(per_session):
                if n == before_kill:
                    await ready_to_kill.wait()
                    await killed.wait()  # its next turn is submitted while Ray restarts the actor
                done = await realtime_text_turn(ws, f"{user} says fact {n}.")  # fails on an error event
                assert done["status"] == "completed", done
                ids.append(done["id"])
        return ids

    async def kill_the_actor() -> str:
        await ready_to_kill.wait()
        code = ACTOR_PID + "ray.kill(actor, no_restart=False)\n"
        pid = (await asyncio.to_thread(agent_with_memory.run_driver, code)).strip()
        killed.set()
        return pid

    letta_env.server.stop_letta()
    try:
        killer = asyncio.create_task(kill_the_actor())
        async with asyncio.timeout(180):
            ids = dict(zip(users, await asyncio.gather(*(session(u) for u in users)), strict=True))
        old_pid = await killer
        deadline = time.monotonic() + 30
        async with httpx.AsyncClient(base_url=agent_with_memory.base_url, timeout=10) as http:
            while (ready := (await http.get("/readyz")).json())["status"] != "degraded":
                assert time.monotonic() < deadline, ready
                await asyncio.sleep(0.5)
        assert ready["degraded"]["memory"].startswith(
            "the Letta server is unreachable; finished turns waiting in the journal for it: "
        ), ready
        waiting = int(ready["degraded"]["memory"].rsplit(" ", 1)[1])
        assert 1 <= waiting <= len(users) * per_session
    finally:
        letta_env.server.restart_letta()
    for user in users:
        found = await wait_for_turns(letta, user, ids[user], limit_s=90)
        assert found == ids[user], user  # every turn once, in its session's order
    new_pid = agent_with_memory.run_driver(ACTOR_PID + "print(ray.get(actor.pending.remote()))\n").split()
    assert new_pid[0] != old_pid  # a new process replayed the journal
    assert new_pid[1] == "0"
    for user in users:  # nothing arrived twice after the journal emptied either
        assert await delivered_turn_ids(letta, user) == ids[user]
    async with httpx.AsyncClient(base_url=agent_with_memory.base_url, timeout=10) as http:
        deadline = time.monotonic() + 30
        while (ready := (await http.get("/readyz")).json())["status"] != "ready":
            assert time.monotonic() < deadline, ready
            await asyncio.sleep(0.5)


TOOLS_DRIVER = """
import asyncio, json
from actors.memory.tools import build_memory_tools
from actors.tools.base import ToolContext
from actors.tools.toolbox import Toolbox
from serve_app.memory_actor import ACTOR_NAME, NAMESPACE, ActorMemorySink, ActorMemoryTools

async def main(calls):
    # The router's side: its memory tools call the memory actor.
    sink = ActorMemorySink(lambda: ray.get_actor(ACTOR_NAME, namespace=NAMESPACE))
    toolbox = Toolbox(build_memory_tools(ActorMemoryTools(sink)))
    results = []
    for user, name, arguments in calls:
        function = {"name": name, "arguments": json.dumps(arguments)}
        call = {"id": "call_1", "type": "function", "function": function}
        result = await toolbox.run(call, ToolContext(user_id=user, session_id="sess_driver"))
        results.append([result.outcome, json.loads(result.output)])
    print(json.dumps(results))

asyncio.run(main(json.loads(CALLS)))
"""


def run_tools(run: ServeRun, calls: list[tuple[str, str, dict]]) -> list[tuple[str, dict]]:
    """Memory tool calls made by the router's tools through the served app's memory actor."""
    output = run.run_driver(f"CALLS = {json.dumps(calls)!r}\n" + TOOLS_DRIVER)
    return [tuple(r) for r in json.loads(output.strip().splitlines()[-1])]


async def passages(letta: LettaMemory, user: str, expected: int, limit_s: float = 60) -> list[str]:
    deadline = time.monotonic() + limit_s
    while True:
        found = await letta.client.agents.passages.list(await letta.agent_id(user))
        if len(found) >= expected or time.monotonic() > deadline:
            return [p.text for p in found]
        await asyncio.sleep(0.5)


async def test_memory_tools_through_the_actor_reach_only_the_callers_memory_through_an_outage(
    agent_with_memory: ServeRun, letta_env: LettaEnv, letta: LettaMemory
) -> None:
    ann, ben = f"ann{time.time_ns()}", f"ben{time.time_ns()}"
    results = run_tools(
        agent_with_memory,
        [
            (ann, "remember", {"fact": "Ann's piano teacher is Mr Okafor.", "user_id": ben}),
            (ben, "remember", {"fact": "Ben's bike is red."}),
        ],
    )
    assert [outcome for outcome, _ in results] == ["ok", "ok"]
    assert await passages(letta, ann, 1) == ["Ann's piano teacher is Mr Okafor."]
    assert await passages(letta, ben, 1) == ["Ben's bike is red."]
    searches = run_tools(
        agent_with_memory,
        [
            (ann, "search_memory", {"query": "piano teacher"}),
            (ben, "search_memory", {"query": "piano teacher"}),
        ],
    )
    (ann_outcome, ann_found), (ben_outcome, ben_found) = searches
    assert ann_outcome == ben_outcome == "ok"
    assert "Okafor" in json.dumps(ann_found) and "Okafor" not in json.dumps(ben_found)
    # Letta down: a search fails plainly (an error for the model, not the tool's timeout), and a fact
    # is still taken, journaled by the actor and delivered once Letta is back.
    letta_env.server.stop_letta()
    try:
        (search, remember) = run_tools(
            agent_with_memory,
            [(ann, "search_memory", {"query": "piano"}), (ann, "remember", {"fact": "Ann moved to Leeds."})],
        )
    finally:
        letta_env.server.restart_letta()
    assert search[0] == "tool_error" and "unreachable" in search[1]["error"]
    assert remember == ("ok", {"remembered": "Ann moved to Leeds."})
    assert sorted(await passages(letta, ann, 2)) == [
        "Ann moved to Leeds.",
        "Ann's piano teacher is Mr Okafor.",
    ]
    assert await passages(letta, ben, 1) == ["Ben's bike is red."]


async def test_graceful_actor_exit_delivers_what_it_holds(
    agent_with_memory: ServeRun, letta: LettaMemory
) -> None:
    # A turn handed straight to the actor, far from a full batch and inside the 5 s window; then Ray's
    # graceful exit (the one `ray.kill` skips): the shutdown hook must deliver it before the process ends.
    turn = {
        "session_id": "s-zed",
        "user_id": "zed",
        "turn_id": f"resp_zed_{time.time_ns()}",
        "user_item_id": None,
        "user_text": "Remember that I leave on Friday.",
        "assistant_text": "Noted.",
        "started_at": time.time(),
        "ended_at": time.time(),
        "interrupted": False,
    }
    await letta.agent_id("zed")
    agent_with_memory.run_driver(
        f"actor = ray.get_actor({ACTOR_NAME!r}, namespace={NAMESPACE!r})\n"
        f"ray.get(actor.submit.remote({turn!r}))\n"
        "actor.__ray_terminate__.remote()\n"
        "import time; time.sleep(8)\n"  # the drain runs after the call returns; let it finish
    )
    assert await delivered_turn_ids(letta, "zed") == [turn["turn_id"]]
