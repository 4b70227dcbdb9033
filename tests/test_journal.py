"""The memory journal: durable before return, exactly-once by turn id, bad files handled loudly."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
from pathlib import Path

import pytest

from actors.conversation.events import FinishedTurn
from actors.memory.journal import MAX_FACT_CHARS, MAX_TURN_CHARS, Fact, JournalError, TurnJournal
from testkit.fakes import finished_turn


def turn(n: int, user: str = "alice", text: str = "hello") -> FinishedTurn:
    return finished_turn(n, user, turn_id=f"resp_{n}", user_text=f"{text} {n}", interrupted=n % 2 == 1)


def test_turns_round_trip_in_order_per_user_and_leave_only_when_confirmed(tmp_path: Path) -> None:
    journal = TurnJournal(tmp_path / "journal.db")
    for n in range(5):
        journal.append(turn(n, user="alice" if n % 2 == 0 else "bob"))
    assert journal.users_with_pending() == ["alice", "bob"]
    alice = journal.pending("alice")
    assert [e.turn.turn_id for e in alice] == ["resp_0", "resp_2", "resp_4"]
    assert alice[1].turn.user_text == "hello 2" and alice[1].turn.metrics == {"e2e_latency": 812.5}
    assert journal.pending("alice")[0].attempts == 0
    journal.record_send(["resp_0"])
    journal.record_failure(["resp_0"], "Letta unreachable")
    assert journal.pending("alice")[0].attempts == 1
    assert journal.pending("alice")[0].last_error == "Letta unreachable"
    journal.confirm(["resp_0", "resp_2"])
    assert [e.turn.turn_id for e in journal.pending()] == ["resp_1", "resp_3", "resp_4"]
    assert len(journal) == 3


def test_the_same_turn_is_journaled_once(tmp_path: Path) -> None:
    journal = TurnJournal(tmp_path / "journal.db")
    assert journal.append(turn(1)) is True
    assert journal.append(turn(1)) is False  # a replay after a crash
    assert len(journal) == 1


def _append_and_die(path: str) -> None:
    journal = TurnJournal(path)
    journal.append(turn(7))
    os._exit(0)  # no close, no flush, no atexit: like a SIGKILL right after the sink returned


def test_an_appended_turn_survives_the_process_dying(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    process = multiprocessing.get_context("spawn").Process(target=_append_and_die, args=(str(path),))
    process.start()
    process.join(30)
    assert [e.turn.turn_id for e in TurnJournal(path).pending()] == ["resp_7"]


def test_a_corrupt_journal_is_kept_aside_and_a_new_one_starts(tmp_path: Path, caplog) -> None:
    path = tmp_path / "journal.db"
    path.write_bytes(b"this is not a database" * 100)
    journal = TurnJournal(path)
    journal.append(turn(1))
    aside = list(tmp_path.glob("journal.db.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes().startswith(b"this is not a database")
    assert "not a usable database" in caplog.text
    assert len(journal) == 1


def test_an_unwritable_journal_is_a_clear_error(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        # root ignores file modes: a path under a regular file cannot be created by anyone.
        blocker = tmp_path / "file"
        blocker.write_text("x")
        with pytest.raises(JournalError, match="cannot be created"):
            TurnJournal(blocker / "journal.db")
    else:
        tmp_path.chmod(0o500)
        with pytest.raises(JournalError, match=r"not writable|cannot be opened"):
            TurnJournal(tmp_path / "journal.db")


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (turn(1, user="../etc/passwd"), "user id"),
        (turn(1, user=""), "user id"),
        (turn(1, text="x" * MAX_TURN_CHARS), "limit"),
    ],
)
def test_invalid_turns_are_rejected_with_a_reason(tmp_path: Path, bad: FinishedTurn, message: str) -> None:
    journal = TurnJournal(tmp_path / "journal.db")
    with pytest.raises(JournalError, match=message):
        journal.append(bad)
    assert len(journal) == 0


def test_facts_wait_beside_turns_until_confirmed_and_survive_a_reopen(tmp_path: Path) -> None:
    journal = TurnJournal(tmp_path / "journal.db")
    journal.append(turn(1, user="alice"))
    assert journal.append_fact(Fact("f1", "bob", "Bob's dog is called Rex.")) is True
    assert journal.append_fact(Fact("f1", "bob", "Bob's dog is called Rex.")) is False  # same id: once
    journal.append_fact(Fact("f2", "alice", "Alice was born in Lyon."))
    assert journal.users_with_pending() == ["alice", "bob"]
    assert len(journal) == 1 and journal.fact_count() == 2  # `len` counts turns only
    journal.record_fact_send(["f1"])
    journal.record_fact_failure(["f1"], "Letta unreachable")
    journal.close()
    journal = TurnJournal(tmp_path / "journal.db")
    (bob,) = journal.pending_facts("bob")
    assert bob.fact == Fact("f1", "bob", "Bob's dog is called Rex.")
    assert bob.attempts == 1 and bob.last_error == "Letta unreachable"
    journal.confirm_facts(["f1"])
    assert [e.fact.fact_id for e in journal.pending_facts()] == ["f2"]
    assert [e.turn.turn_id for e in journal.pending()] == ["resp_1"]


def test_a_journal_from_before_facts_gains_the_table_and_keeps_its_turns(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE turns (seq INTEGER PRIMARY KEY AUTOINCREMENT, turn_id TEXT NOT NULL UNIQUE, "
        "user_id TEXT NOT NULL, body TEXT NOT NULL, ended_at REAL NOT NULL, journaled_at REAL NOT NULL, "
        "attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT);"
    )
    old.close()
    journal = TurnJournal(path)
    journal.append(turn(1))
    journal.append_fact(Fact("f1", "alice", "Alice likes tea."))
    assert len(journal) == 1 and journal.fact_count() == 1


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (Fact("f1", "../bob", "x"), "user id"),
        (Fact("f1", "alice", "   "), "empty"),
        (Fact("f1", "alice", "x" * (MAX_FACT_CHARS + 1)), f"limit is {MAX_FACT_CHARS}"),
        (Fact("", "alice", "x"), "no fact id"),
    ],
)
def test_invalid_facts_are_rejected_with_a_reason(tmp_path: Path, bad: Fact, message: str) -> None:
    journal = TurnJournal(tmp_path / "journal.db")
    with pytest.raises(JournalError, match=message):
        journal.append_fact(bad)
    assert journal.fact_count() == 0
