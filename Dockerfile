# The voice agent's image for KubeRay (k8s/): Python 3.11, the locked dependencies from uv.lock, this
# project, and what KubeRay's pods run besides (bash, wget for its probes, pgrep for k8s-prestop.sh).
#   docker build -t voice-agent:0.1.0 .
#   docker build --build-arg EXTRAS=offline-llm -t voice-agent:dev .   # + llama.cpp and the Gemma model
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG EXTRAS=""
# The uv scripts/setup.sh pins.
ARG UV_VERSION=0.13.8
# llama-cpp-python (offline-llm) builds from source; a native build may use AMX, which some machines
# advertise but fault on, so the CPU features are named.
ENV CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DLLAVA_BUILD=OFF" \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never
RUN if [ -n "$EXTRAS" ]; then \
      apt-get update && apt-get install -y --no-install-recommends build-essential cmake && \
      rm -rf /var/lib/apt/lists/*; \
    fi && pip install --no-cache-dir "uv==${UV_VERSION}"
WORKDIR /app
# Dependencies first (their layer survives code changes), exactly as locked.
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --no-install-project --no-editable \
      $(for extra in $EXTRAS; do printf '%s %s ' --extra "$extra"; done)
COPY actors ./actors
COPY serve_app ./serve_app
RUN uv sync --frozen --no-dev --no-editable \
      $(for extra in $EXTRAS; do printf '%s %s ' --extra "$extra"; done)

FROM ${PYTHON_IMAGE}
RUN apt-get update && apt-get install -y --no-install-recommends wget procps libgomp1 && \
    rm -rf /var/lib/apt/lists/* && \
    useradd --create-home --uid 1000 ray
COPY --from=build /app/.venv /app/.venv
COPY serve_config.yaml /app/
COPY scripts/k8s-prestop.sh /app/scripts/
ENV PATH=/app/.venv/bin:$PATH \
    OMP_WAIT_POLICY=PASSIVE
WORKDIR /app
USER 1000
