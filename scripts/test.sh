#!/usr/bin/env bash
# Set up everything and run the checks: ruff, mypy, then the whole pytest suite (real Ray cluster,
# offline engines, real recordings). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --dev
.venv/bin/ruff check .
.venv/bin/mypy
env -u OPENAI_API_KEY -u OPENAI_BASE_URL RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0 \
  .venv/bin/pytest "$@"
