"""A unit of work begins on PostgreSQL with its tenant set, in one round trip."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from sqlalchemy import text

from db.session import Database
from tests.conftest import PgDatabase
from tests.db.protocol import traced


def test_begin_and_the_tenant_go_to_the_server_in_one_round_trip(
    pg_database: PgDatabase, tmp_path: Path
) -> None:
    database = Database.from_url(pg_database.url, pool_size=1)
    tenant = uuid.uuid4()
    try:
        with traced(database, tenant, tmp_path) as sent, database.transaction(tenant) as session:
            setting = session.execute(text("SELECT current_setting('app.tenant_id')")).scalar()
    finally:
        database.dispose()
    assert setting == str(tenant)
    # A round trip ends with a Sync (extended protocol) or is one simple Query: BEGIN
    # and the set_config share one; the statement has its own; COMMIT is the third.
    ends = [kind for kind in sent if kind in ("Sync", "Query")]
    assert len(ends) == 3, sent


def test_a_savepoint_keeps_the_tenant_without_setting_it_again(
    pg_database: PgDatabase, tmp_path: Path
) -> None:
    database = Database.from_url(pg_database.url, pool_size=1)
    tenant = uuid.uuid4()
    query = text("SELECT current_setting('app.tenant_id')")
    try:
        with traced(database, tenant, tmp_path) as sent, database.transaction(tenant) as session:
            with session.begin_nested():
                inside = session.execute(query).scalar()
            with pytest.raises(RuntimeError), session.begin_nested():
                session.execute(text("SELECT 1"))
                raise RuntimeError("rolled back to the savepoint")
            after = session.execute(query).scalar()
    finally:
        database.dispose()
    # The tenant is in force inside a savepoint and after one rolled back
    assert inside == after == str(tenant)
    # and a savepoint costs its SAVEPOINT and its RELEASE (or ROLLBACK TO) only: BEGIN
    # with the settings, two savepoints of two round trips each, the three statements,
    # COMMIT - no set_config of its own.
    ends = [kind for kind in sent if kind in ("Sync", "Query")]
    assert len(ends) == 9, sent


def test_a_tenant_that_is_not_a_uuid_begins_nothing(pg_database: PgDatabase) -> None:
    database = Database.from_url(pg_database.url, pool_size=1)
    try:
        with pytest.raises(ValueError), database.transaction("x'); DROP TABLE t; --"):  # type: ignore[arg-type]
            pass
    finally:
        database.dispose()
