"""Where finished turns go. The session calls `submit` and never waits on it."""

from __future__ import annotations

import logging
from collections import deque
from typing import Protocol

from actors.conversation.events import FinishedTurn

log = logging.getLogger(__name__)


class MemorySink(Protocol):
    def submit(self, turn: FinishedTurn) -> None:
        """Accept a finished turn without blocking; delivery happens elsewhere."""
        ...

    def session_ended(self, user_id: str) -> None:
        """The user's conversation is over: deliver their waiting turns now, not at the window's end."""
        ...


class RecentTurnsSink:
    """Keeps the latest turns in process and logs them; the default until a memory actor is configured."""

    def __init__(self, capacity: int = 1000) -> None:
        self.turns: deque[FinishedTurn] = deque(maxlen=capacity)

    def session_ended(self, user_id: str) -> None:
        pass  # nothing is waiting: turns are kept as they come

    def submit(self, turn: FinishedTurn) -> None:
        self.turns.append(turn)
        log.info(
            "turn %s user=%s interrupted=%s user_text=%r assistant_text=%r",
            turn.turn_id,
            turn.user_id,
            turn.interrupted,
            turn.user_text[:80],
            turn.assistant_text[:80],
        )
