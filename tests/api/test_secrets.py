"""The password never shows up in a response or a log record."""

from __future__ import annotations

import logging

from tests.conftest import Identity
from tests.factories import account_body


def test_password_absent_from_responses_and_logs(client, alice: Identity, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    password = "Unmistakable-Pa55word"
    created = client.post(
        "/api/accounts", json=account_body(password=password), headers=alice.bearer
    )
    account_id = created.json()["id"]
    responses = [
        created,
        client.get(f"/api/accounts/{account_id}", headers=alice.bearer),
        client.get("/api/accounts", headers=alice.bearer),
        client.put(
            f"/api/accounts/{account_id}", json={"password": password + "2"}, headers=alice.bearer
        ),
        client.put(f"/api/accounts/{account_id}", json={"password": "short"}, headers=alice.bearer),
        client.post(
            "/api/accounts", json=account_body(password=password, port=0), headers=alice.bearer
        ),
    ]
    assert [r.status_code for r in responses] == [201, 200, 200, 200, 400, 400]
    for response in responses:
        assert password not in response.text and "short" not in response.text
        assert "password" not in response.json() or response.status_code == 400
    for record in caplog.records:
        text = record.getMessage() + str(record.__dict__)
        assert password not in text, record
        assert alice.token not in text, record
