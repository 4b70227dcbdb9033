"""Pipecat (pipecat-ai 1.14) as a benchmark peer: one Pipecat pipeline per connection behind a minimal
OpenAI-Realtime WebSocket, `WS /v1/realtime`, with the same simulated providers as our agent.

    python pipecat_server.py --port 8765 --profile defaults --llm-base-url http://127.0.0.1:9100/v1

Runs in its own virtual environment (requirements-pipecat.txt) and imports nothing from the project (only
its sibling realtime_protocol.py). The pipeline, built as Pipecat's docs build one:

    FastAPIWebsocketTransport.input()   RealtimeSerializer: JSON in, 24 → 16 kHz by Pipecat's resampler
    → SimulatedSTT                      SegmentedSTTService: runs on the VAD's stop, transcript 150 ms later
    → user aggregator                   Silero VAD (stop_secs 0.5); the turn ends at its stop + transcript
    → OpenAILLMService                  the simulated OpenAI-compatible server
    → SimulatedTTS                      TTSService: per sentence, first audio after 100 ms, 24 kHz tone
    → FastAPIWebsocketTransport.output() RealtimeSerializer: `response.output_audio.delta` out
    → assistant aggregator

Timestamps (README.md): the acoustic end of speech is `VADUserStoppedSpeakingFrame.timestamp − stop_secs`
(as Pipecat's own UserBotLatencyObserver dates it), the VAD's decision is that frame's `timestamp`, the
first reply audio is when the serializer hands its first chunk to the websocket.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

import uvicorn
from fastapi import FastAPI, WebSocket
from fastapi.responses import PlainTextResponse
from loguru import logger
from pipecat.audio.turn.smart_turn.local_smart_turn_v3 import LocalSmartTurnAnalyzerV3
from pipecat.audio.utils import create_stream_resampler
from pipecat.audio.vad.silero import SileroVADAnalyzer
from pipecat.audio.vad.vad_analyzer import VADParams
from pipecat.frames.frames import (
    BotStoppedSpeakingFrame,
    Frame,
    InputAudioRawFrame,
    InterruptionFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    MetricsFrame,
    OutputAudioRawFrame,
    OutputTransportMessageFrame,
    OutputTransportMessageUrgentFrame,
    TranscriptionFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    UserStoppedSpeakingFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.metrics.metrics import MetricsData, TextAggregationMetricsData, TTFBMetricsData
from pipecat.observers.base_observer import BaseObserver, FramePushed
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import (
    LLMContextAggregatorPair,
    LLMUserAggregatorParams,
)
from pipecat.processors.frame_processor import FrameProcessorSetup
from pipecat.serializers.base_serializer import FrameSerializer
from pipecat.services.openai.llm import OpenAILLMService
from pipecat.services.settings import STTSettings, TTSSettings
from pipecat.services.stt_service import SegmentedSTTService
from pipecat.services.tts_service import TTSService
from pipecat.transports.websocket.fastapi import FastAPIWebsocketParams, FastAPIWebsocketTransport
from pipecat.turns.user_stop import SpeechTimeoutUserTurnStopStrategy, TurnAnalyzerUserTurnStopStrategy
from pipecat.turns.user_turn_strategies import UserTurnStrategies
from pipecat.utils.time import time_now_iso8601
from pipecat.workers.runner import WorkerRunner
from realtime_protocol import (
    CLIENT_RATE,
    STT_DELAY_S,
    SYSTEM_PROMPT,
    TRANSCRIPT,
    TTS_REALTIME_FACTOR,
    TTS_TTFB_S,
    VAD_SILENCE_S,
    Conversation,
    appended_audio,
    exit_with_parent,
    session_created,
    tone_chunks,
)

PIPELINE_INPUT_RATE = 16_000  # what Silero, Smart Turn and the STT get


# ---------------------------------------------------------------------------------- simulated providers
class SimulatedSTT(SegmentedSTTService):
    """Not a recogniser: the fixed transcript, final, STT_DELAY_S after Pipecat hands over the segment
    (a segmented STT gets its audio on `VADUserStoppedSpeakingFrame`)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(settings=STTSettings(model=None, language=None), **kwargs)

    @property
    def wants_wav_segments(self) -> bool:
        return False  # no upload to format

    def can_generate_metrics(self) -> bool:
        return True

    async def run_stt(self, audio: bytes) -> AsyncGenerator[Frame | None, None]:
        await asyncio.sleep(STT_DELAY_S)
        yield TranscriptionFrame(TRANSCRIPT, self._user_id, time_now_iso8601())


class SimulatedTTS(TTSService):
    """Per phrase: first audio TTS_TTFB_S after it arrives, then the tone, 20 ms chunks made 20× faster
    than real time. The base class opens an audio context and pushes TTSStarted/TTSStoppedFrame around
    each phrase, as Pipecat's own HTTP TTS services have it do."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(
            push_start_frame=True,
            push_stop_frames=True,
            settings=TTSSettings(model=None, voice=None, language=None),
            **kwargs,
        )

    def can_generate_metrics(self) -> bool:
        return True

    async def run_tts(self, text: str, context_id: str) -> AsyncGenerator[Frame | None, None]:
        await asyncio.sleep(TTS_TTFB_S)
        chunks = tone_chunks(text, self.sample_rate)
        for i, pcm in enumerate(chunks):
            yield TTSAudioRawFrame(pcm, self.sample_rate, 1, context_id=context_id)
            if i + 1 < len(chunks):
                await asyncio.sleep(0.02 / TTS_REALTIME_FACTOR)


# ---------------------------------------------------------------------------------- Realtime ↔ frames
class RealtimeSerializer(FrameSerializer):
    """`input_audio_buffer.append` → InputAudioRawFrame at the pipeline's input rate (Pipecat's stream
    resampler, as its telephony serializers do); output audio → `response.output_audio.delta`; an
    interruption → the reply's cancelled `response.done`; the `response.done` queued on the pipeline goes
    out as it is."""

    def __init__(self, conversation: Conversation) -> None:
        super().__init__()
        self._conversation = conversation
        self._resampler = create_stream_resampler()
        self._input_rate = PIPELINE_INPUT_RATE

    async def setup(self, setup: FrameProcessorSetup) -> None:  # type: ignore[override]  # as Pipecat's own
        self._input_rate = setup.audio_in_sample_rate  # both transport halves call this

    async def serialize(self, frame: Frame) -> str | bytes | None:
        if isinstance(frame, OutputAudioRawFrame):
            return self._conversation.audio_delta(frame.audio)
        if isinstance(frame, InterruptionFrame):
            return self._conversation.finish("cancelled")
        if isinstance(frame, OutputTransportMessageFrame | OutputTransportMessageUrgentFrame):
            # Our `response.done` (a JSON string); Pipecat's RTVI messages (dicts) are not for this client.
            return frame.message if isinstance(frame.message, str) else None
        return None

    async def deserialize(self, data: str | bytes) -> Frame | None:
        pcm = appended_audio(data)
        if pcm is None:
            return None
        pcm = await self._resampler.resample(pcm, CLIENT_RATE, self._input_rate)
        return InputAudioRawFrame(audio=pcm, sample_rate=self._input_rate, num_channels=1)


class TurnObserver(BaseObserver):
    """Reads each turn's moments and metrics off the frames Pipecat pushes, and queues the reply's
    `response.done` when the output transport reports that the bot stopped speaking (after its last
    audio chunk was written)."""

    def __init__(self, conversation: Conversation) -> None:
        super().__init__(observe_every_push=False)
        self._conversation = conversation
        self._vad_speaking = False
        self._llm_started_ns: int | None = None  # pipeline clock of the reply's LLMFullResponseStartFrame
        self._llm_first: set[str] = set()  # which of the reply's first text / first TTS phrase were seen
        self.worker: PipelineWorker | None = None

    async def on_push_frame(self, data: FramePushed) -> None:
        frame, conversation = data.frame, self._conversation
        # VAD frames are broadcast up- and downstream (two frames): take the first of each transition.
        if isinstance(frame, VADUserStartedSpeakingFrame):
            self._vad_speaking = True
        elif isinstance(frame, VADUserStoppedSpeakingFrame) and self._vad_speaking:
            self._vad_speaking = False
            conversation.vad_stopped(frame.timestamp - frame.stop_secs, frame.timestamp)
        elif isinstance(frame, UserStoppedSpeakingFrame):
            conversation.mark("user_turn_end_delay", time.time())  # the turn strategy's decision
        elif isinstance(frame, LLMFullResponseStartFrame):
            self._llm_started_ns, self._llm_first = data.timestamp, set()
        elif isinstance(frame, LLMTextFrame | TTSStartedFrame) and self._llm_started_ns is not None:
            # LLM start → first text token (llm_ttft), → first phrase handed to the TTS (llm_ttfs).
            name = "llm_ttft" if isinstance(frame, LLMTextFrame) else "llm_ttfs"
            if name not in self._llm_first:
                self._llm_first.add(name)
                conversation.metric(name, (data.timestamp - self._llm_started_ns) / 1e9)
        elif isinstance(frame, MetricsFrame):
            for item in frame.data:
                if (reported := reported_metric(item)) is not None:
                    conversation.metric(*reported)
        elif isinstance(frame, BotStoppedSpeakingFrame) and self.worker is not None:
            done = conversation.finish("completed")
            if done is not None:
                await self.worker.queue_frame(OutputTransportMessageUrgentFrame(message=done))


def reported_metric(item: MetricsData) -> tuple[str, float] | None:
    """The response.done name and value (seconds) of a Pipecat metric we report; None for the others."""
    if isinstance(item, TTFBMetricsData) and item.value > 0:
        # The STT's TTFB is measured from the acoustic end of speech (VAD timestamp − stop_secs).
        # The LLM's is to the first streamed chunk (the role chunk here, before the first token).
        names = {
            "SimulatedSTT": "transcription_delay",
            "OpenAILLMService": "llm_ttfb",
            "SimulatedTTS": "tts_ttfb",
        }
        name = names.get(item.processor.split("#")[0])
        return None if name is None else (name, item.value)
    if isinstance(item, TextAggregationMetricsData) and item.value > 0:
        return "text_aggregation", item.value  # first LLM token → first sentence handed to the TTS
    return None


# ---------------------------------------------------------------------------------- the bot
@dataclass(frozen=True)
class Config:
    profile: str
    llm_base_url: str
    turn_model: bool = False  # end turns with Pipecat's default Smart Turn v3 model instead of the VAD window
    llm_model: str = "gpt-4o-mini"


def build_stt(config: Config) -> SimulatedSTT:
    if config.profile == "low-latency":
        # Pipecat's STT latency tuning guide: give the service its measured P99 time to final segment
        # (acoustic end of speech → final transcript: the VAD's window plus the STT's 150 ms here), the
        # turn strategies' bound on waiting for a transcript after the VAD's stop. The default is 1.0 s.
        return SimulatedSTT(ttfs_p99_latency=VAD_SILENCE_S + STT_DELAY_S)
    return SimulatedSTT()


def turn_strategies(config: Config) -> UserTurnStrategies:
    """Turn start: Pipecat's default (VAD speech, or a transcript). Turn end, both profiles: the VAD's
    stop (after the benchmark's 500 ms window, stop_secs) and the final transcript, nothing more: a speech
    timeout of 0. Pipecat's default ends turns when its Smart Turn v3 model (bundled) calls them complete,
    falling back to 3 s of silence; that makes the end depend on a model's verdict instead of the shared
    window, so it is opt-in (--turn-model)."""
    if config.turn_model:
        return UserTurnStrategies(
            stop=[TurnAnalyzerUserTurnStopStrategy(turn_analyzer=LocalSmartTurnAnalyzerV3())]
        )
    return UserTurnStrategies(stop=[SpeechTimeoutUserTurnStopStrategy(user_speech_timeout=0.0)])


async def run_bot(websocket: WebSocket, config: Config) -> None:
    conversation = Conversation()
    transport = FastAPIWebsocketTransport(
        websocket=websocket,
        params=FastAPIWebsocketParams(
            audio_in_enabled=True,
            audio_out_enabled=True,
            add_wav_header=False,
            serializer=RealtimeSerializer(conversation),
        ),
    )
    llm = OpenAILLMService(
        api_key=os.environ.get("OPENAI_API_KEY", "sim"),
        base_url=config.llm_base_url,
        settings=OpenAILLMService.Settings(model=config.llm_model, system_instruction=SYSTEM_PROMPT),
    )
    # Both profiles: sentence aggregation, the TTS default. TOKEN mode (which Pipecat documents as lower
    # latency) suits TTS services that take streamed text; the simulated TTS is a per-phrase provider
    # (100 ms to first audio per request), so it would pay that per token and change the providers'
    # critical path the benchmark subtracts.
    tts = SimulatedTTS()
    # The user aggregator runs the VAD (stop_secs: the benchmark's 500 ms window; Pipecat's default is
    # 0.2 s, meant to be paired with Smart Turn) and the user turn strategies.
    user_aggregator, assistant_aggregator = LLMContextAggregatorPair(
        LLMContext(),
        user_params=LLMUserAggregatorParams(
            vad_analyzer=SileroVADAnalyzer(params=VADParams(stop_secs=VAD_SILENCE_S)),
            user_turn_strategies=turn_strategies(config),
        ),
    )
    pipeline = Pipeline(
        [
            transport.input(),
            build_stt(config),
            user_aggregator,
            llm,
            tts,
            transport.output(),
            assistant_aggregator,
        ]
    )
    observer = TurnObserver(conversation)
    worker = PipelineWorker(
        pipeline,
        # Metrics on in both profiles: they feed response.done (TTFB per service, text aggregation).
        params=PipelineParams(
            audio_in_sample_rate=PIPELINE_INPUT_RATE, audio_out_sample_rate=CLIENT_RATE, enable_metrics=True
        ),
        observers=[observer],
    )
    observer.worker = worker

    @transport.event_handler("on_client_disconnected")
    async def _on_disconnected(_transport: Any, _client: Any) -> None:
        await worker.cancel()

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    await runner.run()


def create_app(config: Config) -> FastAPI:
    app = FastAPI()

    @app.get("/healthz")
    async def healthz() -> PlainTextResponse:
        return PlainTextResponse("ok")

    @app.websocket("/v1/realtime")
    async def realtime(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text(session_created(f"pipecat-1.14.0/{config.profile}"))
        await run_bot(websocket, config)

    return app


async def serve(args: argparse.Namespace) -> None:
    app = create_app(Config(profile=args.profile, llm_base_url=args.llm_base_url, turn_model=args.turn_model))
    # uvicorn stops on SIGTERM; open sessions get 2 s to close.
    server = uvicorn.Server(
        uvicorn.Config(app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=2)
    )
    watcher = asyncio.create_task(
        exit_with_parent(args.parent_pid, lambda: setattr(server, "should_exit", True))
    )
    try:
        await server.serve()
    finally:
        watcher.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--profile", choices=("defaults", "low-latency"), default="defaults")
    parser.add_argument("--llm-base-url", required=True, help="an OpenAI-compatible /v1 base URL")
    parser.add_argument(
        "--turn-model", action="store_true", help="end turns by Smart Turn v3 (Pipecat's default)"
    )
    parser.add_argument("--parent-pid", type=int, default=0, help="exit when this process is gone")
    parser.add_argument("--log-level", default="WARNING", help="Pipecat's log level (loguru)")
    args = parser.parse_args()
    logger.remove()
    logger.add(sys.stderr, level=args.log_level)
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
