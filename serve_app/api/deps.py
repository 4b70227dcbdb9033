"""What the router app is built from: the three stages, memory, readiness, and the state it shares with
other router replicas. In-process stages or Serve handles fit the same fields."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from actors.audio.vad import SileroSpeechDetector, SpeechDetector
from actors.config import Settings
from actors.conversation.stages import LLMClient, SynthesizerClient, TranscriberClient
from actors.memory.sink import MemorySink
from actors.tools.base import ServerTool
from actors.tools.servers import ServerTools
from actors.tools.toolbox import Toolbox
from serve_app.api.credentials import ANONYMOUS, LocalRevocations, Revocations


class MetricsHub(Protocol):
    """Where router replicas pool their metrics, so `/metrics` reports the whole deployment."""

    async def report_forever(self, exposition: Callable[[], str]) -> None: ...

    async def merged_metrics(self, exposition: Callable[[], str]) -> str: ...


@dataclass
class RouterDeps:
    """Everything `build_router_app` needs; `serve_app.deployments.Router` fills it with Serve handles,
    `serve_app.programs.local` and the tests with in-process stages."""

    settings: Settings
    stt: TranscriberClient
    llm: LLMClient
    tts: SynthesizerClient
    memory_sink: MemorySink | None = None
    memory_context: Callable[[str], Awaitable[str | None]] | None = None  # the user's long-term memory
    # Server tools every conversation may use (webhooks, MCP servers' tools), and the built-in memory
    # tools, which only callers with an identity get (`toolbox_for`).
    tools: Toolbox = field(default_factory=Toolbox)
    memory_tools: Sequence[ServerTool] = ()
    # Where `tools` comes from when they are configured: the app connects its MCP servers as it starts
    # and closes them at its end, and `tools` follows them (a turn keeps the toolbox it started with).
    server_tools: ServerTools | None = None
    speech_detector: Callable[[], SpeechDetector] = SileroSpeechDetector
    warmups: list[Callable[[], Awaitable[None]]] = field(default_factory=list)  # run before serving
    # Answers which engine each stage runs once every stage can take requests (raises otherwise).
    readiness: Callable[[], Awaitable[dict[str, str]]] | None = None
    # What is down behind the stages (e.g. {"llm": "the LLM server is unreachable"}); {} when all is up.
    upstreams: Callable[[], Awaitable[dict[str, str]]] | None = None
    # What is down that conversations do without (long-term memory: Letta); `/readyz` names it and
    # stays ready.
    degradations: Callable[[], Awaitable[dict[str, str]]] | None = None
    # Metrics of other processes (the memory actor) in Prometheus text, appended to /metrics.
    extra_metrics: Callable[[], Awaitable[bytes]] | None = None
    # Revoked client secrets: this process's own list, or the cluster's (serve_app.cluster_state).
    revocations: Revocations = field(default_factory=LocalRevocations)
    # The deployment's metrics across router replicas (serve_app.cluster_state); None: this process's.
    metrics_hub: MetricsHub | None = None
    # Returns once this router replica is being replaced (serve_app.replica_state); its sessions then
    # end after their turn in progress and are told to reconnect (serve_app.api.drain). None: never.
    replaced: Callable[[], Awaitable[None]] | None = None

    def __post_init__(self) -> None:
        if self.server_tools is not None:
            self.tools = self.server_tools.toolbox()
            self.server_tools.follow(self._set_tools)

    def _set_tools(self, tools: Toolbox) -> None:
        self.tools = tools

    def memory_for(self, user_id: str) -> UserMemory:
        """Where `user_id`'s finished turns go and their memory comes from; nothing for `anonymous`,
        so callers without an identity never share one memory."""
        if user_id == ANONYMOUS:
            return UserMemory(None, None)
        return UserMemory(self.memory_sink, self.memory_context)

    def toolbox_for(self, user_id: str) -> Toolbox:
        """The server tools `user_id`'s conversations may call: no memory tools for `anonymous`."""
        if user_id == ANONYMOUS or not self.memory_tools:
            return self.tools
        return self.tools.with_tools(self.memory_tools)


@dataclass(frozen=True)
class UserMemory:
    sink: MemorySink | None
    context: Callable[[str], Awaitable[str | None]] | None
