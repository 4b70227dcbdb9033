"""Shared fixtures: the one real Ray cluster serving serve_config.yaml, and a real Letta server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from testkit.serve_cluster import ServeRun
from tests.letta_fixtures import letta_env  # noqa: F401  (a real Letta server, session-scoped)


@pytest.fixture(scope="session")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeRun]:
    """The voice agent on the offline engines, served by a real Ray cluster from serve_config.yaml.

    Its request header timeout is 3 s instead of 10: the test of it waits that long, and every other
    served test shows that normal requests, WebSockets and browsers never come near it."""
    run = ServeRun(tmp_path_factory.mktemp("agent"), env={"VOICE_HEADER_TIMEOUT_S": "3"})
    try:
        run.wait_ready()
        yield run
    finally:
        run.stop()
