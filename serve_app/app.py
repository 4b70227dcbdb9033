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
    settings = load_settings(args)
    log.info("building voice agent: %s", settings.describe_engines())
    config = settings.shareable()
    return Router.bind(
        STTDeployment.bind(config),
        LLMDeployment.bind(config),
        TTSDeployment.bind(config),
        config,
    )
