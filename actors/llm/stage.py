"""The LLM stage: engine tokens → speakable phrases, so only phrases cross process boundaries on a voice
turn; REST chat clients that want tokens get them as generated (`stream_tokens`). Runs in process, or
in `serve_app.deployments.LLMDeployment` behind `serve_app.stage_clients.RemoteLLMStage`."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator

from actors.conversation.chunker import ChunkerConfig, PhraseChunker
from actors.llm.base import FinishReason, LLMEngine, LLMEvent, LLMFinish, LLMRequest, llm_finish
from actors.load_meter import LoadMeter

log = logging.getLogger(__name__)


class LLMStage:
    """The LLM stage around one engine (an `LLMClient`)."""

    def __init__(self, engine: LLMEngine, chunker_config: ChunkerConfig | None = None) -> None:
        self.engine = engine
        self.chunker_config = chunker_config
        # Replies being generated, over time: this stage's autoscaling signal.
        self.load = LoadMeter()

    async def stream_tokens(self, request: LLMRequest) -> AsyncGenerator[str | LLMFinish, None]:
        """The engine's text deltas as generated (empty ones dropped), then why it stopped."""
        reason: FinishReason = "stop"
        tokens = self.engine.stream(request)
        self.load.begin()
        try:
            async for delta in tokens:
                if isinstance(delta, str):
                    if delta:
                        yield delta
                elif delta["type"] == "finish":
                    reason = delta["finish_reason"]
        finally:
            self.load.end()
            await tokens.aclose()
        yield llm_finish(reason)

    async def stream_phrases(self, request: LLMRequest) -> AsyncGenerator[LLMEvent, None]:
        """A `first_token` marker as soon as the engine starts, then the reply phrase by phrase, then
        why generation stopped."""
        chunker = PhraseChunker(self.chunker_config)
        started = time.perf_counter()
        first = True
        reason: FinishReason = "stop"
        tokens = self.engine.stream(request)
        self.load.begin()
        try:
            async for delta in tokens:
                if not isinstance(delta, str):
                    if delta["type"] == "finish":
                        reason = delta["finish_reason"]
                        continue
                    # A call piece: the words before it are spoken now, not held for a sentence end.
                    rest = chunker.flush()
                    if rest:
                        yield {"type": "phrase", "text": rest}
                    yield delta
                    continue
                if not delta:
                    continue
                if first:
                    first = False
                    log.info(
                        "llm ttft %.1f ms (%s:%s)",
                        (time.perf_counter() - started) * 1000,
                        self.engine.name,
                        self.engine.model,
                    )
                    yield {"type": "first_token", "text": delta}
                for phrase in chunker.push(delta):
                    yield {"type": "phrase", "text": phrase}
            rest = chunker.flush()
            if rest:
                yield {"type": "phrase", "text": rest}
        finally:
            self.load.end()
            await tokens.aclose()
        yield llm_finish(reason)
