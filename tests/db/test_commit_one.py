"""``Database.commit_one``: one statement committed alone, in one round trip, scoped to
its tenant; a failure commits nothing and leaves the pooled connection as it was."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from psycopg.types.json import Jsonb
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

from db.models import Task
from db.session import Database
from tests.conftest import PgDatabase
from tests.db.protocol import traced

MERGE = """
UPDATE tasks SET payload = payload || %(values)s
WHERE id = %(task_id)s RETURNING payload
"""


def _task(database: Database, tenant: uuid.UUID) -> str:
    task_id = uuid.uuid4().hex
    with database.transaction(tenant) as session:
        session.add(
            Task(
                id=task_id,
                tenant_id=tenant,
                user_id=uuid.uuid4(),
                kind="send",
                status="started",
                payload={"messageId": "m@example.test"},
            )
        )
    return task_id


def _payload(database: Database, tenant: uuid.UUID, task_id: str) -> dict[str, object]:
    with database.transaction(tenant) as session:
        row = session.get(Task, task_id)
        assert row is not None
        return dict(row.payload)


def test_commit_one_merges_and_commits_in_one_round_trip(
    pg_database: PgDatabase, owner_engine: Engine, tmp_path: Path
) -> None:
    database = Database.from_url(pg_database.url, pool_size=1)
    tenant = uuid.uuid4()
    try:
        task_id = _task(database, tenant)
        with traced(database, tenant, tmp_path) as sent:
            rows = database.commit_one(
                tenant, MERGE, {"values": Jsonb({"acceptedAt": 1}), "task_id": task_id}
            )
        # Then the row has the merged payload, committed (read by another transaction)
        assert rows == [({"messageId": "m@example.test", "acceptedAt": 1},)]
        assert _payload(database, tenant, task_id) == rows[0][0]
    finally:
        database.dispose()
    # and BEGIN, the settings, the UPDATE and COMMIT went as one pipeline: one Sync
    assert sent.count("Sync") == 1 and "Query" not in sent, sent


def test_commit_one_sees_only_its_tenant(pg_database: PgDatabase, owner_engine: Engine) -> None:
    database = Database.from_url(pg_database.url, pool_size=1)
    tenant, other = uuid.uuid4(), uuid.uuid4()
    try:
        task_id = _task(database, tenant)
        # When another tenant's unit merges into the row, row-level security hides it
        rows = database.commit_one(
            other, MERGE, {"values": Jsonb({"acceptedAt": 1}), "task_id": task_id}
        )
        assert rows == []
        assert _payload(database, tenant, task_id) == {"messageId": "m@example.test"}
    finally:
        database.dispose()


def test_a_failed_commit_one_commits_nothing_and_the_connection_goes_on(
    pg_database: PgDatabase, owner_engine: Engine
) -> None:
    database = Database.from_url(pg_database.url, pool_size=1)
    tenant = uuid.uuid4()
    try:
        task_id = _task(database, tenant)
        failing = "UPDATE tasks SET payload = payload || %(values)s, progress = 1 / 0"
        with pytest.raises(DBAPIError, match="division by zero") as raised:
            database.commit_one(tenant, failing, {"values": Jsonb({"acceptedAt": 1})})
        assert not raised.value.connection_invalidated
        assert _payload(database, tenant, task_id) == {"messageId": "m@example.test"}
        # The pool's one connection is back in transactions, not left in autocommit: a
        # unit of work that fails still rolls back all it wrote.
        with pytest.raises(RuntimeError), database.transaction(tenant) as session:
            session.execute(text("UPDATE tasks SET progress = 7"))
            raise RuntimeError("undo")
        with database.transaction(tenant) as session:
            row = session.get(Task, task_id)
            assert row is not None and row.progress == 0
    finally:
        database.dispose()
