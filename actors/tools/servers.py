"""The process's configured server tools (`Settings.tools`, `Settings.mcp_servers`) as one `Toolbox`
that follows the MCP servers: their tools join when a server first answers and change when it lists
others. `start` connects, `close` disconnects; `problems` names the MCP servers that are down."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import httpx

from actors.config import Settings
from actors.tools.base import ServerTool
from actors.tools.settings import McpServerConfig, WebhookToolConfig, expand_secrets
from actors.tools.toolbox import Toolbox
from actors.tools.webhook import WebhookTool

if TYPE_CHECKING:
    from actors.tools.mcp import McpConnection

log = logging.getLogger(__name__)


class ServerTools:
    """Built from settings; secrets are read from `environ` (the process's environment) at once, so a
    missing one stops the start with its name."""

    def __init__(
        self,
        webhooks: Sequence[WebhookToolConfig] = (),
        mcp_servers: Sequence[McpServerConfig] = (),
        environ: Mapping[str, str] | None = None,
    ) -> None:
        environ = os.environ if environ is None else environ
        self._http = httpx.AsyncClient(follow_redirects=False)
        self._webhooks = [
            WebhookTool(
                hook, expand_secrets(hook.headers, environ, f"tool {hook.name!r}: a header"), self._http
            )
            for hook in webhooks
        ]
        self._servers: list[McpConnection] = []
        if mcp_servers:
            # The MCP SDK costs every replica ~0.5 s to import: only where MCP servers are configured.
            from actors.tools.mcp import McpConnection

            self._servers = [McpConnection(server, environ) for server in mcp_servers]
        for server in self._servers:
            server.on_change = self._rebuild
        self._listeners: list[Callable[[Toolbox], None]] = []
        self._toolbox = Toolbox()
        self._rebuild()

    @classmethod
    def from_settings(cls, settings: Settings) -> ServerTools:
        return cls(settings.tools, settings.mcp_servers)

    def __bool__(self) -> bool:
        return bool(self._webhooks or self._servers)

    def toolbox(self) -> Toolbox:
        """The tools now: the webhooks and the tools of the MCP servers that have answered."""
        return self._toolbox

    def follow(self, listener: Callable[[Toolbox], None]) -> None:
        """Call `listener` with the new toolbox whenever the tools change."""
        self._listeners.append(listener)

    async def start(self) -> None:
        """Connect to the MCP servers, waiting at most each one's connect timeout."""
        await asyncio.gather(*(server.start() for server in self._servers))

    async def close(self) -> None:
        await asyncio.gather(*(server.close() for server in self._servers))
        await self._http.aclose()

    async def problems(self) -> dict[str, str]:
        """The MCP servers that are down, as `/readyz` names them (`mcp:<label>`)."""
        return {
            f"mcp:{server.label}": f"the tool server is down: {server.problem}"
            for server in self._servers
            if server.problem is not None
        }

    def _rebuild(self) -> None:
        tools: dict[str, ServerTool] = {tool.definition.name: tool for tool in self._webhooks}
        for server in self._servers:
            for tool in server.tools:
                name = tool.definition.name
                if name in tools:
                    log.warning("MCP server %s: %s is already a tool's name; left out", server.label, name)
                    continue
                tools[name] = tool
        self._toolbox = Toolbox(tools.values())
        for listener in self._listeners:
            listener(self._toolbox)
