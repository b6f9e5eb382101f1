"""Framework-level failures answer with ErrorResponse too."""

from __future__ import annotations

import pytest

from tests.conftest import Identity


def _is_error_response(body: dict) -> bool:
    return set(body) == {"error", "message", "code", "timestamp"} and isinstance(
        body["timestamp"], int
    )


def test_unknown_route_is_404(client, alice: Identity) -> None:
    response = client.get("/api/nothing/here/at/all", headers=alice.bearer)
    assert response.status_code == 404
    assert _is_error_response(response.json())


def test_wrong_method_is_405_with_full_allow(client, alice: Identity) -> None:
    response = client.delete("/api/accounts", headers=alice.bearer)
    assert response.status_code == 405
    assert _is_error_response(response.json())
    assert {m.strip() for m in response.headers["allow"].split(",")} == {"GET", "HEAD", "POST"}
    item = client.post("/api/accounts/some-id", headers=alice.bearer)
    assert item.status_code == 405
    assert {m.strip() for m in item.headers["allow"].split(",")} >= {"GET", "PUT", "DELETE"}


def test_non_json_body_is_415(client, alice: Identity) -> None:
    response = client.post(
        "/api/accounts", content=b"name=x", headers={**alice.bearer, "Content-Type": "text/plain"}
    )
    assert response.status_code == 415
    assert _is_error_response(response.json())


@pytest.mark.parametrize("payload", [b"\xff\xfe\x00", b'{"accountName": "\xc3"}'])
def test_invalid_utf8_body_is_400(client, alice: Identity, payload: bytes) -> None:
    response = client.post(
        "/api/accounts",
        content=payload,
        headers={**alice.bearer, "Content-Type": "application/json"},
    )
    assert response.status_code == 400
    assert _is_error_response(response.json())


def test_malformed_json_is_400(client, alice: Identity) -> None:
    response = client.post(
        "/api/accounts",
        content=b"{not json",
        headers={**alice.bearer, "Content-Type": "application/json"},
    )
    assert response.status_code == 400
    assert _is_error_response(response.json())


def test_validation_error_does_not_echo_the_password(client, alice: Identity, caplog) -> None:
    caplog.set_level("DEBUG")
    body = {
        "accountName": "x",
        "emailAddress": "a@b.test",
        "protocol": "imap",
        "hostname": "h",
        "port": 1,
        "encryption": "tls",
        "username": "u",
        "password": "tiny7",
    }
    response = client.post("/api/accounts", json=body, headers=alice.bearer)
    assert response.status_code == 400
    assert "'password'" in response.json()["message"]
    assert "tiny7" not in response.text
    assert all("tiny7" not in record.getMessage() for record in caplog.records)


def test_unexpected_error_is_500_without_internals(client, alice: Identity, monkeypatch) -> None:
    from email_service.services import accounts

    def explode(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("SELECT secret FROM internals -- boom")

    monkeypatch.setattr(accounts, "list_accounts", explode)
    response = client.get("/api/accounts", headers=alice.bearer)
    assert response.status_code == 500
    body = response.json()
    assert _is_error_response(body)
    assert "SELECT" not in response.text and "Traceback" not in response.text
