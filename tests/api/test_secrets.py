"""Secrets stay secret: no password or token in a response or a log record, and no
internals (stack traces, SQL) in an error response.

The flow is a list of steps, each one request; more steps (sync, send) go into
``_flow`` as those operations land, and every step is checked the same way.
"""

from __future__ import annotations

import logging
import re
import traceback
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine

from email_service.runtime import Runtime
from tests.conftest import Identity
from tests.factories import account_body

PASSWORD = "Unmistakable-Pa55word"
NEW_PASSWORD = "Another-Unmistakable-Pa55word"
SHORT_PASSWORD = "short7"
_ANY_JWT = re.compile(r"eyJ[\w-]+\.[\w-]+\.[\w-]+")


def _record_text(record: logging.LogRecord) -> str:
    """Everything a handler could write for ``record``: message, arguments, extras, trace."""
    parts = [record.getMessage(), repr(record.args), repr(record.__dict__)]
    if record.exc_info:
        parts.append("".join(traceback.format_exception(*record.exc_info)))
    if record.exc_text:
        parts.append(record.exc_text)
    if record.stack_info:
        parts.append(record.stack_info)
    return "\n".join(parts)


Step = tuple[str, Callable[[Any, Identity, dict[str, str]], Any], int]


def _flow() -> list[Step]:
    """(name, request, expected status); ``state`` carries ids between steps."""

    def create(client: Any, who: Identity, state: dict[str, str]) -> Any:
        response = client.post(
            "/api/accounts", json=account_body(password=PASSWORD), headers=who.bearer
        )
        state["account"] = response.json()["id"]
        return response

    return [
        ("create", create, 201),
        ("get", lambda c, w, s: c.get(f"/api/accounts/{s['account']}", headers=w.bearer), 200),
        ("get, header auth", lambda c, w, s: c.get(
            f"/api/accounts/{s['account']}", headers=w.header_auth), 200),
        ("list", lambda c, w, s: c.get("/api/accounts", headers=w.bearer), 200),
        ("update password", lambda c, w, s: c.put(
            f"/api/accounts/{s['account']}", json={"password": NEW_PASSWORD}, headers=w.bearer
        ), 200),
        ("update, password too short", lambda c, w, s: c.put(
            f"/api/accounts/{s['account']}", json={"password": SHORT_PASSWORD},
            headers=w.bearer), 400),
        ("create, invalid port", lambda c, w, s: c.post(
            "/api/accounts", json=account_body(password=PASSWORD, port=0), headers=w.bearer
        ), 400),
        ("create, refused host", lambda c, w, s: c.post(
            "/api/accounts", json=account_body(password=PASSWORD, hostname="10.0.0.1"),
            headers=w.bearer), 400),
        ("create, duplicate", lambda c, w, s: c.post(
            "/api/accounts",
            json=account_body(password=PASSWORD, emailAddress=c.get(
                f"/api/accounts/{s['account']}", headers=w.bearer).json()["emailAddress"]),
            headers=w.bearer), 409),
        ("folders", lambda c, w, s: c.get(f"/api/{s['account']}/folders", headers=w.bearer), 200),
        ("delete", lambda c, w, s: c.delete(f"/api/accounts/{s['account']}", headers=w.bearer),
         204),
    ]  # fmt: skip


def test_flow_leaks_no_password_or_token(client, alice: Identity, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    state: dict[str, str] = {}
    for name, step, expected in _flow():
        response = step(client, alice, state)
        assert response.status_code == expected, (name, response.text)
        body = response.text
        for secret in (PASSWORD, NEW_PASSWORD, SHORT_PASSWORD, alice.token):
            assert secret not in body, (name, secret)
        assert not _ANY_JWT.search(body), name
        if body:
            assert "password" not in response.json(), name
    assert caplog.records, "nothing was logged: the capture is not working"
    for record in caplog.records:
        written = _record_text(record)
        for secret in (PASSWORD, NEW_PASSWORD, SHORT_PASSWORD, alice.token):
            assert secret not in written, (record.name, record.getMessage())
        assert not _ANY_JWT.search(written), (record.name, record.getMessage())


_INTERNALS = re.compile(
    r"Traceback|File \"|SELECT|INSERT|UPDATE |psycopg|sqlalchemy|account_name|"
    r"UndefinedColumn|\.py\b",
    re.I,
)


@pytest.fixture
def broken_accounts_table(runtime: Runtime, owner_engine: Engine):  # type: ignore[no-untyped-def]
    """The accounts table with a column renamed: every account query fails in PostgreSQL."""
    with owner_engine.begin() as conn:
        conn.execute(text("ALTER TABLE accounts RENAME COLUMN account_name TO account_name_gone"))
    try:
        yield
    finally:
        with owner_engine.begin() as conn:
            conn.execute(
                text("ALTER TABLE accounts RENAME COLUMN account_name_gone TO account_name")
            )
        runtime.db.engine.dispose()  # connections may have cached the broken statements


def test_database_errors_answer_without_internals(
    client, alice: Identity, broken_accounts_table: None, caplog
) -> None:
    caplog.set_level(logging.DEBUG)
    responses = [
        client.get("/api/accounts", headers=alice.bearer),
        client.post("/api/accounts", json=account_body(password=PASSWORD), headers=alice.bearer),
        client.get("/api/accounts/some-id", headers=alice.bearer),
    ]
    for response in responses:
        assert response.status_code == 500, response.text
        body = response.json()
        assert set(body) == {"error", "message", "code", "timestamp"}
        assert body["code"] == "INTERNAL_ERROR"
        assert not _INTERNALS.search(response.text), response.text
        assert PASSWORD not in response.text
    # The operator, on the other hand, gets the database's own words in the log.
    assert any("account_name" in _record_text(r) for r in caplog.records)
