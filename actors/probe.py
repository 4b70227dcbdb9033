"""A cached, single-flight health check of an upstream service, cheap enough for every `/readyz`."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable


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
