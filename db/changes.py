"""Recording changes in the transaction of the state they describe, in commit order.

What the feed promises, and why it holds:

1. **No change without its state, no state without its change.** ``record_change`` only
   queues the change on the session; the row is inserted by the session's
   ``before_commit`` hook, inside the same transaction as the writes it describes. If
   the transaction rolls back, the queued changes are dropped with it (``after_rollback``);
   if a savepoint rolls back, only the changes recorded inside it are. Writers call
   ``record_change`` after the write succeeded.
2. **Positions grow in commit order, per user.** A reader that has seen position N must
   never later find a committed N' < N of the same user. So positions are taken as
   late as possible and under a lock: on PostgreSQL the commit takes a transaction-level
   advisory lock per (tenant, user) before drawing positions from
   ``changes_position_seq``, and holds it until the commit; two transactions recording
   changes for the same user therefore draw and commit one after the other. The lock,
   the insert and COMMIT go to the server in one pipeline (``_commit``), so the lock is
   held for the server's insert and commit only, not across replies to this process.
   On SQLite (the embedded default) the database's single writer lock gives the same
   order.
3. **The current head is safe to hand out.** ``head_position`` takes the same lock
   (shared), so every position it returns for a user was committed or will never be
   that user's: a client starting from it misses nothing.
4. **Wake-ups are hints, the table is the truth.** On PostgreSQL the hook also issues
   ``pg_notify`` (delivered only if the transaction commits); in every process, the
   listeners of ``LISTENERS`` run after the commit. A lost wake-up only delays a reader
   until its next look.

``occurred_at`` is the commit time (on PostgreSQL the server's clock once the lock is
held), so it grows with the position for each user, which lets the retention cut-off
and cursor expiry use time.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, insert, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, SessionTransaction, sessionmaker

from db.listeners import CommitListeners
from db.models import Account, Change

log = logging.getLogger(__name__)

#: PostgreSQL channel that carries ``tenant:user:position`` after each commit.
NOTIFY_CHANNEL = "email_service_changes"

_PENDING = "changes.pending"
_BATCH = "changes.batch"
_OWNERS = "changes.owners"
_SAVEPOINTS = "changes.savepoints"


@dataclass(frozen=True)
class CommittedChanges:
    """What one commit recorded for one user: the highest position and the types."""

    tenant_id: uuid.UUID
    user_id: uuid.UUID
    position: int
    types: tuple[str, ...]
    # The engine that committed them: listeners that belong to one runtime (several live in
    # one test process, one in a deployed one) act only on their own runtime's commits.
    engine: Any = field(default=None, compare=False)
    # Whether the user's feed has a webhook fan-out cursor (``webhook_fanouts``) as the
    # commit saw it under the user's lock; only then is there a fan-out to wake. Where
    # it was not looked up (SQLite), True.
    followed: bool = field(default=True, compare=False)


#: ``listener(engine, committed)`` after every commit that recorded changes, in this
#: process. It runs on the committing thread, so it must be quick and must not raise
#: (webhook queuing, waking streams).
LISTENERS: CommitListeners[CommittedChanges] = CommitListeners("change")


def owner_lock_key(tenant_id: uuid.UUID, user_id: uuid.UUID) -> int:
    """The advisory lock key that orders one user's change positions."""
    digest = hashlib.sha256(f"changes:{tenant_id}:{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def now_ms() -> int:
    return int(time.time() * 1000)


def record_change(
    session: Session,
    *,
    tenant_id: uuid.UUID,
    user_id: uuid.UUID,
    type: str,
    account_id: str | None = None,
    folder_id: str | None = None,
    message_id: str | None = None,
    task_id: str | None = None,
    data: dict[str, Any] | None = None,
) -> None:
    """Queue a change to be written when ``session`` commits (see the module docstring)."""
    pending: list[dict[str, Any]] = session.info.setdefault(_PENDING, [])
    pending.append(
        {
            "tenant_id": tenant_id,
            "user_id": user_id,
            "type": type,
            "account_id": account_id,
            "folder_id": folder_id,
            "message_id": message_id,
            "task_id": task_id,
            "data": data or {},
        }
    )


def account_owner(session: Session, account_id: str) -> tuple[uuid.UUID, uuid.UUID] | None:
    """(tenant, user) of ``account_id``, remembered for the session's life."""
    owners: dict[str, tuple[uuid.UUID, uuid.UUID]] = session.info.setdefault(_OWNERS, {})
    if account_id not in owners:
        row = session.execute(
            Account.__table__.select()
            .with_only_columns(Account.tenant_id, Account.user_id)
            .where(Account.id == account_id)
        ).one_or_none()
        if row is None:
            return None
        owners[account_id] = (row[0], row[1])
    return owners[account_id]


def head_position(session: Session, tenant_id: uuid.UUID, user_id: uuid.UUID) -> int:
    """The highest position a reader of this user can start after without missing any."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(
            text("SELECT pg_advisory_xact_lock_shared(:k)"),
            {"k": owner_lock_key(tenant_id, user_id)},
        )
        value = session.execute(
            text("SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM changes_position_seq")
        ).scalar()
        return int(value or 0)
    value = session.execute(text("SELECT seq FROM sqlite_sequence WHERE name = 'changes'")).scalar()
    return int(value or 0)


@dataclass
class _Batch:
    """One transaction's changes, from ``before_commit`` to the commit that writes them."""

    rows: list[dict[str, Any]]
    engine: Any
    committed: list[CommittedChanges] = field(default_factory=list)


def _before_commit(session: Session) -> None:
    if session.in_nested_transaction():
        return  # a savepoint being released: the changes wait for the real commit
    pending: list[dict[str, Any]] | None = session.info.pop(_PENDING, None)
    if not pending:
        return
    # The state first, the changes last: every transaction then takes the changes table
    # after the tables it writes (no lock-order deadlock).
    session.flush()
    bind = session.get_bind()
    batch = _Batch(pending, getattr(bind, "engine", bind))
    session.info[_BATCH] = batch
    if bind.dialect.name == "postgresql":
        # Written by the connection's commit (``_commit``), in the COMMIT's own round trip.
        session.connection().info[_BATCH] = batch
        return
    # SQLite: the database's single writer lock orders the positions.
    stamp = now_ms()
    for row in pending:
        row["occurred_at"] = stamp
    positions = session.scalars(
        insert(Change).returning(Change.position, sort_by_parameter_order=True), pending
    ).all()
    batch.committed = _committed(batch, list(zip(pending, positions, strict=True)))


def _committed(
    batch: _Batch, positioned: list[tuple[dict[str, Any], int]]
) -> list[CommittedChanges]:
    """Per user: the highest position and the types, in the order they were recorded."""
    committed: dict[tuple[uuid.UUID, uuid.UUID], CommittedChanges] = {}
    for row, position in positioned:
        key = (row["tenant_id"], row["user_id"])
        before = committed.get(key)
        types = (*before.types, row["type"]) if before else (row["type"],)
        highest = max(position, before.position) if before else position
        committed[key] = CommittedChanges(key[0], key[1], highest, types, batch.engine)
    return list(committed.values())


# The changes' insert on PostgreSQL. Positions are drawn in the order the rows were
# recorded (INSERT ... SELECT ... ORDER BY draws the defaults in that order), and stamped
# by the server's clock after the lock is held; one notification per user with the
# highest position (delivered only if the transaction commits), and whether a webhook
# fan-out follows the user's feed (``CommittedChanges.followed``).
_INSERT_CHANGES = """
WITH new AS (
    INSERT INTO changes (tenant_id, user_id, type, account_id, folder_id, message_id,
                         task_id, data, occurred_at)
    SELECT r.tenant_id, r.user_id, r.type, r.account_id, r.folder_id, r.message_id,
           r.task_id, r.data, (extract(epoch FROM clock_timestamp()) * 1000)::bigint
    FROM jsonb_to_recordset(%s::jsonb) AS r(
        n int, tenant_id uuid, user_id uuid, type text, account_id text, folder_id text,
        message_id text, task_id text, data jsonb)
    ORDER BY r.n
    RETURNING position, tenant_id, user_id
)
SELECT tenant_id, user_id, max(position),
       pg_notify(%s, tenant_id::text || ':' || user_id::text || ':' || max(position)::text),
       EXISTS (SELECT 1 FROM webhook_fanouts f
               WHERE f.tenant_id = new.tenant_id AND f.user_id = new.user_id)
FROM new GROUP BY tenant_id, user_id
"""


def _commit(conn: Connection) -> None:
    """PostgreSQL: write the transaction's changes and commit, in one round trip.

    Sent as one pipeline: the ordering lock of each user (sorted, so two transactions
    recording for the same users cannot deadlock), the insert that draws the positions
    and notifies, and COMMIT. The server runs them back to back, so a user's lock is
    held only while the server inserts and commits, never while this process waits for
    a reply or for the CPU (each round trip under the lock used to serialise one user's
    writers: the API's sends and the worker's task updates). The driver's own commit
    that follows finds the transaction already ended and does nothing.
    """
    batch: _Batch | None = conn.info.pop(_BATCH, None)
    if batch is None:
        return
    import psycopg
    from psycopg.types.json import Jsonb

    raw = conn.connection.dbapi_connection
    assert isinstance(raw, psycopg.Connection)
    owners = sorted({(row["tenant_id"], row["user_id"]) for row in batch.rows}, key=str)
    rows = [
        {
            "n": n,
            **{name: row[name] for name in _COLUMNS},
            "tenant_id": str(row["tenant_id"]),
            "user_id": str(row["user_id"]),
        }
        for n, row in enumerate(batch.rows)
    ]
    locking, inserting = raw.cursor(), raw.cursor()
    try:
        with raw.pipeline():
            for tenant_id, user_id in owners:
                locking.execute(
                    "SELECT pg_advisory_xact_lock(%s)", (owner_lock_key(tenant_id, user_id),)
                )
            inserting.execute(_INSERT_CHANGES, (Jsonb(rows), NOTIFY_CHANNEL))
            locking.execute("COMMIT")
        found = {
            (uuid.UUID(str(t)), uuid.UUID(str(u))): (int(p), bool(followed))
            for t, u, p, _, followed in inserting.fetchall()
        }
    except psycopg.Error as error:
        if raw.broken:
            conn.invalidate(error)
        raise DBAPIError.instance(
            None, None, error, psycopg.Error, connection_invalidated=raw.broken
        ) from error
    finally:
        locking.close()
        inserting.close()
    types: dict[tuple[uuid.UUID, uuid.UUID], tuple[str, ...]] = {}
    for row in batch.rows:
        key = (row["tenant_id"], row["user_id"])
        types[key] = (*types.get(key, ()), row["type"])
    batch.committed = [
        CommittedChanges(key[0], key[1], found[key][0], types[key], batch.engine, found[key][1])
        for key in types
    ]


_COLUMNS = ("type", "account_id", "folder_id", "message_id", "task_id", "data")


def _forget(conn: Connection) -> None:
    """A rollback: a batch left on the connection must never reach a later commit."""
    if conn.invalidated:
        return  # its DBAPI connection is discarded, and the batch with it (``_checkin``)
    conn.info.pop(_BATCH, None)


def _checkin(_dbapi_conn: Any, record: Any) -> None:
    record.info.pop(_BATCH, None)


def _after_commit(session: Session) -> None:
    batch: _Batch | None = session.info.pop(_BATCH, None)
    session.info.pop(_OWNERS, None)
    if batch is None or not batch.committed:
        return
    committed = batch.committed
    LISTENERS.notify(committed[0].engine, committed)


def _after_transaction_create(session: Session, transaction: SessionTransaction) -> None:
    if transaction.nested:
        # How many changes the savepoint starts after: its rollback drops only its own.
        recorded = session.info.get(_PENDING)
        session.info.setdefault(_SAVEPOINTS, {})[transaction] = len(recorded or ())


def _after_rollback(session: Session) -> None:
    session.info.pop(_OWNERS, None)
    if session.in_nested_transaction():
        # A savepoint rolled back (SQLAlchemy tells that as a rollback too): the changes
        # recorded before it describe writes that are still to commit, and are kept.
        savepoint = session.get_nested_transaction()
        start = session.info.get(_SAVEPOINTS, {}).pop(savepoint, None)
        recorded = session.info.get(_PENDING)
        if start is not None and recorded:
            del recorded[start:]
        return
    session.info.pop(_PENDING, None)
    session.info.pop(_BATCH, None)
    session.info.pop(_SAVEPOINTS, None)


def install(sessions: sessionmaker[Session]) -> None:
    """Make every session of ``sessions`` write its recorded changes at commit."""
    from sqlalchemy import event

    event.listen(sessions, "before_commit", _before_commit)
    event.listen(sessions, "after_commit", _after_commit)
    event.listen(sessions, "after_transaction_create", _after_transaction_create)
    event.listen(sessions, "after_rollback", _after_rollback)
    engine = sessions.kw.get("bind")
    if (
        engine is not None
        and engine.dialect.name == "postgresql"
        and not event.contains(engine, "commit", _commit)
    ):
        event.listen(engine, "commit", _commit)
        event.listen(engine, "rollback", _forget)
        event.listen(engine.pool, "checkin", _checkin)
