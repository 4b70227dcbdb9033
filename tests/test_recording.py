"""Whole recordings (`/v1/audio/transcriptions`) do not tie up STT: long ones are cut at pauses into chunks
that take turns on the transcription lane (the least audio left first, one chunk at a time), short ones
never wait for them, and a recording whose client left stops after its current chunk. A scripted STT
whose decoding takes time in proportion to the audio, on virtual time, records what ran when."""

from __future__ import annotations

import asyncio
import io

import httpx
import numpy as np
import pytest
import soundfile as sf

from actors.audio.pcm import STT_SAMPLE_RATE
from actors.config import Settings
from actors.llm.stage import LLMStage
from actors.stt.base import STTStream
from actors.stt.recording import ClientGone, TranscriptionLane, split_at_pauses, transcribe_recording
from actors.tts.simulated import SimulatedTTSEngine
from actors.tts.stage import TTSStage
from serve_app.api.deps import RouterDeps
from serve_app.api.router_app import build_router_app
from testkit.fakes import FakeLLMEngine

RATE = STT_SAMPLE_RATE
LABELS = {1000: "A", 2000: "B", 3000: "S", 4000: "C", 5000: "D"}
SPOKEN_S, PAUSE_S = 2.7, 0.3


def recording(level: int, seconds: float) -> bytes:
    """`seconds` of "speech" at a constant `level` (which names the recording), a pause every 3 s."""
    period = np.concatenate([np.full(int(SPOKEN_S * RATE), level), np.zeros(int(PAUSE_S * RATE))])
    samples = np.tile(period, int(seconds / (SPOKEN_S + PAUSE_S)) + 1)[: int(seconds * RATE)]
    return samples.astype("<i2").tobytes()


class ScriptedSTT:
    """Decodes an utterance in `factor` seconds per second of audio and answers the recording's name;
    `log` has (event, name, loop time) for each decode's start and end."""

    def __init__(self, factor: float) -> None:
        self.factor = factor
        self.log: list[tuple[str, str, float]] = []
        self.decoding_long = 0
        self.most_long_at_once = 0

    def open_stream(self) -> STTStream:
        return ScriptedStream(self)


class ScriptedStream(STTStream):
    def __init__(self, stt: ScriptedSTT) -> None:
        self.stt = stt

    async def feed(self, pcm16: bytes) -> str | None:
        raise AssertionError("a recording is sent whole: finish_with")

    async def finish(self) -> str:
        return ""

    async def finish_with(self, tail: bytes) -> str:
        stt, loop = self.stt, asyncio.get_running_loop()
        name = LABELS[int(np.abs(np.frombuffer(tail, dtype="<i2")).max())]
        long = name != "S"
        stt.log.append(("start", name, loop.time()))
        stt.decoding_long += long
        stt.most_long_at_once = max(stt.most_long_at_once, stt.decoding_long)
        try:
            await asyncio.sleep(len(tail) / (2 * RATE) * stt.factor)
        finally:
            stt.decoding_long -= long
        stt.log.append(("end", name, loop.time()))
        return name


def test_recordings_are_cut_in_pauses_and_join_back() -> None:
    pcm = recording(1000, 61)
    pieces = split_at_pauses(pcm, chunk_s=10, search_s=3)
    assert b"".join(pieces) == pcm  # nothing lost or repeated
    # At most the limit, and no shorter than the search window allows.
    assert all((10 - 3 - 0.1) * RATE * 2 <= len(p) <= 10 * RATE * 2 for p in pieces[:-1])
    assert 0 < len(pieces[-1]) <= 10 * RATE * 2
    for piece in pieces[:-1]:
        # Each cut is in a pause: the piece ends, and the next begins, with silence.
        assert not np.frombuffer(piece, dtype="<i2")[-160:].any()
    assert split_at_pauses(pcm[: 9 * RATE * 2], chunk_s=10, search_s=3) == [pcm[: 9 * RATE * 2]]
    assert split_at_pauses(b"", chunk_s=10, search_s=3) == []
    # No pause anywhere: cut at the quietest point before the limit all the same.
    steady = np.full(25 * RATE, 1000, dtype="<i2").tobytes()
    assert b"".join(split_at_pauses(steady, chunk_s=10, search_s=3)) == steady


@pytest.mark.looptime
async def test_short_recordings_pass_long_ones_and_long_ones_take_turns_least_left_first() -> None:
    stt, lane = ScriptedSTT(factor=0.1), TranscriptionLane(slots=1)

    def transcribe(level: int, seconds: float) -> asyncio.Task[str]:
        return asyncio.create_task(transcribe_recording(stt, recording(level, seconds), lane, chunk_s=10))

    chunks = {
        name: len(split_at_pauses(recording(level, seconds), 10, 3))
        for name, level, seconds in (("A", 1000, 60), ("B", 2000, 30))
    }
    a = transcribe(1000, 60)  # chunks of ~1 s of decoding
    await asyncio.sleep(0.5)  # A's first chunk is decoding
    b, s = transcribe(2000, 30), transcribe(3000, 3)
    assert await s == "S"
    loop = asyncio.get_running_loop()
    # The short one did not wait for the chunk in progress: it was done before A's first chunk.
    assert [e[:2] for e in stt.log] == [("start", "A"), ("start", "S"), ("end", "S")]
    assert loop.time() < 1.0
    assert (await a, await b) == (" ".join("A" * chunks["A"]), " ".join("B" * chunks["B"]))
    long_starts = [name for event, name, _ in stt.log if event == "start" and name != "S"]
    # B had less left than A from its arrival on: once A's chunk in progress was done, all of B's
    # chunks went, then the rest of A's.
    assert long_starts == ["A"] + ["B"] * chunks["B"] + ["A"] * (chunks["A"] - 1)
    assert stt.most_long_at_once == 1  # one slot: long recordings never decode side by side


@pytest.mark.looptime
async def test_a_recording_whose_client_left_stops_after_its_chunk_and_frees_the_lane() -> None:
    stt, lane = ScriptedSTT(factor=0.1), TranscriptionLane(slots=1)

    async def gone() -> bool:  # the client leaves while the first chunk is decoded
        return bool(stt.log)

    with pytest.raises(ClientGone):
        await transcribe_recording(stt, recording(4000, 40), lane, chunk_s=10, client_gone=gone)
    assert [e[:2] for e in stt.log] == [("start", "C"), ("end", "C")]  # the rest was never decoded
    # The slot was given back: the next long recording runs at once.
    assert await transcribe_recording(stt, recording(5000, 20), lane, chunk_s=10) == "D D D"


@pytest.mark.looptime
async def test_the_lane_passes_over_cancelled_waiters() -> None:
    lane, order = TranscriptionLane(slots=1), []

    async def hold(name: str, remaining: float, seconds: float) -> None:
        async with lane.slot(remaining):
            order.append(name)
            await asyncio.sleep(seconds)

    first = asyncio.create_task(hold("first", 1, 1))
    await asyncio.sleep(0.1)
    cancelled = asyncio.create_task(hold("cancelled", 1, 1))  # would go next: the least left
    later = asyncio.create_task(hold("later", 50, 1))
    await asyncio.sleep(0.1)
    assert lane.waiting == 2
    cancelled.cancel()
    await asyncio.gather(first, later, return_exceptions=True)
    assert order == ["first", "later"] and cancelled.cancelled()
    async with asyncio.timeout(1):
        await hold("after", 1, 0)  # the slot is free again
    assert order[-1] == "after"


def wav(pcm: bytes) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.frombuffer(pcm, dtype="<i2"), RATE, format="WAV", subtype="PCM_16")
    return buf.getvalue()


async def test_a_short_upload_is_answered_while_a_long_one_is_transcribed() -> None:
    # Real time here (the app runs in this loop over ASGI): short decodes, ordering asserted.
    stt = ScriptedSTT(factor=0.02)  # a 15 s chunk decodes in 0.3 s, the 3 s upload in 0.06 s
    settings = Settings(stt_engine="simulated", llm_engine="openai", tts_engine="simulated").resolved()
    app = build_router_app(
        RouterDeps(
            settings=settings,
            stt=stt,
            llm=LLMStage(FakeLLMEngine("Hi.")),
            tts=TTSStage(SimulatedTTSEngine()),
        )
    )

    async def upload(http: httpx.AsyncClient, pcm: bytes) -> dict:
        form = {"model": "whisper-1", "response_format": "verbose_json"}
        answer = await http.post("/v1/audio/transcriptions", files={"file": ("a.wav", wav(pcm))}, data=form)
        assert answer.status_code == 200, answer.text
        return answer.json()

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
        long = asyncio.create_task(upload(http, recording(1000, 60)))
        async with asyncio.timeout(10):
            while not stt.log:  # noqa: ASYNC110 - the app records it on this loop
                await asyncio.sleep(0.01)
        short = await upload(http, recording(3000, 3))
        assert short["text"] == "S" and not long.done()
        done = await long
    chunks = len(split_at_pauses(recording(1000, 60), 15, 3))  # the default chunk length
    assert done["text"] == " ".join("A" * chunks) and done["duration"] == 60
    starts = [name for event, name, _ in stt.log if event == "start"]
    assert starts == ["A", "S"] + ["A"] * (chunks - 1)  # the short upload went in between
