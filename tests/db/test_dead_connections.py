"""A pooled connection the server has ended costs no failed request (no pre-ping either)."""

from __future__ import annotations

import time
from typing import Any

import psycopg
import pytest
from sqlalchemy import event

from db import session as db_session
from tests.conftest import PG_ADMIN_DSN, Identity, PgDatabase


def _end_pooled_connections(db: PgDatabase) -> int:
    """pg_terminate_backend on the API's idle pooled connections; waits until they are gone."""
    query = """
        SELECT pid FROM pg_stat_activity
        WHERE datname = %s AND usename = %s AND state = 'idle' AND query NOT ILIKE 'LISTEN%%'
    """
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as admin:
        pids = [row[0] for row in admin.execute(query, (db.name, db.role)).fetchall()]
        for pid in pids:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            left = admin.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", (pids,)
            ).fetchone()
            if left is not None and left[0] == 0:
                break
            time.sleep(0.05)
    return len(pids)


def test_connections_ended_by_the_server_are_replaced_at_checkout(
    client: Any, alice: Identity, pg_database: PgDatabase
) -> None:
    assert client.get("/api/accounts", headers=alice.bearer).status_code == 200
    assert _end_pooled_connections(pg_database) > 0
    for _ in range(3):
        response = client.get("/api/accounts", headers=alice.bearer)
        assert response.status_code == 200, response.text


@pytest.fixture
def without_checkout_check(runtime: Any) -> Any:
    """The pool as if the checkout could not tell (a connection lost without a goodbye)."""
    engine = runtime.db.engine
    event.remove(engine, "checkout", db_session._closed_by_server)
    try:
        yield
    finally:
        event.listen(engine, "checkout", db_session._closed_by_server)


def test_a_unit_of_work_that_finds_its_connection_dead_starts_again_once(
    client: Any, alice: Identity, pg_database: PgDatabase, without_checkout_check: Any
) -> None:
    assert client.get("/api/accounts", headers=alice.bearer).status_code == 200
    assert _end_pooled_connections(pg_database) > 0
    for _ in range(3):
        response = client.get("/api/accounts", headers=alice.bearer)
        assert response.status_code == 200, response.text
