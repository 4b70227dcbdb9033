"""One text chat turn for the REST API: the user's memory in the system prompt, tokens streamed from
the LLM stage, tool calls (the client's returned to it; the server's run here, round after round), the
exchange handed to the memory sink like a voice turn, and its latency measured.

No HTTP here: `serve_app.api.rest` maps requests and responses; this module is the turn itself.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field

from actors.conversation.events import FinishedTurn, new_id
from actors.conversation.metrics import TurnTimeline, observe_turn
from actors.conversation.prompt import with_memory
from actors.conversation.stages import LLMRequest, TokenLLMClient
from actors.llm.base import ChatMessage, FinishReason, LLMToolCallDelta, ToolCall, ToolChoice, ToolSpec
from actors.memory.sink import MemorySink
from actors.tools.base import ToolContext
from actors.tools.calls import ToolCallAssembler, round_messages
from actors.tools.toolbox import Toolbox

log = logging.getLogger(__name__)


@dataclass
class ChatOutcome:
    """What the turn produced; filled in while it streams, complete once the stream ends."""

    text: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)  # the client's calls the reply ends with
    completion_tokens: int = 0  # streamed deltas and call pieces: one per token for text streams
    prompt_tokens: int = 0  # an estimate (characters / 4): the engines report text, not token counts
    finish_reason: FinishReason = "stop"  # the LLM's own, as OpenAI reports it
    tool_rounds: int = 0  # rounds of server tool calls run
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ChatTools:
    """What the model may call in a chat turn: the client's tools (their calls are returned to it), the
    server tools it opted in to (run here), and how (OpenAI's `tool_choice`, `parallel_tool_calls`)."""

    client: list[ToolSpec] = field(default_factory=list)
    server: Toolbox = field(default_factory=Toolbox)
    choice: ToolChoice | None = None
    parallel: bool | None = None
    max_rounds: int = 4  # rounds of server calls; then the model must answer in words

    def specs(self) -> list[ToolSpec]:
        return [*self.client, *(definition.spec() for definition in self.server.definitions())]


class _Round:
    """One LLM call of a turn: the words it said, and its calls sorted by whose they are (a server
    tool's, by the name in the call's first piece; else the client's)."""

    def __init__(self, server: Toolbox) -> None:
        self.words: list[str] = []
        self._server = server
        self._calls = ToolCallAssembler()
        self._client_index: dict[int, int | None] = {}  # the model's index → the client's (None: server)

    def call_piece(self, piece: LLMToolCallDelta) -> LLMToolCallDelta | None:
        """Take a piece of a call; returns it as the client sees it (numbered among the client's calls,
        a call's first piece with an id even when the model's server sent none), or None when the call is
        a server tool's."""
        if piece["index"] not in self._client_index:
            taken = sum(1 for i in self._client_index.values() if i is not None)
            self._client_index[piece["index"]] = None if piece.get("name", "") in self._server else taken
            if not piece.get("id"):
                piece = {**piece, "id": new_id("call")}
        self._calls.add(piece)
        index = self._client_index[piece["index"]]
        return None if index is None else {**piece, "index": index}

    def calls(self) -> tuple[list[ToolCall], list[ToolCall]]:
        """The whole calls: the client's and the server's."""
        made = zip(sorted(self._client_index), self._calls.calls(), strict=True)
        client: list[ToolCall] = []
        server: list[ToolCall] = []
        for index, call in made:
            (server if self._client_index[index] is None else client).append(call)
        return client, server


def _spaced(before: str, after: str) -> bool:
    return before[-1:].isspace() or after[:1].isspace()


def estimate_tokens(messages: list[ChatMessage], tools: list[ToolSpec] | None = None) -> int:
    calls = (json.dumps(m.get("tool_calls", [])) if "tool_calls" in m else "" for m in messages)
    text = sum(math.ceil((len(m["content"]) + len(c)) / 4) + 4 for m, c in zip(messages, calls, strict=True))
    return text + (math.ceil(len(json.dumps(tools)) / 4) if tools else 0)  # + role and separators


def prompt_messages(
    messages: list[ChatMessage], default_instructions: str, memory: str | None
) -> list[ChatMessage]:
    """One system message first (the client's system messages, else the configured instructions),
    with the user's memory added exactly as a voice turn adds it; then the dialogue in order."""
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system") or default_instructions
    dialogue = [m for m in messages if m["role"] != "system"]
    return [{"role": "system", "content": with_memory(system, memory)}, *dialogue]


class ChatTurn:
    def __init__(
        self,
        *,
        llm: TokenLLMClient,
        messages: list[ChatMessage],
        user_id: str,
        max_tokens: int,
        temperature: float,
        default_instructions: str,
        model: str | None = None,
        memory_sink: MemorySink | None = None,
        memory_context: Callable[[str], Awaitable[str | None]] | None = None,
        tools: ChatTools | None = None,
    ) -> None:
        self.turn_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        self.outcome = ChatOutcome()
        self._llm = llm
        self._messages = messages
        self._user_id = user_id
        self._max_tokens = max_tokens
        self._temperature = temperature
        self._instructions = default_instructions
        self._model = model
        self._sink = memory_sink
        self._memory_context = memory_context
        self._tools = tools or ChatTools()

    async def stream(self) -> AsyncGenerator[str | LLMToolCallDelta, None]:
        """Yield the reply's text deltas, and the pieces of the calls to the client's tools (numbered
        from 0 among those calls, the first piece of each with its id and name); calls to server tools
        run here and the reply goes on after them. Closing early counts the turn as interrupted."""
        loop = asyncio.get_running_loop()
        started_wall = time.time()
        memory = await self._memory_context(self._user_id) if self._memory_context else None
        messages = prompt_messages(self._messages, self._instructions, memory)
        out = self.outcome
        timeline = TurnTimeline(llm_start=loop.time())
        parts: list[str] = []
        tool_ms = 0.0
        status = "failed"
        tools = self._tools
        choice = tools.choice
        try:
            while True:
                request = self._request(messages, choice)
                out.prompt_tokens += estimate_tokens(messages, request.get("tools"))
                round_ = _Round(tools.server)
                tokens = self._llm.stream_tokens(request)
                try:
                    async for delta in tokens:
                        if not isinstance(delta, str) and delta["type"] == "finish":
                            out.finish_reason = delta["finish_reason"]
                            continue
                        if timeline.first_token is None:
                            timeline.first_token = loop.time()
                        out.completion_tokens += 1
                        if not isinstance(delta, str):
                            if (piece := round_.call_piece(delta)) is not None:
                                yield piece
                            continue
                        if not round_.words and parts and not _spaced(parts[-1], delta):
                            delta = " " + delta  # the words of a round after tool calls
                        round_.words.append(delta)
                        parts.append(delta)
                        yield delta
                finally:
                    await tokens.aclose()
                client_calls, server_calls = round_.calls()
                if client_calls:
                    # The client runs its calls and asks again with their results. Server calls made in
                    # the same round are not run: the model sees only the client's in the next request.
                    out.tool_calls, out.finish_reason = client_calls, "tool_calls"
                    break
                if not server_calls or choice == "none":
                    if out.finish_reason == "tool_calls":
                        out.finish_reason = "stop"  # no call is left for the client to answer
                    break
                context = ToolContext(self._user_id, f"rest_{self.turn_id}")
                results = await tools.server.run_all(server_calls, context)
                tool_ms += max(r.ms for r in results)
                outputs = [(r.call["id"], r.output) for r in results]
                messages = [*messages, *round_messages("".join(round_.words), server_calls, outputs)]
                out.tool_rounds += 1
                # Past the limit the model must answer in words; a forced choice applies to one round.
                choice = "none" if out.tool_rounds >= tools.max_rounds else None if choice is None else "auto"
            # Counted as the voice turns are: a reply the LLM was cut short of is incomplete.
            status = "completed" if out.finish_reason in ("stop", "tool_calls") else "incomplete"
        except (asyncio.CancelledError, GeneratorExit):
            status = "cancelled"  # the HTTP client went away
            raise
        finally:
            out.text = "".join(parts)
            out.metrics = timeline.metrics_ms()
            if out.tool_rounds:
                out.metrics["tool_ms"] = round(tool_ms, 3)
            observe_turn(out.metrics, status)
            self._remember(started_wall, status)

    def _request(self, messages: list[ChatMessage], choice: ToolChoice | None) -> LLMRequest:
        request: LLMRequest = {
            "messages": messages,
            "max_tokens": self._max_tokens,
            "temperature": self._temperature,
            "user_id": self._user_id,
        }
        if self._model:
            request["model"] = self._model
        if specs := self._tools.specs():
            request["tools"] = specs
            if choice is not None:
                request["tool_choice"] = choice
            if self._tools.parallel is not None:
                request["parallel_tool_calls"] = self._tools.parallel
        return request

    def _remember(self, started_wall: float, status: str) -> None:
        """The exchange goes to memory once answered in words: a reply that hands calls to the client is
        not final (its next request, with the results, carries the same user message)."""
        user_text = next((m["content"] for m in reversed(self._messages) if m["role"] == "user"), "")
        if self._sink is None or self.outcome.tool_calls or not (user_text or self.outcome.text):
            return
        self._sink.submit(
            FinishedTurn(
                session_id=f"rest_{self.turn_id}",  # each REST request is its own conversation
                user_id=self._user_id,
                turn_id=self.turn_id,
                user_item_id=None,
                user_text=user_text,
                assistant_text=self.outcome.text,
                started_at=started_wall,
                ended_at=time.time(),
                interrupted=status in ("cancelled", "failed"),
                metrics=self.outcome.metrics,
            )
        )
