"""Tools over `/v1/realtime` as code written for OpenAI's Realtime API uses them, through the official
`openai` SDK's realtime client on a real socket: client function tools declared in `session.update` and
answered with `function_call_output` items, server tools run inside the response with their call and
output shown as items, and a round mixing both. Every server event is validated against the SDK's
models (`until`); the model is the real LLM stage around a scripted engine streaming OpenAI's call shapes."""

from __future__ import annotations

import json
from typing import Any

from actors.config import Settings
from actors.llm.base import LLMEngine
from actors.llm.openai_engine import OpenAILLMEngine
from actors.llm.stage import LLMStage
from actors.stt.simulated import SimulatedSTTEngine
from actors.tools.base import ToolContext, ToolDefinition
from actors.tools.toolbox import Toolbox
from actors.tts.simulated import SimulatedTTSEngine
from actors.tts.stage import TTSStage
from serve_app.api.deps import RouterDeps
from serve_app.api.router_app import build_router_app
from testkit.fakes import EnergySpeechDetector, FakeLLMEngine, ScriptedRound, served
from testkit.sim_openai_server import SimOpenAIConfig, start_sim_openai_server
from tests.test_openai_realtime import connected, error, typed_turn, until

MAP_TOOL = {
    "type": "function",
    "name": "show_map",
    "description": "Show a map of a city on the user's screen.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


class Weather:
    definition = ToolDefinition(
        "get_weather",
        "The weather in a city.",
        {"type": "object", "properties": {"city": {"type": "string"}}},
    )

    def __init__(self) -> None:
        self.calls: list[tuple[dict[str, Any], ToolContext]] = []

    async def call(self, arguments: dict[str, Any], context: ToolContext) -> str:
        self.calls.append((arguments, context))
        return '{"temp_c": 21}'


def app(llm: LLMEngine, tools: Toolbox | None = None) -> Any:
    settings = Settings(stt_engine="pocketsphinx", llm_engine="openai", tts_engine="espeak").resolved()
    return build_router_app(
        RouterDeps(
            settings=settings,
            stt=SimulatedSTTEngine("hello", finalize_delay_ms=1),
            llm=LLMStage(llm),
            tts=TTSStage(SimulatedTTSEngine(ttfb_ms=5, realtime_factor=1000)),
            speech_detector=EnergySpeechDetector,
            tools=tools or Toolbox(),
        )
    )


def kinds(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


async def test_a_client_tool_is_called_answered_and_the_next_response_hears_its_output() -> None:
    llm = FakeLLMEngine(
        "",
        ttft_ms=1,
        tokens_per_s=1000,
        rounds=[
            ScriptedRound("Opening the map.", (("show_map", '{"city": "Paris"}'),)),
            ScriptedRound("There is Paris."),
        ],
    )
    async with served(app(llm)) as url, connected(url) as conn:
        created = (await until(conn, "session.created"))[-1]["session"]
        assert (created["tools"], created["tool_choice"]) == ([], "auto")
        await conn.session.update(session={"type": "realtime", "tools": [MAP_TOOL], "tool_choice": "auto"})
        updated = (await until(conn, "session.updated"))[-1]["session"]
        assert (updated["tools"], updated["tool_choice"]) == ([MAP_TOOL], "auto")

        events = await typed_turn(conn, "Show me Paris.")
        seen = kinds(events)
        call_events = [
            "response.output_item.added",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.done",
            "response.output_item.done",
        ]
        assert [k for k in seen if k in call_events] == [
            call_events[0],
            *["response.function_call_arguments.delta"]
            * seen.count("response.function_call_arguments.delta"),
            *call_events[2:],
        ]
        added = next(e for e in events if e["type"] == "response.output_item.added")["item"]
        assert (added["type"], added["name"], added["status"]) == ("function_call", "show_map", "in_progress")
        deltas = [e for e in events if e["type"] == "response.function_call_arguments.delta"]
        assert len(deltas) > 1 and "".join(d["delta"] for d in deltas) == '{"city": "Paris"}'
        done = events[-1]["response"]
        assert done["status"] == "completed"
        message, call = done["output"]
        assert message["content"][0]["transcript"] == "Opening the map."
        assert (call["type"], call["call_id"], call["arguments"]) == (
            "function_call",
            added["call_id"],
            '{"city": "Paris"}',
        )
        assert "tool_ms" not in done["metadata"]  # the server ran no tool
        offered = llm.calls[0]["tools"]
        assert [t["function"]["name"] for t in offered] == ["show_map"]

        await conn.conversation.item.retrieve(item_id=call["id"])
        assert (await until(conn, "conversation.item.retrieved"))[-1]["item"] == call

        # The client runs the call and answers; the next response hears the output.
        output = {"type": "function_call_output", "call_id": call["call_id"], "output": '{"shown": true}'}
        await conn.conversation.item.create(item=output)
        item = (await until(conn, "conversation.item.added"))[-1]["item"]
        assert (item["type"], item["call_id"], item["output"]) == tuple(output.values()) and item["id"]
        await conn.response.create()
        answer = (await until(conn, "response.done"))[-1]["response"]
        assert answer["output"][0]["content"][0]["transcript"] == "There is Paris."
        prompt = llm.requests[-1]
        assert prompt[-2] == {
            "role": "assistant",
            "content": "Opening the map.",
            "tool_calls": [
                {
                    "id": call["call_id"],
                    "type": "function",
                    "function": {"name": "show_map", "arguments": '{"city": "Paris"}'},
                }
            ],
        }
        assert prompt[-1] == {"role": "tool", "tool_call_id": call["call_id"], "content": '{"shown": true}'}

        # Bad answers are refused with the reason, and change nothing.
        await conn.conversation.item.create(item=output)
        again = await error(conn)
        assert (again["code"], again["param"]) == ("invalid_call_id", "item.call_id")
        assert "already has its output" in again["message"]
        await conn.conversation.item.create(item={**output, "call_id": "call_nobody_made"})  # type: ignore[typeddict-item]
        unknown = await error(conn)
        assert unknown["code"] == "invalid_call_id" and "no function_call" in unknown["message"]


async def test_bad_tools_in_session_update_are_refused_all_or_nothing() -> None:
    llm = FakeLLMEngine("Fine.", ttft_ms=1, tokens_per_s=1000)
    async with served(app(llm, Toolbox([Weather()]))) as url, connected(url) as conn:
        await until(conn, "session.created")
        refusals: list[tuple[dict[str, Any], str, str]] = [
            (
                {"tools": [{"type": "mcp", "server_label": "x"}]},
                "session.tools",
                "mcp tools are not supported",
            ),
            ({"tools": [{"type": "function", "name": "bad name!"}]}, "session.tools", "1-64 letters"),
            ({"tools": [{**MAP_TOOL, "name": "get_weather"}]}, "session.tools", "this server runs itself"),
            ({"tools": [MAP_TOOL, MAP_TOOL]}, "session.tools", "declared twice"),
            ({"tool_choice": "sometimes"}, "session.tool_choice", "tool_choice must be"),
            ({"tool_choice": {"type": "function", "name": "fly"}}, "session.tool_choice", "not one of"),
        ]
        for session, param, words in refusals:
            await conn.send({"type": "session.update", "session": {"type": "realtime", **session}})  # type: ignore[arg-type]
            refused = await error(conn)
            assert (refused["code"], refused["param"]) == ("invalid_session", param)
            assert words in refused["message"], refused
        # A server tool may be forced by name; the session keeps no client tools from the refusals.
        await conn.session.update(
            session={"type": "realtime", "tool_choice": {"type": "function", "name": "get_weather"}}
        )
        updated = (await until(conn, "session.updated"))[-1]["session"]
        assert (updated["tools"], updated["tool_choice"]) == ([], {"type": "function", "name": "get_weather"})
        await typed_turn(conn, "Hi.")
        assert llm.calls[-1]["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}


async def test_a_server_tool_runs_inside_the_response_and_the_client_sees_call_and_output() -> None:
    weather = Weather()
    llm = FakeLLMEngine(
        "",
        ttft_ms=1,
        tokens_per_s=1000,
        rounds=[
            ScriptedRound(calls=(("get_weather", '{"city": "Paris"}'), ("show_map", '{"city": "Paris"}'))),
            ScriptedRound("It is 21 degrees, and there is the map."),
        ],
    )
    async with served(app(llm, Toolbox([weather]))) as url, connected(url) as conn:
        await until(conn, "session.created")
        await conn.session.update(session={"type": "realtime", "tools": [MAP_TOOL]})
        await until(conn, "session.updated")
        # One round calls both: the server's runs, then the response ends with the client's pending.
        events = await typed_turn(conn, "Weather and a map of Paris, please.")
        done = events[-1]["response"]
        _, weather_call, map_call, weather_output = done["output"]
        assert [weather_call["name"], map_call["name"]] == ["get_weather", "show_map"]
        assert (weather_output["type"], weather_output["call_id"], weather_output["output"]) == (
            "function_call_output",
            weather_call["call_id"],
            '{"temp_c": 21}',
        )
        output_added = [
            e["output_index"]
            for e in events
            if e["type"] == "response.output_item.added" and e["item"]["type"] == "function_call_output"
        ]
        assert output_added == [3]
        assert float(done["metadata"]["tool_ms"]) >= 0
        [(arguments, context)] = weather.calls
        assert arguments == {"city": "Paris"} and context.user_id == "anonymous"
        assert len(llm.requests) == 1

        # The client answers its call: the answer follows, having heard both outputs.
        output = {"type": "function_call_output", "call_id": map_call["call_id"], "output": "shown"}
        await conn.conversation.item.create(item=output)
        await until(conn, "conversation.item.added")
        await conn.response.create()
        answer = (await until(conn, "response.done"))[-1]["response"]
        assert answer["output"][0]["content"][0]["transcript"] == "It is 21 degrees, and there is the map."
        prompt = llm.requests[-1]
        assert [c["id"] for c in prompt[-3]["tool_calls"]] == [weather_call["call_id"], map_call["call_id"]]
        assert [(m["role"], m.get("tool_call_id")) for m in prompt[-2:]] == [
            ("tool", weather_call["call_id"]),
            ("tool", map_call["call_id"]),
        ]


async def test_a_server_tool_answer_streams_on_in_the_same_response() -> None:
    llm = FakeLLMEngine(
        "",
        ttft_ms=1,
        tokens_per_s=1000,
        rounds=[ScriptedRound(calls=(("get_weather", '{"city": "Oslo"}'),)), ScriptedRound("Cold in Oslo.")],
    )
    async with served(app(llm, Toolbox([Weather()]))) as url, connected(url) as conn:
        await until(conn, "session.created")
        events = await typed_turn(conn, "Weather in Oslo?")
        done = events[-1]["response"]
        assert [item["type"] for item in done["output"]] == [
            "message",
            "function_call",
            "function_call_output",
            "message",
        ]
        answer = done["output"][3]
        assert answer["content"][0]["transcript"] == "Cold in Oslo."
        audio = [e for e in events if e["type"] == "response.output_audio.delta"]
        assert audio and {(e["item_id"], e["output_index"]) for e in audio} == {(answer["id"], 3)}
        assert "tool_ms" in done["metadata"] and len(llm.requests) == 2


async def test_a_client_restores_a_call_and_its_output() -> None:
    llm = FakeLLMEngine("Still sunny.", ttft_ms=1, tokens_per_s=1000)
    async with served(app(llm)) as url, connected(url) as conn:
        await until(conn, "session.created")
        call = {"type": "function_call", "call_id": "call_old", "name": "get_weather", "arguments": "{}"}
        await conn.conversation.item.create(item=call)  # type: ignore[arg-type]
        added = (await until(conn, "conversation.item.added"))[-1]["item"]
        assert (added["type"], added["call_id"], added["status"]) == (
            "function_call",
            "call_old",
            "completed",
        )
        await conn.conversation.item.create(item=call)  # type: ignore[arg-type]
        assert "already" in (await error(conn))["message"]
        await conn.conversation.item.create(item={**call, "name": "no spaces allowed"})  # type: ignore[arg-type]
        assert (await error(conn))["param"] == "item.name"
        output = {"type": "function_call_output", "call_id": "call_old", "output": "sunny"}
        await conn.conversation.item.create(item=output)  # type: ignore[arg-type]
        await until(conn, "conversation.item.added")
        await typed_turn(conn, "And now?")
    prompt = llm.requests[-1]
    assert prompt[1] == {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {"id": "call_old", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
        ],
    }
    assert prompt[2:] == [
        {"role": "tool", "tool_call_id": "call_old", "content": "sunny"},
        {"role": "user", "content": "And now?"},
    ]


async def test_a_real_model_servers_tool_call_crosses_the_whole_voice_path() -> None:
    """The OpenAI engine against the simulated server's real `tool_calls` stream: the words before the
    call are spoken, the server tool runs, and the answer built from its output is spoken in the same
    response."""
    weather = Weather()
    sim = start_sim_openai_server(
        SimOpenAIConfig(reply="Plain words.", ttft_ms=2, tokens_per_s=1000, tool_preamble="Let me check.")
    )
    try:
        engine = OpenAILLMEngine(base_url=sim.base_url, model="sim")
        async with served(app(engine, Toolbox([weather]))) as url, connected(url) as conn:
            await until(conn, "session.created")
            events = await typed_turn(conn, 'Weather? call:get_weather{"city": "Lima"}')
            done = events[-1]["response"]
            assert done["status"] == "completed"
            preamble, call, output, answer = done["output"]
            assert preamble["content"][0]["transcript"] == "Let me check."
            assert (call["name"], json.loads(call["arguments"])) == ("get_weather", {"city": "Lima"})
            assert (output["call_id"], output["output"]) == (call["call_id"], '{"temp_c": 21}')
            assert '{"temp_c": 21}' in answer["content"][0]["transcript"]
            spoken = {e["item_id"] for e in events if e["type"] == "response.output_audio.delta"}
            assert spoken == {preamble["id"], answer["id"]}
            assert weather.calls[0][0] == {"city": "Lima"}
    finally:
        sim.stop()
