"""Health checks of upstream services, cheap enough for every `/readyz`: a cached, single-flight probe,
the check of an OpenAI-compatible server the OpenAI engines share, and several checks run at once."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import openai

log = logging.getLogger(__name__)


class CachedProbe:
    """Runs `check` (None when healthy, else a short description of the problem) at most once per
    `ttl_s`; concurrent callers share the one check in flight, so a probe storm costs one request."""

    def __init__(self, check: Callable[[], Awaitable[str | None]], ttl_s: float = 5.0) -> None:
        self._check = check
        self.ttl_s = ttl_s
        self._result: str | None = None
        self._checked_at: float | None = None
        self._inflight: asyncio.Future[str | None] | None = None

    async def check(self) -> str | None:
        loop = asyncio.get_running_loop()
        if self._checked_at is not None and loop.time() - self._checked_at < self.ttl_s:
            return self._result
        if self._inflight is None or self._inflight.get_loop() is not loop:
            self._inflight = asyncio.ensure_future(self._run())
        return await asyncio.shield(self._inflight)

    async def _run(self) -> str | None:
        try:
            self._result = await self._check()
        except Exception as exc:  # a probe that cannot run says the upstream is not usable
            self._result = f"health check failed ({type(exc).__name__})"
        self._checked_at = asyncio.get_running_loop().time()
        self._inflight = None
        return self._result


async def openai_server_problem(client: openai.AsyncOpenAI, what: str, timeout_s: float) -> str | None:
    """None when the OpenAI-compatible server behind `client` answers, else what is wrong with the
    `what` server. Any HTTP answer but a 5xx means the server is there (some compatible servers have no
    `/models`, and a refused key is no outage); a refused or silent connection, or a 5xx, means it is
    not. One attempt, whatever the client's own retries: a probe must answer within `timeout_s`."""
    import openai  # only the OpenAI engines call this; importing the SDK costs a replica ~0.6 s at start

    try:
        async with asyncio.timeout(timeout_s):
            await client.with_options(max_retries=0).models.list()
    except openai.APIStatusError as exc:
        if exc.status_code >= 500:
            return f"the {what} server answers HTTP {exc.status_code}"
    except (openai.APIConnectionError, TimeoutError) as exc:
        log.warning("%s server %s unreachable: %r", what, client.base_url, exc)
        return f"the {what} server is unreachable"
    return None


async def problems(checks: Mapping[str, Callable[[], Awaitable[str | None]]]) -> dict[str, str]:
    """Run the named checks at once; the name and problem of each that reports one. A check that
    raises (say, a stage replica that did not answer) is a problem too; its details go to the log."""

    async def run(name: str, check: Callable[[], Awaitable[str | None]]) -> str | None:
        try:
            return await check()
        except Exception as exc:
            log.warning("%s upstream check failed: %r", name, exc)
            return f"the {name} stage did not answer its upstream check"

    found = await asyncio.gather(*(run(name, check) for name, check in checks.items()))
    return {name: problem for name, problem in zip(checks, found, strict=True) if problem}
