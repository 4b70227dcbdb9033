#!/usr/bin/env bash
# Set up and start the voice agent with `serve run serve_config.yaml`.
# No OPENAI_API_KEY: offline engines (pocketsphinx, llama.cpp + Gemma 3 270M, eSpeak NG).
# VOICE_PORT=8100 scripts/run.sh serves on another port than the config's 8000.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
config=serve_config.yaml
if [[ -n "${VOICE_PORT:-}" ]]; then
  config="$(mktemp -d)/serve_config.yaml"
  .venv/bin/python - "$config" <<'PY'
import sys, os, yaml
cfg = yaml.safe_load(open("serve_config.yaml"))
cfg["http_options"]["port"] = int(os.environ["VOICE_PORT"])
yaml.safe_dump(cfg, open(sys.argv[1], "w"), sort_keys=False)
PY
fi
export RAY_USAGE_STATS_ENABLED=0
# HAProxy in front of the router replicas, gRPC between deployments (serve_app/serve_env.py says why).
eval "$(.venv/bin/python -m serve_app.serve_env)"
# HAProxy's files in a directory of this run's own: HAProxy is started by a Ray actor and outlives a
# Ctrl-C of `serve run` (holding its ports for the next run), so the exit trap stops the one whose
# command line names this directory, and nothing else.
haproxy_dir="$(mktemp -d)/haproxy"
mkdir -p "$haproxy_dir"
export RAY_SERVE_HAPROXY_CONFIG_FILE_LOC="$haproxy_dir/haproxy.cfg"
export RAY_SERVE_HAPROXY_SOCKET_PATH="$haproxy_dir/admin.sock"
export RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH="$haproxy_dir/metrics.sock"
export RAY_SERVE_HAPROXY_SERVER_STATE_BASE="$haproxy_dir"
export RAY_SERVE_HAPROXY_SERVER_STATE_FILE="$haproxy_dir/server-state"
trap 'pkill -f -- "$haproxy_dir" || true' EXIT
echo "voice agent: ws://127.0.0.1:${VOICE_PORT:-8000}/v1/realtime  (Ctrl-C to stop)"
.venv/bin/serve run "$config"
