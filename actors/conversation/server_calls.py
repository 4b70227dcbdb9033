"""A reply's server tool calls: run side by side within the response, with filler speech while they run.

A round's calls start together (`Toolbox.run` each, bounded by its tool's timeout and never raising).
While they run, the reply says filler phrases: the first `tool_filler_delay_ms` after they started
(unless the model's own words before the calls stand for it), then `tool_filler_repeat_ms` apart, up to
`tool_filler_max`; a round that ends sooner has none. A cancelled reply (barge-in, `response.cancel`)
abandons the calls whose tool is safe to cancel; the others run to their end and their output joins the
conversation then, so the next reply knows what happened.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from actors.conversation.events import new_id
from actors.conversation.items import Conversation, FunctionCallOutputItem
from actors.conversation.metrics import TurnTimeline, clock
from actors.conversation.options import SessionLimits
from actors.llm.base import ToolCall
from actors.tasks import cancel_and_wait
from actors.tools.base import ToolContext
from actors.tools.toolbox import Toolbox, ToolResult

# Says one filler phrase through the reply (its TTS and pacing, into its message).
Say = Callable[[str], Awaitable[None]]


class ServerCalls:
    """Runs one session's server calls, round by round."""

    def __init__(
        self, toolbox: Toolbox, limits: SessionLimits, conversation: Conversation, context: ToolContext
    ) -> None:
        self._toolbox = toolbox
        self._limits = limits
        self._conversation = conversation
        self._context = context
        self._fillers_said = 0  # rotates through the phrases across the session
        # Calls not safe to cancel that outlived their reply: held until they end.
        self._running_on: set[asyncio.Task[ToolResult]] = set()

    async def run(
        self, calls: list[ToolCall], timeline: TurnTimeline, first: Say | None, later: Say | None
    ) -> list[ToolResult]:
        """Run a round's calls side by side; results in the calls' order. `first` says the first filler
        (None: the model's words before the calls were it), `later` the others (None: no filler, a
        text-only reply). The time waited is added to the turn's `tool_ms`."""
        if not calls:
            return []
        started = clock()
        running = [asyncio.create_task(self._toolbox.run(call, self._context)) for call in calls]
        fill = asyncio.create_task(self._fill(first, later)) if later is not None else None
        try:
            await asyncio.wait(running)
        except asyncio.CancelledError:
            for call, task in zip(calls, running, strict=True):
                definition = self._toolbox.definition(call["function"]["name"])
                if definition is None or definition.cancel_safe:
                    task.cancel()
                else:
                    self._running_on.add(task)
                    task.add_done_callback(self._ran_on)
            raise
        finally:
            if fill is not None:
                await cancel_and_wait([fill])
            timeline.tool_ms = (timeline.tool_ms or 0.0) + (clock() - started) * 1000
        return [task.result() for task in running]

    async def _fill(self, first: Say | None, later: Say) -> None:
        limits = self._limits
        phrases = limits.tool_filler_phrases
        for n in range(limits.tool_filler_max):
            wait_ms = limits.tool_filler_delay_ms if n == 0 else limits.tool_filler_repeat_ms
            await asyncio.sleep(wait_ms / 1000)
            say = first if n == 0 else later
            if say is None or not phrases:
                continue
            await say(phrases[self._fillers_said % len(phrases)])
            self._fillers_said += 1

    def _ran_on(self, task: asyncio.Task[ToolResult]) -> None:
        """A call that outlived its reply ended: its output joins the conversation."""
        self._running_on.discard(task)
        if task.cancelled() or task.exception() is not None:
            return
        result = task.result()
        item = FunctionCallOutputItem(new_id("item"), result.call["id"], result.output)
        self._conversation.items.append(item)
