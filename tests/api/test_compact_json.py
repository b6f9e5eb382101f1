"""Every JSON body the API writes is compact: no indentation, no spaces (README "Performance").

Only the whitespace changed: keys keep their order (sorted where Flask's provider writes
them, as written where our error bodies do), non-ASCII stays escaped.
"""

from __future__ import annotations

import json

import pytest

from email_service.runtime import Runtime
from tests.conftest import Identity
from tests.factories import SeededMessage, create_account, seed_folder


def _assert_compact(text: str) -> None:
    # Parsed and written again compactly in the order read, ASCII only: the same text.
    assert text.isascii(), text[:200]
    assert text.rstrip("\n") == json.dumps(json.loads(text), separators=(",", ":")), text[:200]


def _assert_sorted(value: object) -> None:
    if isinstance(value, dict):
        assert list(value) == sorted(value)
        for item in value.values():
            _assert_sorted(item)
    elif isinstance(value, list):
        for item in value:
            _assert_sorted(item)


@pytest.fixture
def account_id(client, alice: Identity) -> str:
    return str(create_account(client, alice.bearer)["id"])


def test_the_handlers_bodies_are_compact_with_sorted_keys(
    client, alice: Identity, runtime: Runtime, account_id: str
) -> None:
    messages = [
        SeededMessage("Grüße «quoted»", from_address="zoë@example.test"),
        SeededMessage("plain", is_read=True),
    ]
    folder_id, ids, _ = seed_folder(runtime, alice.caller, account_id, messages=messages)
    for path in (
        f"/api/{account_id}/folders/{folder_id}/messages",  # the direct writer
        f"/api/{account_id}/folders/{folder_id}/messages?limit=1&offset=1",
        f"/api/{account_id}/folders",  # Connexion's jsonifier over Flask's provider
        f"/api/{account_id}/messages/{ids[0]}",
        "/api/accounts",
    ):
        response = client.get(path, headers=alice.bearer)
        assert response.status_code == 200, response.text
        assert response.text.endswith("}\n")
        _assert_compact(response.text)
        _assert_sorted(response.json())
    page = client.get(f"/api/{account_id}/folders/{folder_id}/messages", headers=alice.bearer)
    assert "\\u00fc" in page.text and {m["subject"] for m in page.json()["messages"]} == {
        "Grüße «quoted»",
        "plain",
    }


def test_error_bodies_are_compact(client, alice: Identity, account_id: str) -> None:
    answers = [
        # Connexion's side: routing, validation, security.
        client.get("/api/nothing/here/at/all", headers=alice.bearer),
        client.get(f"/api/{account_id}/folders/x/messages?limit=0", headers=alice.bearer),
        client.get("/api/accounts"),
        # Flask's side: a handler's ServiceError.
        client.get(f"/api/{account_id}/messages/no-such-message", headers=alice.bearer),
        # Our middleware and probes.
        client.post("/metrics"),
        client.get("/livez"),
    ]
    assert [a.status_code for a in answers] == [404, 400, 401, 404, 405, 200]
    for answer in answers:
        assert answer.headers["content-type"].startswith("application/json")
        _assert_compact(answer.text)
