"""The change feed at a webhook receiver: real syncs against Dovecot, signed deliveries.

The webhook is registered before the account's first sync, so everything the feed tells
from then on is owed to it: the first mirror as one ``sync.completed``, then new mail as
a ``message.created``, each signed (checked with the reference ``standardwebhooks``
package), with the ``webhook-id`` the feed calls the change's id, in the feed's order.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
import standardwebhooks

from db import changes as feed
from db.models import now_ms
from email_service.runtime import Runtime
from email_service.services.webhooks import fanout
from tests.changes.conftest import read_feed, start_cursor
from tests.compose.conftest import await_task, listed, send
from tests.conftest import Identity
from tests.servers.dovecot import Dovecot, MailUser
from tests.sync.conftest import Mailbox, sync
from tests.webhooks.conftest import Receiver, receiver

__all__ = ["receiver"]  # the fixture, found by pytest under its name


def _mail(subject: str) -> bytes:
    return (
        f"From: Ann <ann@example.test>\r\nTo: bo@example.test\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject.replace(' ', '-')}@example.test>\r\n\r\nHello.\r\n"
    ).encode()


@pytest.fixture
def deliverable(sync_runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> Runtime:
    """The feed tests' runtime, allowed to deliver to loopback, with short retries."""
    settings = sync_runtime.settings
    monkeypatch.setattr(settings, "webhook_allowed_hosts", ["127.0.0.1"])
    monkeypatch.setattr(settings, "webhook_allow_http", True)
    monkeypatch.setattr(settings, "webhook_min_backoff_ms", 30)
    monkeypatch.setattr(settings, "webhook_max_backoff_ms", 120)
    return sync_runtime


def test_syncs_reach_a_webhook_signed_in_feed_order_and_retried_with_the_same_id(
    api: Any,
    deliverable: Runtime,
    alice: Identity,
    mallory: Identity,
    dovecot: Dovecot,
    mailbox: Mailbox,
    mail_user: MailUser,
    receiver: Receiver,
) -> None:
    # Given three messages on the server, a webhook that answers 500 twice, and another
    # tenant's webhook on the same receiver
    for n in range(3):
        dovecot.append(mail_user, "INBOX", _mail(f"old {n}"))
    cursor = start_cursor(api, alice)
    hook = api.post(
        "/api/webhooks", json={"url": receiver.url, "events": ["*"]}, headers=alice.bearer
    ).json()
    other = api.post(
        "/api/webhooks",
        json={"url": receiver.url.replace("/hook", "/other"), "events": ["*"]},
        headers=mallory.bearer,
    )
    assert other.status_code == 201, other.text
    receiver.script = [500, 500]

    # When the account is mirrored, then new mail arrives and is synced
    sync(api, mailbox)
    dovecot.append(mail_user, "INBOX", _mail("brand new"))
    sync(api, mailbox)
    changes, _ = read_feed(api, alice, cursor)

    # Then the receiver gets every change of the feed once (after the retries), in order
    got = receiver.wait_for(len(changes) + 2)
    assert [r.headers["webhook-id"] for r in got[:3]] == [changes[0]["id"]] * 3
    assert [r.headers["webhook-id"] for r in got[2:]] == [c["id"] for c in changes]
    assert {r.path for r in got} == {"/hook"}  # none of it for the other tenant
    for request in got:
        body = standardwebhooks.Webhook(hook["secret"]).verify(request.body, request.headers)
        assert body["id"] == request.headers["webhook-id"]
    types = [c["type"] for c in changes if c["type"] != "task.updated"]
    # The first mirror is one sync.completed per folder, not a change per old message.
    assert "message.created" in types and types.count("message.created") == 1
    assert types.index("sync.completed") < types.index("message.created")
    created = next(c for c in changes if c["type"] == "message.created")
    assert created["data"]["subject"] == "brand new"
    listed = api.get(f"/api/webhooks/{hook['id']}/deliveries", headers=alice.bearer).json()
    head = listed["deliveries"][-1]
    assert [a["statusCode"] for a in head["attempts"]] == [500, 500, 200]


def test_a_lost_fan_out_is_made_good_by_the_sweep(
    api: Any,
    deliverable: Runtime,
    alice: Identity,
    mailbox: Mailbox,
    receiver: Receiver,
) -> None:
    response = api.post(
        "/api/webhooks",
        json={"url": receiver.url, "events": ["sync.completed"]},
        headers=alice.bearer,
    )
    assert response.status_code == 201, response.text
    # Every process "dies" between its commit and queueing the fan-out.
    listeners = feed.LISTENERS.installed()
    for listener in listeners:
        feed.LISTENERS.remove(listener)
    try:
        sync(api, mailbox)
    finally:
        for listener in listeners:
            feed.LISTENERS.add(listener)
    assert receiver.requests == []

    assert fanout.sweep(deliverable, now=now_ms() + 60_000) >= 1

    got = receiver.wait_for(1)
    assert {json.loads(r.body)["type"] for r in got} == {"sync.completed"}


def test_flag_changes_expunges_and_sends_reach_the_webhook_as_the_feed_tells_them(
    api: Any,
    deliverable: Runtime,
    alice: Identity,
    dovecot: Dovecot,
    sender: Mailbox,
    receiver: Receiver,
) -> None:
    # Given a mirrored INBOX of two messages and a webhook for messages and tasks
    uids = [dovecot.append(sender.user, "INBOX", _mail(f"kept {n}")) for n in range(2)]
    sync(api, sender)
    wanted = ["message.created", "message.updated", "message.deleted", "task.updated"]
    hook = api.post(
        "/api/webhooks", json={"url": receiver.url, "events": wanted}, headers=alice.bearer
    ).json()
    cursor = start_cursor(api, alice)

    # When a message is flagged through the API, another is expunged on the server, and
    # a message is sent (its copy filed in Sent)
    message = next(m for m in listed(api, sender, "INBOX") if m["subject"] == "kept 0")
    flagged = api.patch(
        f"/api/{sender.id}/messages/{message['id']}", json={"isStarred": True}, headers=alice.bearer
    )
    assert flagged.status_code == 200, flagged.text
    client = dovecot.imap(sender.user)
    try:
        client.select_folder("INBOX")
        client.delete_messages([uids[1]])
        client.expunge()
    finally:
        with contextlib.suppress(Exception):
            client.logout()
    sync(api, sender)
    queued = send(api, sender, to=[sender.user.email], subject="Out")
    await_task(deliverable, alice, queued["taskId"])
    changes = [c for c in read_feed(api, alice, cursor)[0] if c["type"] in wanted]

    # Then the receiver gets exactly those changes, signed, in the feed's order
    got = receiver.wait_for(len(changes))
    assert [r.headers["webhook-id"] for r in got] == [c["id"] for c in changes]
    bodies = [standardwebhooks.Webhook(hook["secret"]).verify(r.body, r.headers) for r in got]
    assert bodies == changes
    kinds = {(c["type"], c["data"].get("origin")) for c in changes}
    assert any(c["type"] == "message.updated" and c["messageId"] == message["id"] for c in changes)
    assert any(c["type"] == "message.deleted" for c in changes)
    assert ("message.created", "send") in kinds
    assert any(c["type"] == "task.updated" and c["taskId"] == queued["taskId"] for c in changes)
