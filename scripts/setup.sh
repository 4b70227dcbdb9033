#!/usr/bin/env bash
# Create .venv with every locked dependency (idempotent; fast when nothing changed).
#   scripts/setup.sh          runtime + offline LLM
#   scripts/setup.sh --dev    + test, lint and benchmark tools, the LiveKit worker, and Debian's test recordings
set -euo pipefail
cd "$(dirname "$0")/.."

UV_VERSION=0.13.8
if ! command -v uv >/dev/null 2>&1 || [[ "$(uv --version | cut -d' ' -f2)" != "$UV_VERSION" ]]; then
  python3 -m pip install --quiet "uv==$UV_VERSION"
fi

# llama-cpp-python has no Linux wheel: it is built from source (~5 min once, then cached by uv).
# GGML_NATIVE=OFF with explicit AVX2 flags: a native build may use AMX, which some VMs advertise but
# fault on at the first decode.
export CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DLLAVA_BUILD=OFF"

extras=(--extra offline-llm)
if [[ "${1:-}" == "--dev" ]]; then
  extras+=(--extra dev --extra bench --extra livekit)
fi
uv sync --frozen --python 3.11 "${extras[@]}"

if [[ "${1:-}" == "--dev" ]] && ! command -v kustomize >/dev/null && ! command -v kubectl >/dev/null; then
  # The k8s/ tests render every overlay with the real kustomize (v5; kubectl has it built in). Neither
  # Debian nor PyPI ships a current one, so it is not installed here.
  echo "setup: no kustomize or kubectl on PATH: tests/test_k8s_manifest.py will fail" >&2
fi

if [[ "${1:-}" == "--dev" ]]; then
  # Debian packages the tests use: real human recordings with transcripts (LibriVox) for the speech
  # tests, and Chromium for the browser-page tests (Playwright drives it; it downloads no browser).
  missing=()
  [[ -d /usr/share/pocketsphinx/test/data/librivox ]] || missing+=(pocketsphinx-testdata)
  command -v chromium >/dev/null 2>&1 || missing+=(chromium)
  if (( ${#missing[@]} )); then
    sudo=(); [[ $(id -u) -eq 0 ]] || sudo=(sudo)
    "${sudo[@]}" apt-get update -qq && "${sudo[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
fi
