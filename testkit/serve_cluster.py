"""Start the agent as a user would (`serve run serve_config.yaml`) on a private Ray cluster.

Used by the test suite and the benchmarks: free ports, a private temp dir, no dashboard, and only our own
processes stopped (never `ray stop`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
import yaml

from serve_app.serve_env import SERVE_ENV

ROOT = Path(__file__).resolve().parent.parent


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port nothing listens on, never the same one twice in this process: the OS may offer a port it
    just gave out again before anything binds it, and Ray refuses to start with two components on one
    port (seen: the GCS and the client server both given the same port)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def serve_env(private_dir: Path) -> dict[str, str]:
    """The Serve environment `scripts/run.sh` exports, with HAProxy's admin socket, config and state
    files, its stats and metrics ports and the fallback proxy's ports private to this cluster."""
    files = private_dir / "haproxy"
    files.mkdir(exist_ok=True)
    return {
        **SERVE_ENV,
        "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": str(files / "admin.sock"),
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": str(files / "metrics.sock"),
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(files / "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(files),
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(files / "server-state"),
        "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(free_port()),
        "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": str(free_port()),
    }


class ServeRun:
    """`serve run serve_config.yaml` in a subprocess, on a free port and a private Ray temp dir."""

    def __init__(self, workdir: Path, args: dict | None = None, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
        config["http_options"] = {"host": "127.0.0.1", "port": self.port}
        if args:
            config["applications"][0]["args"] = {**config["applications"][0]["args"], **args}
        self.config_path = workdir / "serve_config.yaml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.log_path = workdir / "serve.log"
        # Short and private: Ray's Unix socket paths must stay under 108 bytes.
        ray_tmp = Path(tempfile.mkdtemp(prefix="vr-", dir="/tmp"))
        self._ray_tmp = ray_tmp
        run_env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}
        run_env.update(
            {
                "RAY_TMPDIR": str(ray_tmp),  # private temp dir: never another cluster's sockets
                "RAY_AUTH_MODE": "disabled",
                "RAY_USAGE_STATS_ENABLED": "0",
                "PYTHONPATH": str(ROOT),
                **serve_env(ray_tmp),
                **(env or {}),
            }
        )
        bin_dir = Path(sys.executable).parent
        self._log = self.log_path.open("wb")
        # Our own head node (no dashboard, every port free-picked) that dies with this process; then
        # the user's command, `serve run serve_config.yaml`, against it.
        gcs_port = free_port()
        self.head = subprocess.Popen(
            [
                str(bin_dir / "ray"),
                "start",
                "--head",
                "--block",
                f"--port={gcs_port}",
                "--node-ip-address=127.0.0.1",
                f"--temp-dir={ray_tmp}",
                "--include-dashboard=false",
                "--num-cpus=2",
                "--disable-usage-stats",
                f"--ray-client-server-port={free_port()}",
                f"--dashboard-agent-listen-port={free_port()}",
                f"--metrics-export-port={free_port()}",
            ],
            cwd=ROOT,
            env=run_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.process = subprocess.Popen(
            [str(bin_dir / "serve"), "run", "--address", f"127.0.0.1:{gcs_port}", str(self.config_path)],
            cwd=ROOT,
            env=run_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}/v1"
        self.address = f"127.0.0.1:{gcs_port}"
        # Where Serve writes its HAProxy ingress's files, one folder per node (`<node id>/haproxy.cfg`).
        self.haproxy_dir = Path(run_env["RAY_SERVE_HAPROXY_CONFIG_FILE_LOC"]).parent
        self.env = run_env  # the environment of the Ray processes (and so of HAProxy)

    def run_driver(self, code: str, timeout: float = 120.0) -> str:
        """Run Python `code` as a Ray driver on this cluster (`ray` imported and connected); returns
        what it printed. For operations a user runs with Ray's own tools."""
        prologue = f"import ray\nray.init(address={self.address!r})\n"
        result = subprocess.run(
            [sys.executable, "-c", prologue + code],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if result.returncode != 0:
            raise RuntimeError(f"Ray driver failed:\n{result.stderr[-4000:]}")
        return result.stdout

    def wait_ready(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None or self.head.poll() is not None:
                raise RuntimeError(f"the Ray head or serve run exited:\n{self.log_path.read_text()[-4000:]}")
            try:
                # /readyz answers 200 once every stage deployment has loaded its engine.
                if httpx.get(f"{self.base_url}/readyz", timeout=10).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise TimeoutError(f"agent not ready in {timeout}s:\n{self.log_path.read_text()[-4000:]}")

    def stop(self) -> None:
        # `serve run` first (SIGTERM; it ignores SIGINT in the background), then the Ray processes.
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        stop_ray_sessions([self.head], others=[self.process.pid])
        self._log.close()
        shutil.rmtree(self._ray_tmp, ignore_errors=True)


def stop_ray_sessions(nodes: Sequence[subprocess.Popen], others: Sequence[int] = ()) -> None:
    """Stop `ray start --block` processes started with `start_new_session=True` and everything in their
    sessions (and in the sessions led by the PIDs in `others`). `ray start --block` ignores SIGTERM,
    but every Ray process it started shares its session: SIGTERM them all (the raylet and GCS shut
    down cleanly), then SIGKILL what is left. Nothing outside these sessions is touched."""
    leaders = {node.pid for node in nodes}
    sessions = leaders | set(others)

    def members() -> set[int]:
        return set().union(*(session_members(sid) for sid in sessions))

    stopping = members() - leaders
    for pid in stopping:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 3  # the raylet and GCS exit within ~1 s; some helpers never do
    while time.monotonic() < deadline and stopping & members():
        time.sleep(0.2)
    for pid in members() | leaders:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for node in nodes:
        node.wait(timeout=5)


def session_members(sid: int) -> set[int]:
    """PIDs of the live processes in session `sid` (Linux /proc)."""
    members = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the parenthesised command: state ppid pgrp session ...
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[3]) == sid and fields[0] != "Z":
            members.add(int(entry.name))
    return members
