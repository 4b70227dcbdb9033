"""How busy a stage is: the mean number of work items in progress (utterances being transcribed,
replies being generated, phrases being synthesised) over a stretch of time.

Each Serve stage replica reports this to the autoscaler (`record_autoscaling_stats`, see
`serve_app/autoscaling.py`). The level is integrated over time whenever it changes, so a short burst
counts for exactly as long as it lasted: a point sample every few seconds (how Serve samples ongoing
requests) mostly misses work items that last ~100 ms, and reads several at once when it hits one.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class LoadMeter:
    """Work items in progress, integrated over time."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._level = 0
        self._item_seconds = 0.0  # ∫ level dt since the window started
        self._changed_at = self._window_start = clock()

    @property
    def level(self) -> int:
        """Work items in progress now."""
        return self._level

    def set(self, level: int) -> None:
        """The number of items in progress is now `level`."""
        now = self._clock()
        self._item_seconds += self._level * (now - self._changed_at)
        self._changed_at = now
        self._level = level

    def begin(self) -> None:
        """One more item in progress (pair with `end` in a `finally`)."""
        self.set(self._level + 1)

    def end(self, last_active: float | None = None) -> None:
        """One item fewer in progress; with `last_active` (a time on this meter's clock), it stopped
        counting then rather than now (what this window has not reported yet is taken back)."""
        self.set(self._level - 1)
        if last_active is not None:
            self._item_seconds -= max(0.0, self._changed_at - max(last_active, self._window_start))

    def take_mean(self) -> float:
        """The mean level since the previous call (or since creation), and a new window from now."""
        self.set(self._level)
        span = self._changed_at - self._window_start
        mean = self._item_seconds / span if span > 0 else float(self._level)
        self._item_seconds = 0.0
        self._window_start = self._changed_at
        return mean
