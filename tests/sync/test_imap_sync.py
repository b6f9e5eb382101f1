"""IMAP sync end to end: HTTP in, Dramatiq worker, real Dovecot and S3 behind.

Each test fills a fresh Dovecot user by APPEND, syncs through ``POST /api/sync/{id}``
and compares what the API shows with what the server holds.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
import urllib.request
from typing import Any

import pytest
import sqlalchemy as sa

from db.models import Account, Folder, now_ms
from email_service.runtime import Runtime
from tests.conftest import Identity, new_identity
from tests.servers.dovecot import Dovecot, MailUser
from tests.servers.mailgen import EXPECTED, corpus
from tests.sync.conftest import Mailbox, account_for, sync


def fill_with_corpus(dovecot: Dovecot, user: MailUser) -> dict[str, int]:
    """APPEND every corpus sample to its folder; returns name -> UID."""
    uids = {}
    for name, raw in corpus().items():
        flags = ["\\Seen"] if name in ("plain_ascii", "thread_2") else []
        if name == "alternative":
            flags = ["\\Flagged", "Work"]
        uids[name] = dovecot.append(user, EXPECTED[name]["folder"], raw, flags=flags)
    return uids


def folders_by_name(client: Any, box: Mailbox) -> dict[str, dict[str, Any]]:
    response = client.get(f"/api/{box.id}/folders", headers=box.headers)
    assert response.status_code == 200, response.text
    return {folder["name"]: folder for folder in response.json()["folders"]}


def all_messages(client: Any, box: Mailbox, folder_id: str) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    offset = 0
    while True:
        response = client.get(
            f"/api/{box.id}/folders/{folder_id}/messages?limit=100&offset={offset}",
            headers=box.headers,
        )
        assert response.status_code == 200, response.text
        page = response.json()
        messages.extend(page["messages"])
        offset += 100
        if offset >= page["pagination"]["total"]:
            return messages


def detail(client: Any, box: Mailbox, message_id: str) -> dict[str, Any]:
    response = client.get(f"/api/{box.id}/messages/{message_id}", headers=box.headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def server_flags(dovecot: Dovecot, user: MailUser, folder: str) -> dict[int, set[str]]:
    client = dovecot.imap(user)
    try:
        client.select_folder(folder, readonly=True)
        fetched = client.fetch("1:*", ["FLAGS"])
        return {
            uid: {f.decode() if isinstance(f, bytes) else str(f) for f in data[b"FLAGS"]}
            for uid, data in fetched.items()
        }
    finally:
        with contextlib.suppress(Exception):
            client.logout()


def by_subject(messages: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {message["subject"]: message for message in messages}


def test_first_sync_mirrors_folders_messages_flags_and_threads(
    api: Any, mailbox: Mailbox, dovecot: Dovecot
) -> None:
    # Given a mailbox with the whole corpus, some flags, and a nested custom folder
    fill_with_corpus(dovecot, mailbox.user)
    dovecot.append(mailbox.user, "Projects", corpus()["plain_ascii"])
    dovecot.append(mailbox.user, "Projects/2026", corpus()["utf8_qp"], flags=["\\Seen"])
    flags_before = server_flags(dovecot, mailbox.user, "INBOX")

    # When it is synced through the API
    task = sync(api, mailbox)

    # Then the task reports every message
    assert task["status"] == "success", task
    assert task["progress"] == 100
    total = len(corpus()) + 2
    assert task["result"]["messagesAdded"] == total
    assert task["result"]["messagesRemoved"] == 0
    assert task["error"] is None

    # and the folders carry their types, hierarchy and true counts
    folders = folders_by_name(api, mailbox)
    assert {name: f["type"] for name, f in folders.items()} == {
        "INBOX": "inbox",
        "Sent": "sent",
        "Drafts": "drafts",
        "Trash": "trash",
        "Junk": "spam",
        "Projects": "custom",
        "Projects/2026": "custom",
    }
    assert task["result"]["foldersSync"] == len(folders)
    assert folders["INBOX"]["displayName"] == "Inbox"
    assert folders["Projects/2026"]["displayName"] == "2026"
    assert folders["Projects/2026"]["parentId"] == folders["Projects"]["id"]
    inbox_samples = [n for n in corpus() if EXPECTED[n]["folder"] == "INBOX"]
    assert folders["INBOX"]["messageCount"] == len(inbox_samples)
    assert folders["INBOX"]["unreadCount"] == len(inbox_samples) - 1
    assert folders["Sent"]["messageCount"] == 1
    assert folders["Projects/2026"]["unreadCount"] == 0

    # and the messages say what the server's messages say
    inbox = by_subject(all_messages(api, mailbox, folders["INBOX"]["id"]))
    assert len(inbox) == len(inbox_samples)
    plain = inbox[EXPECTED["plain_ascii"]["subject"]]
    assert plain["isRead"] is True
    alternative = inbox[EXPECTED["alternative"]["subject"]]
    assert alternative["isStarred"] is True and alternative["isRead"] is False
    assert alternative["labels"] == ["Work"]
    for name in inbox_samples:
        expected = EXPECTED[name]
        if expected.get("broken") and not expected["subject"]:
            continue
        message = inbox[expected["subject"]]
        assert message["from"] == expected["from_addr"], name
        full = detail(api, mailbox, message["id"])
        if expected["text_snippet"]:
            assert expected["text_snippet"] in full["body"], name
        if expected["html_snippet"]:
            assert expected["html_snippet"] in (full["bodyHtml"] or ""), name
        names = sorted(a["filename"] for a in full["attachments"])
        wanted = sorted(a["filename"] for a in expected["attachments"] + expected.get("inline", []))
        if not expected.get("broken"):
            assert names == wanted, name
        assert len(full["preview"]) <= 200

    # and the HTML that would run script is inert
    xss = detail(api, mailbox, inbox[EXPECTED["html_only_xss"]["subject"]]["id"])
    assert "<script" not in (xss["bodyHtml"] or "").lower()
    assert "onerror" not in (xss["bodyHtml"] or "").lower()
    assert xss["body"]  # text derived from the HTML

    # and a reply chain across INBOX and Sent is one conversation
    sent = by_subject(all_messages(api, mailbox, folders["Sent"]["id"]))
    chain = [
        detail(api, mailbox, inbox[EXPECTED["thread_1"]["subject"]]["id"]),
        detail(api, mailbox, sent[EXPECTED["thread_2"]["subject"]]["id"]),
        detail(api, mailbox, inbox[EXPECTED["thread_3"]["subject"]]["id"]),
    ]
    assert len({message["conversationId"] for message in chain}) == 1
    assert chain[0]["conversationId"] != detail(api, mailbox, plain["id"])["conversationId"]

    # and syncing marked nothing read on the server (BODY.PEEK)
    assert server_flags(dovecot, mailbox.user, "INBOX") == flags_before


def test_attachments_download_byte_identical_through_api_and_presigned_url(
    api: Any, mailbox: Mailbox, dovecot: Dovecot
) -> None:
    raw = corpus()["mixed_attachments"]
    dovecot.append(mailbox.user, "INBOX", raw)
    assert sync(api, mailbox)["status"] == "success"
    inbox = folders_by_name(api, mailbox)["INBOX"]
    [message] = all_messages(api, mailbox, inbox["id"])
    full = detail(api, mailbox, message["id"])
    expected = {a["filename"]: a for a in EXPECTED["mixed_attachments"]["attachments"]}
    assert {a["filename"] for a in full["attachments"]} == set(expected)

    from email_service.mail.mime import parse_message

    originals = {a.filename: a.data for a in parse_message(raw).attachments}
    for attachment in full["attachments"]:
        assert attachment["size"] == expected[attachment["filename"]]["size"]
        assert attachment["mimeType"] == expected[attachment["filename"]]["content_type"]
        response = api.get(
            f"/api/{mailbox.id}/attachments/{attachment['id']}/download", headers=mailbox.headers
        )
        assert response.status_code == 200
        assert response.content == originals[attachment["filename"]]
        assert response.headers["content-type"].startswith(attachment["mimeType"])
        assert attachment["filename"] in response.headers["content-disposition"]
    # Once downloaded (the first download fetches an IMAP attachment from the server and
    # stores it; before, there is no blob to presign), the presigned URL reaches the blob
    # in S3 directly, without our API.
    for attachment in detail(api, mailbox, message["id"])["attachments"]:
        url = attachment["downloadUrl"]
        assert "X-Amz-Signature=" in url and "X-Amz-Expires=3600" in url
        with urllib.request.urlopen(url, timeout=10) as blob:
            data = blob.read()
        assert (
            hashlib.sha256(data).digest()
            == hashlib.sha256(originals[attachment["filename"]]).digest()
        )


def test_html_is_sanitised_when_first_opened_once_and_as_at_parse_time(
    api: Any, mailbox: Mailbox, dovecot: Dovecot, sync_runtime: Any
) -> None:
    from sqlalchemy import select

    from db.models import Message
    from email_service.mail.mime import parse_message

    raw = corpus()["html_only_xss"]
    dovecot.append(mailbox.user, "INBOX", raw)
    assert sync(api, mailbox)["status"] == "success"
    [message] = all_messages(api, mailbox, folders_by_name(api, mailbox)["INBOX"]["id"])

    def stored() -> tuple[str | None, str | None, int]:
        with sync_runtime.db.transaction(system=True) as session:
            row = session.execute(
                select(Message.body_html, Message.body_html_source, Message.updated_at).where(
                    Message.id == message["id"]
                )
            ).one()
        return row[0], row[1], row[2]

    # The sync kept the HTML as sent (script and all), unsanitised and unserved.
    html, source, updated_at = stored()
    assert html is None and source is not None and "<script" in source.lower()
    # The first open sanitises it, exactly as parsing the message does, and keeps that.
    expected = parse_message(raw).body_html
    assert expected and "<script" not in expected.lower()
    assert detail(api, mailbox, message["id"])["bodyHtml"] == expected
    assert stored() == (expected, None, updated_at)
    assert detail(api, mailbox, message["id"])["bodyHtml"] == expected


def test_named_inline_text_parts_are_listed_and_downloadable_with_the_body_unchanged(
    api: Any, mailbox: Mailbox, dovecot: Dovecot
) -> None:
    raw = corpus()["inline_text_files"]
    dovecot.append(mailbox.user, "INBOX", raw)
    assert sync(api, mailbox)["status"] == "success"
    [message] = all_messages(api, mailbox, folders_by_name(api, mailbox)["INBOX"]["id"])
    full = detail(api, mailbox, message["id"])
    expected = EXPECTED["inline_text_files"]
    # The files are in the body, as before, and now in the attachment list too.
    assert full["body"].startswith("Here are the minutes") and "Launch moves to May" in full["body"]
    assert expected["html_snippet"] in full["bodyHtml"]
    listed = {a["filename"]: a for a in full["attachments"]}
    assert sorted((a["filename"], a["mimeType"], a["size"]) for a in listed.values()) == sorted(
        (a["filename"], a["content_type"], a["size"]) for a in expected["attachments"]
    )
    assert full["attachmentCount"] == 2
    assert (listed["minutes.txt"]["isInline"], listed["agenda.html"]["isInline"]) == (True, False)
    downloads = {}
    for name, attachment in listed.items():
        response = api.get(
            f"/api/{mailbox.id}/attachments/{attachment['id']}/download", headers=mailbox.headers
        )
        assert response.status_code == 200
        assert response.headers["content-type"].startswith(attachment["mimeType"])
        downloads[name] = response.content
    assert downloads["minutes.txt"].startswith(b"Minutes of the planning call\r\n1. Budget")
    assert downloads["agenda.html"].startswith(b"<html><body><h1>Agenda</h1>")


def test_second_sync_shows_new_mail_flag_changes_expunges_and_deleted_folders(
    api: Any, mailbox: Mailbox, dovecot: Dovecot
) -> None:
    # Given a synced mailbox
    samples = corpus()
    uids = {
        name: dovecot.append(mailbox.user, "INBOX", samples[name])
        for name in ("plain_ascii", "alternative", "utf8_qp", "latin1_qp")
    }
    dovecot.append(mailbox.user, "Old", samples["koi8r_8bit"])
    dovecot.append(mailbox.user, "Old", samples["cp1252_qp"])
    first = sync(api, mailbox)
    assert first["result"]["messagesAdded"] == 6

    # When the server changes: new mail, a flag set, one expunged, a folder deleted
    dovecot.append(mailbox.user, "INBOX", samples["utf8_base64"])
    client = dovecot.imap(mailbox.user)
    try:
        client.select_folder("INBOX")
        client.add_flags([uids["plain_ascii"]], ["\\Seen", "\\Flagged"])
        client.delete_messages([uids["alternative"]])
        client.expunge()
        client.delete_folder("Old")
    finally:
        client.logout()
    second = sync(api, mailbox)

    # Then the second sync reports exactly that, and the API shows the new state
    assert second["status"] == "success", second
    assert second["result"]["messagesAdded"] == 1
    assert second["result"]["messagesUpdated"] == 1
    assert second["result"]["messagesRemoved"] == 1 + 2
    folders = folders_by_name(api, mailbox)
    assert "Old" not in folders
    inbox = by_subject(all_messages(api, mailbox, folders["INBOX"]["id"]))
    assert set(inbox) == {
        EXPECTED[n]["subject"] for n in ("plain_ascii", "utf8_qp", "latin1_qp", "utf8_base64")
    }
    changed = inbox[EXPECTED["plain_ascii"]["subject"]]
    assert changed["isRead"] is True and changed["isStarred"] is True
    assert folders["INBOX"]["messageCount"] == 4
    assert folders["INBOX"]["unreadCount"] == 3


def test_running_the_same_sync_twice_adds_nothing(
    api: Any, mailbox: Mailbox, dovecot: Dovecot
) -> None:
    fill_with_corpus(dovecot, mailbox.user)
    assert sync(api, mailbox)["result"]["messagesAdded"] == len(corpus())
    again = sync(api, mailbox)
    assert again["status"] == "success"
    assert again["result"] == {
        "messagesAdded": 0,
        "messagesUpdated": 0,
        "messagesRemoved": 0,
        "foldersSync": again["result"]["foldersSync"],
    }
    forced = sync(api, mailbox, force=True)
    assert forced["result"]["messagesAdded"] == 0
    assert forced["result"]["messagesRemoved"] == 0
    inbox = folders_by_name(api, mailbox)["INBOX"]
    assert len(all_messages(api, mailbox, inbox["id"])) == inbox["messageCount"]


def test_uidvalidity_change_rebuilds_the_folder(
    api: Any, mailbox: Mailbox, dovecot: Dovecot
) -> None:
    samples = corpus()
    for name in ("plain_ascii", "utf8_qp", "latin1_qp"):
        dovecot.append(mailbox.user, "Archive", samples[name])
    assert sync(api, mailbox)["result"]["messagesAdded"] == 3
    status = dovecot.doveadm(
        "mailbox", "status", "-u", mailbox.user.email, "uidvalidity", "Archive"
    )
    uidvalidity = int(status.split("=")[1])
    dovecot.doveadm(
        "mailbox", "update", "-u", mailbox.user.email, "--uid-validity", str(uidvalidity + 7),
        "Archive",
    )  # fmt: skip

    result = sync(api, mailbox)["result"]

    assert result["messagesRemoved"] == 3 and result["messagesAdded"] == 3
    archive = folders_by_name(api, mailbox)["Archive"]
    assert archive["messageCount"] == 3
    assert len(all_messages(api, mailbox, archive["id"])) == 3


def test_only_the_named_folders_are_synced(api: Any, mailbox: Mailbox, dovecot: Dovecot) -> None:
    dovecot.append(mailbox.user, "INBOX", corpus()["plain_ascii"])
    dovecot.append(mailbox.user, "Lists", corpus()["utf8_qp"])
    task = sync(api, mailbox, folders=["Lists"])
    assert task["result"]["messagesAdded"] == 1 and task["result"]["foldersSync"] == 1
    folders = folders_by_name(api, mailbox)
    assert folders["Lists"]["messageCount"] == 1
    assert folders["INBOX"]["messageCount"] == 0


def test_a_resync_without_changes_marks_every_folder_synced_and_an_account_recovered(
    api: Any, alice: Identity, dovecot: Dovecot, mail_user: MailUser, sync_runtime: Runtime
) -> None:
    # Given a mirrored account, since marked failing (a refused login of another job)
    dovecot.append(mail_user, "INBOX", corpus()["plain_ascii"])
    box = account_for(api, alice, dovecot, mail_user)
    assert sync(api, box)["status"] == "success"
    before = _synced_at(sync_runtime, box.id)
    with sync_runtime.db.transaction(system=True) as session:
        session.execute(
            sa.update(Account).where(Account.id == box.id).values(failing_since=now_ms() - 1000)
        )
    time.sleep(0.01)

    # When it syncs again with nothing changed on the server
    task = sync(api, box)

    # Then the task succeeds with every folder synced, nothing added or removed
    assert task["status"] == "success", task
    assert task["result"] == {
        "messagesAdded": 0, "messagesUpdated": 0, "messagesRemoved": 0, "foldersSync": len(before),
    }  # fmt: skip
    # and every folder's "synced at" moved, the account is free and no longer failing
    after = _synced_at(sync_runtime, box.id)
    assert after.keys() == before.keys() and all(after[f] > before[f] for f in before)
    account = api.get(f"/api/accounts/{box.id}", headers=box.headers).json()
    assert account["isSyncing"] is False and account["lastSyncAt"] >= max(after.values())
    with sync_runtime.db.transaction(system=True) as session:
        row = session.get(Account, box.id)
        assert row is not None and row.failing_since is None and row.sync_task_id is None


def _synced_at(runtime: Runtime, account_id: str) -> dict[str, int]:
    with runtime.db.transaction(system=True) as session:
        return {
            name: int(value or 0)
            for name, value in session.execute(
                sa.select(Folder.name, Folder.synced_at).where(Folder.account_id == account_id)
            )
        }


def test_wrong_password_fails_with_a_clear_reason_and_the_account_stays_usable(
    api: Any, alice: Identity, dovecot: Dovecot, mail_user: MailUser
) -> None:
    box = account_for(api, alice, dovecot, mail_user, password="not-the-password")
    task = sync(api, box)
    assert task["status"] == "failure"
    assert "refused the login" in task["error"]
    assert "not-the-password" not in task["error"]

    account = api.get(f"/api/accounts/{box.id}", headers=box.headers).json()
    assert account["isSyncing"] is False and account["lastSyncAt"] is None
    fixed = api.put(
        f"/api/accounts/{box.id}", json={"password": mail_user.password}, headers=box.headers
    )
    assert fixed.status_code == 200
    dovecot.append(mail_user, "INBOX", corpus()["plain_ascii"])
    assert sync(api, box)["status"] == "success"
    assert api.get(f"/api/accounts/{box.id}", headers=box.headers).json()["lastSyncAt"]


def test_certificate_of_an_untrusted_server_is_refused(
    api: Any, sync_runtime: Any, alice: Identity, dovecot: Dovecot, mail_user: MailUser,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    # Without the test CA configured, Dovecot's self-signed certificate is not trusted.
    monkeypatch.setattr(sync_runtime.settings, "mail_ca_file", None)
    box = account_for(api, alice, dovecot, mail_user)
    task = sync(api, box)
    assert task["status"] == "failure"
    assert "certificate" in task["error"].lower()


def test_sync_of_another_tenants_or_users_account_is_404(
    api: Any, mailbox: Mailbox, bob_same_tenant: Identity
) -> None:
    for intruder in (new_identity(), bob_same_tenant):
        response = api.post(f"/api/sync/{mailbox.id}", json={}, headers=intruder.bearer)
        assert response.status_code == 404
        assert response.json()["code"] == "ACCOUNT_NOT_FOUND"
    started = api.post(f"/api/sync/{mailbox.id}", json={}, headers=mailbox.headers).json()
    for intruder in (new_identity(), bob_same_tenant):
        response = api.get(f"/api/sync/task/{started['taskId']}", headers=intruder.bearer)
        assert response.status_code == 404
        assert response.json()["code"] == "TASK_NOT_FOUND"


def test_a_host_refused_at_connect_time_fails_the_sync_with_the_reason(
    api: Any, mailbox: Mailbox
) -> None:
    # The host was allowed when the account was saved; DNS (or the policy) changed since.
    from email_service.mail import endpoint
    from email_service.netguard import HostNotAllowed

    previous = endpoint._connect_guard

    def refuse(host: str, port: int) -> None:
        raise HostNotAllowed(f"The mail host '{host}' resolves to an address that is not allowed")

    endpoint.set_connect_guard(refuse)
    try:
        task = sync(api, mailbox)
    finally:
        endpoint.set_connect_guard(previous)
    assert task["status"] == "failure"
    assert "not allowed" in task["error"]
