"""Admission control on one router replica: how many sessions and requests it takes, per credential and in
all, and how fast a session's audio may arrive.

A full router refuses new work at once with a clear "busy" answer (WebSocket close 1013, HTTP 503 with
`Retry-After`) instead of making every open session slower; the capacity comes from the load benchmark
(README "Performance"). Limits per credential apply to the bound ones (user keys and client secrets): a
server key is a trusted backend that limits its own users, and open mode has no credentials to count.
All counts are per router replica.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from actors.config import Settings
from serve_app.api.credentials import Principal

BUSY_RETRY_AFTER_S = 5


class Refused(Exception):
    """New work this replica will not take now: 503 (full) or 429 (a credential's limit)."""

    def __init__(self, status: int, code: str, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after_s = retry_after_s


class TokenBucket:
    """`rate` tokens a second, at most `burst` saved up."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = burst
        self._at = clock()

    def take(self, amount: float) -> bool:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if amount > self._tokens:
            return False
        self._tokens -= amount
        return True

    def seconds_until(self, amount: float) -> float:
        return max(amount - self._tokens, 0.0) / self.rate

    @property
    def full(self) -> bool:
        return self._tokens + (self._clock() - self._at) * self.rate >= self.burst


@dataclass(frozen=True)
class AdmissionLimits:
    max_sessions: int
    max_requests: int
    credential_max_sessions: int
    credential_requests_per_minute: int

    @classmethod
    def from_settings(cls, settings: Settings) -> AdmissionLimits:
        return cls(
            max_sessions=settings.max_sessions_per_router,
            max_requests=settings.max_requests_per_router,
            credential_max_sessions=settings.credential_max_sessions,
            credential_requests_per_minute=settings.credential_requests_per_minute,
        )


class Admission:
    """One router replica's counts: open sessions and REST requests in all and per bound credential,
    and each bound credential's request rate."""

    def __init__(self, limits: AdmissionLimits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self.sessions = 0
        self.requests = 0
        self._sessions_of: dict[str, int] = {}
        self._rates: dict[str, TokenBucket] = {}
        self._clock = clock

    @contextmanager
    def session(self, principal: Principal) -> Iterator[None]:
        """Hold one Realtime session's place for as long as it is open."""
        if self.sessions >= self.limits.max_sessions:
            raise _busy("sessions")
        label = principal.label if principal.bound_user is not None else None
        if label is not None:
            held = self._sessions_of.get(label, 0)
            if held >= self.limits.credential_max_sessions:
                raise Refused(
                    429,
                    "too_many_sessions",
                    f"this credential already has {held} open sessions, the most it may have",
                    BUSY_RETRY_AFTER_S,
                )
            self.charge(principal)
            self._sessions_of[label] = held + 1
        self.sessions += 1
        try:
            yield
        finally:
            self.sessions -= 1
            if label is not None:
                self._sessions_of[label] -= 1
                if not self._sessions_of[label]:
                    del self._sessions_of[label]

    @contextmanager
    def request_slot(self) -> Iterator[None]:
        """Hold one REST request's place until its response has been sent."""
        if self.requests >= self.limits.max_requests:
            raise _busy("requests")
        self.requests += 1
        try:
            yield
        finally:
            self.requests -= 1

    def charge(self, principal: Principal) -> None:
        """Count one request or session against a bound credential's rate."""
        if principal.bound_user is not None:
            self._take_rate(principal.label)

    def _take_rate(self, label: str) -> None:
        per_minute = self.limits.credential_requests_per_minute
        bucket = self._rates.get(label)
        if bucket is None:
            if len(self._rates) > 10_000:  # forget credentials that have been quiet long enough to be full
                self._rates = {k: b for k, b in self._rates.items() if not b.full}
            bucket = self._rates[label] = TokenBucket(per_minute / 60, per_minute, self._clock)
        if not bucket.take(1):
            raise Refused(
                429,
                "rate_limited",
                f"this credential is limited to {per_minute} requests and sessions a minute",
                math.ceil(bucket.seconds_until(1)),
            )


def _busy(what: str) -> Refused:
    message = f"this server is at its limit of open {what}: try again shortly"
    return Refused(503, "server_busy", message, BUSY_RETRY_AFTER_S)
