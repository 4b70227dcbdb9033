"""Tools on `/v1/chat/completions`, through the official `openai` SDK, with the simulated OpenAI-compatible
server as the LLM provider: the client's tools in and `tool_calls` out (streamed and not, parallel, over
several turns with their results), server tools run within the request when it opts in, and bad tool
requests answered with OpenAI's 400."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletionChunk

from actors.llm.openai_engine import OpenAILLMEngine
from actors.tools.base import ToolContext, ToolDefinition, ToolError
from actors.tools.toolbox import Toolbox
from testkit.harness import KEY, Harness
from testkit.sim_openai_server import SimOpenAIConfig, SimOpenAIServer, start_sim_openai_server

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city now.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
STOCK = {
    "type": "function",
    "function": {"name": "get_stock", "parameters": {"type": "object", "properties": {}}},
}


class Clock:
    """A server tool: the time, and who asked."""

    definition = ToolDefinition(name="get_time", description="The time now.")

    def __init__(self) -> None:
        self.contexts: list[ToolContext] = []

    async def call(self, arguments: dict[str, Any], context: ToolContext) -> str:
        self.contexts.append(context)
        return "noon"


class Vault:
    """A server tool that always says no."""

    definition = ToolDefinition(name="open_vault")

    async def call(self, arguments: dict[str, Any], context: ToolContext) -> str:
        raise ToolError("the vault is sealed")


@pytest.fixture(scope="module")
def sim() -> Iterator[SimOpenAIServer]:
    server = start_sim_openai_server(
        SimOpenAIConfig(reply="Plain words.", ttft_ms=2, tokens_per_s=1000, tool_preamble="Let me check.")
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def clock() -> Clock:
    return Clock()


@pytest.fixture(scope="module")
def api(sim: SimOpenAIServer, clock: Clock) -> Iterator[Harness]:
    harness = Harness(
        engine=OpenAILLMEngine(base_url=sim.base_url, model="sim"),
        toolbox=Toolbox([clock, Vault()]),
        llm_base_url=sim.base_url,
    )
    with harness.http:
        yield harness


def user(text: str) -> list[Any]:
    return [{"role": "user", "content": text}]


def test_a_call_comes_back_as_openai_returns_it(api: Harness, sim: SimOpenAIServer) -> None:
    turns = len(api.sink.turns)
    reply = api.client.chat.completions.create(
        model="sim",
        messages=user('call:get_weather{"city": "Oslo"}'),
        tools=[WEATHER, STOCK],  # type: ignore[list-item]
        tool_choice="auto",
        parallel_tool_calls=True,
        user="ada",
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Let me check."
    [call] = choice.message.tool_calls or []
    assert call.type == "function" and call.id.startswith("call_")
    assert (call.function.name, json.loads(call.function.arguments)) == ("get_weather", {"city": "Oslo"})
    api.validate(
        "/v1/chat/completions", "post", 200, "application/json", reply.model_dump(exclude_unset=True)
    )
    body = sim.requests[-1]["body"]
    assert body["tools"] == [WEATHER, STOCK]  # the client's tools, as sent
    assert (body["tool_choice"], body["parallel_tool_calls"]) == ("auto", True)
    # Not a final answer: nothing goes to memory until the results are answered.
    assert len(api.sink.turns) == turns


def test_streamed_calls_are_openais_chunks(api: Harness) -> None:
    response = api.http.post(
        "/v1/chat/completions",
        headers={"Authorization": f"Bearer {KEY}"},
        json={
            "model": "sim",
            "messages": user('call:get_weather{"city": "Reykjavik, Iceland"} call:get_stock'),
            "tools": [WEATHER, STOCK],
            "stream": True,
        },
    )
    lines = [line for line in response.text.splitlines() if line]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    for chunk in chunks:
        ChatCompletionChunk.model_validate(chunk)  # the SDK's own model
    pieces = [
        c["choices"][0]["delta"]["tool_calls"][0] for c in chunks if "tool_calls" in c["choices"][0]["delta"]
    ]
    # Exactly OpenAI's shape: a call's first piece has its id, type and name; later ones only arguments.
    heads = [p for p in pieces if "id" in p]
    assert [(h["index"], h["type"], h["function"]["name"]) for h in heads] == [
        (0, "function", "get_weather"),
        (1, "function", "get_stock"),
    ]
    rest = [p for p in pieces if "id" not in p]
    assert rest and all(set(p) == {"index", "function"} and set(p["function"]) == {"arguments"} for p in rest)
    arguments = ["".join(p["function"]["arguments"] for p in pieces if p["index"] == i) for i in (0, 1)]
    assert [json.loads(a) for a in arguments] == [{"city": "Reykjavik, Iceland"}, {}]
    assert len([p for p in pieces if p["index"] == 0]) > 2  # the arguments arrive in pieces
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"

    # The SDK puts the same stream together.
    stream = api.client.chat.completions.create(
        model="sim",
        messages=user("call:get_stock"),
        tools=[STOCK],
        stream=True,  # type: ignore[list-item]
    )
    got = list(stream)
    words = "".join(c.choices[0].delta.content or "" for c in got if c.choices)
    assert words == "Let me check."
    names = [
        t.function.name for c in got if c.choices for t in c.choices[0].delta.tool_calls or () if t.function
    ]
    assert "get_stock" in names


def test_results_go_back_and_the_answer_is_remembered(api: Harness, sim: SimOpenAIServer) -> None:
    question = 'What is it like in Oslo? call:get_weather{"city": "Oslo"}'
    first = api.client.chat.completions.create(
        model="sim",
        messages=user(question),
        tools=[WEATHER],
        user="ada",  # type: ignore[list-item]
    )
    [call] = first.choices[0].message.tool_calls or []
    # Just as code written for OpenAI sends it back: the assistant message as returned, then the result.
    messages = [
        *user(question),
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "light rain, 9 C"},
    ]
    second = api.client.chat.completions.create(
        model="sim",
        messages=messages,
        tools=[WEATHER],
        user="ada",
        stream=True,  # type: ignore[list-item]
    )
    chunks = list(second)
    answer = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert answer == "Here is what I found: light rain, 9 C"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    sent = sim.requests[-1]["body"]["messages"]
    assert sent[-2] == {
        "role": "assistant",
        "content": "Let me check.",
        "tool_calls": [call.model_dump()],
    }
    assert sent[-1] == {"role": "tool", "tool_call_id": call.id, "content": "light rain, 9 C"}
    turn = api.sink.turns[-1]
    assert (turn.user_id, turn.user_text, turn.assistant_text) == ("ada", question, answer)


def test_parallel_calls_can_be_turned_off(api: Harness) -> None:
    both = api.client.chat.completions.create(
        model="sim",
        messages=user("call:get_weather call:get_stock"),
        tools=[WEATHER, STOCK],  # type: ignore[list-item]
    )
    assert [c.function.name for c in both.choices[0].message.tool_calls or []] == ["get_weather", "get_stock"]
    one = api.client.chat.completions.create(
        model="sim",
        messages=user("call:get_weather call:get_stock"),
        tools=[WEATHER, STOCK],  # type: ignore[list-item]
        parallel_tool_calls=False,
    )
    assert [c.function.name for c in one.choices[0].message.tool_calls or []] == ["get_weather"]


def test_server_tools_run_on_the_server_when_asked(api: Harness, sim: SimOpenAIServer, clock: Clock) -> None:
    # Not asked for: the model is not offered them (and answers in words).
    plain = api.client.chat.completions.create(model="sim", messages=user("call:get_time"))
    assert plain.choices[0].message.content == "Plain words."
    assert "tools" not in sim.requests[-1]["body"]

    before = len(sim.requests)
    stream = api.client.chat.completions.create(
        model="sim",
        messages=user("What time is it? call:get_time"),
        user="ada",
        stream=True,
        extra_body={"server_tools": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    # The words before the call, then the answer to its result; no call reaches the client.
    assert text == "Let me check. Here is what I found: noon"
    assert not any(c.choices[0].delta.tool_calls for c in chunks if c.choices)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    first, second = (r["body"] for r in sim.requests[before:])
    assert [t["function"]["name"] for t in first["tools"]] == ["get_time", "open_vault"]
    call = second["messages"][-2]["tool_calls"][0]
    assert call["function"]["name"] == "get_time"
    assert second["messages"][-1] == {"role": "tool", "tool_call_id": call["id"], "content": "noon"}
    assert clock.contexts[-1].user_id == "ada"  # called for the request's user
    turn = api.sink.turns[-1]
    assert (turn.user_text, turn.assistant_text) == ("What time is it? call:get_time", text)

    reply = api.client.chat.completions.create(
        model="sim", messages=user("call:open_vault"), extra_body={"server_tools": True}
    )
    # A tool's failure is an output the model reads, and the reply goes on.
    said = 'Let me check. Here is what I found: {"error": "the vault is sealed"}'
    assert reply.choices[0].message.content == said
    assert reply.model_extra and "tool_ms" in reply.model_extra["metrics"]


def test_client_and_server_calls_in_one_request(api: Harness, sim: SimOpenAIServer, clock: Clock) -> None:
    ran = len(clock.contexts)
    reply = api.client.chat.completions.create(
        model="sim",
        messages=user("call:get_time call:get_weather"),
        tools=[WEATHER],  # type: ignore[list-item]
        extra_body={"server_tools": True},
    )
    # The client gets its own call, numbered among its calls; the server's call in that round is not run.
    [call] = reply.choices[0].message.tool_calls or []
    assert call.function.name == "get_weather"
    assert reply.choices[0].finish_reason == "tool_calls"
    assert len(clock.contexts) == ran
    stream = api.client.chat.completions.create(
        model="sim",
        messages=user("call:get_time call:get_weather"),
        tools=[WEATHER],  # type: ignore[list-item]
        extra_body={"server_tools": True},
        stream=True,
    )
    pieces = [t for c in stream if c.choices for t in c.choices[0].delta.tool_calls or ()]
    assert {p.index for p in pieces} == {0}
    assert pieces[0].function and pieces[0].function.name == "get_weather"


def test_server_rounds_are_limited(api: Harness, sim: SimOpenAIServer, clock: Clock) -> None:
    ran, before = len(clock.contexts), len(sim.requests)
    reply = api.client.chat.completions.create(
        model="sim",
        messages=user("loop:get_time"),  # the model calls again after every result
        extra_body={"server_tools": True, "max_tool_rounds": 2},
    )
    assert len(clock.contexts) - ran == 2
    bodies = [r["body"] for r in sim.requests[before:]]
    assert [b.get("tool_choice") for b in bodies] == [None, None, "none"]
    # Each round's words, then the answer in words once no more calls are allowed.
    assert reply.choices[0].message.content == "Let me check. Let me check. Here is what I found: noon"
    assert reply.choices[0].finish_reason == "stop"


CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}


@pytest.mark.parametrize(
    ("kwargs", "param", "words"),
    [
        (
            {"messages": [*user("Hi"), {"role": "tool", "tool_call_id": "call_1", "content": "x"}]},
            "messages.[1].role",
            "must answer a call of the assistant message before it",
        ),
        (
            {"messages": [*user("Hi"), {"role": "assistant", "tool_calls": [CALL]}, *user("And?")]},
            "messages.[2].role",
            "these have none: call_1",
        ),
        ({"messages": [*user("Hi"), {"role": "tool", "content": "x"}]}, "messages.1", "needs `tool_call_id`"),
        (
            {"messages": [{"role": "user", "content": "Hi", "tool_calls": [CALL]}]},
            "messages.0",
            "belong to assistant messages",
        ),
        ({"messages": user("Hi"), "tool_choice": "auto"}, "tool_choice", "only allowed when `tools`"),
        ({"messages": user("Hi"), "parallel_tool_calls": False}, "parallel_tool_calls", "only allowed when"),
        (
            {
                "messages": user("Hi"),
                "tools": [WEATHER],
                "tool_choice": {"type": "function", "function": {"name": "nope"}},
            },
            "tool_choice",
            "not among the tools",
        ),
        (
            {"messages": user("Hi"), "tools": [{"type": "function", "function": {"name": "bad name"}}]},
            "tools.0.function.name",
            "String should match pattern",
        ),
        (
            {
                "messages": user("Hi"),
                "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}],
            },
            "tools.0.function.parameters",
            "JSON Schema of type 'object'",
        ),
        (
            {"messages": user("Hi"), "tools": [{"type": "custom", "custom": {"name": "f"}}]},
            "tools.0.type",
            "Input should be 'function'",
        ),
        ({"messages": user("Hi"), "tools": [WEATHER, WEATHER]}, "tools.1.function.name", "two tools"),
        (
            {
                "messages": user("Hi"),
                "tools": [{"type": "function", "function": {"name": "get_time"}}],
                "extra_body": {"server_tools": True},
            },
            "tools.0.function.name",
            "the name of one of the server's tools",
        ),
        (
            {"messages": user("Hi"), "extra_body": {"server_tools": True, "max_tool_rounds": 99}},
            "max_tool_rounds",
            "the limit is 4",
        ),
    ],
    ids=lambda v: v if (isinstance(v, str) and "." in v) or v in ("tool_choice",) else None,
)
def test_bad_tool_requests_get_openais_400(
    api: Harness, kwargs: dict[str, Any], param: str, words: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        api.client.chat.completions.create(model="sim", **kwargs)
    error = caught.value.body
    assert isinstance(error, dict), error
    assert error["type"] == "invalid_request_error" and error["param"] == param, error
    assert words in error["message"], error
