"""Start the agent as a user would (`serve run serve_config.yaml`) on a private Ray cluster.

Used by the test suite and the benchmarks: free ports, a private temp dir, no dashboard, and only our own
processes stopped (never `ray stop`).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
        ray_tmp = workdir / "ray"
        ray_tmp.mkdir()
        run_env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}
        run_env.update(
            {
                "RAY_TMPDIR": str(ray_tmp),  # private temp dir: never another cluster's sockets
                "RAY_AUTH_MODE": "disabled",
                "RAY_USAGE_STATS_ENABLED": "0",
                "PYTHONPATH": str(ROOT),
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

    def wait_ready(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"serve run exited:\n{self.log_path.read_text()[-4000:]}")
            try:
                if (
                    httpx.get(f"{self.base_url}/healthz", timeout=2).status_code == 200
                    and self.stages_ready()
                ):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise TimeoutError(f"agent not ready in {timeout}s:\n{self.log_path.read_text()[-4000:]}")

    def stages_ready(self) -> bool:
        log = self.log_path.read_text(errors="replace")
        return all(f"{stage} engine:" in log for stage in ("STT", "LLM", "TTS"))

    def stop(self) -> None:
        # SIGTERM ends `serve run` (SIGINT is ignored in the background), then the head node, which
        # stops every Ray process it started; only our own process groups are touched.
        for process, grace in ((self.process, 5), (self.head, 30)):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
        self._log.close()
