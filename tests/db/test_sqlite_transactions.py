"""On the embedded store (SQLite), a savepoint belongs to its transaction.

Python 3.11's sqlite3 (legacy transaction control) begins a transaction only before an
INSERT, UPDATE or DELETE. A savepoint opened first - the mail store writes every batch in
one (``MessageStore.add_batch``), often as the first write of its step - ran outside any
transaction, so its RELEASE committed: other connections saw the rows at once, and
rolling the step back left them in place.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, insert, select

from db.migrate import upgrade
from db.models import Change
from db.session import Database
from email_service.runtime import Runtime, build_runtime
from tests.conftest import make_settings


class Undo(Exception):
    pass


@pytest.fixture
def embedded(tmp_path: Path) -> Iterator[tuple[Runtime, Path]]:
    """The embedded store as the tests make it: a SQLite file, migrated to head."""
    path = tmp_path / "embedded.sqlite3"
    runtime = build_runtime(make_settings(tmp_path / "data", f"sqlite:///{path}"))
    upgrade(runtime.db.engine)
    yield runtime, path
    runtime.close()


def _change() -> dict[str, object]:
    return {
        "tenant_id": uuid.uuid4(),
        "user_id": uuid.uuid4(),
        "type": "message.created",
        "occurred_at": 1,
        "data": {},
    }


def _count_elsewhere(path: Path) -> int:
    """What another connection (another thread or process) sees committed."""
    with contextlib.closing(sqlite3.connect(path, timeout=5)) as other:
        return int(other.execute("SELECT count(*) FROM changes").fetchone()[0])


def _count(db: Database) -> int:
    with db.transaction(system=True) as session:
        return int(session.scalar(select(func.count()).select_from(Change)) or 0)


@pytest.mark.parametrize("read_first", [False, True], ids=["savepoint-first", "read-first"])
def test_a_released_savepoint_is_undone_with_its_transaction(
    embedded: tuple[Runtime, Path], read_first: bool
) -> None:
    runtime, path = embedded
    seen_inside: list[int] = []
    with pytest.raises(Undo), runtime.db.transaction(system=True) as session:
        if read_first:  # a step that looks before it writes, as add_batch does
            session.scalar(select(func.count()).select_from(Change))
        with session.begin_nested():
            session.execute(insert(Change), [_change()])
        seen_inside.append(int(session.scalar(select(func.count()).select_from(Change)) or 0))
        seen_inside.append(_count_elsewhere(path))
        raise Undo
    # Inside, the released savepoint's row is there; nobody else sees it before the commit.
    assert seen_inside == [1, 0]
    # The transaction rolled back: the row went with it.
    assert _count_elsewhere(path) == 0
    assert _count(runtime.db) == 0


def test_a_released_savepoint_commits_with_its_transaction(
    embedded: tuple[Runtime, Path],
) -> None:
    runtime, path = embedded
    with runtime.db.transaction(system=True) as session:
        with session.begin_nested():
            session.execute(insert(Change), [_change()])
        with session.begin_nested():
            session.execute(insert(Change), [_change()])
        assert _count_elsewhere(path) == 0
    assert _count_elsewhere(path) == 2


def test_a_rolled_back_savepoint_keeps_the_rest_of_its_transaction(
    embedded: tuple[Runtime, Path],
) -> None:
    runtime, path = embedded
    with runtime.db.transaction(system=True) as session:
        with contextlib.suppress(Undo), session.begin_nested():
            session.execute(insert(Change), [_change()])
            raise Undo
        with session.begin_nested():
            session.execute(insert(Change), [_change()])
        assert _count_elsewhere(path) == 0
    assert _count_elsewhere(path) == 1


def test_a_savepoint_after_a_read_waits_for_another_writer_and_does_not_fail(
    embedded: tuple[Runtime, Path],
) -> None:
    """A step that read, then met another connection's commit and a held write lock,
    still writes: the savepoint's transaction waits for the lock (the busy timeout)
    instead of failing on a stale read snapshot ("database is locked")."""
    runtime, path = embedded
    with runtime.db.transaction(system=True) as session:
        session.scalar(select(func.count()).select_from(Change))
        other_conn = sqlite3.connect(path, timeout=5, check_same_thread=False)
        with contextlib.closing(other_conn) as other:
            other.execute(
                "INSERT INTO changes (tenant_id, user_id, type, occurred_at, data)"
                " VALUES (x'00', x'00', 't', 1, '{}')"
            )
            other.commit()
            other.execute("BEGIN IMMEDIATE")  # another writer holds the lock for a moment
            releaser = threading.Timer(0.3, other.commit)
            releaser.start()
            try:
                with session.begin_nested():
                    session.execute(insert(Change), [_change()])
            finally:
                releaser.join()
        assert session.scalar(select(func.count()).select_from(Change)) == 2
    assert _count_elsewhere(path) == 2
