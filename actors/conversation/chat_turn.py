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
                words: list[str] = []  # this round's
                calls = ToolCallAssembler()
                client_index: dict[
                    int, int | None
                ] = {}  # the model's call index → the client's (None: a server call)
                tokens = self._llm.stream_tokens(request)
                try:
                    async for delta in tokens:
                        if isinstance(delta, str):
                            if timeline.first_token is None:
                                timeline.first_token = loop.time()
                            if (
                                not words
                                and parts
                                and not parts[-1][-1:].isspace()
                                and not delta[:1].isspace()
                            ):
                                delta = " " + delta  # the words of a round after tool calls
                            words.append(delta)
                            parts.append(delta)
                            out.completion_tokens += 1
                            yield delta
                        elif delta["type"] == "finish":
                            out.finish_reason = delta["finish_reason"]
                        else:
                            if timeline.first_token is None:
                                timeline.first_token = loop.time()
                            out.completion_tokens += 1
                            piece = self._route(delta, client_index)
                            calls.add(piece)
                            if (index := client_index[delta["index"]]) is not None:
                                yield {**piece, "index": index}
                finally:
                    await tokens.aclose()
                made = calls.calls()
                indices = sorted(client_index)
                client_calls = [c for i, c in zip(indices, made, strict=True) if client_index[i] is not None]
                server_calls = [c for i, c in zip(indices, made, strict=True) if client_index[i] is None]
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
                messages = [*messages, *round_messages("".join(words), server_calls, outputs)]
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

    def _route(self, piece: LLMToolCallDelta, client_index: dict[int, int | None]) -> LLMToolCallDelta:
        """Note whose call a piece belongs to (by the name in its call's first piece: a server tool's,
        else the client's), and give a call's first piece an id when the model's server sent none."""
        if piece["index"] in client_index:
            return piece
        is_server = piece.get("name", "") in self._tools.server
        taken = sum(1 for i in client_index.values() if i is not None)
        client_index[piece["index"]] = None if is_server else taken
        return piece if piece.get("id") else {**piece, "id": new_id("call")}

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
