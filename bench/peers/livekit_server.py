"""LiveKit Agents (livekit-agents 1.8.9) as a benchmark peer: one AgentSession per connection behind a
minimal OpenAI-Realtime WebSocket, `WS /v1/realtime`, with the same simulated providers as our agent.
There is no LiveKit server: the session runs without a room, its microphone and speaker being the
WebSocket (LiveKit's `AudioInput` / `AudioOutput`, as in tests/test_livekit_worker.py).

    python livekit_server.py --port 8766 --profile defaults --llm-base-url http://127.0.0.1:9100/v1

Runs in its own virtual environment (requirements-livekit.txt) and imports nothing from the project (only
its sibling realtime_protocol.py). The session:
- audio in at 24 kHz, as LiveKit's room input delivers it; Silero VAD and the STT resample it themselves;
- Silero VAD (livekit-plugins-silero, bundled ONNX), min_silence_duration 0.5 s (the benchmark's window);
- SimulatedSTT, non-streaming (recognize: the fixed transcript 150 ms later); LiveKit pairs it with the
  VAD through its StreamAdapter, which recognizes each VAD segment on its end of speech;
- livekit-plugins-openai's LLM against the simulated OpenAI-compatible server;
- SimulatedTTS, non-streaming (per phrase: first audio after 100 ms, 24 kHz tone); LiveKit feeds it
  sentences through its tts.StreamAdapter.

Timestamps (README.md): the acoustic end of speech is LiveKit's own `last_speaking_time` (VAD end of speech
minus its silence and inference time), carried by the `user_state_changed` → "listening" event; the VAD's
decision is when that event fires; the first reply audio is when the speaker sends its first chunk.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import time
from typing import Any

from aiohttp import WSMsgType, web
from livekit import rtc
from livekit.agents import Agent, AgentSession, stt, tts, utils
from livekit.agents.language import LanguageCode
from livekit.agents.llm import ChatMessage
from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS, NOT_GIVEN, APIConnectOptions, NotGivenOr
from livekit.agents.vad import VAD
from livekit.agents.voice.events import ConversationItemAddedEvent, UserStateChangedEvent
from livekit.agents.voice.io import AudioInput, AudioOutput, AudioOutputCapabilities
from livekit.plugins import openai, silero
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

VAD_KEY = web.AppKey("vad", VAD)
PROFILE_KEY = web.AppKey("profile", str)
LLM_KEY = web.AppKey("llm_base_url", str)
TURN_MODEL_KEY = web.AppKey("turn_model", bool)
# LiveKit's per-turn metrics (seconds) → response.done names. Ours where they mean the same thing;
# LiveKit's own end-of-turn and e2e (measured to its turn commit and playback start) under lk_*.
USER_METRICS = {"end_of_turn_delay": "lk_end_of_turn_delay", "transcription_delay": "transcription_delay"}
REPLY_METRICS = {
    "llm_node_ttft": "llm_ttft",
    "llm_node_ttfs": "llm_ttfs",
    "tts_node_ttfb": "tts_ttfb",
    "e2e_latency": "lk_e2e_latency",
}


# ---------------------------------------------------------------------------------- simulated providers
class SimulatedSTT(stt.STT):
    """Not a recogniser: the fixed transcript, final, STT_DELAY_S after it is handed an utterance."""

    def __init__(self) -> None:
        super().__init__(capabilities=stt.STTCapabilities(streaming=False, interim_results=False))

    async def _recognize_impl(
        self,
        buffer: utils.AudioBuffer,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions,
    ) -> stt.SpeechEvent:
        await asyncio.sleep(STT_DELAY_S)
        return stt.SpeechEvent(
            type=stt.SpeechEventType.FINAL_TRANSCRIPT,
            alternatives=[stt.SpeechData(language=LanguageCode("en"), text=TRANSCRIPT)],
        )


class SimulatedTTS(tts.TTS):
    """Per phrase: first audio TTS_TTFB_S after it arrives, then the tone in 20 ms chunks made 20× faster
    than real time."""

    def __init__(self) -> None:
        super().__init__(
            capabilities=tts.TTSCapabilities(streaming=False), sample_rate=CLIENT_RATE, num_channels=1
        )

    def synthesize(
        self, text: str, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> tts.ChunkedStream:
        return _ToneStream(tts=self, input_text=text, conn_options=conn_options)


class _ToneStream(tts.ChunkedStream):
    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        # LiveKit's emitter re-frames raw PCM (200 ms frames by default, as for its own plugins).
        output_emitter.initialize(
            request_id=utils.shortuuid(), sample_rate=CLIENT_RATE, num_channels=1, mime_type="audio/pcm"
        )
        await asyncio.sleep(TTS_TTFB_S)
        chunks = tone_chunks(self.input_text, CLIENT_RATE)
        for i, pcm in enumerate(chunks):
            output_emitter.push(pcm)
            if i + 1 < len(chunks):
                await asyncio.sleep(0.02 / TTS_REALTIME_FACTOR)
        output_emitter.flush()


# ---------------------------------------------------------------------------------- the WebSocket as I/O
class WebSocketMicrophone(AudioInput):
    """The client's `input_audio_buffer.append` chunks, as 24 kHz frames, in arrival order."""

    def __init__(self) -> None:
        super().__init__(label="realtime-websocket")
        self._frames: asyncio.Queue[rtc.AudioFrame | None] = asyncio.Queue()

    def push(self, pcm16: bytes) -> None:
        frame = rtc.AudioFrame(
            data=pcm16, sample_rate=CLIENT_RATE, num_channels=1, samples_per_channel=len(pcm16) // 2
        )
        self._frames.put_nowait(frame)

    def close(self) -> None:
        self._frames.put_nowait(None)

    async def __anext__(self) -> rtc.AudioFrame:
        frame = await self._frames.get()
        if frame is None:
            raise StopAsyncIteration
        return frame


class WebSocketSpeaker(AudioOutput):
    """Sends each frame as `response.output_audio.delta` as soon as LiveKit hands it over (no pacing:
    LiveKit's AudioOutput has none; its room output paces in the WebRTC track), and reports playback as
    done when a segment is flushed, as the fake speaker in tests/test_livekit_worker.py does."""

    def __init__(self, ws: web.WebSocketResponse, conversation: Conversation) -> None:
        super().__init__(
            label="realtime-websocket",
            capabilities=AudioOutputCapabilities(pause=False),
            sample_rate=CLIENT_RATE,
        )
        self._ws = ws
        self._conversation = conversation
        self._segment_s: float | None = None  # audio sent in the open segment; None: no segment open

    async def capture_frame(self, frame: rtc.AudioFrame) -> None:
        await super().capture_frame(frame)
        await self._ws.send_str(self._conversation.audio_delta(bytes(frame.data)))
        if self._segment_s is None:
            self._segment_s = 0.0
            self.on_playback_started(created_at=time.time())
        self._segment_s += frame.duration

    def flush(self) -> None:
        super().flush()
        self._end_segment(interrupted=False)

    def clear_buffer(self) -> None:
        self._end_segment(interrupted=True)

    def _end_segment(self, *, interrupted: bool) -> None:
        if self._segment_s is not None:
            self.on_playback_finished(playback_position=self._segment_s, interrupted=interrupted)
            self._segment_s = None


# ---------------------------------------------------------------------------------- the agent
def turn_handling(profile: str, turn_model: bool) -> dict[str, Any]:
    """LiveKit's TurnHandlingOptions for the profile.

    Turn end, both profiles: "vad" turn detection, i.e. the VAD's end of speech (after the benchmark's
    0.5 s window, min_silence_duration) and the final transcript, then the endpointing delay counted from
    the last speech, which in this mode acts as max(VAD silence, min_delay). LiveKit's default detector
    (the local turn-detector-v1-mini audio model, in livekit-local-inference) instead waits max_delay
    (2.5 s) when it judges the turn unfinished, which it does for the benchmark's eSpeak question; it makes
    the end depend on a model's verdict instead of the shared window, so it is opt-in (--turn-model).
    """
    options: dict[str, Any] = {} if turn_model else {"turn_detection": "vad"}
    if profile == "low-latency":
        # LiveKit's turn-taking tuning guide: preemptive generation starts the LLM on the final transcript,
        # before the turn is committed (the default), and preemptive_tts starts the TTS then as well; a
        # small endpointing delay (0.3 s, LiveKit's own default with its streaming turn detector) commits
        # the turn as early as the VAD allows. Here the VAD's 0.5 s window plus the transcript (150 ms
        # later) are longer than either endpointing delay, so only the preemptive TTS can change anything.
        options["preemptive_generation"] = {"enabled": True, "preemptive_tts": True}
        options["endpointing"] = {"min_delay": 0.3}
    # Otherwise LiveKit's defaults: endpointing fixed, min 0.5 s / max 3.0 s in "vad" mode (min 0.3 / max
    # 2.5 with the turn model), preemptive LLM generation, interruptions on VAD speech.
    return options


def build_session(profile: str, turn_model: bool, llm_base_url: str, vad: VAD) -> AgentSession:
    return AgentSession(
        stt=SimulatedSTT(),
        llm=openai.LLM(
            model="gpt-4o-mini", base_url=llm_base_url, api_key=os.environ.get("OPENAI_API_KEY", "sim")
        ),
        tts=SimulatedTTS(),
        vad=vad,
        turn_handling=turn_handling(profile, turn_model),  # type: ignore[arg-type]  # a TypedDict
    )


async def realtime(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(max_msg_size=0)
    await ws.prepare(request)
    profile, llm_base_url = request.app[PROFILE_KEY], request.app[LLM_KEY]
    await ws.send_str(session_created(f"livekit-agents-1.8.9/{profile}"))
    conversation = Conversation()
    microphone, speaker = WebSocketMicrophone(), WebSocketSpeaker(ws, conversation)
    session = build_session(profile, request.app[TURN_MODEL_KEY], llm_base_url, request.app[VAD_KEY])
    sending: set[asyncio.Task[None]] = set()

    @session.on("user_state_changed")
    def _on_user_state(ev: UserStateChangedEvent) -> None:
        # Emitted on the VAD's end of speech, dated at LiveKit's last_speaking_time (the acoustic end).
        if ev.old_state == "speaking" and ev.new_state == "listening":
            conversation.vad_stopped(ev.created_at, time.time())

    @session.on("conversation_item_added")
    def _on_item(ev: ConversationItemAddedEvent) -> None:
        item = ev.item
        if not isinstance(item, ChatMessage) or item.role not in ("user", "assistant"):
            return
        names = USER_METRICS if item.role == "user" else REPLY_METRICS
        for lk_name, name in names.items():
            value = item.metrics.get(lk_name)
            if isinstance(value, float | int) and value > 0:
                conversation.metric(name, float(value))
        if item.role == "assistant":  # added once the reply has played out (or was interrupted)
            done = conversation.finish("cancelled" if item.interrupted else "completed")
            if done is not None:
                task = asyncio.create_task(ws.send_str(done))
                sending.add(task)
                task.add_done_callback(sending.discard)

    session.input.audio = microphone
    session.output.audio = speaker
    await session.start(Agent(instructions=SYSTEM_PROMPT))
    try:
        async for message in ws:
            if message.type == WSMsgType.TEXT and (pcm := appended_audio(message.data)) is not None:
                microphone.push(pcm)
    finally:
        microphone.close()
        await session.aclose()
    return ws


async def healthz(_request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def serve(args: argparse.Namespace) -> None:
    app = web.Application()
    app[PROFILE_KEY] = args.profile
    app[LLM_KEY] = args.llm_base_url
    app[TURN_MODEL_KEY] = args.turn_model
    app[VAD_KEY] = silero.VAD.load(min_silence_duration=VAD_SILENCE_S)  # one model, a stream per session
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/v1/realtime", realtime)
    runner = web.AppRunner(app, shutdown_timeout=2.0)  # open sessions get 2 s to close on SIGTERM
    await runner.setup()
    await web.TCPSite(runner, args.host, args.port).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    watcher = asyncio.create_task(exit_with_parent(args.parent_pid, stop.set))
    await stop.wait()
    watcher.cancel()
    await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--profile", choices=("defaults", "low-latency"), default="defaults")
    parser.add_argument("--llm-base-url", required=True, help="an OpenAI-compatible /v1 base URL")
    parser.add_argument("--turn-model", action="store_true", help="LiveKit's default turn detector model")
    parser.add_argument("--parent-pid", type=int, default=0, help="exit when this process is gone")
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args()
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
