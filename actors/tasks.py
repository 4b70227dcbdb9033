"""Ending asyncio tasks and streams cleanly."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Iterable
from typing import Any


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any]]) -> None:
    """Cancel `tasks` and wait until every one has finished, whatever it raised: nothing it was doing
    (a stage call, a send) outlives the caller's own cleanup."""
    pending = list(tasks)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)


async def close_quietly(stream: AsyncGenerator[Any, None]) -> None:
    """Close a stream the caller stops reading (which cancels the work behind it, a stage's generator
    included); what it raises on the way out no longer matters to anyone."""
    with contextlib.suppress(Exception):
        await stream.aclose()
