"""Another tenant's or another user's resource is a 404, for every implemented operation."""

from __future__ import annotations

import pytest

from email_service.runtime import Runtime
from tests.conftest import Identity
from tests.factories import SeededAttachment, SeededMessage, create_account, seed_folder


@pytest.fixture
def alices_mail(client, alice: Identity, runtime: Runtime) -> dict[str, str]:
    account = create_account(client, alice.bearer)
    folder_id, message_ids, attachment_ids = seed_folder(
        runtime,
        alice.caller,
        account["id"],
        messages=[
            SeededMessage(
                subject="private",
                attachments=[SeededAttachment("secret.txt", "text/plain", b"alice only")],
            )
        ],
    )
    return {
        "account": account["id"],
        "folder": folder_id,
        "message": message_ids[0],
        "attachment": attachment_ids[0],
    }


def _requests(ids: dict[str, str]) -> list[tuple[str, str, dict[str, object] | None]]:
    a, f, m, att = ids["account"], ids["folder"], ids["message"], ids["attachment"]
    return [
        ("GET", f"/api/accounts/{a}", None),
        ("PUT", f"/api/accounts/{a}", {"accountName": "stolen"}),
        ("DELETE", f"/api/accounts/{a}", None),
        ("GET", f"/api/{a}/folders", None),
        ("GET", f"/api/{a}/folders/{f}/messages", None),
        ("GET", f"/api/{a}/messages/{m}", None),
        ("GET", f"/api/{a}/attachments/{att}/download", None),
    ]


@pytest.mark.parametrize("intruder", ["mallory", "bob_same_tenant"])
def test_other_callers_get_404_everywhere(
    client,
    alices_mail: dict[str, str],
    alice: Identity,
    intruder: str,
    request: pytest.FixtureRequest,
) -> None:
    other: Identity = request.getfixturevalue(intruder)
    for method, path, body in _requests(alices_mail):
        for headers in (other.bearer, other.header_auth):
            response = client.request(method, path, json=body, headers=headers)
            assert response.status_code == 404, (method, path, response.text)
            assert response.json()["code"].endswith("NOT_FOUND")
    # Nothing changed for alice.
    account = client.get(f"/api/accounts/{alices_mail['account']}", headers=alice.bearer).json()
    assert account["accountName"] != "stolen"


def test_other_callers_do_not_see_accounts_in_lists(
    client, alices_mail: dict[str, str], mallory: Identity, bob_same_tenant: Identity
) -> None:
    for other in (mallory, bob_same_tenant):
        page = client.get("/api/accounts", headers=other.bearer).json()
        assert page == {"accounts": [], "pagination": {"total": 0, "limit": 100, "offset": 0}}


def test_foreign_ids_mixed_with_own_account_are_404(
    client, alices_mail: dict[str, str], mallory: Identity, runtime: Runtime
) -> None:
    # Mallory uses her own account id with alice's folder, message and attachment ids.
    own = create_account(client, mallory.bearer)["id"]
    for path in (
        f"/api/{own}/folders/{alices_mail['folder']}/messages",
        f"/api/{own}/messages/{alices_mail['message']}",
        f"/api/{own}/attachments/{alices_mail['attachment']}/download",
    ):
        assert client.get(path, headers=mallory.bearer).status_code == 404, path
