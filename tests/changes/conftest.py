"""Fixtures for change feed tests: the compose tests' runtime (PostgreSQL, Redis worker,
S3, Dovecot, SMTP), and helpers that read the feed over HTTP.
"""

from __future__ import annotations

from typing import Any

from tests.compose import conftest as compose_fixtures
from tests.conftest import Identity

pytest_configure = compose_fixtures.pytest_configure
sync_settings = compose_fixtures.sync_settings
sync_runtime = compose_fixtures.sync_runtime
sync_app = compose_fixtures.sync_app
worker = compose_fixtures.worker
api = compose_fixtures.api
sender = compose_fixtures.sender
mailbox = compose_fixtures.sync_fixtures.mailbox


def start_cursor(client: Any, identity: Identity) -> str:
    """Where a client starts: listChanges without ``since``."""
    response = client.get("/api/changes", headers=identity.bearer)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["changes"] == [] and body["hasMore"] is False
    return str(body["cursor"])


def read_feed(
    client: Any, identity: Identity, since: str, *, limit: int = 1000, **params: Any
) -> tuple[list[dict[str, Any]], str]:
    """Every change after ``since`` (following ``hasMore``), and the cursor to go on from."""
    changes: list[dict[str, Any]] = []
    cursor = since
    while True:
        response = client.get(
            "/api/changes",
            params={"since": cursor, "limit": limit, **params},
            headers=identity.bearer,
        )
        assert response.status_code == 200, response.text
        body = response.json()
        changes.extend(body["changes"])
        cursor = body["cursor"]
        if not body["hasMore"]:
            return changes, cursor


def of_type(changes: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [change for change in changes if change["type"] == kind]
