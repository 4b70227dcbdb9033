"""The built-in memory tools against a real Letta server, with the memory service in process: a fact
`remember`ed is found by its user's `search_memory` and never by another user's, whatever the model
writes in the arguments; past conversation is searched; a dead Letta fails a search plainly and fast
while `remember` still succeeds, the fact journaled through the outage and a restart; and the router
offers the tools only to callers with an identity."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import AsyncOpenAI
from ray.exceptions import ActorDiedError

from actors.config import Settings
from actors.llm.base import ToolCall
from actors.llm.openai_engine import OpenAILLMEngine
from actors.llm.stage import LLMStage
from actors.memory.journal import Fact
from actors.memory.letta import (
    FACT_TAG_PREFIX,
    MESSAGE_SEARCH_PATH,
    MemoryHit,
    message_search_body,
    message_search_hits,
)
from actors.memory.service import MemoryService
from actors.memory.tools import build_memory_tools
from actors.stt.simulated import SimulatedSTTEngine
from actors.tools.base import ToolContext
from actors.tools.toolbox import Toolbox
from actors.tts.simulated import SimulatedTTSEngine
from actors.tts.stage import TTSStage
from serve_app.api.credentials import ANONYMOUS
from serve_app.api.deps import RouterDeps
from serve_app.api.router_app import build_router_app
from serve_app.memory_actor import ActorMemorySink, ActorMemoryTools, actor_memory_tools
from testkit.fakes import FakeLLMEngine, finished_turn, served
from testkit.fault_proxy import Fault, start_fault_proxy
from tests.letta_fixtures import SIM_MODEL, LettaEnv
from tests.test_openai_realtime import typed_turn, until

pytestmark = pytest.mark.slow


def settings_for(env: LettaEnv, journal: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        **env.serve_args(journal),
        "memory_batch_size": 2,
        "memory_flush_interval_s": 0.5,
        "memory_retry_max_s": 1.0,
    }
    return Settings(**(values | overrides))


def user(prefix: str) -> str:
    return f"{prefix}{time.monotonic_ns()}"


def call(name: str, arguments: dict[str, Any]) -> ToolCall:
    return {
        "id": f"call_{name}",
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(arguments)},
    }


async def run(toolbox: Toolbox, user_id: str, name: str, arguments: dict[str, Any]) -> tuple[str, Any]:
    result = await toolbox.run(call(name, arguments), ToolContext(user_id=user_id, session_id="sess_test"))
    return result.outcome, json.loads(result.output)


async def wait_for_facts(service: MemoryService, limit_s: float = 60) -> None:
    async with asyncio.timeout(limit_s):
        while service.journal.fact_count():  # noqa: ASYNC110 - polls the journal on disk
            await asyncio.sleep(0.1)


def texts(found: dict[str, Any], kind: str) -> str:
    return " | ".join(hit["text"] for hit in found[kind])


async def test_a_remembered_fact_is_found_by_its_user_and_never_by_another(
    letta_env: LettaEnv, tmp_path: Path
) -> None:
    service = await MemoryService.open(settings_for(letta_env, tmp_path / "journal.db"))
    toolbox = Toolbox(build_memory_tools(service))
    ada, bob = user("ada"), user("bob")
    # The model names another user in the arguments: the call still reaches only the caller's memory.
    outcome, output = await run(
        toolbox, ada, "remember", {"fact": "Ada's sister is called Clara.", "user_id": bob, "agent_id": bob}
    )
    assert (outcome, output) == ("ok", {"remembered": "Ada's sister is called Clara."})
    # Searchable at once, before Letta has it (journaled facts are searched too).
    outcome, found = await run(toolbox, ada, "search_memory", {"query": "Ada's sister"})
    assert outcome == "ok" and "Clara" in texts(found, "facts")
    await run(toolbox, bob, "remember", {"fact": "Bob's dog is called Rex."})
    await wait_for_facts(service)
    # In Letta: each fact is a passage of its own user's agent, tagged with its fact id.
    letta = service.letta
    ada_passages = await letta.client.agents.passages.list(await letta.agent_id(ada))
    bob_passages = await letta.client.agents.passages.list(await letta.agent_id(bob))
    assert [p.text for p in ada_passages] == ["Ada's sister is called Clara."]
    assert [p.text for p in bob_passages] == ["Bob's dog is called Rex."]
    assert all(t.startswith(FACT_TAG_PREFIX) for p in ada_passages for t in p.tags or [])
    for query in ("sister", "Clara", "dog", "Rex"):
        _, ada_found = await run(toolbox, ada, "search_memory", {"query": query})
        _, bob_found = await run(toolbox, bob, "search_memory", {"query": query, "user_id": ada})
        assert "Rex" not in json.dumps(ada_found)
        assert "Clara" not in json.dumps(bob_found)
    assert "Clara" in texts(ada_found, "facts") and "Rex" in texts(bob_found, "facts")
    await service.close()


async def test_past_conversation_is_searched_per_user(letta_env: LettaEnv, tmp_path: Path) -> None:
    service = await MemoryService.open(settings_for(letta_env, tmp_path / "journal.db"))
    toolbox = Toolbox(build_memory_tools(service))
    cy, di = user("cy"), user("di")
    await service.submit(
        finished_turn(1, cy, user_text="My favourite colour is teal.", assistant_text="Teal!")
    )
    await service.submit(finished_turn(2, cy, user_text="I work as a baker.", assistant_text="Lovely."))
    await service.submit(
        finished_turn(1, di, user_text="My favourite colour is amber.", assistant_text="Ok.")
    )
    await service.session_ended(cy)
    await service.session_ended(di)
    async with asyncio.timeout(60):
        while service.pending():  # noqa: ASYNC110 - polls the journal on disk
            await asyncio.sleep(0.1)
    outcome, found = await run(toolbox, cy, "search_memory", {"query": "favourite colour", "limit": 3})
    assert outcome == "ok"
    assert "teal" in texts(found, "conversation") and "amber" not in json.dumps(found)
    assert "baker" not in texts(found, "conversation")  # matched, not the whole history
    _, found = await run(toolbox, di, "search_memory", {"query": "favourite colour"})
    assert "amber" in texts(found, "conversation") and "teal" not in json.dumps(found)
    await service.close()


async def test_bad_arguments_are_told_to_the_model(letta_env: LettaEnv, tmp_path: Path) -> None:
    service = await MemoryService.open(settings_for(letta_env, tmp_path / "journal.db"))
    toolbox = Toolbox(build_memory_tools(service))
    eve = user("eve")
    for name, arguments, message in [
        ("search_memory", {}, "`query` must be a non-empty string"),
        ("search_memory", {"query": "x", "limit": 50}, "`limit` must be a whole number from 1 to 10"),
        ("search_memory", {"query": "x" * 501}, "the limit is 500"),
        ("remember", {"fact": "  "}, "`fact` must be a non-empty string"),
        ("remember", {"fact": "x" * 2001}, "the limit is 2000"),
    ]:
        outcome, output = await run(toolbox, eve, name, arguments)
        assert outcome == "tool_error" and message in output["error"], (name, output)
    assert service.journal.fact_count() == 0
    await service.close()


async def test_a_dead_letta_fails_search_plainly_and_remember_survives_it_and_a_restart(
    letta_env: LettaEnv, tmp_path: Path
) -> None:
    journal = tmp_path / "journal.db"
    settings = settings_for(letta_env, journal)
    service = await MemoryService.open(settings)
    toolbox = Toolbox(build_memory_tools(service))
    fay = user("fay")
    await service.letta.agent_id(fay)  # her agent exists; then Letta goes down
    letta_env.server.stop_letta()
    try:
        outcome, output = await run(toolbox, fay, "search_memory", {"query": "birthday"})
        # An error the model can say, well inside the tool's own timeout (not "timeout").
        assert outcome == "tool_error" and "unreachable" in output["error"]
        outcome, output = await run(toolbox, fay, "remember", {"fact": "Fay's birthday is on 3 May."})
        assert outcome == "ok"
        await asyncio.sleep(1.5)  # the writer tries and fails meanwhile
        assert service.journal.fact_count() == 1 and service.journal.pending_facts()[0].attempts >= 1
        assert "voice_memory_facts_queue_depth 1.0" in service.metrics_text().decode()
        await service.close()  # the process stops while Letta is down: the fact stays journaled
    finally:
        letta_env.server.restart_letta()
    service = await MemoryService.open(settings)  # a restart replays the journal
    await wait_for_facts(service)
    passages = await service.letta.client.agents.passages.list(await service.letta.agent_id(fay))
    assert [p.text for p in passages] == ["Fay's birthday is on 3 May."]  # delivered once
    assert "voice_memory_facts_queue_depth 0.0" in service.metrics_text().decode()
    outcome, found = await run(
        Toolbox(build_memory_tools(service)), fay, "search_memory", {"query": "birthday"}
    )
    assert outcome == "ok" and "3 May" in texts(found, "facts")
    await service.close()


async def test_a_letta_that_never_answers_fails_search_within_its_bound_not_the_tools_timeout(
    letta_env: LettaEnv, tmp_path: Path
) -> None:
    proxy = start_fault_proxy(letta_env.base_url)
    try:
        service = await MemoryService.open(
            settings_for(letta_env, tmp_path / "journal.db", letta_base_url=proxy.base_url)
        )
        toolbox = Toolbox(build_memory_tools(service))
        kit = user("kit")
        await service.letta.agent_id(kit)
        proxy.default = Fault("hang")  # connections are accepted, requests never answered
        outcome, output = await run(toolbox, kit, "search_memory", {"query": "anything"})
        # The search's own 3 s bound ends it with an error the model can relay, before the tool's 5 s.
        assert outcome == "tool_error" and "unreachable" in output["error"]
        outcome, _ = await run(toolbox, kit, "remember", {"fact": "Kit is allergic to peanuts."})
        assert outcome == "ok" and service.journal.fact_count() == 1  # kept for when Letta answers
        await service.close()
    finally:
        proxy.stop()


async def test_a_resent_fact_is_stored_once(letta_env: LettaEnv, tmp_path: Path) -> None:
    service = await MemoryService.open(settings_for(letta_env, tmp_path / "journal.db"))
    gus = user("gus")
    fact = Fact("f-resent", gus, "Gus drinks his coffee black.")
    await service.letta.write_fact(fact, maybe_delivered=False)
    await service.letta.write_fact(fact, maybe_delivered=True)  # a resend after a lost answer
    passages = await service.letta.client.agents.passages.list(await service.letta.agent_id(gus))
    assert [p.text for p in passages] == ["Gus drinks his coffee black."]
    await service.close()


class ActorHandle:
    """The memory actor's `remember` as the router's handle sees it: dead, or answering as the actor
    does ({"ok": fact id})."""

    def __init__(self, dead: bool) -> None:
        self.dead = dead
        self.remember = self
        self.calls: list[tuple[str, str]] = []

    async def remote(self, user_id: str, text: str) -> dict[str, str]:
        if self.dead:
            raise ActorDiedError()
        self.calls.append((user_id, text))
        return {"ok": "fact-1"}


async def test_a_dead_memory_actor_is_an_error_for_the_model_and_is_looked_up_again() -> None:
    handles = iter([ActorHandle(dead=True), ActorHandle(dead=False)])
    sink = ActorMemorySink(lambda: next(handles))
    toolbox = Toolbox(build_memory_tools(ActorMemoryTools(sink)))
    outcome, output = await run(toolbox, "lou", "remember", {"fact": "Lou likes jazz."})
    assert outcome == "tool_error" and "not answering" in output["error"]
    outcome, output = await run(toolbox, "lou", "remember", {"fact": "Lou likes jazz."})
    assert (outcome, output) == ("ok", {"remembered": "Lou likes jazz."})
    assert sink.actor.calls == [("lou", "Lou likes jazz.")]


@pytest.mark.parametrize(("switch", "names"), [(True, ["search_memory", "remember"]), (False, [])])
def test_the_switch_turns_the_routers_memory_tools_off(switch: bool, names: list[str]) -> None:
    sink = ActorMemorySink(lambda: object())  # the actor is not called to build the tools
    settings = Settings(letta_base_url="http://letta.invalid", memory_tools=switch)
    assert [t.definition.name for t in actor_memory_tools(sink, settings)] == names


async def test_the_router_offers_memory_tools_only_to_identified_callers(
    letta_env: LettaEnv, tmp_path: Path
) -> None:
    settings = settings_for(letta_env, tmp_path / "journal.db")
    service = await MemoryService.open(settings)
    deps = RouterDeps(
        settings=settings,
        stt=SimulatedSTTEngine("hello"),
        llm=LLMStage(FakeLLMEngine("Hello.")),
        tts=TTSStage(SimulatedTTSEngine()),
        memory_tools=build_memory_tools(service),
    )
    assert "search_memory" not in deps.toolbox_for(ANONYMOUS) and "remember" not in deps.toolbox_for(
        ANONYMOUS
    )
    hal, ivy = user("hal"), user("ivy")
    hal_tools, ivy_tools = deps.toolbox_for(hal), deps.toolbox_for(ivy)
    assert {d.name for d in hal_tools.definitions()} == {"search_memory", "remember"}
    await run(hal_tools, hal, "remember", {"fact": "Hal's locker code is 4417."})
    await wait_for_facts(service)
    _, hal_found = await run(hal_tools, hal, "search_memory", {"query": "locker code"})
    _, ivy_found = await run(ivy_tools, ivy, "search_memory", {"query": "locker code"})
    assert "4417" in texts(hal_found, "facts") and "4417" not in json.dumps(ivy_found)
    await service.close()


async def test_the_message_search_request_is_valid_and_its_answer_is_filtered_to_the_agent(
    letta_env: LettaEnv, tmp_path: Path
) -> None:
    """Letta's message search needs Turbopuffer, which a self-hosted server lacks: the request is checked
    by the real server (a malformed body would be a 422, not the 400 that says the feature is off), and
    the answer's parsing against results shaped as the server's `MessageSearchResult`."""
    service = await MemoryService.open(settings_for(letta_env, tmp_path / "journal.db"))
    agent = await service.letta.agent_id(user("joe"))
    async with httpx.AsyncClient(base_url=letta_env.base_url) as http:
        answer = await http.post(MESSAGE_SEARCH_PATH, json=message_search_body("colour", agent, 5))
    assert answer.status_code == 400 and "Turbopuffer" in answer.text
    found = [
        {
            "embedded_text": "User said: my favourite colour is teal",
            "message": {
                "id": "message-1",
                "agent_id": agent,
                "role": "user",
                "created_at": "2026-11-30T10:00:00Z",
            },
            "rrf_score": 0.5,
        },
        {
            "embedded_text": "User said: someone else's colour",
            "message": {"id": "message-2", "agent_id": "agent-other", "role": "user", "created_at": "x"},
            "rrf_score": 0.9,
        },
    ]
    assert message_search_hits(found, agent) == [
        MemoryHit("User said: my favourite colour is teal", "2026-11-30T10:00:00Z")
    ]
    await service.close()


async def test_through_rest_and_realtime_each_key_reaches_only_its_users_memory(
    letta_env: LettaEnv, tmp_path: Path
) -> None:
    """The whole path a client takes: its key names its user, the model (the simulated server, calling
    the tools by marker) writes another user's id into the arguments, and still each call reaches only
    the key's user, over the REST API with server tools and over a Realtime session."""
    ann, ben = user("ann"), user("ben")
    settings = settings_for(letta_env, tmp_path / "journal.db", user_keys=f"{ann}:ann-key,{ben}:ben-key")
    service = await MemoryService.open(settings)
    deps = RouterDeps(
        settings=settings.resolved(),
        stt=SimulatedSTTEngine("hello", finalize_delay_ms=1),
        llm=LLMStage(OpenAILLMEngine(base_url=letta_env.sim.base_url, model=SIM_MODEL)),
        tts=TTSStage(SimulatedTTSEngine(ttfb_ms=1, realtime_factor=1000)),
        memory_tools=build_memory_tools(service),
    )

    async def chat(url: str, key: str, text: str) -> str:
        client = AsyncOpenAI(api_key=key, base_url=f"{url}/v1")
        reply = await client.chat.completions.create(
            model=SIM_MODEL, messages=[{"role": "user", "content": text}], extra_body={"server_tools": True}
        )
        return reply.choices[0].message.content or ""

    async def spoken(url: str, key: str, text: str) -> str:
        client = AsyncOpenAI(
            api_key=key, base_url=f"{url}/v1", websocket_base_url=url.replace("http", "ws") + "/v1"
        )
        async with client.realtime.connect(model="voice-agent") as conn:
            await until(conn, "session.created")
            done = (await typed_turn(conn, text))[-1]["response"]
        return json.dumps([item for item in done["output"] if item["type"] == "message"])

    try:
        async with served(build_router_app(deps)) as url:
            remembered = await chat(
                url, "ann-key", f'call:remember{{"fact": "Ann keeps bees.", "user_id": "{ben}"}}'
            )
            assert "Ann keeps bees." in remembered
            await wait_for_facts(service)
            asked = f'call:search_memory{{"query": "bees", "user_id": "{ann}"}}'
            assert "Ann keeps bees" in await chat(url, "ann-key", asked)
            assert "Ann keeps bees" not in await chat(url, "ben-key", asked)
            assert "Ann keeps bees" in await spoken(url, "ann-key", asked)
            assert "Ann keeps bees" not in await spoken(url, "ben-key", asked)
            await spoken(url, "ben-key", f'call:remember{{"fact": "Ben rows.", "user_id": "{ann}"}}')
            await wait_for_facts(service)
            found = await chat(url, "ben-key", 'call:search_memory{"query": "rows"}')
            assert "Ben rows" in found and "Ben rows" not in await chat(
                url, "ann-key", 'call:search_memory{"query": "rows"}'
            )
    finally:
        await service.close()
