"""How a transaction's changes are written at its commit (``db.changes``), on PostgreSQL.

The lock, the insert and COMMIT travel in one pipeline; these check what that must keep:
the order the changes were recorded in, the listeners' view of the commit, and that a
change which cannot be written takes its whole transaction down with it and leaves
nothing behind on the pooled connection.
"""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError

from db import changes as feed
from db.models import Change, Task, new_id
from email_service.runtime import Runtime

# More commits than the pool holds connections: the one that failed is used again.
ROUNDS = 26


def _rows(runtime: Runtime, tenant: uuid.UUID) -> list[Change]:
    with runtime.db.transaction(tenant) as session:
        return list(
            session.scalars(
                select(Change).where(Change.tenant_id == tenant).order_by(Change.position)
            )
        )


def test_changes_of_one_commit_keep_their_order_and_reach_the_listeners(
    runtime: Runtime,
) -> None:
    tenant, ann, ben = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    heard: list[feed.CommittedChanges] = []

    def listener(_engine: object, batch: list[feed.CommittedChanges]) -> None:
        heard.extend(c for c in batch if c.tenant_id == tenant)

    feed.LISTENERS.add(listener)
    try:
        # Given one transaction recording changes of two users, interleaved
        with runtime.db.transaction(tenant) as session:
            for n, (user, kind) in enumerate(
                [
                    (ann, "folder.created"),
                    (ben, "account.updated"),
                    (ann, "folder.updated"),
                    (ann, "folder.deleted"),
                    (ben, "account.deleted"),
                ]
            ):
                feed.record_change(
                    session, tenant_id=tenant, user_id=user, type=kind, data={"n": n}
                )
    finally:
        feed.LISTENERS.remove(listener)

    # Then each user's changes have positions in the order they were recorded
    rows = _rows(runtime, tenant)
    assert [row.data["n"] for row in rows] == [0, 1, 2, 3, 4]
    assert [row.occurred_at for row in rows] == sorted(row.occurred_at for row in rows)
    # and the listeners heard, per user, the highest position and the types in order
    by_user = {entry.user_id: entry for entry in heard}
    assert len(heard) == 2
    assert by_user[ann].types == ("folder.created", "folder.updated", "folder.deleted")
    assert by_user[ben].types == ("account.updated", "account.deleted")
    assert by_user[ann].position == max(r.position for r in rows if r.user_id == ann)
    assert by_user[ben].position == max(r.position for r in rows if r.user_id == ben)
    assert by_user[ann].engine is runtime.db.engine
    # and neither user's feed is followed by a webhook fan-out
    assert not by_user[ann].followed and not by_user[ben].followed


def test_a_change_that_cannot_be_written_rolls_back_its_whole_transaction(
    runtime: Runtime,
) -> None:
    tenant, user = uuid.uuid4(), uuid.uuid4()
    task_id = new_id()
    # Given a transaction that writes state and a change the table refuses (a type
    # longer than its column)
    with pytest.raises(DBAPIError), runtime.db.transaction(tenant) as session:
        session.add(Task(id=task_id, tenant_id=tenant, user_id=user, kind="send"))
        session.flush()
        feed.record_change(session, tenant_id=tenant, user_id=user, type="task.updated")
        feed.record_change(session, tenant_id=tenant, user_id=user, type="x" * 40)

    # Then neither the state nor any of its changes committed
    with runtime.db.transaction(tenant) as session:
        assert session.get(Task, task_id) is None
    assert _rows(runtime, tenant) == []
    # and the pooled connections go on working: later commits write their own changes
    # (and only theirs) and plain commits write none
    for _n in range(ROUNDS):
        with runtime.db.transaction(tenant) as session:
            feed.record_change(session, tenant_id=tenant, user_id=user, type="folder.updated")
        with runtime.db.transaction(tenant) as session:
            session.add(Task(id=new_id(), tenant_id=tenant, user_id=user, kind="send"))
    rows = _rows(runtime, tenant)
    assert [row.type for row in rows] == ["folder.updated"] * (ROUNDS)
