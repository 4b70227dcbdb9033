"""Stage faults on a real Ray Serve app (`serve run serve_config.yaml`, offline STT and TTS, the LLM an
OpenAI-compatible simulated server behind the fault proxy): `response.cancel` during the LLM stream,
`/readyz` with the LLM server down, and the LLM, STT or TTS replica's process killed mid-turn."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import websockets
from openai import AsyncOpenAI

from testkit.fakes import user_text_event
from testkit.fault_proxy import FaultProxy, start_fault_proxy
from testkit.harness import APOLOGY, INTERNALS, SERVER_EVENT
from testkit.recordings import espeak_speech, silence
from testkit.serve_cluster import ServeRun
from testkit.sim_openai_server import SimOpenAIConfig, SimOpenAIServer, start_sim_openai_server

pytestmark = pytest.mark.slow

# Long and slow (10 tokens a second): a reply is still streaming seconds after it started.
REPLY = " ".join(f"This is sentence number {i} of a long answer." for i in range(20))

# Run as a Ray driver: SIGKILL the one replica of a deployment (its process dies as in a crash).
KILL_REPLICA = """
import os, signal, time
names = [a for a in ray.util.list_named_actors(all_namespaces=True) if "{deployment}" in a["name"]]
assert len(names) == 1, names
replica = ray.get_actor(names[0]["name"], namespace=names[0]["namespace"])
pid = ray.get(replica.__ray_call__.remote(lambda self: os.getpid()))
os.kill(pid, signal.SIGKILL)
print(time.time())
"""


async def kill_replica(served: ServeRun, deployment: str) -> float:
    """SIGKILL the one replica of `deployment`; when it was killed (epoch seconds)."""
    printed = await asyncio.to_thread(served.run_driver, KILL_REPLICA.replace("{deployment}", deployment))
    return float(printed.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[SimOpenAIServer, FaultProxy]]:
    sim = start_sim_openai_server(SimOpenAIConfig(reply=REPLY, ttft_ms=300, tokens_per_s=10))
    proxy = start_fault_proxy(sim.base_url)
    yield sim, proxy
    proxy.stop()
    sim.stop()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, upstream) -> Iterator[ServeRun]:
    _, proxy = upstream
    args = {
        "llm_engine": "openai",
        "llm_base_url": proxy.base_url,
        "llm_model": "sim",
        "readyz_probe_ttl_s": 1.0,
    }
    run = ServeRun(Path(tmp_path_factory.mktemp("faults")), args=args)
    try:
        run.wait_ready()
        yield run
    finally:
        run.stop()


async def next_event(ws, limit_s: float = 60.0) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), limit_s))


async def until(ws, kind: str, seen: list[dict], limit_s: float = 60.0) -> dict:
    while (event := await next_event(ws, limit_s))["type"] != kind:
        seen.append(event)
    seen.append(event)
    return event


async def ask(ws, text: str) -> None:
    await ws.send(user_text_event(text))
    await ws.send(json.dumps({"type": "response.create"}))


async def test_response_cancel_during_the_llm_stream_says_client_cancelled(served: ServeRun) -> None:
    async with websockets.connect(f"{served.ws_url}/realtime", max_size=None) as ws:
        seen: list[dict] = []
        await until(ws, "session.created", seen)
        await ask(ws, "Tell me something long.")
        await until(ws, "response.created", seen)
        await ws.send(json.dumps({"type": "response.cancel"}))
        done = (await until(ws, "response.done", seen))["response"]
        assert done["status"] == "cancelled"
        assert done["status_details"]["reason"] == "client_cancelled"


async def test_a_reply_cut_by_max_output_tokens_ends_incomplete(served: ServeRun) -> None:
    # The finish reason crosses the LLM deployment's stream to the router: Realtime and REST.
    async with websockets.connect(f"{served.ws_url}/realtime", max_size=None) as ws:
        seen: list[dict] = []
        await until(ws, "session.created", seen)
        update = {"type": "session.update", "session": {"type": "realtime", "max_output_tokens": 5}}
        await ws.send(json.dumps(update))
        await until(ws, "session.updated", seen)
        await ask(ws, "Tell me something long.")
        done = await until(ws, "response.done", seen)
        SERVER_EVENT.validate_python(done)
        response = done["response"]
        assert response["status"] == "incomplete", response
        assert response["status_details"] == {"type": "incomplete", "reason": "max_output_tokens"}
        assert response["output"][0]["content"][0]["transcript"] == "This is sentence number 0"
    body = {"model": "sim", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}
    async with httpx.AsyncClient(base_url=served.base_url, timeout=30) as http:
        reply = (await http.post("/v1/chat/completions", json=body)).json()
        assert reply["choices"][0]["finish_reason"] == "length", reply
        async with http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as stream:
            lines = [line async for line in stream.aiter_lines() if line.startswith("data: {")]
        assert json.loads(lines[-1][6:])["choices"][0]["finish_reason"] == "length"


async def test_tool_calls_cross_the_llm_deployment(served: ServeRun) -> None:
    """A call's pieces cross the LLM deployment's token stream to the router (REST, official SDK)."""
    weather = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
    client = AsyncOpenAI(base_url=f"{served.base_url}/v1", api_key="unused-locally", timeout=60)
    question = 'call:get_weather{"city": "Oslo"}'
    stream = await client.chat.completions.create(
        model="sim",
        messages=[{"role": "user", "content": question}],
        tools=[weather],  # type: ignore[list-item]
        stream=True,
    )
    chunks = [chunk async for chunk in stream]
    pieces = [t for c in chunks if c.choices for t in c.choices[0].delta.tool_calls or ()]
    assert pieces[0].id and pieces[0].function and pieces[0].function.name == "get_weather"
    arguments = "".join(p.function.arguments or "" for p in pieces if p.function)
    assert json.loads(arguments) == {"city": "Oslo"}
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    answer = await client.chat.completions.create(
        model="sim",
        messages=[
            {"role": "user", "content": question},
            {
                "role": "assistant",
                "tool_calls": [
                    {
                        "id": pieces[0].id,
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": arguments},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": pieces[0].id, "content": "sunny"},
        ],
        tools=[weather],  # type: ignore[list-item]
    )
    assert answer.choices[0].message.content == "Here is what I found: sunny"


def test_readyz_says_the_llm_server_is_down(served: ServeRun, upstream) -> None:
    _, proxy = upstream
    proxy.refuse()
    try:
        deadline = time.monotonic() + 20
        while (ready := httpx.get(f"{served.base_url}/readyz", timeout=10)).status_code == 200:
            assert time.monotonic() < deadline, "readyz still says ready"
            time.sleep(0.5)
        assert ready.status_code == 503
        assert ready.json()["down"] == {"llm": "the LLM server is unreachable"}
        assert httpx.get(f"{served.base_url}/healthz", timeout=10).status_code == 200
    finally:
        proxy.accept()
    deadline = time.monotonic() + 20
    while httpx.get(f"{served.base_url}/readyz", timeout=10).status_code != 200:
        assert time.monotonic() < deadline, "readyz did not recover"
        time.sleep(0.5)


async def test_llm_replica_killed_mid_reply(served: ServeRun) -> None:
    async with websockets.connect(f"{served.ws_url}/realtime", max_size=None) as ws:
        seen: list[dict] = []
        await until(ws, "session.created", seen)
        await ask(ws, "Tell me something long.")
        await until(ws, "response.output_audio.delta", seen)  # the reply is being spoken
        killing = asyncio.create_task(kill_replica(served, "LLMDeployment"))
        done_event = await until(ws, "response.done", seen)
        done_at = time.time()
        killed_at = await killing
        done = done_event["response"]

        assert done["status"] == "failed", done
        assert done["status_details"]["error"]["code"] == "llm_unavailable"
        assert done_at - killed_at < 2.0  # noticed at once, not after Serve replaced the replica
        said = "".join(e["delta"] for e in seen if e["type"] == "response.output_audio_transcript.delta")
        assert said.endswith(APOLOGY) and done["output"][0]["content"][0]["transcript"] == said
        apology_at = next(i for i, e in enumerate(seen) if APOLOGY in e.get("delta", ""))
        apology_audio = sum(
            len(base64.b64decode(e["delta"]))
            for e in seen[apology_at:]
            if e["type"] == "response.output_audio.delta"
        )
        assert apology_audio > 24_000  # about a second of speech or more, from the live TTS replica
        for event in seen:
            if event["type"] != "response.output_audio.delta":
                assert not INTERNALS.search(json.dumps(event)), event

        # The session goes on: the next turn is answered once Serve has replaced the replica.
        await ask(ws, "Are you back?")
        seen = []
        await until(ws, "response.output_audio.delta", seen, limit_s=90)
        recovered_s = time.time() - killed_at
        await ws.send(json.dumps({"type": "response.cancel"}))
        await until(ws, "response.done", seen)
        assert recovered_s < 60, recovered_s


async def stream_speech(ws, pcm: bytes, chunk_ms: int = 100) -> None:
    """Send audio like a microphone: `chunk_ms` pieces in real time."""
    step = 24_000 * 2 * chunk_ms // 1000
    for i in range(0, len(pcm), step):
        audio = base64.b64encode(pcm[i : i + step]).decode()
        await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": audio}))
        await asyncio.sleep(chunk_ms / 1000)


async def test_stt_replica_killed_mid_utterance(served: ServeRun) -> None:
    long_speech = espeak_speech("one two three four five six seven eight nine ten, " * 5)
    async with websockets.connect(f"{served.ws_url}/realtime", max_size=None) as ws:
        seen: list[dict] = []
        await until(ws, "session.created", seen)
        speaking = asyncio.create_task(stream_speech(ws, long_speech + silence(1500)))
        await until(ws, "input_audio_buffer.speech_started", seen)
        killed_at = await kill_replica(served, "STTDeployment")
        assert not speaking.done(), "the utterance ended before the replica was killed"
        error = await until(ws, "error", seen)
        # Reported while the user is still speaking: the session's stage timeout at most, not after
        # Serve has replaced the replica.
        assert time.time() - killed_at < 3.0 + 2.0
        assert error["error"]["code"] == "transcription_failed"
        assert not INTERNALS.search(json.dumps(error)), error
        assert not any(e["type"] == "response.created" for e in seen)
        await speaking

        # The next utterance is transcribed and answered once Serve has replaced the replica.
        deadline = time.monotonic() + 90
        while True:
            seen = []
            await stream_speech(ws, espeak_speech("What is the weather like tomorrow?") + silence(1500))
            kinds: list[str] = []
            while True:
                event = await next_event(ws, 30)
                kinds.append(event["type"])
                if event["type"] in ("response.created", "error"):
                    break
            if event["type"] == "response.created":
                break
            assert time.monotonic() < deadline, kinds
        await ws.send(json.dumps({"type": "response.cancel"}))
        await until(ws, "response.done", seen)


async def test_tts_replica_killed_mid_reply(served: ServeRun) -> None:
    async with websockets.connect(f"{served.ws_url}/realtime", max_size=None) as ws:
        seen: list[dict] = []
        await until(ws, "session.created", seen)
        await ask(ws, "Tell me something long.")
        await until(ws, "response.output_audio.delta", seen)  # the reply is being spoken
        killed_at = await kill_replica(served, "TTSDeployment")
        audio_at: list[float] = []  # when each audio chunk after the kill arrived
        while (event := await next_event(ws))["type"] != "response.done":
            seen.append(event)
            if event["type"] == "response.output_audio.delta":
                audio_at.append(time.time())
        done = event["response"]
        for event in seen:
            if event["type"] != "response.output_audio.delta":
                assert not INTERNALS.search(json.dumps(event)), event
        errors = [e["error"]["code"] for e in seen if e["type"] == "error"]
        # Plain outcomes, depending on whether a synthesis call was in flight when the process died
        # and on how soon Serve's replacement takes calls: the reply goes on (phrases wait in the handle
        # for the new replica while the audio already received keeps playing), it fails at once (a call
        # was in flight), or it fails once a phrase has waited for a replacement longer than the chunk
        # timeout (a replacement slow to start on a busy machine).
        if done["status"] != "failed":
            # The reply went on to its end: REPLY's first llm_max_tokens (120) of its 180 tokens.
            assert done["status_details"] == {"type": "incomplete", "reason": "max_output_tokens"}, done
            assert errors == []
            spoken_after = [t for t in audio_at if t > killed_at + 5.0]
            assert spoken_after, "no reply audio from the replacement replica"
        else:
            assert done["status"] == "failed", done
            code = done["status_details"]["error"]["code"]
            assert code in ("tts_unavailable", "tts_timeout"), done
            assert errors == [code]
            # Not a hang: the reply fails within the chunk timeout (stage + TTS timeouts) of the last
            # audio that came, or of the kill if none came after it.
            assert time.time() - max([killed_at, *audio_at]) < 3.0 + 5.0 + 2.0

        # The session goes on: the next turn is spoken.
        seen = []
        await ask(ws, "Are you back?")
        await until(ws, "response.output_audio.delta", seen, limit_s=90)
        await ws.send(json.dumps({"type": "response.cancel"}))
        await until(ws, "response.done", seen)
