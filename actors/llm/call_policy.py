"""Timeouts and retries for a streamed call to an LLM provider.

Three timeouts bound every call: connecting, the first token, and the gap between chunks. Retrying is
safe only before the first token: nothing has been said yet, so a second attempt is invisible to the
user. After that a failure ends the reply (the session apologises). Retries are bounded by a count and
by a time budget, and wait with jitter so many sessions hitting a failed provider do not retry in step.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_before_delay,
    wait_random_exponential,
)

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class LLMCallPolicy:
    connect_timeout_s: float = 3.0
    first_token_timeout_s: float = 5.0
    chunk_timeout_s: float = 5.0
    max_retries: int = 2  # extra attempts before the first token
    retry_budget_s: float = 8.0  # request → giving up, all attempts and waits included


async def first_with_retries(
    attempt: Callable[[], Awaitable[T]],
    policy: LLMCallPolicy,
    *,
    retryable: Callable[[BaseException], bool],
    retry_after: Callable[[BaseException], float | None],
) -> T:
    """Run `attempt` (which returns once the first token is in) under the first-token timeout, and
    again on a retryable failure while the count and the budget allow. Raises the last failure;
    a timeout as `TimeoutError`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + policy.retry_budget_s
    backoff = wait_random_exponential(multiplier=0.2, max=2.0)

    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        hinted = retry_after(exc) if exc is not None else None
        # A provider's Retry-After is honoured (with a little jitter); past the budget we stop instead.
        return hinted + random.uniform(0, 0.1) if hinted is not None else float(backoff(state))

    def log_retry(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.warning(
            "LLM attempt %d failed before the first token (%r); retrying in %.2f s",
            state.attempt_number,
            exc,
            state.upcoming_sleep,
        )

    async def timed() -> T:
        remaining = deadline - loop.time()
        async with asyncio.timeout(max(min(policy.first_token_timeout_s, remaining), 0.0)):
            return await attempt()

    retrying = AsyncRetrying(
        stop=stop_after_attempt(1 + policy.max_retries) | stop_before_delay(policy.retry_budget_s),
        wait=wait,
        retry=retry_if_exception(lambda exc: isinstance(exc, TimeoutError) or retryable(exc)),
        before_sleep=log_retry,
        reraise=True,
    )
    return await retrying(timed)
