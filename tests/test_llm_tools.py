"""Tool calls through the LLM stage: the simulated OpenAI-compatible server's streamed `tool_calls` (every
chunk and response checked against the SDK's models), the OpenAI engine sending tools and tool messages
and streaming call pieces, and the stage's token and phrase streams passing them through."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Iterator
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from actors.llm.base import ChatMessage, LLMDelta, LLMEngine, LLMRequest, ToolSpec, llm_finish
from actors.llm.call_policy import LLMCallPolicy
from actors.llm.letta_engine import LettaAgentLLMEngine
from actors.llm.llamacpp_engine import build_prompt
from actors.llm.openai_engine import OpenAILLMEngine
from actors.llm.stage import LLMStage
from actors.tools.calls import ToolCallAssembler, round_messages
from testkit.sim_openai_server import SimOpenAIConfig, SimOpenAIServer, start_sim_openai_server

WEATHER: ToolSpec = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city now.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
TIME: ToolSpec = {
    "type": "function",
    "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}},
}


@pytest.fixture(scope="module")
def sim() -> Iterator[SimOpenAIServer]:
    server = start_sim_openai_server(SimOpenAIConfig(reply="Plain words.", ttft_ms=5, tokens_per_s=500))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def chatty() -> Iterator[SimOpenAIServer]:
    """A model that says a few words before its calls."""
    server = start_sim_openai_server(
        SimOpenAIConfig(reply="Plain words.", ttft_ms=5, tokens_per_s=500, tool_preamble="Let me check that.")
    )
    yield server
    server.stop()


def raw_chunks(server: SimOpenAIServer, body: dict[str, Any]) -> list[ChatCompletionChunk]:
    """A streamed completion over plain HTTP, each `data:` line validated as the SDK's chunk model."""
    chunks = []
    with httpx.stream("POST", f"{server.base_url}/chat/completions", json={**body, "stream": True}) as r:
        r.raise_for_status()
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    for line in lines[:-1]:
        assert line.startswith("data: ")
        chunks.append(ChatCompletionChunk.model_validate(json.loads(line.removeprefix("data: "))))
    return chunks


def raw_completion(server: SimOpenAIServer, body: dict[str, Any]) -> ChatCompletion:
    response = httpx.post(f"{server.base_url}/chat/completions", json=body)
    response.raise_for_status()
    return ChatCompletion.model_validate(response.json())


def calls_of(chunks: list[ChatCompletionChunk]) -> list[dict[str, str]]:
    """The streamed calls put together by index, as a client does."""
    calls: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        for piece in chunk.choices[0].delta.tool_calls or () if chunk.choices else ():
            call = calls.setdefault(piece.index, {"id": "", "name": "", "arguments": ""})
            if piece.id:
                assert not call["id"], "the id comes once, in the call's first piece"
                call["id"] = piece.id
                assert piece.type == "function" and piece.function and piece.function.name
            if piece.function and piece.function.name:
                call["name"] += piece.function.name
            if piece.function and piece.function.arguments:
                call["arguments"] += piece.function.arguments
    return [calls[i] for i in sorted(calls)]


def ask(text: str, *tools: ToolSpec, **extra: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": text}], "tools": list(tools), **extra}


# --- the simulated server --------------------------------------------------------------------------------


def test_sim_streams_a_call_with_its_arguments_in_pieces(sim: SimOpenAIServer) -> None:
    chunks = raw_chunks(sim, ask('What is it like? call:get_weather{"city": "Paris, France"}', WEATHER, TIME))
    pieces = [c for c in chunks if c.choices and c.choices[0].delta.tool_calls]
    assert len(pieces) >= 3  # the head, then the arguments over several chunks
    assert not any(c.choices[0].delta.content for c in chunks if c.choices)
    [call] = calls_of(chunks)
    assert call["name"] == "get_weather" and call["id"].startswith("call_")
    assert json.loads(call["arguments"]) == {"city": "Paris, France"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_sim_parallel_calls_words_first_and_the_non_streamed_shape(chatty: SimOpenAIServer) -> None:
    body = ask("call:get_weather call:get_time", WEATHER, TIME)
    chunks = raw_chunks(chatty, body)
    words = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert words == "Let me check that."
    calls = calls_of(chunks)
    assert [c["name"] for c in calls] == ["get_weather", "get_time"]
    assert json.loads(calls[0]["arguments"])["city"]  # made to fit the schema's required string
    assert json.loads(calls[1]["arguments"]) == {}
    # Not streamed: the same answer as one message.
    completion = raw_completion(chatty, body)
    message = completion.choices[0].message
    assert completion.choices[0].finish_reason == "tool_calls"
    assert message.content == "Let me check that."
    assert [c.function.name for c in message.tool_calls or []] == ["get_weather", "get_time"]
    # One call only when parallel calls are off.
    single = raw_completion(chatty, {**body, "parallel_tool_calls": False})
    assert [c.function.name for c in single.choices[0].message.tool_calls or []] == ["get_weather"]


def test_sim_answers_tool_results_in_words(sim: SimOpenAIServer) -> None:
    first = raw_completion(sim, ask("call:get_weather", WEATHER))
    assert first.choices[0].message.content is None
    [call] = first.choices[0].message.tool_calls or []
    messages = [
        {"role": "user", "content": "call:get_weather"},
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"},
    ]
    body = {"model": "m", "messages": messages, "tools": [WEATHER]}
    chunks = raw_chunks(sim, body)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        "Here is what I found: sunny, 21 C"
    )
    assert chunks[-1].choices[0].finish_reason == "stop"
    # `loop:` calls on every round until tool_choice is "none".
    looping = [{**messages[0], "content": "loop:get_weather"}, *messages[1:]]
    again = raw_completion(sim, {**body, "messages": looping})
    assert again.choices[0].finish_reason == "tool_calls"
    stop = raw_completion(sim, {**body, "messages": looping, "tool_choice": "none"})
    assert stop.choices[0].message.content == "Here is what I found: sunny, 21 C"


def test_sim_tool_choice_rules_and_letta_send_message(sim: SimOpenAIServer) -> None:
    assert (
        raw_completion(sim, ask("call:get_weather", WEATHER, tool_choice="none")).choices[0].message.content
    )
    plain = raw_completion(sim, ask("Hello", WEATHER))
    assert plain.choices[0].message.content == "Plain words." and not plain.choices[0].message.tool_calls
    required = raw_completion(sim, ask("Hello", TIME, WEATHER, tool_choice="required"))
    assert [c.function.name for c in required.choices[0].message.tool_calls or []] == ["get_time"]
    forced = {"type": "function", "function": {"name": "get_weather"}}
    named = raw_completion(sim, ask("Hello", TIME, WEATHER, tool_choice=forced))
    assert [c.function.name for c in named.choices[0].message.tool_calls or []] == ["get_weather"]
    # A call to a tool that is not offered is not made.
    assert raw_completion(sim, ask("call:get_time", WEATHER)).choices[0].finish_reason == "stop"
    # Letta's agents talk through send_message: the reply is its `message` argument.
    send: ToolSpec = {
        "type": "function",
        "function": {
            "name": "send_message",
            "parameters": {"type": "object", "properties": {"message": {"type": "string"}}},
        },
    }
    chunks = raw_chunks(sim, ask("Hello", send, WEATHER))
    [call] = calls_of(chunks)
    assert call["name"] == "send_message"
    assert json.loads(call["arguments"]) == {"message": "Plain words."}


# --- the OpenAI engine -----------------------------------------------------------------------------------


def request_for(messages: list[ChatMessage], **extra: Any) -> LLMRequest:
    request: LLMRequest = {"messages": messages, "max_tokens": 100, "temperature": 0.0, "user_id": "ada"}
    request.update(extra)  # type: ignore[typeddict-item]
    return request


async def test_engine_sends_tools_and_streams_call_pieces(chatty: SimOpenAIServer) -> None:
    engine = OpenAILLMEngine(base_url=chatty.base_url, model="m")
    request = request_for(
        [{"role": "user", "content": 'call:get_weather{"city": "Oslo"} call:get_time'}],
        tools=[WEATHER, TIME],
        tool_choice="auto",
        parallel_tool_calls=True,
    )
    deltas = [d async for d in engine.stream(request)]
    body = chatty.requests[-1]["body"]
    assert body["tools"] == [WEATHER, TIME]
    assert (body["tool_choice"], body["parallel_tool_calls"]) == ("auto", True)
    assert "".join(d for d in deltas if isinstance(d, str)) == "Let me check that."
    assert deltas[-1] == llm_finish("tool_calls")
    assembler = ToolCallAssembler()
    for d in deltas:
        if not isinstance(d, str) and d["type"] == "tool_call":
            assembler.add(d)
    calls = assembler.calls()
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == [
        ("get_weather", {"city": "Oslo"}),
        ("get_time", {}),
    ]
    assert all(c["id"].startswith("call_") for c in calls)

    # The next round: the calls and their results go back faithfully; the model answers in words.
    outputs = [(calls[0]["id"], "rain"), (calls[1]["id"], "noon")]
    messages = [*request["messages"], *round_messages("", calls, outputs)]
    answer = [d async for d in engine.stream(request_for(messages, tools=[WEATHER, TIME]))]
    assert "".join(d for d in answer if isinstance(d, str)) == "Here is what I found: rain; noon"
    assert answer[-1] == llm_finish("stop")
    sent = chatty.requests[-1]["body"]["messages"]
    assert sent[1] == {"role": "assistant", "content": None, "tool_calls": calls}  # OpenAI's shape
    assert sent[2:] == [
        {"role": "tool", "tool_call_id": calls[0]["id"], "content": "rain"},
        {"role": "tool", "tool_call_id": calls[1]["id"], "content": "noon"},
    ]


async def test_engine_sends_no_tool_parameters_without_tools(sim: SimOpenAIServer) -> None:
    engine = OpenAILLMEngine(base_url=sim.base_url, model="m")
    request = request_for([{"role": "user", "content": "call:get_weather"}], tools=[], tool_choice="auto")
    assert "".join([d async for d in engine.stream(request) if isinstance(d, str)]) == "Plain words."
    assert not {"tools", "tool_choice", "parallel_tool_calls"} & set(sim.requests[-1]["body"])


async def test_a_call_piece_is_the_first_token() -> None:
    """A reply that is only a call, streamed slower than the first-token timeout: the call's first piece
    arrives in time and counts, so the reply is neither retried nor timed out."""
    server = start_sim_openai_server(SimOpenAIConfig(ttft_ms=50, tokens_per_s=10, argument_chunk_chars=4))
    try:
        policy = LLMCallPolicy(first_token_timeout_s=0.5, max_retries=0)
        engine = OpenAILLMEngine(base_url=server.base_url, model="m", policy=policy)
        city = {"city": "Llanfairpwllgwyngyll"}  # ~10 pieces at 10 a second: ~1 s in all
        request = request_for(
            [{"role": "user", "content": f"call:get_weather{json.dumps(city)}"}], tools=[WEATHER]
        )
        deltas = [d async for d in engine.stream(request)]
        assert len(server.requests) == 1  # no retry
        pieces = [d for d in deltas if not isinstance(d, str) and d["type"] == "tool_call"]
        assert len(pieces) > 5
        assert json.loads("".join(p["arguments"] for p in pieces)) == city
        assert deltas[-1] == llm_finish("tool_calls")
    finally:
        server.stop()


class FakeLetta:
    """What the full-Letta engine reads of `LettaMemory`: where Letta is, and the user's agent id."""

    def __init__(self, base_url: str) -> None:
        self.config = SimpleNamespace(base_url=base_url, api_key=None)

    async def agent_id(self, user_id: str) -> str:
        return f"agent-{user_id}"


async def test_full_letta_sends_no_tools_and_llamacpp_reads_words(sim: SimOpenAIServer) -> None:
    """Letta's endpoint takes no tools and the offline model cannot call any: tools are not sent, and a
    conversation holding another model's calls and results is read as its words."""
    engine = LettaAgentLLMEngine(FakeLetta(sim.base_url.removesuffix("/v1")))  # type: ignore[arg-type]
    request = request_for(
        [{"role": "user", "content": "call:get_weather"}], tools=[WEATHER], tool_choice="auto"
    )
    assert "".join([d async for d in engine.stream(request) if isinstance(d, str)]) == "Plain words."
    body = sim.requests[-1]["body"]
    assert body["model"] == "agent-ada"
    assert not {"tools", "tool_choice", "parallel_tool_calls"} & set(body)

    call = {"id": "call_1", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}
    prompt = build_prompt(
        [
            {"role": "user", "content": "What time is it?"},
            {"role": "assistant", "content": "", "tool_calls": [call]},  # type: ignore[list-item]
            {"role": "tool", "tool_call_id": "call_1", "content": "noon"},
            {"role": "assistant", "content": "It is noon."},
            {"role": "user", "content": "Thanks."},
        ]
    )
    assert prompt.endswith("User: What time is it?\nAssistant: It is noon.\nUser: Thanks.\nAssistant:")


# --- the stage -------------------------------------------------------------------------------------------


class ScriptedEngine(LLMEngine):
    """Yields a fixed script of deltas (words, call pieces, a finish)."""

    name = "scripted"
    model = "script"

    def __init__(self, script: list[LLMDelta]) -> None:
        self.script = script

    async def stream(self, request: LLMRequest) -> AsyncGenerator[LLMDelta, None]:
        for delta in self.script:
            yield delta


SCRIPT: list[LLMDelta] = [
    "Sure.",
    " Let me",
    " check",
    {"type": "tool_call", "index": 0, "id": "call_a", "name": "get_weather", "arguments": ""},
    {"type": "tool_call", "index": 0, "arguments": '{"city":'},
    {"type": "tool_call", "index": 1, "id": "call_b", "name": "get_time", "arguments": "{}"},
    {"type": "tool_call", "index": 0, "arguments": ' "Oslo"}'},
    llm_finish("tool_calls"),
]


async def test_token_stream_passes_call_pieces_through() -> None:
    stage = LLMStage(ScriptedEngine(SCRIPT))
    out = [d async for d in stage.stream_tokens(request_for([{"role": "user", "content": "x"}]))]
    assert out == SCRIPT


async def test_phrase_stream_says_the_words_before_a_call_at_once() -> None:
    stage = LLMStage(ScriptedEngine(SCRIPT))
    out = [e async for e in stage.stream_phrases(request_for([{"role": "user", "content": "x"}]))]
    kinds = [e["type"] for e in out]
    assert out[0] == {"type": "first_token", "text": "Sure."}
    # The pending words are a phrase before the first call piece, not held until the reply ends.
    texts = [e["text"] for e in out if e["type"] == "phrase"]
    assert " ".join(texts).split() == ["Sure.", "Let", "me", "check"]
    assert kinds.index("tool_call") > max(i for i, k in enumerate(kinds) if k == "phrase")
    assert [e for e in out if e["type"] == "tool_call"] == SCRIPT[3:7]
    assert out[-1] == llm_finish("tool_calls")
    # A call with no words before it: no first_token marker (that is for words).
    only_call = LLMStage(ScriptedEngine([*SCRIPT[3:]]))
    events = [e async for e in only_call.stream_phrases(request_for([{"role": "user", "content": "x"}]))]
    assert [e["type"] for e in events] == ["tool_call"] * 4 + ["finish"]
