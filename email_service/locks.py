"""Locks that keep two workers (or two schedulers) from doing the same thing at once.

On PostgreSQL these are session advisory locks held on a connection of their own: if the
process holding one dies, its connection closes and the lock is released, so a crashed
worker never leaves an account locked. On the embedded default (SQLite, one process) a
process-local lock does the same job.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.exc import DBAPIError

from db.session import Database, simple_query

_local_locks: dict[str, threading.Lock] = {}
_local_guard = threading.Lock()


def _advisory_key(name: str) -> int:
    # A signed 64-bit key, as pg_try_advisory_lock takes; collisions only serialise.
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


@contextmanager
def try_lock(db: Database, name: str) -> Iterator[bool]:
    """Try to take the lock ``name`` without waiting; yields whether it was taken.

    The lock is held until the ``with`` block ends.
    """
    if db.is_postgres:
        key = _advisory_key(name)
        # A session lock needs no transaction: taking and releasing it is one simple
        # query each, straight through libpq (no BEGIN, no COMMIT, and none of the
        # driver's or SQLAlchemy's per-statement work; the key is an integer literal).
        with db.engine.connect() as conn:
            taken = simple_query(conn, f"SELECT pg_try_advisory_lock({key})".encode()) == "t"
            try:
                yield taken
            finally:
                if taken:
                    try:
                        simple_query(conn, f"SELECT pg_advisory_unlock({key})".encode())
                    except DBAPIError as exc:
                        # The session is gone (a database restart), and the lock with it;
                        # the work done under it is not undone by that.
                        if not exc.connection_invalidated:
                            raise
        return
    with _local_guard:
        lock = _local_locks.setdefault(name, threading.Lock())
    taken = lock.acquire(blocking=False)
    try:
        yield taken
    finally:
        if taken:
            lock.release()
