"""The server tools a conversation may use, and how one call is run: bounded by the tool's timeout,
counted and timed, and never raising: a failure becomes an output the model reads (`{"error": ...}`),
so the reply goes on and the user hears what went wrong in the model's words."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from prometheus_client import Counter, Histogram

from actors.conversation.metrics import LATENCY_BUCKETS_MS
from actors.llm.base import ToolCall
from actors.tools.base import ServerTool, ToolContext, ToolDefinition, ToolError, parse_arguments

log = logging.getLogger(__name__)

# Server tools are named by the configuration, so their names are a bounded label; calls to client
# tools (named by clients) are counted under one label instead.
CLIENT_TOOLS_LABEL = "(client)"
TOOL_CALLS = Counter("voice_tool_calls", "Tool calls by tool and outcome", ["tool", "outcome"])
TOOL_CALL_MS = Histogram(
    "voice_tool_call_ms", "Server tool call latency in milliseconds", ["tool"], buckets=LATENCY_BUCKETS_MS
)

# "ok"; or why the call gave no result: the model named no such tool, the arguments or the tool said
# no ("tool_error"), it ran past its timeout, or it broke unexpectedly ("failed").
CallOutcome = Literal["ok", "unknown_tool", "tool_error", "timeout", "failed"]


@dataclass(frozen=True)
class ToolResult:
    call: ToolCall
    output: str  # what the model reads: the tool's output, or {"error": ...}
    outcome: CallOutcome
    ms: float


def error_output(message: str) -> str:
    return json.dumps({"error": message})


class Toolbox:
    """Server tools by name. Immutable: `with_tools` gives a toolbox with more (e.g. one user's)."""

    def __init__(self, tools: Iterable[ServerTool] = ()) -> None:
        self._tools: dict[str, ServerTool] = {}
        for tool in tools:
            name = tool.definition.name
            if name in self._tools:
                raise ValueError(f"two server tools are named {name!r}")
            self._tools[name] = tool

    def __bool__(self) -> bool:
        return bool(self._tools)

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def definitions(self) -> list[ToolDefinition]:
        return [tool.definition for tool in self._tools.values()]

    def definition(self, name: str) -> ToolDefinition | None:
        tool = self._tools.get(name)
        return tool.definition if tool is not None else None

    def with_tools(self, tools: Iterable[ServerTool]) -> Toolbox:
        return Toolbox([*self._tools.values(), *tools])

    async def run(self, call: ToolCall, context: ToolContext) -> ToolResult:
        """Run one call; never raises (a cancellation aside)."""
        name = call["function"]["name"]
        started = time.perf_counter()
        tool = self._tools.get(name)
        outcome: CallOutcome = "ok"
        if tool is None:
            outcome, output = "unknown_tool", error_output(f"there is no tool named {name!r}")
        else:
            timeout_s = tool.definition.timeout_s
            try:
                arguments = parse_arguments(call["function"]["arguments"])
                async with asyncio.timeout(timeout_s):
                    output = await tool.call(arguments, replace(context, call_id=call["id"]))
            except ToolError as exc:
                outcome, output = "tool_error", error_output(str(exc))
            except TimeoutError:
                outcome, output = "timeout", error_output(f"{name} did not answer within {timeout_s:g} s")
            except Exception as exc:
                log.warning("tool %s failed", name, exc_info=exc)
                outcome, output = "failed", error_output(f"{name} failed")
        ms = (time.perf_counter() - started) * 1000
        label = name if tool is not None else "(unknown)"
        TOOL_CALLS.labels(label, outcome).inc()
        if tool is not None:
            TOOL_CALL_MS.labels(label).observe(ms)
        return ToolResult(call, output, outcome, ms)

    async def run_all(self, calls: Sequence[ToolCall], context: ToolContext) -> list[ToolResult]:
        """Run calls side by side (the model asked for them together); results in the calls' order."""
        return list(await asyncio.gather(*(self.run(call, context) for call in calls)))
