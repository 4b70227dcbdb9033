"""Thin Ray Serve deployments around the stages in `actors/` (no logic of their own): each of
`STTDeployment`, `LLMDeployment` and `TTSDeployment` runs its engine in that stage's in-process class
(`STTStage`, `LLMStage`, `TTSStage`), and the `Router` reaches them through `serve_app.stage_clients`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.types import ASGIApp

from actors.config import load_settings
from actors.engines import create_llm_engine, create_stt_engine, create_tts_engine, stt_interim_results
from actors.llm.base import LLMDelta, LLMEvent, LLMRequest
from actors.llm.stage import LLMStage
from actors.memory.sink import RecentTurnsSink
from actors.probe import problems
from actors.stt.stage import FeedResult, FinishResult, STTStage
from actors.tools.base import ServerTool
from actors.tools.servers import ServerTools
from actors.tts.base import DEFAULT_STYLE, SpeechStyle
from actors.tts.stage import TTSStage
from serve_app.api.deps import RouterDeps
from serve_app.api.router_app import build_router_app
from serve_app.cluster_state import SharedRouterState
from serve_app.memory_actor import (
    ActorMemorySink,
    actor_memory_context,
    actor_memory_tools,
    memory_actor,
    memory_problem,
)
from serve_app.replica_state import replica_replaced
from serve_app.stage_clients import RemoteLLMStage, RemoteSTTStage, RemoteTTSStage

log = logging.getLogger("ray.serve")

MAX_STREAMS_PER_STT_REPLICA = 64


@serve.deployment
class STTDeployment:
    async def __init__(self, config: dict[str, Any]) -> None:  # type: ignore[misc]  # Serve awaits it
        settings = load_settings(config)
        engine = create_stt_engine(settings)
        await engine.warmup()
        self.stage = STTStage(engine)
        log.info("STT engine: %s model=%s", engine.name, engine.model)

    async def record_autoscaling_stats(self) -> dict[str, float]:
        """Called by Serve every few seconds: utterances in progress (`serve_app/autoscaling.py`).
        Streams left behind here are swept first, also when no audio arrives to sweep them."""
        await self.stage.expire_idle()
        return {"utterances": self.stage.load.take_mean()}

    async def ping(self) -> str:
        return f"{self.stage.engine.name}:{self.stage.engine.model}"

    @serve.multiplexed(max_num_models_per_replica=MAX_STREAMS_PER_STT_REPLICA)
    async def _claim(self, stream_id: str) -> str:
        # Registering the stream id as a multiplexed "model" makes the router prefer this replica
        # for the rest of the utterance. The state itself lives in the stage.
        return stream_id

    async def feed(self, stream_id: str, offset: int, pcm16: bytes) -> FeedResult:
        await self._claim(serve.get_multiplexed_model_id())
        return await self.stage.feed(stream_id, offset, pcm16)

    async def finish(self, stream_id: str, offset: int, tail: bytes) -> FinishResult:
        await self._claim(serve.get_multiplexed_model_id())
        return await self.stage.finish(stream_id, offset, tail)

    async def close(self, stream_id: str) -> None:
        await self.stage.close(stream_id)

    async def upstream(self) -> str | None:
        """None when the engine's provider answers, else what is wrong (cached in the engine)."""
        return await self.stage.engine.probe()


@serve.deployment
class LLMDeployment:
    async def __init__(self, config: dict[str, Any]) -> None:  # type: ignore[misc]  # Serve awaits it
        settings = load_settings(config)
        engine = create_llm_engine(settings)
        await engine.warmup()
        self.stage = LLMStage(engine)
        log.info("LLM engine: %s model=%s", engine.name, engine.model)

    def record_autoscaling_stats(self) -> dict[str, float]:
        """Called by Serve every few seconds: replies in progress (`serve_app/autoscaling.py`)."""
        return {"replies": self.stage.load.take_mean()}

    async def ping(self) -> str:
        return f"{self.stage.engine.name}:{self.stage.engine.model}"

    async def upstream(self) -> str | None:
        """None when the engine's provider answers, else what is wrong (cached in the engine)."""
        return await self.stage.engine.probe()

    async def stream_phrases(self, request: LLMRequest) -> AsyncGenerator[LLMEvent, None]:
        async for event in self.stage.stream_phrases(request):
            yield event

    async def stream_tokens(self, request: LLMRequest) -> AsyncGenerator[LLMDelta, None]:
        async for delta in self.stage.stream_tokens(request):
            yield delta


@serve.deployment
class TTSDeployment:
    async def __init__(self, config: dict[str, Any]) -> None:  # type: ignore[misc]  # Serve awaits it
        settings = load_settings(config)
        engine = create_tts_engine(settings)
        await engine.warmup()
        self.stage = TTSStage(engine)
        log.info("TTS engine: %s model=%s voice=%s", engine.name, engine.model, engine.voice)

    def record_autoscaling_stats(self) -> dict[str, float]:
        """Called by Serve every few seconds: phrases being synthesised (`serve_app/autoscaling.py`)."""
        return {"phrases": self.stage.load.take_mean()}

    async def ping(self) -> str:
        return f"{self.stage.engine.name}:{self.stage.engine.model}"

    async def upstream(self) -> str | None:
        """None when the engine's provider answers, else what is wrong (cached in the engine)."""
        return await self.stage.engine.probe()

    async def synthesize(
        self, text: str, sample_rate: int, style: SpeechStyle = DEFAULT_STYLE
    ) -> AsyncGenerator[bytes, None]:
        async for chunk in self.stage.synthesize(text, sample_rate, style):
            yield chunk


@serve.deployment
@serve.ingress()
class Router:
    def __init__(
        self, stt: DeploymentHandle, llm: DeploymentHandle, tts: DeploymentHandle, config: dict[str, Any]
    ) -> None:
        settings = load_settings(config)
        log.info("voice agent engines: %s", settings.describe_engines())

        memory_sink: Any = RecentTurnsSink()
        memory_context = None
        memory_tools: list[ServerTool] = []  # full-Letta mode: Letta's agent has its own tools
        extra_metrics = None
        degradations = None
        # Full-Letta mode: the user's agent answers and keeps the conversation itself; nothing to write.
        if settings.letta_base_url and settings.use_hybrid_streaming:
            sink = ActorMemorySink(lambda: memory_actor(config))
            memory_sink = sink
            memory_context = actor_memory_context(sink, settings).context
            memory_tools = actor_memory_tools(sink, settings)

            async def extra_metrics() -> bytes:
                return await sink.actor.metrics_text.remote()

            async def degradations() -> dict[str, str]:
                problem = await memory_problem(sink)
                return {"memory": problem} if problem else {}

            log.info("long-term memory: Letta at %s", settings.letta_base_url)

        replica = serve.get_replica_context().replica_id
        router_state = SharedRouterState(replica.unique_id)

        async def replaced() -> None:
            deployment = replica.deployment_id
            await replica_replaced(deployment.app_name, deployment.name, replica.unique_id)

        async def readiness() -> dict[str, str]:
            # Each stage answers only after its constructor (engine load and warmup) has finished.
            names = await asyncio.gather(stt.ping.remote(), llm.ping.remote(), tts.ping.remote())
            return dict(zip(("stt", "llm", "tts"), names, strict=True))

        async def upstreams() -> dict[str, str]:
            # Each stage checks its own provider (the OpenAI engines, Letta in full-Letta mode),
            # cached there; offline engines have none and answer at once.
            stages = {"stt": stt, "llm": llm, "tts": tts}
            return await problems({name: handle.upstream.remote for name, handle in stages.items()})

        self._app = build_router_app(
            RouterDeps(
                settings=settings,
                stt=RemoteSTTStage(stt, stt_interim_results(settings)),
                llm=RemoteLLMStage(llm),
                tts=RemoteTTSStage(tts),
                memory_sink=memory_sink,
                memory_context=memory_context,
                memory_tools=memory_tools,
                readiness=readiness,
                upstreams=upstreams,
                degradations=degradations,
                extra_metrics=extra_metrics,
                revocations=router_state,
                metrics_hub=router_state,
                replaced=replaced if settings.drain_sessions else None,
                server_tools=ServerTools.from_settings(settings),
            )
        )

    def __serve_build_asgi_app__(self) -> ASGIApp:
        return self._app
