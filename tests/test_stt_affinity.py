"""STT streams over Serve: offsets catch a chunk that reached the wrong replica, and a resync recovers."""

from __future__ import annotations

import random
from typing import Any

from actors.stt.base import STTEngine, STTStream
from actors.stt.stage import STTStage
from serve_app.stage_clients import RemoteSTTStream


class ByteCountingStream(STTStream):
    """'Transcribes' to the number of bytes it heard, so lost or repeated audio shows."""

    def __init__(self) -> None:
        self.heard = 0

    async def feed(self, pcm16: bytes) -> str | None:
        self.heard += len(pcm16)
        return str(self.heard)

    async def finish(self) -> str:
        return f"heard {self.heard}"


class ByteCountingEngine(STTEngine):
    name = "counting"
    model = "bytes"

    def open_stream(self) -> STTStream:
        return ByteCountingStream()


class FakeMethod:
    def __init__(self, handle: FakeHandle, name: str) -> None:
        self.handle, self.name = handle, name

    async def _call(self, *args: Any) -> Any:
        replica = self.handle.pick()
        self.handle.calls.append((self.name, replica))
        return await getattr(self.handle.replicas[replica], self.name)(*args)

    def remote(self, *args: Any) -> Any:
        return self._call(*args)


class FakeHandle:
    """Routes each call to a replica chosen by `pick` (Serve's handle without Ray)."""

    def __init__(self, replicas: int, sticky: bool, seed: int = 0) -> None:
        self.replicas = [STTStage(ByteCountingEngine()) for _ in range(replicas)]
        self.sticky = sticky
        self.rng = random.Random(seed)
        self.calls: list[tuple[str, int]] = []

    def options(self, **_: Any) -> FakeHandle:
        return self

    def pick(self) -> int:
        return 0 if self.sticky else self.rng.randrange(len(self.replicas))

    def __getattr__(self, name: str) -> FakeMethod:
        return FakeMethod(self, name)


async def run_utterance(handle: FakeHandle, chunks: int) -> str:
    stream = RemoteSTTStream(handle)
    for _ in range(chunks):
        await stream.feed(b"\x01\x00" * 1600)
    return await stream.finish_with(b"\x02\x00" * 800)


async def test_sticky_routing_needs_no_resync() -> None:
    handle = FakeHandle(replicas=2, sticky=True)
    assert await run_utterance(handle, 10) == f"heard {10 * 3200 + 1600}"
    assert len(handle.calls) == 11  # one call per chunk, the tail rides with the finish


async def test_rerouted_chunks_are_resent_and_nothing_is_lost_or_doubled() -> None:
    handle = FakeHandle(replicas=3, sticky=False, seed=7)
    assert await run_utterance(handle, 12) == f"heard {12 * 3200 + 1600}"
    assert len(handle.calls) > 13  # some calls were answered with resync and repeated


async def test_stage_rejects_gaps_and_replaces_on_restart() -> None:
    stage = STTStage(ByteCountingEngine())
    assert (await stage.feed("s", 0, b"\x00" * 10))["resync"] is False
    assert (await stage.feed("s", 20, b"\x00" * 10))["resync"] is True  # a gap: state dropped
    assert (await stage.feed("s", 10, b"\x00" * 10))["resync"] is True
    assert (await stage.feed("s", 0, b"\x00" * 30))["interim"] == "30"
    assert (await stage.finish("s", 30, b"\x00" * 2))["text"] == "heard 32"
    assert (await stage.finish("s", 32))["resync"] is True  # already finished
    assert stage.streams_held == 0


async def test_streams_left_behind_on_another_replica_expire() -> None:
    stage = STTStage(ByteCountingEngine(), idle_timeout_s=0.0)
    await stage.feed("abandoned", 0, b"\x00" * 10)
    await stage.feed("next", 0, b"\x00" * 10)  # any later call sweeps idle streams
    assert stage.streams_held == 1
