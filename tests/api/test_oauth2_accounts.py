"""OAuth2 accounts through HTTP: providers listed without secrets, tokens stored sealed and
never shown, authType switches, an unknown provider refused, keys rotated."""

from __future__ import annotations

import json
import secrets
from typing import Any

import pytest
from sqlalchemy import select

from db.models import Account
from email_service.crypto import KeyRing
from email_service.oauth2 import ProviderConfigError, parse_providers
from email_service.runtime import set_runtime
from email_service.services import oauth2 as oauth2_service
from email_service.services.keys import rotate_credentials
from tests.conftest import Identity
from tests.factories import account_body

CLIENT_SECRET = "client-secret-" + secrets.token_hex(8)
PROVIDERS = {
    "google": {"clientId": "google-client", "clientSecret": CLIENT_SECRET},
    "corp": {
        "tokenUrl": "https://login.corp.example/token",
        "clientId": "corp-client",
        "clientSecret": CLIENT_SECRET,
        "mechanism": "OAUTHBEARER",
        "scopes": ["mail.read", "mail.send"],
        "authorizeUrl": "https://login.corp.example/authorize",
    },
}
REFRESH = "1//refresh-" + secrets.token_urlsafe(16)
ACCESS = "ya29.access-" + secrets.token_urlsafe(16)


@pytest.fixture
def built(app_factory: Any) -> Any:
    rt, app = app_factory(oauth2_providers=json.dumps(PROVIDERS))
    set_runtime(rt)
    with app.test_client() as client:
        yield rt, client


def _oauth_body(**grant: Any) -> dict[str, Any]:
    body = account_body(hostname="imap.gmail.example", port=993)
    del body["password"]
    body["authType"] = "oauth2"
    body["oauth2"] = {"provider": "google", "refreshToken": REFRESH, **grant}
    return body


def test_providers_are_listed_without_secrets(built: Any, alice: Identity) -> None:
    _, client = built
    response = client.get("/api/oauth2/providers", headers=alice.bearer)
    assert response.status_code == 200, response.text
    providers = {p["id"]: p for p in response.json()["providers"]}
    assert set(providers) == {"google", "corp"}
    google = providers["google"]
    # Built-in: the operator gave only the client id and secret.
    assert google["authorizeUrl"].startswith("https://accounts.google.com/")
    assert google["scopes"] == ["https://mail.google.com/"]
    assert google["mechanism"] == "XOAUTH2" and google["clientId"] == "google-client"
    assert google["mailHosts"]["imap"] == {
        "hostname": "imap.gmail.com",
        "port": 993,
        "encryption": "tls",
    }
    assert providers["corp"]["mechanism"] == "OAUTHBEARER"
    assert CLIENT_SECRET not in response.text and "tokenUrl" not in response.text


def test_providers_need_a_token(built: Any) -> None:
    _, client = built
    assert client.get("/api/oauth2/providers").status_code == 401


def test_create_stores_tokens_sealed_and_shows_none(built: Any, alice: Identity) -> None:
    rt, client = built
    response = client.post(
        "/api/accounts",
        json=_oauth_body(accessToken=ACCESS, expiresAt=4_000_000_000_000),
        headers=alice.bearer,
    )
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["authType"] == "oauth2" and created["oauth2Provider"] == "google"
    assert created["authError"] is None
    for text in (
        response.text,
        client.get(f"/api/accounts/{created['id']}", headers=alice.bearer).text,
    ):
        assert REFRESH not in text and ACCESS not in text
    with rt.db.transaction(alice.caller.tenant_id) as session:
        row = session.scalars(select(Account).where(Account.id == created["id"])).one()
        assert row.password_ciphertext is None and row.oauth2_ciphertext is not None
        assert REFRESH.encode() not in row.oauth2_ciphertext
        tokens = oauth2_service.unseal_tokens(rt, row)
    assert (tokens.refresh_token, tokens.access_token) == (REFRESH, ACCESS)
    assert row.oauth2_expires_at == 4_000_000_000_000
    # A fresh stored access token is used as it is: nothing asks the provider.
    assert oauth2_service.login_token(rt, row) == ACCESS


def test_unknown_provider_is_400(built: Any, alice: Identity) -> None:
    _, client = built
    body = _oauth_body()
    body["oauth2"]["provider"] = "yahoo"
    response = client.post("/api/accounts", json=body, headers=alice.bearer)
    assert response.status_code == 400
    assert response.json()["code"] == "OAUTH2_PROVIDER_UNKNOWN"


@pytest.mark.parametrize(
    "change",
    [
        {"password": "also-a-password"},  # both credentials
        {"authType": "password"},  # oauth2 tokens for a password account
    ],
)
def test_one_credential_matching_the_auth_type(
    built: Any, alice: Identity, change: dict[str, Any]
) -> None:
    _, client = built
    body = {**_oauth_body(), **change}
    response = client.post("/api/accounts", json=body, headers=alice.bearer)
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "AUTH_TYPE_MISMATCH"


def test_password_account_without_password_is_400(built: Any, alice: Identity) -> None:
    _, client = built
    body = account_body()
    del body["password"]
    response = client.post("/api/accounts", json=body, headers=alice.bearer)
    assert response.status_code == 400 and response.json()["code"] == "AUTH_TYPE_MISMATCH"


def test_switching_between_password_and_oauth2(built: Any, alice: Identity) -> None:
    rt, client = built
    created = client.post("/api/accounts", json=account_body(), headers=alice.bearer).json()
    assert created["authType"] == "password" and created["oauth2Provider"] is None
    url = f"/api/accounts/{created['id']}"
    to_oauth = client.put(
        url, json={"oauth2": {"provider": "corp", "refreshToken": REFRESH}}, headers=alice.bearer
    )
    assert to_oauth.status_code == 200, to_oauth.text
    assert to_oauth.json()["authType"] == "oauth2"
    assert to_oauth.json()["oauth2Provider"] == "corp"
    with rt.db.transaction(alice.caller.tenant_id) as session:
        row = session.get(Account, created["id"])
        assert row is not None and row.password_ciphertext is None
    back = client.put(
        url, json={"authType": "password", "password": "a-new-password"}, headers=alice.bearer
    )
    assert back.status_code == 200, back.text
    assert back.json()["authType"] == "password" and back.json()["oauth2Provider"] is None
    with rt.db.transaction(alice.caller.tenant_id) as session:
        row = session.get(Account, created["id"])
        assert row is not None and row.oauth2_ciphertext is None
    # authType without its credential says nothing about the credential: refused
    assert client.put(url, json={"authType": "oauth2"}, headers=alice.bearer).status_code == 400


def test_other_tenant_cannot_reconnect_an_account(
    built: Any, alice: Identity, mallory: Identity
) -> None:
    _, client = built
    created = client.post("/api/accounts", json=_oauth_body(), headers=alice.bearer).json()
    response = client.put(
        f"/api/accounts/{created['id']}",
        json={"oauth2": {"provider": "google", "refreshToken": "mallory-token"}},
        headers=mallory.bearer,
    )
    assert response.status_code == 404


def test_rotate_keys_reseals_tokens(built: Any, alice: Identity, app_factory: Any) -> None:
    rt, client = built
    created = client.post(
        "/api/accounts", json=_oauth_body(accessToken=ACCESS), headers=alice.bearer
    ).json()
    assert rt.settings.credential_keys is not None
    ring = f"k9:{KeyRing.generate_key()},{rt.settings.credential_keys.get_secret_value()}"
    rotated, _ = app_factory(oauth2_providers=json.dumps(PROVIDERS), credential_keys=ring)
    assert rotate_credentials(rotated).changed == 1
    with rotated.db.transaction(alice.caller.tenant_id) as session:
        row = session.get(Account, created["id"])
        assert row is not None and row.oauth2_key_id == "k9"
        tokens = oauth2_service.unseal_tokens(rotated, row)
    assert (tokens.refresh_token, tokens.access_token) == (REFRESH, ACCESS)
    report = rotate_credentials(rotated)
    assert report.changed == 0 and report.complete


def test_provider_settings_are_checked_at_start() -> None:
    assert parse_providers(None) == {}
    with pytest.raises(ProviderConfigError, match="needs clientSecret"):
        parse_providers(json.dumps({"google": {"clientId": "x"}}))
    with pytest.raises(ProviderConfigError, match="needs tokenUrl"):
        parse_providers(json.dumps({"corp": {"clientId": "x", "clientSecret": "y"}}))
    with pytest.raises(ProviderConfigError, match="mechanism"):
        parse_providers(
            json.dumps(
                {
                    "corp": {
                        "tokenUrl": "https://t.example/token",
                        "clientId": "x",
                        "clientSecret": "y",
                        "mechanism": "PLAIN",
                    }
                }
            )
        )
    with pytest.raises(ProviderConfigError) as caught:
        parse_providers(
            json.dumps({"google": {"clientId": "x", "clientSecret": "s3cr3t", "oops": 1}})
        )
    assert "s3cr3t" not in str(caught.value)
    provider = parse_providers(json.dumps({"google": {"clientId": "x", "clientSecret": "s3cr3t"}}))
    assert "s3cr3t" not in repr(provider)
