"""Peer voice agents for the benchmarks: Pipecat and LiveKit Agents behind the same minimal
OpenAI-Realtime WebSocket (`WS /v1/realtime`) as our agent, with the same simulated providers.

Each peer runs as its own server program (`pipecat_server.py`, `livekit_server.py`) in its own virtual
environment with pinned versions (`requirements-<peer>.txt`), created once with uv and cached under
`~/.cache/voice-agent-bench/peers/`. The programs import nothing from this project.

    from bench.peers import start_peer
    process, ws_url = start_peer("pipecat", "defaults", llm_base_url, workdir)
    # clients connect to f"{ws_url}/realtime"; stop with process.send_signal(SIGTERM)

See bench/peers/README.md for what each profile sets and how the timestamps are taken.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
CACHE = (
    Path(os.environ.get("VOICE_AGENT_BENCH_CACHE", Path.home() / ".cache" / "voice-agent-bench")) / "peers"
)
PYTHON = "3.11"
PROFILES = ("defaults", "low-latency")


@dataclass(frozen=True)
class Peer:
    name: str
    version: str  # of the framework, for the cache folder's name and the reports
    requirements: Path  # fully pinned (uv pip compile), see README.md
    server: Path


PEERS = {
    "pipecat": Peer("pipecat", "1.14.0", HERE / "requirements-pipecat.txt", HERE / "pipecat_server.py"),
    "livekit": Peer("livekit", "1.8.9", HERE / "requirements-livekit.txt", HERE / "livekit_server.py"),
}


def _peer(name: str) -> Peer:
    try:
        return PEERS[name]
    except KeyError:
        raise ValueError(f"unknown peer {name!r}; known: {', '.join(PEERS)}") from None


def peer_python(name: str) -> Path:
    """The Python of the peer's own virtual environment, created on first use (needs `uv` and PyPI).

    The folder's name carries a hash of the pinned requirements, so changing a pin builds a new one. A
    lock file keeps concurrent callers from building the same environment twice.
    """
    peer = _peer(name)
    digest = hashlib.sha256(peer.requirements.read_bytes()).hexdigest()[:10]
    root = CACHE / f"{peer.name}-{peer.version}-{digest}"
    python, installed = root / "bin" / "python", root / ".installed"
    if installed.exists():
        return python
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / f"{root.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if installed.exists():  # built by another process while we waited
            return python
        uv = shutil.which("uv")
        if uv is None:
            raise RuntimeError("`uv` is not on PATH (scripts/setup.sh installs it)")
        shutil.rmtree(root, ignore_errors=True)  # a build that was cut short
        # Built in place (a venv's scripts hold its absolute path); the marker says it is complete.
        subprocess.run([uv, "venv", "--quiet", "--python", PYTHON, str(root)], check=True)
        subprocess.run(
            [uv, "pip", "install", "--quiet", "--python", str(python), "-r", str(peer.requirements)],
            check=True,
        )
        installed.touch()
    return python


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(url: str, process: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            raise RuntimeError(f"{url}: the peer server exited with {process.returncode}\n{tail}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as response:
            if response.status == 200:
                return
        time.sleep(0.2)
    process.kill()
    process.wait()
    raise TimeoutError(f"{url}: the peer server was not ready within {timeout:.0f} s (log: {log})")


def start_peer(
    name: str,
    profile: str,
    llm_base_url: str,
    workdir: Path,
    *,
    turn_model: bool = False,
    timeout: float = 120.0,
) -> tuple[subprocess.Popen, str]:
    """Start peer `name` ("pipecat" or "livekit") with `profile` ("defaults" or "low-latency") against the
    OpenAI-compatible LLM at `llm_base_url`, on a free port; return once it accepts connections.

    Returns the process (its own session: its pid is the session id of everything it starts; it exits on
    SIGTERM, and by itself when this process dies) and the WebSocket base URL, `ws://127.0.0.1:PORT/v1`
    (clients connect to `{url}/realtime`). Its output goes to `workdir/<name>-<profile>.log`.
    `turn_model`: end turns by the framework's default end-of-turn model instead of the VAD window.
    """
    peer = _peer(name)
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; known: {', '.join(PROFILES)}")
    python = peer_python(name)
    port = _free_port()
    log = Path(workdir) / f"{name}-{profile}{'-turn-model' if turn_model else ''}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "LIVEKIT_", "PIPECAT_"))}
    env.update({"PYTHONUNBUFFERED": "1", "OPENAI_API_KEY": "sim"})
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(python), str(peer.server), "--port", str(port), "--profile", profile,
             "--llm-base-url", llm_base_url, "--parent-pid", str(os.getpid()),
             *(["--turn-model"] if turn_model else [])],
            cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
    _wait_ready(f"http://127.0.0.1:{port}/healthz", process, log, timeout)
    return process, f"ws://127.0.0.1:{port}/v1"
