"""`/readyz` names every dead upstream: each OpenAI-compatible stage (STT, LLM, TTS) checks its own
server, cheaply and cached, behind the fault proxy; a dead Letta leaves the service ready but reported
degraded, with the finished turns that wait for it in the memory journal."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from actors.config import Settings
from actors.llm.stage import LLMStage
from actors.memory.service import MemoryService
from actors.stt.openai_engine import OpenAISTTEngine
from actors.stt.simulated import SimulatedSTTEngine
from actors.tts.openai_engine import OpenAITTSEngine
from actors.tts.simulated import SimulatedTTSEngine
from actors.tts.stage import TTSStage
from serve_app.api.deps import RouterDeps
from serve_app.api.router_app import build_router_app
from serve_app.memory_actor import memory_problem
from serve_app.programs.local import create_app
from testkit.fakes import FakeLLMEngine, finished_turn
from testkit.fault_proxy import Fault, FaultProxy, start_fault_proxy
from testkit.serve_cluster import free_port
from testkit.sim_openai_server import SimOpenAIConfig, SimOpenAIServer, start_sim_openai_server

TTL_S = 0.3


@pytest.fixture(scope="module")
def sim() -> Iterator[SimOpenAIServer]:
    server = start_sim_openai_server(SimOpenAIConfig(reply="Hello there."))
    yield server
    server.stop()


@pytest.fixture
def proxies(sim: SimOpenAIServer) -> Iterator[dict[str, FaultProxy]]:
    """One fault proxy per stage in front of the same simulated server, so each can fail alone."""
    started = {stage: start_fault_proxy(sim.base_url) for stage in ("stt", "llm", "tts")}
    yield started
    for proxy in started.values():
        proxy.stop()


@pytest.mark.parametrize(
    ("engine", "what"),
    [(OpenAISTTEngine, "speech-to-text"), (OpenAITTSEngine, "text-to-speech")],
    ids=["stt", "tts"],
)
async def test_a_speech_engine_probes_its_server(
    proxies: dict[str, FaultProxy], engine: type[OpenAISTTEngine | OpenAITTSEngine], what: str
) -> None:
    proxy = proxies["stt"]
    probed = engine(base_url=proxy.base_url, connect_timeout_s=0.5, probe_ttl_s=TTL_S)
    assert await probed.probe() is None
    proxy.refuse()
    await asyncio.sleep(TTL_S + 0.1)  # past the cache
    connections = proxy.connections
    # A probe storm costs one check: concurrent callers share it.
    found = await asyncio.gather(*(probed.probe() for _ in range(10)))
    assert set(found) == {f"the {what} server is unreachable"}
    proxy.accept()
    proxy.default = Fault("status", status=500)
    await asyncio.sleep(TTL_S + 0.1)
    assert await probed.probe() == f"the {what} server answers HTTP 500"
    assert proxy.connections == connections + 1  # one attempt: the SDK's own retry is off for probes
    proxy.default = Fault("hang")  # accepts and never answers: the probe's timeout decides
    await asyncio.sleep(TTL_S + 0.1)
    started = time.monotonic()
    assert await probed.probe() == f"the {what} server is unreachable"
    assert time.monotonic() - started < 1.5
    proxy.default = Fault("pass")
    await asyncio.sleep(TTL_S + 0.1)
    assert await probed.probe() is None


def test_readyz_names_each_dead_upstream(
    proxies: dict[str, FaultProxy], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The single-process app, built from settings as a user runs it: every stage on an OpenAI engine.
    for name, value in {
        "VOICE_STT_ENGINE": "openai",
        "VOICE_TTS_ENGINE": "openai",
        "VOICE_LLM_ENGINE": "openai",
        "VOICE_STT_MODEL": "whisper-1",
        "VOICE_OPENAI_BASE_URL": proxies["stt"].base_url,
        "VOICE_LLM_BASE_URL": proxies["llm"].base_url,
        "VOICE_READYZ_PROBE_TTL_S": str(TTL_S),
        "VOICE_SPEECH_CONNECT_TIMEOUT_S": "0.5",
    }.items():
        monkeypatch.setenv(name, value)
    with TestClient(create_app()) as client:
        ready = client.get("/readyz")
        assert (ready.status_code, ready.json()) == (200, {"status": "ready"})
        # STT and TTS share the one OpenAI base URL here: both report it; the LLM's server is up.
        proxies["stt"].refuse()
        time.sleep(TTL_S + 0.1)
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json() == {
            "status": "unavailable",
            "down": {
                "stt": "the speech-to-text server is unreachable",
                "tts": "the text-to-speech server is unreachable",
            },
        }
        proxies["stt"].accept()
        proxies["llm"].refuse()
        time.sleep(TTL_S + 0.1)
        assert client.get("/readyz").json()["down"] == {"llm": "the LLM server is unreachable"}
        proxies["llm"].accept()
        time.sleep(TTL_S + 0.1)
        assert client.get("/readyz").status_code == 200


def router(**deps: Any) -> TestClient:
    settings = Settings(stt_engine="simulated", llm_engine="openai", tts_engine="simulated").resolved()
    return TestClient(
        build_router_app(
            RouterDeps(
                settings=settings,
                stt=SimulatedSTTEngine("hello"),
                llm=LLMStage(FakeLLMEngine("Hi.")),
                tts=TTSStage(SimulatedTTSEngine()),
                **deps,
            )
        )
    )


MEMORY_DOWN = {"memory": "the Letta server is unreachable; finished turns waiting in the journal for it: 3"}
LLM_DOWN = {"llm": "the LLM server is unreachable"}


async def memory_down() -> dict[str, str]:
    return MEMORY_DOWN


async def llm_down() -> dict[str, str]:
    return LLM_DOWN


async def check_hangs() -> dict[str, str]:
    await asyncio.Event().wait()
    return {}


def test_a_degraded_memory_is_reported_and_the_service_stays_ready() -> None:
    ready = router(degradations=memory_down).get("/readyz")
    assert (ready.status_code, ready.json()) == (200, {"status": "degraded", "degraded": MEMORY_DOWN})
    # A dead stage upstream still makes it unready; the memory is reported beside it.
    ready = router(degradations=memory_down, upstreams=llm_down).get("/readyz")
    assert ready.status_code == 503
    assert ready.json() == {"status": "unavailable", "down": LLM_DOWN, "degraded": MEMORY_DOWN}


def test_a_check_that_hangs_is_reported_within_the_guard() -> None:
    started = time.monotonic()
    ready = router(degradations=check_hangs).get("/readyz")
    assert time.monotonic() - started < 5 + 1  # the router's guard, not the check, decides
    assert ready.status_code == 200
    assert ready.json() == {
        "status": "degraded",
        "degraded": {"degradations": "the memory check did not answer"},
    }


async def test_the_memory_service_says_letta_is_down_and_what_waits(tmp_path: Path) -> None:
    settings = Settings(
        letta_base_url=f"http://127.0.0.1:{free_port()}",  # nothing listens there
        memory_journal_path=str(tmp_path / "journal.db"),
        readyz_probe_ttl_s=TTL_S,
    )
    service = await MemoryService.open(settings)
    try:
        await service.submit(finished_turn(1))
        await service.submit(finished_turn(2))
        assert await service.health() == (
            "the Letta server is unreachable; finished turns waiting in the journal for it: 2"
        )
    finally:
        await service.close()


class HungActor:
    """A memory actor handle whose calls never return (Ray restarting the actor, say)."""

    class _Method:
        async def remote(self) -> str | None:
            await asyncio.Event().wait()
            return None

    health = _Method()


class SinkOf:
    def __init__(self, actor: Any) -> None:
        self.actor = actor

    def reconnect(self) -> None:
        raise AssertionError("a slow actor is not a dead one")


async def test_a_memory_actor_that_does_not_answer_is_reported_in_time() -> None:
    started = asyncio.get_running_loop().time()
    problem = await memory_problem(SinkOf(HungActor()), timeout_s=0.3)  # type: ignore[arg-type]
    assert problem == "the memory actor is not answering; finished turns wait in the router until it does"
    assert asyncio.get_running_loop().time() - started < 1.0
