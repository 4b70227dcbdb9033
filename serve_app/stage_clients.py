"""The stages as the router holds them under Serve: `RemoteSTTStage`, `RemoteLLMStage` and
`RemoteTTSStage` fit the same contracts as the in-process `STTStage`, `LLMStage` and `TTSStage`
(`STTClient`, `LLMClient`, `TTSClient`) and call the deployment that runs that stage.

Hop design (measured on these machines: ~3 ms per call, ~0.6 ms per streamed item):
- STT: one call per ≥100 ms of utterance audio (the session batches; ≥1 s for an engine without interim
  results), routed to the same replica with
  Serve model multiplexing keyed by the stream id; a replica without the stream asks for a resync.
- LLM: one streaming call per response; items are phrases (plus one first-token marker), not tokens,
  and tool-call pieces as the model streams them. REST chat streams tokens (its client asked for them);
  that costs ~0.6 ms per token per hop.
- TTS: one streaming call per phrase; items are ≥120 ms of audio after the first chunk.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

from ray.serve.handle import DeploymentHandle, DeploymentResponse, DeploymentResponseGenerator

from actors.conversation.session import new_id
from actors.llm.base import LLMDelta, LLMEvent, LLMRequest
from actors.stt.base import STTStream
from actors.tts.base import DEFAULT_STYLE, SpeechStyle


class RemoteSTTStream(STTStream):
    """One utterance on `STTDeployment`, fed by stream id; resent whole when a replica asks to resync."""

    def __init__(self, handle: DeploymentHandle) -> None:
        self.stream_id = new_id("stt")
        self._handle = handle.options(multiplexed_model_id=self.stream_id)
        self._audio = bytearray()  # kept for a resync

    async def feed(self, pcm16: bytes) -> str | None:
        offset = len(self._audio)
        self._audio += pcm16
        result = await self._handle.feed.remote(self.stream_id, offset, pcm16)
        if result["resync"]:
            result = await self._handle.feed.remote(self.stream_id, 0, bytes(self._audio))
        return result["interim"]

    async def finish(self) -> str:
        return await self.finish_with(b"")

    async def finish_with(self, tail: bytes) -> str:
        offset = len(self._audio)
        self._audio += tail
        result = await self._handle.finish.remote(self.stream_id, offset, tail)
        if result["resync"]:
            result = await self._handle.finish.remote(self.stream_id, 0, bytes(self._audio))
        return result["text"] or ""

    async def aclose(self) -> None:
        self._handle.close.remote(self.stream_id)  # fire and forget


class RemoteSTTStage:
    """The STT stage on `STTDeployment` (an `STTClient`)."""

    def __init__(self, handle: DeploymentHandle, interim_results: bool) -> None:
        self._handle = handle
        self.interim_results = interim_results

    def open_stream(self) -> STTStream:
        """A stream for one utterance, routed to one replica while it holds the stream."""
        return RemoteSTTStream(self._handle)


class RemoteLLMStage:
    """The LLM stage on `LLMDeployment` (an `LLMClient`)."""

    def __init__(self, handle: DeploymentHandle) -> None:
        self._handle = handle.options(stream=True)

    def stream_phrases(self, request: LLMRequest) -> AsyncGenerator[LLMEvent, None]:
        """`LLMStage.stream_phrases` on a replica; closing the stream cancels it there."""
        return _cancelled_on_close(self._handle.stream_phrases.remote(request))

    def stream_tokens(self, request: LLMRequest) -> AsyncGenerator[LLMDelta, None]:
        """`LLMStage.stream_tokens` on a replica; closing the stream cancels it there."""
        return _cancelled_on_close(self._handle.stream_tokens.remote(request))


class RemoteTTSStage:
    """The TTS stage on `TTSDeployment` (a `TTSClient`)."""

    def __init__(self, handle: DeploymentHandle) -> None:
        self._handle = handle.options(stream=True)

    def synthesize(
        self, text: str, sample_rate: int, style: SpeechStyle = DEFAULT_STYLE
    ) -> AsyncGenerator[bytes, None]:
        """`TTSStage.synthesize` on a replica; closing the stream cancels it there."""
        return _cancelled_on_close(self._handle.synthesize.remote(text, sample_rate, style))


async def _cancelled_on_close(
    response: DeploymentResponse[Any] | DeploymentResponseGenerator[Any],
) -> AsyncGenerator[Any, None]:
    """The items of a streaming handle call. Closing early (barge-in, an HTTP client gone) cancels the
    call, which stops generation or synthesis on the replica."""
    assert isinstance(response, DeploymentResponseGenerator)  # the handle was made with stream=True
    try:
        async for item in response:
            yield item
    finally:
        response.cancel()
