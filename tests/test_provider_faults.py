"""The OpenAI-compatible LLM engine against a faulty provider: timeouts, retries before the first token
only, and the cached upstream probe behind `/readyz` (the fault proxy in front of the simulated server)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import openai
import pytest

from actors.conversation.faults import LLMStalled, LLMTimeout, LLMUnavailable, public_error
from actors.llm.call_policy import LLMCallPolicy
from actors.llm.openai_engine import OpenAILLMEngine
from testkit.fault_proxy import Fault, FaultProxy, start_fault_proxy
from testkit.sim_openai_server import SimOpenAIConfig, SimOpenAIServer, start_sim_openai_server

REPLY = "Hello there. How are you today? I am fine, thank you."
POLICY = LLMCallPolicy(
    connect_timeout_s=1.0, first_token_timeout_s=1.0, chunk_timeout_s=1.0, max_retries=2, retry_budget_s=4.0
)


@pytest.fixture(scope="module")
def sim() -> Iterator[SimOpenAIServer]:
    server = start_sim_openai_server(SimOpenAIConfig(reply=REPLY, ttft_ms=20, tokens_per_s=100))
    yield server
    server.stop()


@pytest.fixture
def proxy(sim: SimOpenAIServer) -> Iterator[FaultProxy]:
    p = start_fault_proxy(sim.base_url)
    yield p
    p.stop()


def engine_for(proxy: FaultProxy, policy: LLMCallPolicy = POLICY) -> OpenAILLMEngine:
    return OpenAILLMEngine(base_url=proxy.base_url, model="sim", policy=policy, probe_ttl_s=0.5)


async def reply_of(engine: OpenAILLMEngine, into: list[str] | None = None) -> str:
    out = [] if into is None else into
    async for delta in engine.stream(
        {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 100, "temperature": 0, "user_id": "u"}
    ):
        if isinstance(delta, str):  # the text, not the finish reason that ends it
            out.append(delta)
    return "".join(out)


@pytest.mark.parametrize(
    "fault",
    [Fault("status", status=503), Fault("status", status=500), Fault("reset"), Fault("hang")],
    ids=["503", "500", "reset", "hang"],
)
async def test_a_failure_before_the_first_token_is_retried(proxy: FaultProxy, fault: Fault) -> None:
    proxy.plan.extend([fault, fault])
    assert await reply_of(engine_for(proxy)) == REPLY
    assert proxy.connections == 3


async def test_429_waits_for_a_short_retry_after(proxy: FaultProxy) -> None:
    proxy.plan.append(Fault("status", status=429, retry_after=0.6))
    started = time.monotonic()
    assert await reply_of(engine_for(proxy)) == REPLY
    assert time.monotonic() - started >= 0.6
    assert proxy.connections == 2


async def test_429_asking_for_longer_than_the_budget_is_not_waited_for(proxy: FaultProxy) -> None:
    proxy.default = Fault("status", status=429, retry_after=30)
    started = time.monotonic()
    with pytest.raises(LLMUnavailable):
        await reply_of(engine_for(proxy))
    assert time.monotonic() - started < 2
    assert proxy.connections == 1


async def test_refused_connections_give_up_within_the_budget(proxy: FaultProxy) -> None:
    proxy.refuse()
    started = time.monotonic()
    with pytest.raises(LLMUnavailable) as caught:
        await reply_of(engine_for(proxy))
    assert time.monotonic() - started < POLICY.retry_budget_s
    error = public_error(caught.value, "llm")
    assert error.code == "llm_unavailable" and "127.0.0.1" not in error.message


async def test_a_provider_that_never_answers_times_out_within_the_budget(proxy: FaultProxy) -> None:
    proxy.default = Fault("hang")
    started = time.monotonic()
    with pytest.raises(LLMTimeout):
        await reply_of(engine_for(proxy))
    elapsed = time.monotonic() - started
    assert POLICY.first_token_timeout_s <= elapsed <= POLICY.retry_budget_s + 1
    assert proxy.connections == 1 + POLICY.max_retries


async def test_a_stall_after_the_first_tokens_is_not_retried(proxy: FaultProxy) -> None:
    # The role chunk and two tokens ("Hello", " there."), then silence.
    proxy.plan.append(Fault("stall", after_events=3))
    got: list[str] = []
    started = time.monotonic()
    with pytest.raises(LLMStalled):
        await reply_of(engine_for(proxy), got)
    assert "".join(got) == "Hello there."
    assert time.monotonic() - started < POLICY.chunk_timeout_s + 1.5
    assert proxy.connections == 1  # tokens were yielded: a retry could repeat them


async def test_a_client_error_is_not_retried(proxy: FaultProxy) -> None:
    proxy.default = Fault("status", status=400)
    with pytest.raises(openai.BadRequestError):
        await reply_of(engine_for(proxy))
    assert proxy.connections == 1


async def test_probe_reports_a_dead_upstream_and_is_cached(proxy: FaultProxy) -> None:
    engine = engine_for(proxy)
    assert await engine.probe() is None
    proxy.refuse()
    await asyncio.sleep(0.6)  # past the cache
    problems = await asyncio.gather(*(engine.probe() for _ in range(20)))
    assert set(problems) == {"the LLM server is unreachable"}
    proxy.accept()
    assert await engine.probe() == "the LLM server is unreachable"  # still cached
    await asyncio.sleep(0.6)
    assert await engine.probe() is None
