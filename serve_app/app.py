"""The application builder named by `import_path` in serve_config.yaml.

`args` in serve_config.yaml are Settings overrides (see README); engines resolve here once, so every
replica of every stage agrees on them. Secrets never travel in the bound arguments.
"""

from __future__ import annotations

import logging
from typing import Any

from ray.serve import Application

from actors.config import load_settings
from serve_app.deployments import LLMDeployment, Router, STTDeployment, TTSDeployment

log = logging.getLogger("ray.serve")


def build_app(args: dict[str, Any] | None = None) -> Application:
    """The Serve application `import_path` names: the Router deployment composed with the STT, LLM and
    TTS deployments; `args` are Settings overrides from serve_config.yaml."""
    settings = load_settings(args)
    log.info("building voice agent: %s", settings.describe_engines())
    config = settings.shareable()
    # `@serve.deployment` turns the classes into Deployments; mypy sees the undecorated classes.
    return Router.bind(  # type: ignore[attr-defined]
        STTDeployment.bind(config),  # type: ignore[attr-defined]
        LLMDeployment.bind(config),  # type: ignore[attr-defined]
        TTSDeployment.bind(config),  # type: ignore[attr-defined]
        config,
    )
