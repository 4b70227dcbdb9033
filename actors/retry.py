"""Retrying until it works, for calls that must never be given up on: memory writes to Letta (the
writer), turns handed to the memory actor (the router's sink), and the router's watch on the memory
change log. Jittered exponential backoff, so many callers recovering at once do not retry in step."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_never,
    wait_random_exponential,
)

__all__ = ["OnRetry", "RetryCallState", "retry_forever"]

OnRetry = Callable[[BaseException | None, RetryCallState], Awaitable[None] | None]


def retry_forever(
    *,
    retry_on: type[BaseException] | tuple[type[BaseException], ...],
    min_wait_s: float,
    max_wait_s: float,
    on_retry: OnRetry,
) -> AsyncRetrying:
    """An `AsyncRetrying` that retries `retry_on` errors without end, waiting a random time of up to
    `min_wait_s` × 2^attempt (at most `max_wait_s`); `on_retry(error, state)` runs before each wait
    (`state.attempt_number`, `state.upcoming_sleep`). Use it as `async for attempt in ...` or call it
    with the coroutine function and its arguments."""

    async def before_sleep(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        result = on_retry(error, state)
        if inspect.isawaitable(result):
            await result

    return AsyncRetrying(
        wait=wait_random_exponential(multiplier=min_wait_s, max=max_wait_s),
        stop=stop_never,
        retry=retry_if_exception_type(retry_on),
        before_sleep=before_sleep,
    )
