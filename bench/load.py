"""Load generator: N concurrent `WS /v1/realtime` sessions whose clients stream audio all the time, as
microphones do, against our agent (one process and Ray Serve) and the peers, side by side in one run.

    .venv/bin/python -m bench.load                                  # the full run (~25 min on 2 cores)
    .venv/bin/python -m bench.load --targets ray-serve --sessions 10 --turns 4
    .venv/bin/python -m bench.load --targets ray-serve --sessions 10 --py-spy bench/results/profile

Each client sends 20 ms frames of PCM16 at 24 kHz in real time without pause: room noise, a spoken
question (eSpeak sentences and LibriVox human speech, in turn), room noise again while the agent answers,
until the reply has ended, then the next question. Every target is driven by the same client code over
the same protocol, with the same simulated providers (STT final 150 ms after the end of the utterance,
an OpenAI-compatible SSE server at TTFT 300 ms and 50 tok/s, TTS first byte after 100 ms) and a 500 ms
silence window.

Per turn: client e2e (the moment the last speech frame was sent → first reply audio received), the
server's own metrics (`response.done.response.metadata`), errors. Orchestration overhead is the server's
`e2e_latency − end_of_turn_delay − 630 ms`: what the pipeline adds between its VAD's decision and the
first reply audio, above the providers' critical path (STT 150 + TTFT 300 + 4 tokens × 20 + TTS 100).
Per target and N: CPU seconds per completed turn for every process of the app (for Ray Serve: every
Ray process, GCS and raylet included), and resident memory (RSS and PSS) per session.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import websockets
from tqdm import tqdm

from actors.audio.pcm import resample
from bench.latency import (
    PROVIDERS_AFTER_TURN_MS,
    SIM_ARGS,
    TTFT_MS,
    percentile,
    start_sim_llm,
    start_single_process,
)
from testkit.serve_cluster import ROOT, ServeRun, session_members
from testkit.speech import espeak_speech, speech_end_byte

RATE = 24_000
FRAME_MS = 20
FRAME_BYTES = RATE * 2 * FRAME_MS // 1000
LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")
QUESTIONS = (
    "What is the weather like tomorrow?",
    "Can you book a table for two at eight tonight?",
    "How long does it take to drive to the airport?",
    "Remind me to call my sister on Sunday.",
)
TURN_TIMEOUT_S = 30.0  # a reply that has not ended by then counts as an error
TURN_ENDING_ERRORS = {"transcription_failed"}  # error events after which no reply follows a question
PAUSE_AFTER_REPLY_S = (0.6, 1.4)  # the user's thinking time before the next question (uniform)
PROFILE_S = 30  # py-spy records this long from the start of the profiled run
OURS = ("single-process", "ray-serve")
PEERS = ("pipecat:defaults", "pipecat:low-latency", "livekit:defaults", "livekit:low-latency")


# ---------------------------------------------------------------------------------------------- audio
@dataclass(frozen=True)
class Utterance:
    name: str
    frames: list[str]  # pre-encoded `input_audio_buffer.append` events, 20 ms each
    last_speech_frame: int  # index of the frame that carries the acoustic end of speech


def append_event(pcm: bytes) -> str:
    return json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm).decode()})


def to_frames(pcm: bytes) -> list[str]:
    pcm = pcm + b"\x00" * (-len(pcm) % FRAME_BYTES)
    return [append_event(pcm[i : i + FRAME_BYTES]) for i in range(0, len(pcm), FRAME_BYTES)]


def room_noise(seconds: float, level_dbfs: float = -55.0, seed: int = 7, rate: int = RATE) -> bytes:
    """Pink-ish room noise (integrated white noise, high-passed) at `level_dbfs` RMS, PCM16 at `rate`."""
    rng = np.random.default_rng(seed)
    white = rng.standard_normal(int(rate * seconds))
    brown = np.cumsum(white)
    window = rate // 50
    brown -= np.convolve(brown, np.ones(window) / window, mode="same")  # drop the DC drift below ~50 Hz
    noise = 0.5 * brown / (np.std(brown) + 1e-9) + 0.5 * white
    noise *= 10 ** (level_dbfs / 20) / np.sqrt(np.mean(noise**2))
    return (np.clip(noise, -1, 1) * 32767).astype("<i2").tobytes()


def mix_noise(pcm: bytes, noise: bytes, offset: int) -> bytes:
    speech = np.frombuffer(pcm, dtype="<i2").astype(np.int32)
    bed = np.frombuffer(noise, dtype="<i2").astype(np.int32)
    start = (offset % (len(bed) - len(speech))) if len(bed) > len(speech) else 0
    return np.clip(speech + bed[start : start + len(speech)], -32768, 32767).astype("<i2").tobytes()


def librivox_segments(max_segments: int = 6) -> list[tuple[str, bytes]]:
    """Single-breath stretches of Debian's LibriVox recordings (human read speech), cut at pauses of
    300 ms or more so the 500 ms silence window never splits one question into two turns."""
    segments: list[tuple[str, bytes]] = []
    for path in sorted(LIBRIVOX.glob("*.wav")):
        audio, native = sf.read(path, dtype="int16")
        pcm = resample(audio.tobytes(), native, RATE)
        samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768
        window = RATE // 100  # 10 ms
        n = len(samples) // window
        db = 20 * np.log10(np.sqrt(np.mean(samples[: n * window].reshape(n, window) ** 2, axis=1)) + 1e-9)
        loud = db > max(np.percentile(db, 90) - 25, -45)
        start, quiet = None, 0
        for i, is_loud in enumerate([*loud, False] + [False] * 30):
            if is_loud:
                start = i if start is None else start
                quiet = 0
            elif start is not None:
                quiet += 1
                if quiet >= 30:
                    end = i - quiet + 1
                    if 1.0 <= (end - start) / 100 <= 6.0:
                        segments.append((path.stem[-4:], pcm[start * window * 2 : end * window * 2]))
                    start = None
        if len(segments) >= max_segments:
            break
    return segments[:max_segments]


def utterances() -> list[Utterance]:
    """The questions every client asks, in turn: eSpeak sentences and LibriVox segments, each with a
    room-noise bed and its acoustic end of speech located on the clean signal."""
    noise = room_noise(30)
    spoken = [(f"espeak-{i}", espeak_speech(q)) for i, q in enumerate(QUESTIONS)]
    if LIBRIVOX.is_dir():
        spoken += [(f"librivox-{name}", pcm) for name, pcm in librivox_segments()]
    result = []
    for i, (name, pcm) in enumerate(spoken):
        end = speech_end_byte(pcm)
        result.append(Utterance(name, to_frames(mix_noise(pcm, noise, i * 7919)), (end - 1) // FRAME_BYTES))
    return result


# ---------------------------------------------------------------------------------------------- clients
@dataclass
class Turn:
    utterance: str
    client_e2e_ms: float
    server: dict[str, float]
    ended_at: float = 0.0  # time.monotonic() when the reply ended


@dataclass
class RunResult:
    target: str
    sessions: int
    turns: list[Turn] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    error_times: list[float] = field(default_factory=list)  # time.monotonic() of each error, in order
    max_send_lag_ms: float = 0.0  # how late the clients sent a frame: above ~20 ms the clients lag
    cpu_s: float = float("nan")
    cpu_by_process: dict[str, float] = field(default_factory=dict)
    machine_cores: float = float("nan")  # the whole machine's busy cores: app, clients, providers
    rss_mb: float = float("nan")
    pss_mb: float = float("nan")
    idle_rss_mb: float = float("nan")
    idle_pss_mb: float = float("nan")
    wall_s: float = 0.0

    def error(self, message: str) -> None:
        self.errors.append(message)
        self.error_times.append(time.monotonic())


@dataclass
class SessionLog:
    """What one connection of a client saw, for benchmarks that follow a caller across reconnects
    (`bench.upgrades`); times are `time.monotonic()`."""

    connected_at: float  # the connection attempt began
    opened_at: float | None = None  # session.created arrived
    closed_at: float | None = None  # the connection ended (or failed to open)
    close_code: int | None = None  # the server's close code, if it closed the connection
    completed: list[str] = field(default_factory=list)  # response ids of the replies that completed
    errors: list[tuple[float, str]] = field(default_factory=list)  # (time, code) of each error event
    # When each question ended without a completed reply: the reply failed (an error event or a reply
    # that ended failed, cancelled or incomplete), the connection ended, or nothing came within
    # TURN_TIMEOUT_S on an open connection.
    failed_turns: list[float] = field(default_factory=list)
    cut_turns: list[float] = field(default_factory=list)
    timed_out_turns: list[float] = field(default_factory=list)


class Microphone:
    """One session's client: frames at a fixed real-time schedule, never paused."""

    def __init__(self, ws: Any, noise_frames: list[str]) -> None:
        self.ws = ws
        self.noise = noise_frames
        self.sent = 0
        self.start = time.perf_counter()
        self.max_lag = 0.0

    async def send(self, frame: str) -> float:
        due = self.start + self.sent * FRAME_MS / 1000
        now = time.perf_counter()
        if due > now:
            await asyncio.sleep(due - now)
        else:
            self.max_lag = max(self.max_lag, now - due)
        await self.ws.send(frame)
        self.sent += 1
        return time.perf_counter()

    async def noise_until(self, done: Callable[[], bool], seconds: float) -> None:
        deadline = time.perf_counter() + seconds
        while not done() and time.perf_counter() < deadline:
            await self.send(self.noise[self.sent % len(self.noise)])


async def run_client(
    url: str,
    index: int,
    turns: int,
    material: list[Utterance],
    noise: list[str],
    out: RunResult,
    progress: tqdm | None,
    until: float | None = None,
    turn_detection: dict[str, Any] | None = None,
    start_after_s: float | None = None,
    log: SessionLog | None = None,
) -> None:
    """One session: `turns` questions, or (with `until`, a `time.monotonic()` deadline) question after
    question until then; a turn that started before the deadline is still awaited. It opens after
    `start_after_s`, by default `index` × 0.29 s (staggered starts, as real callers arrive).
    `turn_detection`: set with `session.update` first (our targets only). `log`: what this connection
    saw, filled in as it goes."""
    rng = random.Random(index)
    await asyncio.sleep(index * 0.29 if start_after_s is None else start_after_s)
    ws = None
    state: dict[str, Any] = {}  # the turn in progress
    try:
        async with websockets.connect(f"{url}/realtime?user=load-{index}", max_size=None) as ws:
            created = json.loads(await ws.recv())
            if created.get("type") != "session.created":
                raise RuntimeError(f"expected session.created, got {created.get('type')}")
            if log is not None:
                log.opened_at = time.monotonic()
            if turn_detection is not None:
                audio = {"input": {"turn_detection": turn_detection}}
                await ws.send(
                    json.dumps({"type": "session.update", "session": {"type": "realtime", "audio": audio}})
                )
                updated = json.loads(await ws.recv())
                if updated.get("type") != "session.updated":
                    raise RuntimeError(f"expected session.updated, got {updated}")
            mic = Microphone(ws, noise)

            async def receive() -> None:
                async for raw in ws:
                    if isinstance(raw, bytes):
                        continue
                    # Only what follows the question counts: an overloaded agent may still be
                    # answering the previous one.
                    if '"response.output_audio.delta"' in raw[:80]:
                        if "speech_end" in state:
                            state.setdefault("first_audio", time.perf_counter())
                        continue
                    event = json.loads(raw)
                    kind = event.get("type")
                    if kind == "response.done" and "speech_end" in state:
                        # The reply to this question, or one that failed before any audio.
                        if "first_audio" in state or event["response"].get("status") != "completed":
                            state.setdefault("done", event["response"])
                    elif kind == "error":
                        out.error(f"error event: {event['error'].get('code')}")
                        if event["error"].get("code") in TURN_ENDING_ERRORS and "asking" in state:
                            state.setdefault("failed", event["error"]["code"])
                        if log is not None:
                            log.errors.append((time.monotonic(), str(event["error"].get("code"))))

            receiver = asyncio.create_task(receive())
            try:
                turn = 0
                while (turn < turns) if until is None else (time.monotonic() < until):
                    utterance = material[(index + turn) % len(material)]
                    turn += 1
                    state.clear()
                    await mic.noise_until(lambda: False, rng.uniform(0.3, 0.8))
                    state["asking"] = True
                    for i, frame in enumerate(utterance.frames):
                        sent = await mic.send(frame)
                        if i == utterance.last_speech_frame:
                            state["speech_end"] = sent
                    await mic.noise_until(
                        lambda: "done" in state or "failed" in state or receiver.done(), TURN_TIMEOUT_S
                    )
                    done = state.get("done")
                    if done is None and "failed" in state:
                        if log is not None:  # the error event says it: no reply follows
                            log.failed_turns.append(time.monotonic())
                    elif done is None:
                        out.error("no response.done" if not receiver.done() else "connection lost")
                        if log is not None:
                            if receiver.done():
                                log.cut_turns.append(time.monotonic())
                            else:
                                log.timed_out_turns.append(time.monotonic())
                        if receiver.done():
                            return
                    elif done.get("status") != "completed":
                        out.error(f"turn {done.get('status')}: {done.get('status_details')}")
                        if log is not None:
                            log.failed_turns.append(time.monotonic())
                    else:
                        if log is not None:
                            log.completed.append(done["id"])
                        metadata = done.get("metadata") or {}
                        out.turns.append(
                            Turn(
                                utterance.name,
                                (state["first_audio"] - state["speech_end"]) * 1000,
                                {k: float(v) for k, v in metadata.items() if _is_number(v)},
                                time.monotonic(),
                            )
                        )
                    if progress is not None:
                        progress.update()
                    await mic.noise_until(lambda: False, rng.uniform(*PAUSE_AFTER_REPLY_S))
            finally:
                receiver.cancel()
                out.max_send_lag_ms = max(out.max_send_lag_ms, mic.max_lag * 1000)
    except websockets.ConnectionClosed as exc:
        in_turn = "asking" in state and not {"done", "failed"} & state.keys()
        if log is not None and in_turn:
            log.cut_turns.append(time.monotonic())
        if log is None or exc.rcvd is None or in_turn:
            out.error(f"session failed: {exc!r}")
        # else: the server closed the connection between turns (a restart notice): the caller decides
    except (OSError, websockets.WebSocketException, RuntimeError) as exc:
        out.error(f"session failed: {exc!r}")
    finally:
        if log is not None:
            log.closed_at = time.monotonic()
            if ws is not None and ws.protocol.close_rcvd is not None:
                log.close_code = ws.protocol.close_rcvd.code


def _is_number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


# ---------------------------------------------------------------------------------------------- processes
def process_cpu_seconds(pid: int, with_children: bool = False) -> float | None:
    """CPU seconds (user + system) process `pid` has used so far, and with `with_children` those of its
    children it has waited for; None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # after the command: state ppid ... utime stime ...
    ticks = [int(f) for f in fields[11 : 15 if with_children else 13]]
    return sum(ticks) / os.sysconf("SC_CLK_TCK")


def cpu_by_process(pids: set[int]) -> dict[str, float]:
    """CPU seconds (user + system) so far of each process, keyed by a readable name and PID."""
    seconds = {}
    for pid in pids:
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if (used := process_cpu_seconds(pid)) is not None:
            seconds[f"{process_label(command)}-{pid}"] = used
    return seconds


def machine_busy_seconds() -> float:
    """CPU seconds all cores of the machine spent busy since boot (everything but idle and iowait)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def process_label(command: list[bytes]) -> str:
    """`ray::ServeReplica:voice-agent:Router` → `Router`; `ray::ServeController.listen_for_change` (a
    worker names the task it runs) → `ServeController`; `.../gcs_server --x` → `gcs_server`;
    `python -m bench.peers.x` → `bench.peers.x`."""
    words = [w.decode(errors="replace") for w in command if w]
    if not words:
        return "?"
    if words[0].startswith("ray::"):
        return words[0].removeprefix("ray::").split(":")[-1].split(".")[0]
    if "-m" in words[:-1]:
        return words[words.index("-m") + 1]
    program = Path(words[0]).name
    if program.startswith("python"):
        script = next((w for w in words[1:] if not w.startswith("-")), None)  # `python -u x.py`
        return Path(script).name if script else program
    return program


def memory_mb(pids: set[int]) -> tuple[float, float]:
    """(RSS, PSS) of the processes in MB; PSS shares pages between processes fairly."""
    rss = pss = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1])
        except OSError:
            continue
    return rss / 1024, pss / 1024


@dataclass
class Target:
    """A running server: its WebSocket base URL, the sessions (process groups) of its processes."""

    name: str
    ws_url: str
    sessions: list[int]
    stop: Callable[[], None]
    startup_s: float

    def pids(self) -> set[int]:
        pids: set[int] = set()
        for sid in self.sessions:
            pids |= session_members(sid)
        return pids


def start_target(name: str, llm_base: str, workdir: Path, serve_env: dict[str, str] | None = None) -> Target:
    started = time.monotonic()
    if name == "single-process":
        # One process holds every session here (a router replica admits 32 by default): the benchmark
        # measures what the process does with 50, not its admission control.
        process, ws_url = start_single_process(workdir, llm_base, {"VOICE_MAX_SESSIONS_PER_ROUTER": "1000"})
        return Target(name, ws_url, [process.pid], lambda: terminate(process), time.monotonic() - started)
    if name == "ray-serve":
        serve_dir = workdir / "serve"
        serve_dir.mkdir(exist_ok=True)
        env = {"OPENAI_API_KEY": "sim", **(serve_env or {})}
        run = ServeRun(serve_dir, args={**SIM_ARGS, "llm_base_url": llm_base}, env=env)
        run.wait_ready()
        return Target(name, run.ws_url, [run.head.pid, run.process.pid], run.stop, time.monotonic() - started)
    from bench.peers import start_peer

    peer, profile = name.split(":")
    process, ws_url = start_peer(peer, profile, llm_base, workdir)
    return Target(name, ws_url, [process.pid], lambda: terminate(process), time.monotonic() - started)


def terminate(process: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL if the server has not exited within 10 s."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def py_spy(target: Target, out_dir: Path, seconds: int) -> list[tuple[str, subprocess.Popen]]:
    """Start `py-spy record` (sampling at 50 Hz, collapsed stacks) on every Python process of the
    target; `summarize_profiles` reads the files."""
    out_dir.mkdir(parents=True, exist_ok=True)
    recorders = []
    for pid in sorted(target.pids()):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"python" not in command[0] and not command[0].startswith(b"ray::"):
            continue
        path = out_dir / f"{target.name}-{process_label(command)}-{pid}.txt".replace(":", "_")
        spy = Path(sys.executable).parent / "py-spy"
        args = ["record", "--pid", str(pid), "--rate", "50", "--duration", str(seconds), "--nonblocking"]
        recorders.append(
            (
                path.name,
                subprocess.Popen(
                    [str(spy), *args, "--format", "raw", "--output", str(path)],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                ),
            )
        )
    return recorders


def summarize_profiles(out_dir: Path, seconds: int, top: int = 12) -> str:
    """Per profiled process: CPU share (samples ÷ duration), and the functions with the most samples
    on top of the stack (self time) and anywhere in it (total), as a Markdown report."""
    lines = []
    for path in sorted(out_dir.glob("*.txt")):
        self_time: dict[str, int] = {}
        total_time: dict[str, int] = {}
        samples = 0
        for line in path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack:
                continue
            n = int(count)
            samples += n
            frames = [_frame_name(f) for f in stack.split(";")]
            self_time[frames[-1]] = self_time.get(frames[-1], 0) + n
            for frame in set(frames):
                total_time[frame] = total_time.get(frame, 0) + n
        if samples < 50 * seconds * 0.02:  # under 2 % of a core: not worth a section
            continue
        lines.append(f"### {path.stem}: {samples / (50 * seconds):.2f} cores\n")
        for title, table_ in (("self", self_time), ("total", total_time)):
            ranked = sorted(table_.items(), key=lambda kv: -kv[1])[:top]
            lines.append(f"{title}: " + "; ".join(f"{name} {100 * n / samples:.0f}%" for name, n in ranked))
        lines.append("")
    return "\n".join(lines)


def _frame_name(frame: str) -> str:
    """`fetch (ray/serve/_private/http_util.py:401)` → `fetch (http_util.py)`."""
    name, _, where = frame.partition(" (")
    return f"{name} ({Path(where.rstrip(')').rsplit(':', 1)[0]).name})" if where else name


async def measure(
    target: Target,
    sessions: int,
    turns: int,
    material: list[Utterance],
    noise: list[str],
    profile_dir: Path | None = None,
    turn_detection: dict[str, Any] | None = None,
) -> RunResult:
    result = RunResult(target.name, sessions)
    await asyncio.sleep(1.0)  # let the previous run's sessions close
    result.idle_rss_mb, result.idle_pss_mb = memory_mb(target.pids())
    cpu_before = cpu_by_process(target.pids())
    machine_before = machine_busy_seconds()
    started = time.monotonic()
    peak = [0.0, 0.0]

    async def sample_memory() -> None:
        while True:
            await asyncio.sleep(3)
            rss, pss = await asyncio.to_thread(memory_mb, target.pids())
            peak[0], peak[1] = max(peak[0], rss), max(peak[1], pss)

    sampler = asyncio.create_task(sample_memory())
    recorders = py_spy(target, profile_dir, PROFILE_S) if profile_dir else []
    with tqdm(total=sessions * turns, desc=f"{target.name} ×{sessions}", unit="turn", leave=False) as bar:
        await asyncio.gather(
            *(
                run_client(
                    target.ws_url, i, turns, material, noise, result, bar, turn_detection=turn_detection
                )
                for i in range(sessions)
            )
        )
    sampler.cancel()
    for _, recorder in recorders:
        recorder.wait()
    result.wall_s = time.monotonic() - started
    cpu_after = cpu_by_process(target.pids())
    result.cpu_by_process = {k: v - cpu_before.get(k, 0.0) for k, v in cpu_after.items()}
    result.cpu_s = sum(result.cpu_by_process.values())
    result.machine_cores = (machine_busy_seconds() - machine_before) / result.wall_s
    result.rss_mb, result.pss_mb = peak
    return result


# ---------------------------------------------------------------------------------------------- report
def overhead_ms(turn: Turn) -> float:
    return turn.server["e2e_latency"] - turn.server["end_of_turn_delay"] - PROVIDERS_AFTER_TURN_MS


def summarize(r: RunResult) -> dict[str, Any]:
    e2e = [t.client_e2e_ms for t in r.turns]
    over = [overhead_ms(t) for t in r.turns if {"e2e_latency", "end_of_turn_delay"} <= t.server.keys()]
    completed = len(r.turns)
    return {
        "target": r.target,
        "sessions": r.sessions,
        "turns": completed,
        "errors": len(r.errors),
        "error_kinds": sorted(set(r.errors))[:5],
        "e2e_p50": percentile(e2e, 50),
        "e2e_p95": percentile(e2e, 95),
        "overhead_p50": percentile(over, 50),
        "overhead_p95": percentile(over, 95),
        "cpu_ms_per_turn": 1000 * r.cpu_s / completed if completed else float("nan"),
        "cpu_cores": r.cpu_s / r.wall_s if r.wall_s else float("nan"),
        "machine_cores": r.machine_cores,
        "rss_mb_per_session": (r.rss_mb - r.idle_rss_mb) / r.sessions,
        "pss_mb_per_session": (r.pss_mb - r.idle_pss_mb) / r.sessions,
        "pss_mb_total": r.pss_mb,
        "max_send_lag_ms": r.max_send_lag_ms,
        "cpu_cores_by_process": {
            k: round(v / r.wall_s, 3)
            for k, v in sorted(r.cpu_by_process.items(), key=lambda kv: -kv[1])
            if v / r.wall_s >= 0.005
        },
    }


def table(rows: list[dict[str, Any]]) -> str:
    header = (
        "| target | sessions | turns | errors | client e2e p50 | p95 | overhead p50 | p95 |"
        " CPU ms / turn | app cores | machine cores | PSS MB / session | PSS MB total | client lag max |"
    )
    lines = [header, "|" + "---|" * 14]
    for r in rows:
        lines.append(
            f"| {r['target']} | {r['sessions']} | {r['turns']} | {r['errors']} | {r['e2e_p50']:.0f}"
            f" | {r['e2e_p95']:.0f} | {r['overhead_p50']:.1f} | {r['overhead_p95']:.1f}"
            f" | {r['cpu_ms_per_turn']:.0f} | {r['cpu_cores']:.2f} | {r['machine_cores']:.2f}"
            f" | {r['pss_mb_per_session']:.1f}"
            f" | {r['pss_mb_total']:.0f} | {r['max_send_lag_ms']:.0f} ms |"
        )
    return "\n".join(lines)


def ratios(rows: list[dict[str, Any]], ours: str = "ray-serve") -> str:
    """Ours ÷ each peer, per N, for client e2e p50 and overhead p50 / p95."""
    by = {(r["target"], r["sessions"]): r for r in rows}
    lines = [
        "| N | peer | e2e p50 ratio | overhead p50 ratio | overhead p95 ratio |",
        "|---|---|---|---|---|",
    ]
    for (name, n), peer in sorted(by.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        if name in OURS or (ours, n) not in by:
            continue
        mine = by[(ours, n)]
        lines.append(
            f"| {n} | {name} | {mine['e2e_p50'] / peer['e2e_p50']:.2f}"
            f" | {mine['overhead_p50'] / peer['overhead_p50']:.2f}"
            f" | {mine['overhead_p95'] / peer['overhead_p95']:.2f} |"
        )
    return "\n".join(lines)


def knees(rows: list[dict[str, Any]]) -> str:
    """Per target, the first N whose overhead p95 is at least double that of the fewest sessions, with
    what was busiest there: where adding sessions starts to cost each of them."""
    lines = []
    for name in dict.fromkeys(r["target"] for r in rows):
        mine = sorted((r for r in rows if r["target"] == name), key=lambda r: r["sessions"])
        base = mine[0]["overhead_p95"]
        knee = next((r for r in mine[1:] if r["overhead_p95"] >= 2 * base), None)
        if knee is None:
            lines.append(f"- {name}: overhead p95 stays under 2× its {mine[0]['sessions']}-session value")
            continue
        busiest = ", ".join(
            f"{k.rsplit('-', 1)[0]} {v:.2f}" for k, v in list(knee["cpu_cores_by_process"].items())[:3]
        )
        lines.append(
            f"- {name}: knee at {knee['sessions']} sessions (p95 {base:.0f} → {knee['overhead_p95']:.0f} ms);"
            f" machine {knee['machine_cores']:.2f} of {os.cpu_count()} cores busy; busiest: {busiest}"
        )
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets = list(dict.fromkeys(r["target"] for r in rows))
    panels = [
        ("overhead_p95", "orchestration overhead p95 (ms)", True),
        ("e2e_p50", "client e2e p50 (ms)", False),
        ("cpu_ms_per_turn", "CPU ms per turn (whole app)", True),
        ("pss_mb_per_session", "PSS MB per session", False),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(18, 4.5))
    for ax, (key, title, log) in zip(axes, panels, strict=True):
        for name in targets:
            points = sorted((r["sessions"], r[key]) for r in rows if r["target"] == name)
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
        ax.set_title(title)
        ax.set_xlabel("concurrent sessions")
        if log:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# ---------------------------------------------------------------------------------------------- main
async def main_async(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once, before any timing
    workdir = Path(tempfile.mkdtemp(prefix="voice-load-"))
    material = utterances()
    noise = to_frames(room_noise(10, seed=11))
    print(f"{len(material)} questions: {', '.join(u.name for u in material)}; work dir {workdir}")
    rows: list[dict[str, Any]] = []
    startups: dict[str, float] = {}
    modes = list(dict.fromkeys(args.turn_detection))
    sim_llm, llm_base = start_sim_llm(workdir)
    try:
        for name in args.targets:
            target = start_target(name, llm_base, workdir, dict(v.split("=", 1) for v in args.serve_env))
            startups[name] = target.startup_s
            try:
                # One unmeasured turn first: every framework's first reply pays one-time costs (the
                # OpenAI client's lazy setup, imports, connection pools) that a serving agent has paid.
                await measure(target, 1, 1, material, noise)
                for mode in modes:
                    detection = (
                        {"type": "semantic_vad", "eagerness": "auto"} if mode == "semantic_vad" else None
                    )
                    for n in args.sessions:
                        profile = Path(args.py_spy) if args.py_spy and n == args.py_spy_sessions else None
                        result = await measure(target, n, args.turns, material, noise, profile, detection)
                        row = summarize(result)
                        if len(modes) > 1:  # the modes side by side: each its own line in the tables
                            row["target"] = f"{name}, {mode}"
                        rows.append(row)
                        print(table([row]).splitlines()[-1], flush=True)
                        if row["errors"]:
                            print(f"  errors: {row['error_kinds']}")
            finally:
                target.stop()
    finally:
        sim_llm.terminate()
        sim_llm.wait()
    report = "\n\n".join(
        [
            table(rows),
            ratios(rows),
            knees(rows),
            "start to ready (s): " + ", ".join(f"{k} {v:.1f}" for k, v in startups.items()),
        ]
    )
    print("\n" + report)
    if args.py_spy:
        summary = summarize_profiles(Path(args.py_spy), PROFILE_S)
        (Path(args.py_spy) / "summary.md").write_text(summary)
        print(summary)
    stem = args.name
    (out / f"{stem}.json").write_text(json.dumps({"rows": rows, "startup_s": startups}, indent=2))
    (out / f"{stem}.md").write_text(report + "\n")
    plot(rows, out / f"{stem}.png")
    print(f"TTFT {TTFT_MS} ms; results in {out}/{stem}.{{md,json,png}}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--targets", nargs="+", default=[*OURS, *PEERS], choices=[*OURS, *PEERS])
    parser.add_argument("--sessions", nargs="+", type=int, default=[1, 10, 25, 50])
    parser.add_argument("--turns", type=int, default=5, help="turns per session")
    parser.add_argument("--py-spy", metavar="DIR", help="record flame graphs of every server process")
    parser.add_argument("--py-spy-sessions", type=int, default=10, help="at this N")
    parser.add_argument(
        "--serve-env", nargs="*", default=[], metavar="KEY=VALUE", help="environment of the Ray cluster"
    )
    parser.add_argument(
        "--turn-detection",
        nargs="+",
        choices=["server_vad", "semantic_vad"],
        default=["server_vad"],
        help="semantic_vad (eagerness auto): each session asks for it with session.update; our targets only;"
        " both: each N measured with each, side by side",
    )
    parser.add_argument("--name", default="load", help="result file stem")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args()
    if set(args.turn_detection) != {"server_vad"} and set(args.targets) - set(OURS):
        parser.error(
            "--turn-detection semantic_vad drives our targets only: pass --targets from " + ", ".join(OURS)
        )
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
