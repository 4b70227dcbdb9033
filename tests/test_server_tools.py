"""Server tools declared in settings: HTTP webhooks against a real local HTTP server, and the tools of
real MCP servers (the `mcp` SDK's own server, over stdio and streamable HTTP) started by the tests,
called through the `Toolbox` as the router calls them."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from starlette.testclient import TestClient

from actors.config import Settings
from actors.llm.base import ToolCall
from actors.tools.base import ToolContext
from actors.tools.servers import ServerTools
from actors.tools.settings import McpServerConfig, WebhookToolConfig
from actors.tools.toolbox import Toolbox, ToolResult
from testkit.serve_cluster import free_port

ROOT = Path(__file__).resolve().parents[1]
ADA = ToolContext(user_id="ada", session_id="sess_1")


def call(name: str, arguments: dict[str, Any] | str = "", call_id: str = "call_1") -> ToolCall:
    text = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": text}}


def error_of(result: ToolResult) -> str:
    return str(json.loads(result.output)["error"])


# --- settings ---------------------------------------------------------------------------------------


def test_settings_take_tools_and_mcp_servers_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    hook = {
        "name": "get_weather",
        "url": "https://hooks.example.com/weather",
        "headers": {"Authorization": "Bearer ${T}"},
    }
    server = {
        "type": "mcp",
        "server_label": "gh",
        "server_url": "https://x.example/mcp",
        "require_approval": "never",
    }
    monkeypatch.setenv("VOICE_TOOLS", json.dumps([hook]))
    monkeypatch.setenv("VOICE_MCP_SERVERS", json.dumps([server | {"allowed_tools": {"tool_names": ["a"]}}]))
    settings = Settings()
    assert (
        settings.tools[0].name == "get_weather"
        and settings.tools[0].headers["Authorization"] == "Bearer ${T}"
    )
    assert settings.mcp_servers[0].allowed_tools == ["a"]
    # serve_config.yaml args go through Serve as plain data and come back the same
    assert Settings(**settings.shareable()).mcp_servers == settings.mcp_servers


@pytest.mark.parametrize(
    ("tools", "servers", "message"),
    [
        ([{"name": "get weather", "url": "https://x"}], [], "tool name is 1 to 64"),
        ([{"name": "w", "url": "file:///etc/passwd"}], [], "must be an http(s) URL"),
        ([{"name": "w", "url": "https://x", "parameters": {"type": "string"}}], [], '"type": "object"'),
        (
            [{"name": "w", "url": "https://x", "parameters": {"type": "object", "required": 3}}],
            [],
            "not a valid",
        ),
        ([{"name": "w", "url": "https://x", "headers": {"A": "Bearer $TOKEN"}}], [], "${NAME}"),
        ([{"name": "w", "url": "https://x"}, {"name": "w", "url": "https://y"}], [], "two webhook tools"),
        ([{"name": "w", "url": "https://x", "secret": "s"}], [], "Extra inputs"),
        ([], [{"server_label": "a"}], "either server_url or command"),
        (
            [],
            [{"server_label": "a", "server_url": "https://x", "command": "srv"}],
            "either server_url or command",
        ),
        ([], [{"server_label": "a", "command": "srv", "headers": {"A": "b"}}], "headers go with server_url"),
        ([], [{"server_label": "a", "server_url": "https://x", "args": ["-v"]}], "go with command"),
        ([], [{"server_label": "a b", "command": "srv"}], "server_label is 1 to 32"),
        (
            [],
            [{"server_label": "a", "command": "s"}, {"server_label": "a", "command": "t"}],
            "two MCP servers",
        ),
        ([], [{"server_label": "a", "command": "s", "allowed_tools": {"read_only": True}}], "read_only"),
        ([], [{"server_label": "a", "command": "s", "require_approval": "always"}], "'never'"),
    ],
)
def test_bad_tool_settings_are_refused_with_a_clear_error(
    tools: list[dict[str, Any]], servers: list[dict[str, Any]], message: str
) -> None:
    with pytest.raises(
        ValidationError, match=message.replace("$", r"\$").replace("(", r"\(").replace(")", r"\)")
    ):
        Settings(tools=tools, mcp_servers=servers)


def test_a_secret_missing_from_the_environment_stops_the_start_by_its_name() -> None:
    hook = WebhookToolConfig(name="w", url="https://x", headers={"Authorization": "Bearer ${HOOK_TOKEN}"})
    with pytest.raises(ValueError, match="HOOK_TOKEN, which is not set"):
        ServerTools([hook], environ={})
    server = McpServerConfig(server_label="s", command="srv", env={"TOKEN": "${SRV_TOKEN}"})
    with pytest.raises(ValueError, match="SRV_TOKEN, which is not set"):
        ServerTools([], [server], environ={"HOOK_TOKEN": "x"})


# --- webhooks ---------------------------------------------------------------------------------------


class Endpoint:
    """A real HTTP server on a free port: `/ok` answers what it got, `/slow` answers once released,
    `/status/N` answers status N with a short message."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str], dict[str, Any]]] = []
        self.release = threading.Event()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                endpoint.requests.append((self.path, dict(self.headers), body))
                city = body.get("arguments", {}).get("city")
                status, text = 200, json.dumps({"forecast": "sunny", "city": city})
                if self.path == "/slow":
                    endpoint.release.wait(60)
                elif self.path.startswith("/status/"):
                    status, text = int(self.path.rsplit("/", 1)[1]), "no such city"
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("Location", "http://127.0.0.1:1/elsewhere")
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(text.encode())

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    server = Endpoint()
    try:
        yield server
    finally:
        server.close()


def hook(name: str, url: str, **extra: Any) -> WebhookToolConfig:
    parameters = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    return WebhookToolConfig(name=name, description="The weather.", parameters=parameters, url=url, **extra)


async def test_a_webhook_gets_the_call_as_json_with_its_secret_header_and_its_body_is_the_output(
    endpoint: Endpoint,
) -> None:
    config = hook("get_weather", endpoint.url + "/ok", headers={"Authorization": "Bearer ${HOOK_TOKEN}"})
    tools = ServerTools([config], environ={"HOOK_TOKEN": "s3cret"})
    try:
        toolbox = tools.toolbox()
        spec = toolbox.definitions()[0].spec()
        assert spec["function"]["name"] == "get_weather" and spec["function"]["parameters"]["required"] == [
            "city"
        ]
        result = await toolbox.run(call("get_weather", {"city": "Paris"}, "call_7"), ADA)
    finally:
        await tools.close()
    assert result.outcome == "ok"
    assert json.loads(result.output) == {"forecast": "sunny", "city": "Paris"}
    path, headers, body = endpoint.requests[0]
    assert path == "/ok"
    assert headers["Authorization"] == "Bearer s3cret"
    assert headers["Content-Type"] == "application/json"
    assert body == {
        "tool": "get_weather",
        "call_id": "call_7",
        "arguments": {"city": "Paris"},
        "user": "ada",
        "session_id": "sess_1",
    }


async def test_webhook_failures_become_plain_errors_for_the_model(endpoint: Endpoint) -> None:
    closed = f"http://127.0.0.1:{free_port()}/nothing"
    tools = ServerTools(
        [
            hook("refused", endpoint.url + "/status/404"),
            hook("broken", endpoint.url + "/status/503"),
            hook("moved", endpoint.url + "/status/302"),
            hook("slow", endpoint.url + "/slow", timeout_s=0.5),
            hook("gone", closed),
        ]
    )
    try:
        toolbox = tools.toolbox()
        results = await toolbox.run_all(
            [
                call(name, {"city": "Paris"}, f"call_{name}")
                for name in ("refused", "broken", "moved", "slow", "gone")
            ],
            ADA,
        )
        bad_arguments = await toolbox.run(call("refused", "{city"), ADA)
    finally:
        await tools.close()
    refused, broken, moved, slow, gone = results
    assert (refused.outcome, error_of(refused)) == (
        "tool_error",
        "refused refused the call (HTTP 404): no such city",
    )
    assert (broken.outcome, error_of(broken)) == ("tool_error", "broken failed (HTTP 503)")
    assert (moved.outcome, error_of(moved)) == ("tool_error", "moved failed (HTTP 302)")  # never followed
    assert (slow.outcome, error_of(slow)) == ("timeout", "slow did not answer within 0.5 s")
    assert (gone.outcome, error_of(gone)) == ("tool_error", "gone could not be reached")
    assert bad_arguments.outcome == "tool_error" and "not valid JSON" in error_of(bad_arguments)
    assert [path for path, _, _ in endpoint.requests].count("/status/404") == 1  # bad arguments: never sent


# --- MCP servers ------------------------------------------------------------------------------------

STDIO_SERVER = {
    "server_label": "local",
    "command": sys.executable,
    "args": ["-m", "testkit.mcp_server", "stdio"],
    "cwd": str(ROOT),
    "allowed_tools": ["add", "echo", "sleep", "fail", "pid", "picture"],
    "timeout_s": 3.0,
}


async def wait_for(check: Any, what: str, limit_s: float = 60.0) -> Any:
    """Poll `check` (async) until it returns something truthy; a server starting under load is slow."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if value := await check():
            return value
        await asyncio.sleep(0.2)
    raise AssertionError(f"never {what}")


async def test_a_stdio_mcp_servers_allowed_tools_are_called_and_it_is_restarted_when_it_dies() -> None:
    tools = ServerTools([], [McpServerConfig(**STDIO_SERVER)])
    try:
        await tools.start()
        toolbox = tools.toolbox()
        names = sorted(d.name for d in toolbox.definitions())
        assert names == [
            "local__add",
            "local__echo",
            "local__fail",
            "local__picture",
            "local__pid",
            "local__sleep",
        ]
        add = toolbox.definition("local__add")
        assert add is not None and add.description == "Add two integers."
        assert add.parameters["required"] == ["a", "b"] and add.timeout_s == 3.0

        assert (await toolbox.run(call("local__add", {"a": 2, "b": 3}), ADA)).output == "5"
        picture = await toolbox.run(call("local__picture"), ADA)
        assert picture.output == "a red dot\n[image (image/png)]"
        failed = await toolbox.run(call("local__fail", {"reason": "no"}), ADA)
        assert failed.outcome == "tool_error" and "fail" in error_of(failed)
        slow = await toolbox.run(call("local__sleep", {"seconds": 30}), ADA)
        assert (slow.outcome, error_of(slow)) == ("timeout", "local__sleep did not answer within 3 s")
        wrong = await toolbox.run(call("local__add", {"a": "two", "b": 3}), ADA)
        assert wrong.outcome == "tool_error" and "valid integer" in error_of(wrong)  # the server's words
        hidden = await toolbox.run(call("local__hidden"), ADA)
        assert hidden.outcome == "unknown_tool"
        # the connection still works after a call was abandoned
        assert (await toolbox.run(call("local__echo", {"text": "still here"}), ADA)).output == "still here"
        assert await tools.problems() == {}

        first_pid = int((await toolbox.run(call("local__pid"), ADA)).output)
        os.kill(first_pid, signal.SIGKILL)
        dead = await toolbox.run(call("local__add", {"a": 1, "b": 1}), ADA)
        assert dead.outcome == "tool_error" and "local tool server" in error_of(dead)

        async def answered_by_a_new_process() -> bool:
            result = await tools.toolbox().run(call("local__pid"), ADA)
            return result.outcome == "ok" and int(result.output) != first_pid

        await wait_for(answered_by_a_new_process, "restarted")
        assert (await tools.toolbox().run(call("local__add", {"a": 1, "b": 1}), ADA)).output == "2"
    finally:
        await tools.close()


class HttpMcpServer:
    """`testkit.mcp_server` over streamable HTTP in its own process group, on a port that stays the
    same across restarts."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "testkit.mcp_server", "http", "--port", str(self.port)],
            cwd=ROOT,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        raise AssertionError("the MCP server did not start")

    def kill(self) -> None:
        if self.process is not None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            self.process = None


@pytest.fixture
def http_server() -> Iterator[HttpMcpServer]:
    server = HttpMcpServer()
    server.start()
    try:
        yield server
    finally:
        server.kill()


async def test_an_http_mcp_server_gets_its_secret_headers_and_comes_back_after_dying(
    http_server: HttpMcpServer,
) -> None:
    config = McpServerConfig(
        server_label="remote", server_url=http_server.url, headers={"X-Api-Key": "${MCP_KEY}"}, timeout_s=5
    )
    tools = ServerTools([], [config], environ={"MCP_KEY": "k-123"})
    try:
        await tools.start()
        toolbox = tools.toolbox()
        assert "remote__add" in toolbox and "remote__hidden" in toolbox  # no allowed_tools: all of them
        assert (await toolbox.run(call("remote__add", {"a": 40, "b": 2}), ADA)).output == "42"
        assert (await toolbox.run(call("remote__header", {"name": "x-api-key"}), ADA)).output == "k-123"

        http_server.kill()
        dead = await toolbox.run(call("remote__add", {"a": 1, "b": 1}), ADA)
        assert dead.outcome == "tool_error" and "remote tool server" in error_of(dead)
        down = await wait_for(tools.problems, "reported down")
        assert down["mcp:remote"].startswith("the tool server is down")

        http_server.start()

        async def answered() -> bool:
            return (await tools.toolbox().run(call("remote__add", {"a": 1, "b": 1}), ADA)).output == "2"

        await wait_for(answered, "reconnected")
        assert await tools.problems() == {}
    finally:
        await tools.close()


def test_the_router_app_built_from_settings_offers_the_configured_tools_and_names_a_dead_server(
    monkeypatch: pytest.MonkeyPatch, endpoint: Endpoint
) -> None:
    from serve_app.programs.local import create_app

    gone = {
        "server_label": "gone",
        "server_url": f"http://127.0.0.1:{free_port()}/mcp",
        "connect_timeout_s": 1,
    }
    for name, value in {
        "VOICE_STT_ENGINE": "simulated",
        "VOICE_TTS_ENGINE": "simulated",
        "VOICE_LLM_ENGINE": "openai",
        "OPENAI_BASE_URL": f"http://127.0.0.1:{free_port()}/v1",
        "HOOK_TOKEN": "from-the-environment",
        "VOICE_TOOLS": json.dumps(
            [
                hook(
                    "get_weather", endpoint.url + "/ok", headers={"Authorization": "${HOOK_TOKEN}"}
                ).model_dump()
            ]
        ),
        "VOICE_MCP_SERVERS": json.dumps([STDIO_SERVER, gone]),
    }.items():
        monkeypatch.setenv(name, value)
    app = create_app()
    with TestClient(app) as client:
        deps = app.state.deps
        tools: Toolbox = deps.toolbox_for("ada")
        assert sorted(d.name for d in tools.definitions())[:3] == ["get_weather", "local__add", "local__echo"]
        assert client.portal is not None  # calls run on the app's own loop, where its MCP sessions live
        result = client.portal.call(tools.run, call("local__add", {"a": 1, "b": 2}), ADA)
        assert result.output == "3"
        weather = client.portal.call(tools.run, call("get_weather", {"city": "Oslo"}), ADA)
        assert json.loads(weather.output)["city"] == "Oslo"
        assert endpoint.requests[-1][1]["Authorization"] == "from-the-environment"
        stdio_pid = int(client.portal.call(tools.run, call("local__pid"), ADA).output)

        # (the LLM server of these settings is down too, so the answer is 503 for that)
        assert set(client.get("/readyz").json()["degraded"]) == {"mcp:gone"}
    # the app's end closed its MCP connections: the stdio server's process is gone
    with pytest.raises(ProcessLookupError):
        os.kill(stdio_pid, 0)


async def test_mcp_servers_that_cannot_be_used_are_named_with_why_and_offer_no_tools(
    endpoint: Endpoint,
) -> None:
    tools = ServerTools(
        [],
        [
            McpServerConfig(
                server_label="missing", command=str(ROOT / "no-such-server"), connect_timeout_s=2
            ),
            McpServerConfig(
                server_label="denied", server_url=endpoint.url + "/status/401", connect_timeout_s=2
            ),
        ],
    )
    try:
        await tools.start()
        assert not tools.toolbox()
        assert await tools.problems() == {
            "mcp:missing": "the tool server is down: its command could not be started",
            "mcp:denied": "the tool server is down: it answered with an error: "
            "Server returned an error response",
        }
    finally:
        await tools.close()


async def test_an_mcp_server_down_at_the_start_has_its_tools_join_once_it_answers() -> None:
    server = HttpMcpServer()  # not started yet
    tools = ServerTools(
        [hook("get_weather", "https://hooks.example.com")],
        [
            McpServerConfig(
                server_label="late", server_url=server.url, allowed_tools=["add"], connect_timeout_s=2
            )
        ],
    )
    followed: list[Toolbox] = []
    tools.follow(followed.append)
    try:
        await tools.start()
        assert [d.name for d in tools.toolbox().definitions()] == ["get_weather"]
        assert "mcp:late" in await tools.problems()
        server.start()

        async def joined() -> bool:
            return "late__add" in tools.toolbox()

        await wait_for(joined, "joined")
        assert [d.name for d in followed[-1].definitions()] == ["get_weather", "late__add"]
        assert (await followed[-1].run(call("late__add", {"a": 2, "b": 2}), ADA)).output == "4"
        assert await tools.problems() == {}
    finally:
        await tools.close()
        server.kill()
