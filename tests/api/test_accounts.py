"""Accounts CRUD through HTTP, on PostgreSQL, with responses validated against the spec."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from db.models import Account
from email_service.runtime import Runtime
from tests.conftest import Identity
from tests.factories import account_body, create_account


def test_create_returns_account_without_password(client, alice: Identity) -> None:
    body = account_body(password="correct horse battery")
    response = client.post("/api/accounts", json=body, headers=alice.bearer)
    assert response.status_code == 201
    created = response.json()
    assert created["emailAddress"] == body["emailAddress"]
    assert created["tenantId"] == str(alice.caller.tenant_id)
    assert created["userId"] == str(alice.caller.user_id)
    assert created["lastSyncAt"] is None and created["isSyncing"] is False
    assert "password" not in created
    assert "correct horse battery" not in response.text


def test_password_is_stored_encrypted_not_hashed(client, alice: Identity, runtime: Runtime) -> None:
    from email_service.services.accounts import account_password

    created = create_account(client, alice.bearer, password="s3cret-password")
    with runtime.db.transaction(alice.caller.tenant_id) as session:
        row = session.scalars(select(Account).where(Account.id == created["id"])).one()
        assert b"s3cret-password" not in row.password_ciphertext
        assert row.password_key_id == runtime.keyring.primary_id
        assert account_password(runtime, row) == "s3cret-password"


def test_smtp_settings_default_from_incoming_server(client, alice: Identity) -> None:
    tls = create_account(client, alice.bearer, hostname="imap.mail.example", encryption="tls")
    assert (tls["smtpHostname"], tls["smtpPort"], tls["smtpEncryption"]) == (
        "smtp.mail.example",
        465,
        "tls",
    )
    starttls = create_account(client, alice.bearer, hostname="mx.example", encryption="starttls")
    assert (starttls["smtpHostname"], starttls["smtpPort"], starttls["smtpEncryption"]) == (
        "mx.example",
        587,
        "starttls",
    )
    explicit = create_account(
        client, alice.bearer, smtpHostname="out.example", smtpPort=2525, smtpEncryption="none"
    )
    assert (explicit["smtpHostname"], explicit["smtpPort"], explicit["smtpEncryption"]) == (
        "out.example",
        2525,
        "none",
    )


def test_duplicate_address_of_the_same_user_is_409_ignoring_case(
    client, alice: Identity, mallory: Identity
) -> None:
    first = create_account(client, alice.bearer, emailAddress="Shared@Example.test")
    again = client.post(
        "/api/accounts",
        json=account_body(emailAddress="shared@example.TEST"),
        headers=alice.bearer,
    )
    assert again.status_code == 409
    assert again.json()["code"] == "EMAIL_DUPLICATE"
    # Another tenant may register the same address.
    other = client.post(
        "/api/accounts",
        json=account_body(emailAddress="shared@example.test"),
        headers=mallory.bearer,
    )
    assert other.status_code == 201
    assert first["id"] != other.json()["id"]


def test_list_paginates_with_total(client, alice: Identity, bob_same_tenant: Identity) -> None:
    ids = [create_account(client, alice.bearer)["id"] for _ in range(5)]
    create_account(client, bob_same_tenant.bearer)
    page = client.get("/api/accounts?limit=2&offset=1", headers=alice.bearer).json()
    assert page["pagination"] == {"total": 5, "limit": 2, "offset": 1}
    assert [a["id"] for a in page["accounts"]] == ids[1:3]
    assert all("username" not in a and "password" not in a for a in page["accounts"])
    everything = client.get("/api/accounts", headers=alice.bearer).json()
    assert [a["id"] for a in everything["accounts"]] == ids
    assert everything["pagination"]["limit"] == 100


def test_get_returns_the_account(client, alice: Identity) -> None:
    created = create_account(client, alice.bearer)
    response = client.get(f"/api/accounts/{created['id']}", headers=alice.header_auth)
    assert response.status_code == 200
    assert response.json() == created


def test_update_changes_given_fields_and_reencrypts_password(
    client, alice: Identity, runtime: Runtime
) -> None:
    from email_service.services.accounts import account_password

    created = create_account(client, alice.bearer, password="first-password")
    response = client.put(
        f"/api/accounts/{created['id']}",
        json={
            "accountName": "Renamed",
            "port": 143,
            "encryption": "starttls",
            "password": "second-password",
        },
        headers=alice.bearer,
    )
    assert response.status_code == 200
    updated = response.json()
    assert (updated["accountName"], updated["port"], updated["encryption"]) == (
        "Renamed",
        143,
        "starttls",
    )
    assert updated["emailAddress"] == created["emailAddress"]
    assert updated["updatedAt"] >= created["updatedAt"]
    with runtime.db.transaction(alice.caller.tenant_id) as session:
        row = session.scalars(select(Account).where(Account.id == created["id"])).one()
        assert account_password(runtime, row) == "second-password"


RETARGETS = {
    "hostname": "imap2.example.test",
    "port": 994,
    "encryption": "starttls",
    "username": "someone-else",
    "smtpHostname": "smtp2.example.test",
    "smtpPort": 2525,
    "smtpEncryption": "starttls",
}


@pytest.mark.parametrize("field", sorted(RETARGETS))
def test_retargeting_without_the_password_is_refused(
    client, alice: Identity, runtime: Runtime, field: str
) -> None:
    # A stolen API token must not be able to send the stored password somewhere new.
    created = create_account(client, alice.bearer, password="the-stored-password")
    response = client.put(
        f"/api/accounts/{created['id']}",
        json={field: RETARGETS[field], "accountName": "Renamed"},
        headers=alice.bearer,
    )
    assert response.status_code == 400
    error = response.json()
    assert error["code"] == "CREDENTIAL_REQUIRED" and field in error["message"]
    assert client.get(f"/api/accounts/{created['id']}", headers=alice.bearer).json() == created

    # With the password in the same request, the change goes through.
    response = client.put(
        f"/api/accounts/{created['id']}",
        json={field: RETARGETS[field], "password": "a-new-password"},
        headers=alice.bearer,
    )
    assert response.status_code == 200, response.text
    assert response.json()[field] == RETARGETS[field]


def test_unchanged_connection_settings_and_other_fields_need_no_password(
    client, alice: Identity
) -> None:
    created = create_account(client, alice.bearer)
    response = client.put(
        f"/api/accounts/{created['id']}",
        json={
            "hostname": created["hostname"],
            "port": created["port"],
            "encryption": created["encryption"],
            "accountName": "Renamed",
            "syncInterval": 600,
            "isSyncEnabled": False,
        },
        headers=alice.bearer,
    )
    assert response.status_code == 200, response.text
    assert response.json()["accountName"] == "Renamed"


def test_email_address_cannot_change(client, alice: Identity) -> None:
    created = create_account(client, alice.bearer)
    response = client.put(
        f"/api/accounts/{created['id']}",
        json={"emailAddress": "new@example.test"},
        headers=alice.bearer,
    )
    assert response.status_code == 400
    assert "emailAddress" in response.json()["message"]
    assert (
        client.get(f"/api/accounts/{created['id']}", headers=alice.bearer).json()["emailAddress"]
        == (created["emailAddress"])
    )


def test_delete_is_soft_and_frees_the_address(client, alice: Identity, runtime: Runtime) -> None:
    created = create_account(client, alice.bearer)
    response = client.delete(f"/api/accounts/{created['id']}", headers=alice.bearer)
    assert response.status_code == 204
    assert response.content == b""
    assert client.get(f"/api/accounts/{created['id']}", headers=alice.bearer).status_code == 404
    assert client.delete(f"/api/accounts/{created['id']}", headers=alice.bearer).status_code == 404
    assert client.get("/api/accounts", headers=alice.bearer).json()["pagination"]["total"] == 0
    again = create_account(client, alice.bearer, emailAddress=created["emailAddress"])
    assert again["id"] != created["id"]
    # The deleted row is retained.
    with runtime.db.transaction(alice.caller.tenant_id) as session:
        row = session.scalars(select(Account).where(Account.id == created["id"])).one()
        assert row.deleted_at is not None


def test_missing_required_field_names_it(client, alice: Identity) -> None:
    body = account_body()
    del body["hostname"]
    response = client.post("/api/accounts", json=body, headers=alice.bearer)
    assert response.status_code == 400
    error = response.json()
    assert "hostname" in error["message"]
    assert error["code"] == "VALIDATION_ERROR" and isinstance(error["timestamp"], int)


def test_short_password_is_rejected(client, alice: Identity) -> None:
    response = client.post(
        "/api/accounts", json=account_body(password="short"), headers=alice.bearer
    )
    assert response.status_code == 400
    assert "short" not in response.json()["message"]  # the password is not echoed back


def test_an_address_is_private_to_its_user(
    client, alice: Identity, bob_same_tenant: Identity
) -> None:
    # Given alice's account
    created = create_account(client, alice.bearer, emailAddress="Shared@Example.test")
    # A user of the same tenant may add the same address: nothing says alice has it.
    bobs = create_account(client, bob_same_tenant.bearer, emailAddress="shared@example.test")
    assert bobs["id"] != created["id"]
    # Alice herself still cannot add it twice (any case).
    response = client.post(
        "/api/accounts",
        json=account_body(emailAddress="SHARED@example.test"),
        headers=alice.bearer,
    )
    assert response.status_code == 409
    assert response.json()["code"] == "EMAIL_DUPLICATE"
    assert "tenant" not in response.json()["message"]
