"""The LiveKit worker: its AgentSession driven by livekit-agents' own text-mode `run()` and result
assertions, and its STT / TTS plugins, against the router's REST API. No LiveKit server is needed.

In process (the router with fake stages behind a real uvicorn socket): the participant's identity reaches
the memory path. On the running agent (`serve run serve_config.yaml`, offline engines): a text turn answered
by llama.cpp, pocketsphinx transcribing a real recording through the STT plugin, eSpeak speech through the
TTS plugin, and a whole spoken turn through the session with a fake microphone and speaker (LiveKit's
`AudioInput` / `AudioOutput`).
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from livekit import rtc
from livekit.agents import AgentSession, metrics
from livekit.agents import stt as stt_events
from livekit.agents.llm import ChatMessage
from livekit.agents.utils import http_context
from livekit.agents.voice.events import ConversationItemAddedEvent, UserInputTranscribedEvent
from livekit.agents.voice.io import AudioInput, AudioOutput, AudioOutputCapabilities
from livekit.plugins import silero

from actors.audio.pcm import rms_dbfs
from actors.config import Settings
from actors.conversation.metrics import HISTOGRAMS
from actors.llm.stage import LLMStage
from actors.stt.pocketsphinx_engine import PocketsphinxEngine
from actors.tts.simulated import SimulatedTTSEngine
from actors.tts.stage import TTSStage
from serve_app.api.deps import RouterDeps
from serve_app.api.router_app import build_router_app
from serve_app.programs.livekit_worker import (
    VoiceAgent,
    WorkerConfig,
    build_session,
    build_stt,
    build_tts,
    observe_metrics,
    observe_reply,
    user_id_for,
    worker_options,
)
from testkit.fakes import FakeLLMEngine, served
from testkit.harness import KEY, MEMORIES, Harness
from testkit.recordings import LIBRIVOX, librivox, word_error_rate
from testkit.serve_cluster import ServeRun

# ------------------------------------------------------------------------------ no server at all


def test_config_from_env() -> None:
    cfg = WorkerConfig.from_env({"VOICE_AGENT_URL": "http://router:8000/", "VOICE_AGENT_API_KEY": "k"})
    assert (cfg.base_url, cfg.api_key, cfg.language) == ("http://router:8000/v1", "k", "en")
    assert WorkerConfig.from_env({}).base_url == "http://127.0.0.1:8000/v1"
    assert WorkerConfig.from_env({}).api_key  # the SDK refuses an empty key even for an open router
    assert (
        WorkerConfig.from_env({"VOICE_AGENT_URL": "https://a.example/v1"}).base_url == "https://a.example/v1"
    )


def test_worker_options() -> None:
    opts = worker_options({})
    assert opts.entrypoint_fnc.__name__ == "entrypoint" and opts.prewarm_fnc.__name__ == "prewarm"
    with_metrics = worker_options({"VOICE_AGENT_METRICS_PORT": "9464", "VOICE_AGENT_METRICS_DIR": "/tmp/m"})
    assert (with_metrics.prometheus_port, with_metrics.prometheus_multiproc_dir) == (9464, "/tmp/m")


def test_participant_identity_becomes_the_memory_user() -> None:
    assert user_id_for("alice@example.com") == "alice@example.com"
    odd = user_id_for("Alice Smith (phone)")
    assert odd.startswith("lk-") and odd == user_id_for("Alice Smith (phone)")
    assert odd != user_id_for("Alice Smith (tablet)")  # never merged into one memory
    assert user_id_for("x" * 200) != "x" * 200 and len(user_id_for("x" * 200)) <= 128
    assert user_id_for("ok\n") != "ok"


def _sum(name: str) -> float:
    return HISTOGRAMS[name]._sum.get()  # type: ignore[attr-defined]


def test_livekit_metrics_go_into_our_histograms() -> None:
    before = {name: _sum(name) for name in HISTOGRAMS}
    eou = metrics.EOUMetrics(
        timestamp=0, end_of_utterance_delay=0.5, transcription_delay=0.25, on_user_turn_completed_delay=0
    )
    assert observe_metrics(eou) == {"end_of_turn_delay": 500.0, "transcription_delay": 250.0}
    llm = metrics.LLMMetrics(
        label="l", request_id="r", timestamp=0, duration=1, ttft=0.12, cancelled=False,
        completion_tokens=3, prompt_tokens=5, prompt_cached_tokens=0, total_tokens=8, tokens_per_second=3,
    )  # fmt: skip
    assert observe_metrics(llm) == {"llm_ttft": pytest.approx(120.0)}
    tts = metrics.TTSMetrics(
        label="t", request_id="r", timestamp=0, ttfb=0.03, duration=1, audio_duration=1, cancelled=False,
        characters_count=5, streamed=False,
    )  # fmt: skip
    assert observe_metrics(tts) == {"tts_ttfb": pytest.approx(30.0)}
    assert observe_metrics(tts.model_copy(update={"ttfb": -1})) == {}  # never got a first byte
    assert observe_metrics(llm.model_copy(update={"cancelled": True})) == {}
    reply = ChatMessage(role="assistant", content=["Hi."], metrics={"e2e_latency": 0.8})
    assert observe_reply(reply) == pytest.approx(800.0)
    assert observe_reply(ChatMessage(role="user", content=["Hi."], metrics={"e2e_latency": 1.0})) is None
    after = {name: _sum(name) for name in HISTOGRAMS}
    assert after["end_of_turn_delay"] - before["end_of_turn_delay"] == pytest.approx(500.0)
    assert after["e2e_latency"] - before["e2e_latency"] == pytest.approx(800.0)
    assert after["llm_ttfs"] == before["llm_ttfs"]  # LiveKit has no first-sentence figure


# --------------------------------------------------------------- the router in process, fake stages


@pytest.fixture(scope="module")
def vad() -> silero.VAD:
    return silero.VAD.load()  # from the plugin's wheel: no download


async def test_chat_turn_carries_the_participant_to_memory(vad: silero.VAD) -> None:
    harness = Harness()
    async with served(harness.http.app) as url:
        cfg = await WorkerConfig.from_env({"VOICE_AGENT_URL": url, "VOICE_AGENT_API_KEY": KEY}).resolve()
        assert cfg.tts_voice == harness.settings.tts_voice and cfg.llm_model == harness.settings.llm_model
        async with build_session(cfg, user=user_id_for("ada"), vad=vad) as session:
            await session.start(VoiceAgent())
            result = await session.run(user_input="Do you know my cat?")
            result.expect.next_event().is_message(role="assistant")
            result.expect.no_more_events()
        reply = result.expect[0].event().item
    assert isinstance(reply, ChatMessage) and reply.text_content == "Hello there. How are you?"
    assert harness.memory_reads == ["ada"]
    assert MEMORIES["ada"] in harness.llm.requests[-1][0]["content"]  # her memory was in the prompt
    turn = harness.sink.turns[-1]
    assert (turn.user_id, turn.user_text, turn.assistant_text) == (
        "ada",
        "Do you know my cat?",
        "Hello there. How are you?",
    )


def frames_of(pcm: bytes, rate: int, ms: int = 20) -> list[rtc.AudioFrame]:
    step = rate * ms // 1000 * 2
    return [
        rtc.AudioFrame(
            data=pcm[i : i + step], sample_rate=rate, num_channels=1, samples_per_channel=step // 2
        )
        for i in range(0, len(pcm) - step + 1, step)
    ]


def recognising_router(llm: FakeLLMEngine, tts_realtime_factor: float) -> RouterDeps:
    """The router in process with real recognition (pocketsphinx), a scripted LLM and simulated TTS."""
    settings = Settings(
        stt_engine="pocketsphinx", llm_engine="openai", tts_engine="espeak", api_keys=KEY, stage_timeout_s=30
    ).resolved()
    return RouterDeps(
        settings=settings,
        stt=PocketsphinxEngine(),
        llm=LLMStage(llm),
        tts=TTSStage(SimulatedTTSEngine(ttfb_ms=5, realtime_factor=tts_realtime_factor)),
    )


async def test_streaming_stt_gets_interim_transcripts_from_a_transcription_session() -> None:
    """The stock plugin's streaming STT (`use_realtime=True`) against the router's Realtime transcription
    session, with real recognition: a LibriVox recording streamed like a microphone gives interim
    transcripts while it plays, then the final one, and LiveKit's speech start and end."""
    deps = recognising_router(FakeLLMEngine("Hi.", ttft_ms=1, tokens_per_s=1000), tts_realtime_factor=1000)
    pcm, reference = librivox("0880", rate=24_000)  # "he was not an ill disposed young man"
    silence = b"\x00\x00" * 24_000 * 2
    # Outside a worker's job, LiveKit's plugins take their HTTP session from this context.
    async with served(build_router_app(deps)) as url, http_context.open():
        cfg = await WorkerConfig.from_env({"VOICE_AGENT_URL": url, "VOICE_AGENT_API_KEY": KEY}).resolve()
        stt = build_stt(cfg)
        assert stt.capabilities.streaming and stt.capabilities.interim_results
        stream = stt.stream()
        events: list[tuple[float, stt_events.SpeechEvent]] = []

        async def listen() -> None:
            async for event in stream:
                events.append((time.monotonic(), event))
                if event.type == stt_events.SpeechEventType.FINAL_TRANSCRIPT:
                    return

        listener = asyncio.create_task(listen())
        try:
            for frame in frames_of(pcm + silence, 24_000):
                stream.push_frame(frame)
                await asyncio.sleep(0.02)  # a microphone's pace
            speech_ended = time.monotonic() - len(silence) / 2 / 24_000
            await asyncio.wait_for(listener, 60)
        finally:
            await stream.aclose()
            await stt.aclose()
    kinds = [event.type for _, event in events]
    assert kinds[0] == stt_events.SpeechEventType.START_OF_SPEECH
    interims = [
        (at, event) for at, event in events if event.type == stt_events.SpeechEventType.INTERIM_TRANSCRIPT
    ]
    assert interims and interims[0][0] < speech_ended  # interim results while the speaker was still talking
    final = events[-1][1].alternatives[0].text
    assert word_error_rate(reference, final) < 0.5, final
    assert final.startswith(interims[0][1].alternatives[0].text.split()[0])


# ----------------------------------------------------------------- the running agent, offline engines


@pytest.fixture(scope="module")
def served_cfg(agent: ServeRun) -> WorkerConfig:
    return asyncio.run(WorkerConfig.from_env({"VOICE_AGENT_URL": agent.base_url}).resolve())


@pytest.mark.slow
async def test_config_resolves_from_the_running_agent(served_cfg: WorkerConfig) -> None:
    assert (served_cfg.llm_model, served_cfg.stt_model) == ("gemma3-270m-q4_k_m", "en-us")
    assert (served_cfg.tts_model, served_cfg.tts_voice) == ("espeak-ng", "en-us")


@pytest.mark.slow
async def test_text_turn_answered_by_our_llm(served_cfg: WorkerConfig, vad: silero.VAD) -> None:
    before = _sum("llm_ttft")
    session: AgentSession
    async with build_session(served_cfg, user="livekit-tester", vad=vad) as session:
        await session.start(VoiceAgent())
        result = await session.run(user_input="What is the capital of France?")
        result.expect.next_event().is_message(role="assistant")
        result.expect.no_more_events()
    reply = result.expect[0].event().item
    assert isinstance(reply, ChatMessage) and (reply.text_content or "").strip()
    assert _sum("llm_ttft") > before  # LiveKit's LLM metrics reached our histogram


@pytest.mark.slow
async def test_stt_plugin_transcribes_a_real_recording(served_cfg: WorkerConfig) -> None:
    if not LIBRIVOX.exists():
        pytest.skip("needs the Debian pocketsphinx-testdata package")
    stt = build_stt(served_cfg)
    references, hypotheses = [], []
    try:
        for utterance in ("0870", "0880", "0890"):
            pcm, reference = librivox(utterance, rate=16_000)
            event = await stt.recognize(frames_of(pcm, 16_000))
            references.append(reference)
            hypotheses.append(event.alternatives[0].text)
    finally:
        await stt.aclose()
    # The served REST test's bound for these recordings (the engine alone measures ~0.28).
    assert word_error_rate(" ".join(references), " ".join(hypotheses)) <= 0.35, hypotheses


@pytest.mark.slow
async def test_tts_plugin_streams_plausible_speech(served_cfg: WorkerConfig) -> None:
    text = "Hello, how are you doing this morning?"
    tts = build_tts(served_cfg)
    try:
        frames = [ev.frame async for ev in tts.synthesize(text)]
    finally:
        await tts.aclose()
    assert len(frames) > 1 and {(f.sample_rate, f.num_channels) for f in frames} == {(24_000, 1)}
    pcm = b"".join(bytes(f.data) for f in frames)
    seconds = len(pcm) / 2 / 24_000
    assert 0.03 * len(text) < seconds < 0.15 * len(text), seconds  # eSpeak speaks ~55 ms a character
    assert rms_dbfs(pcm) > -30.0
    assert np.abs(np.frombuffer(pcm, dtype="<i2")).max() > 1000


class RecordingInput(AudioInput):
    """A participant's microphone: the recording in 20 ms frames at real time, then silence."""

    def __init__(self, pcm: bytes, rate: int) -> None:
        super().__init__(label="recording")
        self._frames = iter(frames_of(pcm + bytes(rate * 2), rate))  # 1 s of silence after the speech
        self._silence = frames_of(bytes(rate * 2 // 50), rate)[0]

    async def __anext__(self) -> rtc.AudioFrame:
        await asyncio.sleep(0.02)  # the VAD and endpointing run on the wall clock
        return next(self._frames, self._silence)


class CapturingOutput(AudioOutput):
    """A speaker that plays instantly and keeps what it was given."""

    def __init__(self) -> None:
        super().__init__(label="capture", capabilities=AudioOutputCapabilities(pause=False))
        self.frames: list[rtc.AudioFrame] = []
        self._position = 0.0

    async def capture_frame(self, frame: rtc.AudioFrame) -> None:
        if self._position == 0.0:
            self.on_playback_started(created_at=time.time())
        await super().capture_frame(frame)
        self.frames.append(frame)
        self._position += frame.duration

    def flush(self) -> None:
        super().flush()
        self.on_playback_finished(playback_position=self._position, interrupted=False)
        self._position = 0.0

    def clear_buffer(self) -> None:
        self.on_playback_finished(playback_position=self._position, interrupted=True)
        self._position = 0.0


@pytest.mark.slow
async def test_spoken_turn_through_the_whole_session(served_cfg: WorkerConfig, vad: silero.VAD) -> None:
    """LiveKit's VAD cuts the utterance, our STT transcribes it, our LLM answers, our TTS speaks, and
    every latency LiveKit reports for the turn lands in our histograms."""
    if not LIBRIVOX.exists():
        pytest.skip("needs the Debian pocketsphinx-testdata package")
    pcm, _ = librivox("0880", rate=24_000)
    before = {name: _sum(name) for name in HISTOGRAMS}
    replied: asyncio.Future[ChatMessage] = asyncio.get_running_loop().create_future()
    heard: list[str] = []
    speaker = CapturingOutput()
    # A worker's job gives the streaming STT its HTTP session; outside one, this context does.
    async with http_context.open(), build_session(served_cfg, user="livekit-voice", vad=vad) as session:

        @session.on("conversation_item_added")
        def _added(ev: ConversationItemAddedEvent) -> None:
            item = ev.item
            if isinstance(item, ChatMessage) and item.role == "user":
                heard.append(item.text_content or "")
            if isinstance(item, ChatMessage) and item.role == "assistant" and not replied.done():
                replied.set_result(item)

        session.input.audio = RecordingInput(pcm, 24_000)
        session.output.audio = speaker
        await session.start(VoiceAgent())
        reply = await asyncio.wait_for(replied, 120)
    assert heard and heard[0].strip(), heard  # pocketsphinx's transcript of the recording
    assert (reply.text_content or "").strip()
    spoken = sum(f.duration for f in speaker.frames)
    assert spoken > 0.3, spoken
    grew = {name for name in HISTOGRAMS if _sum(name) > before[name]}
    assert {"end_of_turn_delay", "transcription_delay", "llm_ttft", "tts_ttfb", "e2e_latency"} <= grew, grew


async def test_spoken_turn_with_streaming_stt_in_process(vad: silero.VAD) -> None:
    """The whole session with the router in process (pocketsphinx streaming through the transcription
    session, a scripted LLM, simulated TTS): LiveKit shows interim transcripts while the recording plays,
    takes the final one as the user's turn, and the reply is spoken."""
    deps = recognising_router(FakeLLMEngine("He was a fine young man.", ttft_ms=5, tokens_per_s=500), 50)
    pcm, reference = librivox("0880", rate=24_000)
    replied: asyncio.Future[ChatMessage] = asyncio.get_running_loop().create_future()
    transcripts: list[tuple[bool, str]] = []
    speaker = CapturingOutput()
    # A worker's job gives the streaming STT its HTTP session; outside one, this context does.
    async with served(build_router_app(deps)) as url, http_context.open():
        cfg = await WorkerConfig.from_env({"VOICE_AGENT_URL": url, "VOICE_AGENT_API_KEY": KEY}).resolve()
        async with build_session(cfg, user="livekit-voice", vad=vad) as session:

            @session.on("user_input_transcribed")
            def _transcribed(ev: UserInputTranscribedEvent) -> None:
                transcripts.append((ev.is_final, ev.transcript))

            @session.on("conversation_item_added")
            def _added(ev: ConversationItemAddedEvent) -> None:
                item = ev.item
                if isinstance(item, ChatMessage) and item.role == "assistant" and not replied.done():
                    replied.set_result(item)

            session.input.audio = RecordingInput(pcm, 24_000)
            session.output.audio = speaker
            await session.start(VoiceAgent())
            reply = await asyncio.wait_for(replied, 120)
    interim = [text for final, text in transcripts if not final]
    final = [text for is_final, text in transcripts if is_final]
    assert interim, transcripts  # LiveKit saw the words while they were spoken
    assert transcripts.index((False, interim[0])) < transcripts.index((True, final[0]))
    assert word_error_rate(reference, final[0]) < 0.5, final
    assert reply.text_content == "He was a fine young man."
    assert sum(f.duration for f in speaker.frames) > 0.3
