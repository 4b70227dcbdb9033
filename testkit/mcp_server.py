"""A small real MCP server (the official `mcp` SDK's `MCPServer`) for the tool tests, over stdio or
streamable HTTP:

    python -m testkit.mcp_server stdio
    python -m testkit.mcp_server http --port 9200

Tools: `add`, `echo`, `sleep` (to run past a timeout), `fail` (an error result), `pid` (which process
answers, to tell a restarted server from the old one), `header` (a request header as the server got it,
over HTTP), `picture` (an image block) and `hidden` (for `allowed_tools` to leave out).
"""

from __future__ import annotations

import argparse
import asyncio
import os

from mcp.server.mcpserver import Context, MCPServer
from mcp.types import ImageContent, TextContent

server = MCPServer("test-tools", log_level="CRITICAL")  # quiet: a logged traceback takes long


@server.tool(description="Add two integers.")
def add(a: int, b: int) -> str:
    return str(a + b)


@server.tool(description="Say the text back.")
def echo(text: str) -> str:
    return text


@server.tool(description="Wait, then say so.")
async def sleep(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return f"slept {seconds:g} s"


@server.tool(description="Always fails.")
def fail(reason: str) -> str:
    raise ValueError(reason)


@server.tool(description="The server's process id.")
def pid() -> str:
    return str(os.getpid())


@server.tool(description="A request header as the server received it.")
def header(name: str, ctx: Context) -> str:
    request = ctx.request_context.request
    return "" if request is None else str(request.headers.get(name, ""))


@server.tool(description="A caption and a tiny picture.")
def picture() -> list[TextContent | ImageContent]:
    return [
        TextContent(type="text", text="a red dot"),
        ImageContent(type="image", data="iVBORw0KGgo=", mime_type="image/png"),
    ]


@server.tool(description="Not for the model.")
def hidden() -> str:
    return "secret"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("transport", choices=["stdio", "http"])
    parser.add_argument("--port", type=int, default=9200)
    args = parser.parse_args()
    if args.transport == "stdio":
        server.run("stdio")
    else:
        server.run("streamable-http", host="127.0.0.1", port=args.port)


if __name__ == "__main__":
    main()
