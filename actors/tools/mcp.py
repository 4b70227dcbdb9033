"""The tools of MCP servers as server tools, through the official `mcp` SDK's client.

Each configured server gets one `McpConnection`: a task that connects (streamable HTTP, or starting the
server's command and speaking over its stdio), lists its tools, and then holds the connection, checking
it every `HEALTH_CHECK_S` and whenever a call finds it broken; when it breaks, the task connects again
(backing off up to `RETRY_MAX_S`), starting a stdio server's process anew. Calls never wait for that: a
call to a server that is down fails at once with a `ToolError` the model can tell the user about.

The model sees a server's tool `get_issue` of server `github` as `github__get_issue`, so two servers'
tools (or a webhook) never clash; only the tools in `allowed_tools` are offered when it is given.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, NoReturn

import httpx2
from mcp import Client, StdioServerParameters
from mcp.client.stdio import get_default_environment
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp.types import (
    CONNECTION_CLOSED,
    AudioContent,
    CallToolResult,
    ContentBlock,
    EmbeddedResource,
    ImageContent,
    ResourceLink,
    TextContent,
    TextResourceContents,
    Tool,
)

from actors.tools.base import ToolContext, ToolDefinition, ToolError
from actors.tools.settings import McpServerConfig, expand_secrets

log = logging.getLogger(__name__)

HEALTH_CHECK_S = 15.0  # a quiet connection is checked (its tools listed again) this often
RETRY_MIN_S = 0.5
RETRY_MAX_S = 30.0
MAX_LISTED_PAGES = 20  # a server whose tool list never ends cannot hold a connection up
SEPARATOR = "__"
_NOT_IN_NAME = re.compile(r"[^A-Za-z0-9_-]")


def model_name(server_label: str, tool_name: str) -> str:
    """The name the model calls `tool_name` of `server_label` by (OpenAI's rule: 1 to 64 of
    letters, digits, '_' and '-')."""
    return (server_label + SEPARATOR + _NOT_IN_NAME.sub("_", tool_name))[:64]


def result_text(result: CallToolResult) -> str:
    """A tool result as text for the model: its text blocks in order, other blocks named by what they
    are; the structured content when there is no text. An error result raises `ToolError`."""
    text = "\n".join(part for part in map(_block_text, result.content) if part)
    if not text and result.structured_content is not None:
        text = json.dumps(result.structured_content)
    if result.is_error:
        raise ToolError(text or "the tool failed")
    return text


def _block_text(block: ContentBlock) -> str:
    if isinstance(block, TextContent):
        return block.text
    if isinstance(block, ImageContent | AudioContent):
        return f"[{block.type} ({block.mime_type})]"
    if isinstance(block, ResourceLink):
        return f"[resource {block.name}: {block.uri}]"
    if isinstance(block, EmbeddedResource):
        resource = block.resource
        if isinstance(resource, TextResourceContents):
            return resource.text
        return f"[resource {resource.uri} ({resource.mime_type or 'binary'})]"
    return ""


class McpConnection:
    """One configured MCP server, kept connected; `tools` are its allowed tools as last listed (none
    until it first answers). `on_change` is called when that list changes."""

    def __init__(self, config: McpServerConfig, environ: Mapping[str, str]) -> None:
        label = config.server_label
        self.config = config
        # Secrets are read now, so a missing variable stops the router at its start, named.
        self._headers = expand_secrets(config.headers, environ, f"MCP server {label!r}: a header")
        self._env = expand_secrets(config.env, environ, f"MCP server {label!r}: env")
        self.tools: tuple[McpTool, ...] = ()
        self.problem: str | None = "not connected yet"
        self.on_change: Callable[[], None] = lambda: None
        self._client: Client | None = None
        self._broken = asyncio.Event()  # a call found the connection broken: check it now
        self._attempted = asyncio.Event()  # the first attempt to connect has ended, either way
        self._task: asyncio.Task[None] | None = None

    @property
    def label(self) -> str:
        return self.config.server_label

    async def start(self) -> None:
        """Start keeping the connection, and wait for the first attempt (at most its connect timeout,
        and a little): a server that is down then comes up later, without holding up the start."""
        if self._task is None:
            self._task = asyncio.create_task(self._keep_connected(), name=f"mcp:{self.label}")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.config.connect_timeout_s + 1):
                await self._attempted.wait()

    async def close(self) -> None:
        """Disconnect (a stdio server's process is stopped)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def call(self, tool: str, arguments: dict[str, Any]) -> str:
        client = self._client
        if client is None:
            raise ToolError(f"the {self.label} tool server is unavailable")
        try:
            # The toolbox's timeout (the same) ends the call first, as a plain timeout.
            result = await client.call_tool(tool, arguments, read_timeout_seconds=self.config.timeout_s + 5)
        except MCPError as exc:
            if exc.code != CONNECTION_CLOSED:  # the server answered, with a JSON-RPC error
                raise ToolError(
                    f"the {self.label} tool server refused the call: {exc.error.message}"
                ) from exc
            self._lost(tool, exc)
        except Exception as exc:
            self._lost(tool, exc)
        return result_text(result)

    def _lost(self, tool: str, exc: Exception) -> NoReturn:
        # The SDK reports a broken transport as an error on the pending calls: check the connection
        # now rather than at the next health check.
        log.warning("MCP server %s: call to %s failed: %r", self.label, tool, exc)
        self._broken.set()
        raise ToolError(f"the {self.label} tool server did not answer") from exc

    async def _keep_connected(self) -> None:
        delay = RETRY_MIN_S
        while True:
            try:
                async with self._connect() as client:
                    await self._list(client)
                    self._client, self.problem = client, None
                    self._attempted.set()
                    log.info(
                        "MCP server %s: connected, tools %s",
                        self.label,
                        [t.definition.name for t in self.tools],
                    )
                    delay = RETRY_MIN_S
                    await self._watch(client)
            except (Exception, asyncio.CancelledError) as exc:
                # A transport that breaks cancels the task it was entered in (anyio's task group):
                # only a cancellation of this task itself (`close`) ends it.
                current = asyncio.current_task()
                if isinstance(exc, asyncio.CancelledError) and current is not None and current.cancelling():
                    raise
                problem = _describe(exc, stdio=self.config.command is not None)
                if problem != self.problem:  # once per outage, not at every retry
                    log.warning("MCP server %s is down: %s", self.label, problem, exc_info=exc)
                self.problem = problem
            finally:
                self._client = None
            self._attempted.set()
            self._broken.clear()
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_S)

    @contextlib.asynccontextmanager
    async def _connect(self) -> AsyncIterator[Client]:
        # The SDK's own read timeout bounds the handshake and the listing; calls set their own.
        timeout = self.config.connect_timeout_s
        async with contextlib.AsyncExitStack() as stack:
            server: Any
            if self.config.server_url is not None:
                http = httpx2.AsyncClient(headers=self._headers, timeout=httpx2.Timeout(timeout, read=None))
                await stack.enter_async_context(http)
                server = streamable_http_client(self.config.server_url, http_client=http)
            else:
                assert self.config.command is not None
                server = StdioServerParameters(
                    command=self.config.command,
                    args=self.config.args,
                    # Only what the config gives, over the SDK's few safe variables (PATH, HOME, ...):
                    # the router's own secrets never reach the server's process.
                    env={**get_default_environment(), **self._env},
                    cwd=self.config.cwd,
                )
            yield await stack.enter_async_context(Client(server, read_timeout_seconds=timeout, cache=None))

    async def _watch(self, client: Client) -> None:
        """Return when the connection is found broken (a failed call, or a health check)."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(HEALTH_CHECK_S):
                    await self._broken.wait()
            self._broken.clear()
            await self._list(client)

    async def _list(self, client: Client) -> None:
        listed: list[Tool] = []
        cursor: str | None = None
        for _ in range(MAX_LISTED_PAGES):
            page = await client.list_tools(cursor=cursor)
            listed += page.tools
            cursor = page.next_cursor
            if cursor is None:
                break
        allowed = self.config.allowed_tools
        tools = tuple(McpTool(self, tool) for tool in listed if allowed is None or tool.name in allowed)
        if [t.definition for t in tools] != [t.definition for t in self.tools]:
            self.tools = tools
            self.on_change()


class McpTool:
    """One tool of an MCP server, as the model sees it (`model_name`)."""

    def __init__(self, connection: McpConnection, tool: Tool) -> None:
        self._connection = connection
        self._name = tool.name
        config = connection.config
        schema = dict(tool.input_schema or {})
        schema.setdefault("type", "object")
        self.definition = ToolDefinition(
            name=model_name(config.server_label, tool.name),
            description=tool.description or tool.title or "",
            parameters=schema,
            timeout_s=config.timeout_s,
            cancel_safe=config.cancel_safe,
        )

    async def call(self, arguments: dict[str, Any], context: ToolContext) -> str:
        return await self._connection.call(self._name, arguments)


def _describe(exc: BaseException, stdio: bool) -> str:
    """A plain line for /readyz and the log, from what the SDK and its transports raise."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if isinstance(exc, TimeoutError):
        return "it did not answer in time"
    if stdio and isinstance(exc, OSError):
        return "its command could not be started"
    if isinstance(exc, httpx2.ConnectError | ConnectionError | OSError):
        return "it could not be reached"
    if isinstance(exc, httpx2.HTTPStatusError):
        return f"it answered HTTP {exc.response.status_code}"
    if isinstance(exc, MCPError):  # e.g. an HTTP error status, which the SDK does not pass on
        return f"it answered with an error: {exc.error.message}"
    return f"the connection failed ({type(exc).__name__})"
