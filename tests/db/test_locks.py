"""``locks.try_lock`` on PostgreSQL: one holder at a time, released at the block's end,
one simple query each way, and the pooled connection left as it was."""

from __future__ import annotations

import uuid
from pathlib import Path

from sqlalchemy import text

from db.session import Database
from email_service import locks
from tests.conftest import PgDatabase
from tests.db.protocol import traced


def _holders(database: Database, name: str) -> int:
    """Sessions holding this lock: pg_locks lists the whole cluster's (other tests' and
    other databases' too), so the count is of this database's lock of this key alone."""
    key = locks._advisory_key(name) & 0xFFFFFFFFFFFFFFFF
    with database.transaction(None) as session:
        found = session.execute(
            text(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
                " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
                " AND classid = CAST(:high AS oid) AND objid = CAST(:low AS oid) AND objsubid = 1"
            ),
            {"high": str(key >> 32), "low": str(key & 0xFFFFFFFF)},
        ).scalar()
    return int(found or 0)


def test_one_holder_at_a_time_and_released_at_the_end(
    pg_database: PgDatabase, tmp_path: Path
) -> None:
    database = Database.from_url(pg_database.url, pool_size=2)
    name = f"test:{uuid.uuid4()}"
    try:
        # Another holder (the pool's other connection) cannot have it meanwhile
        with (
            traced(database, None, tmp_path) as sent,
            locks.try_lock(database, name) as first,
            locks.try_lock(database, name) as second,
        ):
            pass
        with locks.try_lock(database, name) as again:
            held_inside = _holders(database, name)
        # The connection that held it goes on in transactions as before
        with database.transaction(None) as session:
            held = _holders(database, name)
            in_transaction = session.execute(text("SELECT now() = statement_timestamp()")).scalar()
    finally:
        database.dispose()
    assert first and not second and again
    assert (held_inside, held) == (1, 0)
    assert in_transaction is False  # now() is the transaction's start: a real transaction
    # The lock's connection sent its take and its release as one simple query each
    assert sent == ["Query", "Query"], sent
