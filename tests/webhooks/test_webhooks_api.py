"""The webhook operations over HTTP: secrets shown once, validation, tenant scoping."""

from __future__ import annotations

import time
from typing import Any

from tests.conftest import Identity
from tests.factories import create_account

HOOK_URL = "https://hooks.example.test/events"


def create_hook(client: Any, who: Identity, **body: Any) -> dict[str, Any]:
    payload = {"url": HOOK_URL, "events": ["*"], **body}
    response = client.post("/api/webhooks", json=payload, headers=who.bearer)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def test_secret_is_shown_on_create_only(api: Any, alice: Identity) -> None:
    created = create_hook(api, alice, events=["message.created", "message.created"])
    assert created["secret"].startswith("whsec_")
    assert created["events"] == ["message.created"]
    assert created["isEnabled"] is True and created["accountIds"] is None

    fetched = api.get(f"/api/webhooks/{created['id']}", headers=alice.bearer)
    assert fetched.status_code == 200
    assert "secret" not in fetched.json()
    listed = api.get("/api/webhooks", headers=alice.bearer).json()["webhooks"]
    assert [hook["id"] for hook in listed] == [created["id"]]
    assert "secret" not in listed[0]
    assert created["secret"] not in fetched.text + str(listed)


def test_update_and_delete(api: Any, alice: Identity) -> None:
    account = create_account(api, alice.bearer)
    created = create_hook(api, alice)
    path = f"/api/webhooks/{created['id']}"

    response = api.patch(
        path,
        json={
            "url": "https://other.example.test/h?x=1",
            "events": ["task.updated", "*"],
            "accountIds": [account["id"]],
            "description": "ops",
        },
        headers=alice.bearer,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["url"] == "https://other.example.test/h?x=1"
    assert body["events"] == ["*"]
    assert body["accountIds"] == [account["id"]]
    assert body["description"] == "ops"

    disabled = api.patch(path, json={"isEnabled": False}, headers=alice.bearer).json()
    assert disabled["isEnabled"] is False and disabled["disabledReason"]
    enabled = api.patch(path, json={"isEnabled": True}, headers=alice.bearer).json()
    assert enabled["isEnabled"] is True and enabled["disabledReason"] is None

    assert api.delete(path, headers=alice.bearer).status_code == 204
    missing = api.get(path, headers=alice.bearer)
    assert missing.status_code == 404
    assert missing.json()["code"] == "WEBHOOK_NOT_FOUND"


def test_rotation_returns_a_new_secret_and_keeps_the_old_for_a_day(
    api: Any, alice: Identity
) -> None:
    created = create_hook(api, alice)
    response = api.post(f"/api/webhooks/{created['id']}/rotate-secret", headers=alice.bearer)
    assert response.status_code == 200, response.text
    rotated = response.json()
    assert rotated["secret"].startswith("whsec_") and rotated["secret"] != created["secret"]
    overlap = rotated["previousSecretExpiresAt"] - rotated["secretRotatedAt"]
    assert overlap == 24 * 3600 * 1000
    assert rotated["secretRotatedAt"] <= int(time.time() * 1000)


def test_another_caller_gets_404_for_every_operation(
    api: Any, alice: Identity, bob_same_tenant: Identity, mallory: Identity
) -> None:
    created = create_hook(api, alice)
    path = f"/api/webhooks/{created['id']}"
    for other in (bob_same_tenant, mallory):
        calls = [
            api.get(path, headers=other.bearer),
            api.patch(path, json={"isEnabled": False}, headers=other.bearer),
            api.delete(path, headers=other.bearer),
            api.post(f"{path}/rotate-secret", headers=other.bearer),
            api.get(f"{path}/deliveries", headers=other.bearer),
        ]
        assert [r.status_code for r in calls] == [404] * 5
        assert all(r.json()["code"] == "WEBHOOK_NOT_FOUND" for r in calls)
        assert api.get("/api/webhooks", headers=other.bearer).json() == {"webhooks": []}
    # Untouched by all of that.
    assert api.get(path, headers=alice.bearer).json()["isEnabled"] is True


def test_accounts_must_be_the_callers(api: Any, alice: Identity, mallory: Identity) -> None:
    foreign = create_account(api, mallory.bearer)
    response = api.post(
        "/api/webhooks",
        json={"url": HOOK_URL, "events": ["*"], "accountIds": [foreign["id"]]},
        headers=alice.bearer,
    )
    assert response.status_code == 404
    assert response.json()["code"] == "ACCOUNT_NOT_FOUND"


def test_urls_are_checked_like_mail_hosts(client: Any, alice: Identity) -> None:
    # The session app: no WEBHOOK_* allowances.
    cases = {
        "http://hooks.example.test/x": "PLAINTEXT_NOT_ALLOWED",
        "https://127.0.0.1/x": "HOST_NOT_ALLOWED",
        "https://169.254.169.254/latest": "HOST_NOT_ALLOWED",
        "https://10.1.2.3:8443/x": "HOST_NOT_ALLOWED",
        "https://no-such-host.invalid/x": "HOST_UNRESOLVABLE",
        "https://user:pw@hooks.example.com/x": "VALIDATION_ERROR",
        "https://hooks.example.com/x#frag": "VALIDATION_ERROR",
        "ftp://hooks.example.com/x": "VALIDATION_ERROR",
    }
    for url, code in cases.items():
        response = client.post(
            "/api/webhooks", json={"url": url, "events": ["*"]}, headers=alice.bearer
        )
        assert response.status_code == 400, url
        assert response.json()["code"] == code, (url, response.text)
    assert client.get("/api/webhooks", headers=alice.bearer).json() == {"webhooks": []}


def test_a_user_holds_a_bounded_number_of_webhooks(app_factory: Any, alice: Identity) -> None:
    _runtime, app = app_factory(
        webhook_max_per_user=2, webhook_allowed_hosts=["*.example.test"], rate_limit_enabled=False
    )
    with app.test_client() as client:
        create_hook(client, alice)
        create_hook(client, alice)
        response = client.post(
            "/api/webhooks", json={"url": HOOK_URL, "events": ["*"]}, headers=alice.bearer
        )
    assert response.status_code == 409
    assert response.json()["code"] == "WEBHOOK_LIMIT_REACHED"


def test_rotate_keys_reencrypts_webhook_secrets(
    api: Any, webhook_runtime: Any, pg_database: Any, tmp_path: Any, alice: Identity
) -> None:
    import base64
    import secrets as random_secrets

    from sqlalchemy import select

    from db.models import Webhook
    from email_service.runtime import build_runtime
    from email_service.services.keys import rotate_credentials
    from email_service.services.webhooks import registry, signing
    from tests.conftest import make_settings

    created = create_hook(api, alice)
    rotated = api.post(f"/api/webhooks/{created['id']}/rotate-secret", headers=alice.bearer).json()
    old_ring = webhook_runtime.settings.credential_keys.get_secret_value()
    new_key = "k9:" + base64.b64encode(random_secrets.token_bytes(32)).decode()
    rotated_rt = build_runtime(
        make_settings(tmp_path, pg_database.url, credential_keys=f"{new_key},{old_ring}")
    )
    try:
        assert rotate_credentials(rotated_rt).changed >= 1
        with rotated_rt.db.transaction(alice.caller.tenant_id) as session:
            row = session.scalars(select(Webhook).where(Webhook.id == created["id"])).one()
            assert row.secret_key_id == "k9" and row.previous_secret_key_id == "k9"
            keys = registry.signing_keys(rotated_rt, row)
    finally:
        rotated_rt.close()
    assert keys == [signing.secret_key(rotated["secret"]), signing.secret_key(created["secret"])]


def test_webhook_event_filters_are_the_change_types_and_a_wildcard() -> None:
    from pathlib import Path

    import yaml

    spec = yaml.safe_load((Path(__file__).parents[2] / "openapi" / "openapi.yaml").read_text())
    schemas = spec["components"]["schemas"]
    assert schemas["WebhookEventFilter"]["enum"] == ["*", *schemas["ChangeType"]["enum"]]
