"""Another tenant's or user's account, message or attachment is "not found" to compose."""

from __future__ import annotations

from typing import Any

from email_service.runtime import Runtime
from tests.compose.conftest import (
    detail,
    listed,
    mail_with_attachments,
    sender_for,
    sync_now,
)
from tests.conftest import Identity
from tests.servers.dovecot import Dovecot
from tests.servers.smtp import SmtpServer
from tests.sync.conftest import Mailbox


def stocked(
    api: Any, runtime: Runtime, identity: Identity, dovecot: Dovecot, smtp_server: SmtpServer
) -> tuple[Mailbox, dict[str, Any]]:
    """A synced account holding one message with an attachment; returns it and its detail."""
    box = sender_for(api, identity, dovecot, smtp_server, dovecot.new_user("owner"))
    files = {"secret.txt": ("text/plain", b"for the owner only")}
    dovecot.append(
        box.user, "INBOX", mail_with_attachments("x@example.test", box.user.email, files)
    )
    sync_now(api, runtime, box, identity)
    [message] = listed(api, box, "INBOX")
    return box, detail(api, box, message["id"])


def test_other_callers_accounts_messages_and_attachments_are_not_found(
    api: Any, sync_runtime: Runtime, alice: Identity, bob_same_tenant: Identity,
    mallory: Identity, dovecot: Dovecot, smtp_server: SmtpServer,
) -> None:  # fmt: skip
    # Given alice's account with a message, and accounts of bob (same tenant) and mallory
    own, own_message = stocked(api, sync_runtime, alice, dovecot, smtp_server)
    others = [
        stocked(api, sync_runtime, stranger, dovecot, smtp_server)
        for stranger in (bob_same_tenant, mallory)
    ]
    send_body = {"to": ["a@example.test"], "subject": "s", "body": "b"}

    for (box, message), stranger in zip(others, (bob_same_tenant, mallory), strict=True):
        # A stranger cannot send from, save drafts in, or change messages of alice's account
        for path in ("/api/compose/send", "/api/compose/draft"):
            response = api.post(
                path, json={**send_body, "accountId": own.id}, headers=stranger.bearer
            )
            assert (response.status_code, response.json()["code"]) == (404, "ACCOUNT_NOT_FOUND")
        response = api.patch(
            f"/api/{own.id}/messages/{own_message['id']}", json={"isRead": True},
            headers=stranger.bearer,
        )  # fmt: skip
        assert (response.status_code, response.json()["code"]) == (404, "ACCOUNT_NOT_FOUND")

        # and alice cannot use theirs from her own account: attachments, replies, messages
        attachment_id = message["attachments"][0]["id"]
        response = api.post(
            "/api/compose/send",
            json={**send_body, "accountId": own.id, "attachmentIds": [attachment_id]},
            headers=alice.bearer,
        )
        assert (response.status_code, response.json()["code"]) == (404, "ATTACHMENT_NOT_FOUND")
        response = api.post(
            "/api/compose/send",
            json={**send_body, "accountId": own.id, "inReplyTo": message["id"]},
            headers=alice.bearer,
        )
        assert (response.status_code, response.json()["code"]) == (404, "MESSAGE_NOT_FOUND")
        response = api.patch(
            f"/api/{own.id}/messages/{message['id']}", json={"isRead": True}, headers=alice.bearer
        )
        assert (response.status_code, response.json()["code"]) == (404, "MESSAGE_NOT_FOUND")
        # and their message is unchanged
        assert detail(api, box, message["id"])["isRead"] is False
    # Nothing was queued or sent on anyone's behalf
    assert smtp_server.transactions == []
