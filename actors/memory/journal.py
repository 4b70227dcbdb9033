"""The memory journal: every finished turn (and every fact the `remember` tool is given) is on disk
before the call that hands it over returns, until Letta confirms it.

SQLite in WAL mode with `synchronous=FULL`: an append survives a process crash or power loss once
`append` returns, readers never block the writer, and the file lives wherever `path` points (a PVC on
Kubernetes). Turns are keyed by their stable turn id, so a replay after a crash can never enqueue a
turn twice, and they leave the journal only through `confirm`. Facts (text for the user's archival
memory) live in a table of their own beside the turns, keyed by a fact id, with the same life:
`append_fact`, `pending_facts`, `confirm_facts`. A journal from before facts existed gains the table
when opened.

A journal file that is not a database (corrupt, truncated, or something else) is moved aside to
`<path>.corrupt-<time>` with an error in the log, and a fresh journal starts: the bad file is kept for
inspection, never overwritten. A path that cannot be written raises `JournalError` at once.
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from actors.conversation.events import FinishedTurn

log = logging.getLogger(__name__)

USER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@:-]{0,127}$")
MAX_TURN_CHARS = 32_000  # user + assistant text of one turn
MAX_FACT_CHARS = 2_000  # one remembered fact: a sentence or a few, not a document

_SCHEMA = """
CREATE TABLE IF NOT EXISTS turns (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    turn_id TEXT NOT NULL UNIQUE,
    user_id TEXT NOT NULL,
    body TEXT NOT NULL,
    ended_at REAL NOT NULL,
    journaled_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS turns_by_user ON turns (user_id, seq);
CREATE TABLE IF NOT EXISTS facts (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    fact_id TEXT NOT NULL UNIQUE,
    user_id TEXT NOT NULL,
    text TEXT NOT NULL,
    journaled_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS facts_by_user ON facts (user_id, seq);
"""


class JournalError(Exception):
    """The journal cannot take or keep turns (unwritable path, invalid turn)."""


@dataclass(frozen=True)
class JournalEntry:
    seq: int
    turn: FinishedTurn
    journaled_at: float
    attempts: int  # times sent to the backend so far (a crash may have cut a send off)
    last_error: str | None


@dataclass(frozen=True)
class Fact:
    """Text the user asked to be remembered, for their archival memory."""

    fact_id: str
    user_id: str
    text: str


@dataclass(frozen=True)
class FactEntry:
    seq: int
    fact: Fact
    journaled_at: float
    attempts: int  # times sent to the backend so far
    last_error: str | None


def user_id_problem(user_id: str) -> str | None:
    """Why `user_id` cannot name a user's memory, or None when it can."""
    if USER_ID.match(user_id):
        return None
    return (
        f"user id {user_id[:40]!r} is not valid: use 1-128 letters, digits and _ . @ : -, "
        "starting with a letter or digit"
    )


def validate_turn(turn: FinishedTurn) -> None:
    """Reject what Letta could never take, with a message that says why."""
    if (problem := user_id_problem(turn.user_id)) is not None:
        raise JournalError(problem)
    if not turn.turn_id:
        raise JournalError("turn has no turn id")
    size = len(turn.user_text) + len(turn.assistant_text)
    if size > MAX_TURN_CHARS:
        raise JournalError(
            f"turn {turn.turn_id} has {size} characters of text; the limit is {MAX_TURN_CHARS}"
        )


def validate_fact(fact: Fact) -> None:
    if (problem := user_id_problem(fact.user_id)) is not None:
        raise JournalError(problem)
    if not fact.fact_id:
        raise JournalError("fact has no fact id")
    if not fact.text.strip():
        raise JournalError("the fact is empty")
    if len(fact.text) > MAX_FACT_CHARS:
        raise JournalError(f"the fact has {len(fact.text)} characters; the limit is {MAX_FACT_CHARS}")


class TurnJournal:
    """Thread-safe; one writer connection per process."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise JournalError(f"journal directory {self.path.parent} cannot be created: {exc}") from exc
        self._lock = threading.Lock()
        self._db = self._open()

    def _open(self) -> sqlite3.Connection:
        try:
            return self._connect()
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError) and "unable to open" in str(exc):
                raise JournalError(f"journal {self.path} cannot be opened for writing: {exc}") from exc
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            log.error(
                "memory journal %s is not a usable database (%s): moved to %s, starting a new one",
                self.path,
                exc,
                aside,
            )
            self.path.rename(aside)
            for suffix in ("-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
            return self._connect()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(_SCHEMA)
            if db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                raise sqlite3.DatabaseError("integrity check failed")
        except sqlite3.OperationalError as exc:
            db.close()
            if "readonly" in str(exc) or "unable to open" in str(exc) or "disk I/O" in str(exc):
                raise JournalError(f"journal {self.path} is not writable: {exc}") from exc
            raise
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    def append(self, turn: FinishedTurn) -> bool:
        """Store `turn` durably; False when a turn with its id is already journaled."""
        validate_turn(turn)
        body = json.dumps(asdict(turn))
        with self._lock:
            try:
                cursor = self._db.execute(
                    "INSERT OR IGNORE INTO turns (turn_id, user_id, body, ended_at, journaled_at) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (turn.turn_id, turn.user_id, body, turn.ended_at, time.time()),
                )
            except sqlite3.OperationalError as exc:
                raise JournalError(f"journal {self.path} rejected turn {turn.turn_id}: {exc}") from exc
        return cursor.rowcount == 1

    def pending(self, user_id: str | None = None, limit: int = 1000) -> list[JournalEntry]:
        """Unconfirmed turns in the order they were journaled (per user when `user_id` is given)."""
        rows = self._oldest("seq, body, journaled_at, attempts, last_error FROM turns", user_id, limit)
        return [
            JournalEntry(seq, FinishedTurn(**json.loads(body)), at, attempts, error)
            for seq, body, at, attempts, error in rows
        ]

    def users_with_pending(self) -> list[str]:
        """Users with turns or facts waiting (users with turns first, in journal order)."""
        with self._lock:
            rows = self._db.execute("SELECT user_id FROM turns GROUP BY user_id ORDER BY MIN(seq)").fetchall()
            fact_rows = self._db.execute(
                "SELECT user_id FROM facts GROUP BY user_id ORDER BY MIN(seq)"
            ).fetchall()
        return list(dict.fromkeys(user for (user,) in [*rows, *fact_rows]))

    def append_fact(self, fact: Fact) -> bool:
        """Store `fact` durably; False when a fact with its id is already journaled."""
        validate_fact(fact)
        with self._lock:
            try:
                cursor = self._db.execute(
                    "INSERT OR IGNORE INTO facts (fact_id, user_id, text, journaled_at) VALUES (?, ?, ?, ?)",
                    (fact.fact_id, fact.user_id, fact.text, time.time()),
                )
            except sqlite3.OperationalError as exc:
                raise JournalError(f"journal {self.path} rejected fact {fact.fact_id}: {exc}") from exc
        return cursor.rowcount == 1

    def pending_facts(self, user_id: str | None = None, limit: int = 1000) -> list[FactEntry]:
        """Unconfirmed facts in the order they were journaled (per user when `user_id` is given)."""
        columns = "seq, fact_id, user_id, text, journaled_at, attempts, last_error FROM facts"
        rows = self._oldest(columns, user_id, limit)
        return [
            FactEntry(seq, Fact(fact_id, user, text), at, attempts, error)
            for seq, fact_id, user, text, at, attempts, error in rows
        ]

    def confirm_facts(self, fact_ids: list[str]) -> None:
        """Letta has these facts: drop them from the journal."""
        self._delete("facts", "fact_id", fact_ids)

    def record_fact_send(self, fact_ids: list[str]) -> None:
        self._count_attempt("facts", "fact_id", fact_ids)

    def record_fact_failure(self, fact_ids: list[str], error: str) -> None:
        self._note_error("facts", "fact_id", fact_ids, error)

    def fact_count(self) -> int:
        """Facts waiting for Letta (`len` counts turns)."""
        return self._count("facts")

    def confirm(self, turn_ids: list[str]) -> None:
        """Letta has these turns: drop them from the journal."""
        self._delete("turns", "turn_id", turn_ids)

    def record_send(self, turn_ids: list[str]) -> None:
        """These turns are about to be sent: from now on a replay must check before resending them."""
        self._count_attempt("turns", "turn_id", turn_ids)

    def record_failure(self, turn_ids: list[str], error: str) -> None:
        self._note_error("turns", "turn_id", turn_ids, error)

    def __len__(self) -> int:
        return self._count("turns")

    # Turns and facts are kept alike; `table`, `key` and `columns` are this module's own names, never input.
    def _oldest(self, columns: str, user_id: str | None, limit: int) -> list[Any]:
        """`SELECT columns` in journal order, of one user's rows when `user_id` is given."""
        where, args = (" WHERE user_id = ?", (user_id,)) if user_id is not None else ("", ())
        with self._lock:
            return self._db.execute(
                f"SELECT {columns}{where} ORDER BY seq LIMIT ?", (*args, limit)
            ).fetchall()

    def _delete(self, table: str, key: str, ids: list[str]) -> None:
        with self._lock:
            self._db.executemany(f"DELETE FROM {table} WHERE {key} = ?", [(i,) for i in ids])

    def _count_attempt(self, table: str, key: str, ids: list[str]) -> None:
        with self._lock:
            self._db.executemany(
                f"UPDATE {table} SET attempts = attempts + 1 WHERE {key} = ?", [(i,) for i in ids]
            )

    def _note_error(self, table: str, key: str, ids: list[str], error: str) -> None:
        with self._lock:
            self._db.executemany(
                f"UPDATE {table} SET last_error = ? WHERE {key} = ?", [(error[:500], i) for i in ids]
            )

    def _count(self, table: str) -> int:
        with self._lock:
            return int(self._db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in (self.path, Path(f"{self.path}-wal")) if p.exists())

    def close(self) -> None:
        with self._lock:
            self._db.close()
