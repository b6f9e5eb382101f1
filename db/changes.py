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
   late as possible and under a lock: on PostgreSQL the hook takes a transaction-level
   advisory lock per (tenant, user) before drawing positions from
   ``changes_position_seq``, and holds it until the commit; two transactions recording
   changes for the same user therefore draw and commit one after the other. On SQLite
   (the embedded default) the database's single writer lock gives the same order.
3. **The current head is safe to hand out.** ``head_position`` takes the same lock
   (shared), so every position it returns for a user was committed or will never be
   that user's: a client starting from it misses nothing.
4. **Wake-ups are hints, the table is the truth.** On PostgreSQL the hook also issues
   ``pg_notify`` (delivered only if the transaction commits); in every process, the
   listeners of ``LISTENERS`` run after the commit. A lost wake-up only delays a reader
   until its next look.

``occurred_at`` is the commit time (taken in the hook), so it grows with the position
for each user, which lets the retention cut-off and cursor expiry use time.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import insert, text
from sqlalchemy.orm import Session, SessionTransaction, sessionmaker

from db.listeners import CommitListeners
from db.models import Account, Change

log = logging.getLogger(__name__)

#: PostgreSQL channel that carries ``tenant:user:position`` after each commit.
NOTIFY_CHANNEL = "email_service_changes"

_PENDING = "changes.pending"
_COMMITTED = "changes.committed"
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


def _before_commit(session: Session) -> None:
    if session.in_nested_transaction():
        return  # a savepoint being released: the changes wait for the real commit
    pending: list[dict[str, Any]] | None = session.info.pop(_PENDING, None)
    if not pending:
        return
    # The state first, the changes last: every transaction then takes the changes table
    # after the tables it writes (no lock-order deadlock), and the ordering lock below is
    # held only for the insert and the commit.
    session.flush()
    bind = session.get_bind()
    engine = getattr(bind, "engine", bind)
    is_postgres = bind.dialect.name == "postgresql"
    owners = sorted({(row["tenant_id"], row["user_id"]) for row in pending}, key=str)
    if is_postgres:
        # Sorted, so two transactions recording for the same users cannot deadlock.
        for tenant_id, user_id in owners:
            session.execute(
                text("SELECT pg_advisory_xact_lock(:k)"),
                {"k": owner_lock_key(tenant_id, user_id)},
            )
    # Stamped once the lock is held: a cursor handed out meanwhile is never younger.
    stamp = now_ms()
    for row in pending:
        row["occurred_at"] = stamp
    positions = session.scalars(
        insert(Change).returning(Change.position, sort_by_parameter_order=True), pending
    ).all()
    committed: dict[tuple[uuid.UUID, uuid.UUID], CommittedChanges] = {}
    for row, position in zip(pending, positions, strict=True):
        key = (row["tenant_id"], row["user_id"])
        before = committed.get(key)
        types = (*before.types, row["type"]) if before else (row["type"],)
        highest = max(position, before.position) if before else position
        committed[key] = CommittedChanges(key[0], key[1], highest, types, engine)
    if is_postgres:
        for entry in committed.values():
            session.execute(
                text("SELECT pg_notify(:channel, :payload)"),
                {
                    "channel": NOTIFY_CHANNEL,
                    "payload": f"{entry.tenant_id}:{entry.user_id}:{entry.position}",
                },
            )
    session.info.setdefault(_COMMITTED, []).extend(committed.values())


def _after_commit(session: Session) -> None:
    committed: list[CommittedChanges] | None = session.info.pop(_COMMITTED, None)
    session.info.pop(_OWNERS, None)
    if not committed:
        return
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
    session.info.pop(_COMMITTED, None)
    session.info.pop(_SAVEPOINTS, None)


def install(sessions: sessionmaker[Session]) -> None:
    """Make every session of ``sessions`` write its recorded changes at commit."""
    from sqlalchemy import event

    event.listen(sessions, "before_commit", _before_commit)
    event.listen(sessions, "after_commit", _after_commit)
    event.listen(sessions, "after_transaction_create", _after_transaction_create)
    event.listen(sessions, "after_rollback", _after_rollback)
