"""IMAP attachments: recorded at sync, fetched from the server on their first download.

Through HTTP, with the real Dovecot, PostgreSQL and the S3 test server behind.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import urllib.request
from typing import Any

import pytest
from sqlalchemy import select, update

from db.models import Account, Attachment
from email_service.blobstore import BlobNotFound
from email_service.mail.imap import ImapSession
from email_service.mail.mime import parse_message
from email_service.runtime import Runtime
from tests.conftest import Identity
from tests.servers.dovecot import Dovecot, MailUser
from tests.servers.mailgen import corpus
from tests.sync.conftest import Mailbox, account_for, sync

# Samples with attachments of every shape: base64 parts at the top level, nested three
# deep (1.2.2), an enclosed message, inline text files without a transfer encoding,
# broken base64, and a multipart that never closes (no section: the whole message is
# fetched). (rfc2231_filename's Windows-1251 text file is left out: this test app
# validates responses, and the validator reads a text/plain body as UTF-8.)
SAMPLES = (
    "mixed_attachments",
    "related_inline_image",
    "nested",
    "forwarded_rfc822",
    "broken_base64",
    "broken_missing_boundary",
    "inline_text_files",
)


def rows(runtime: Runtime, account_id: str) -> list[Attachment]:
    with runtime.db.transaction(system=True) as session:
        found = list(session.scalars(select(Attachment).where(Attachment.account_id == account_id)))
        session.expunge_all()
    return found


def has_blob(runtime: Runtime, key: str) -> bool:
    try:
        b"".join(runtime.blobs.stream(key))
    except BlobNotFound:
        return False
    return True


def inbox_details(api: Any, box: Mailbox) -> list[dict[str, Any]]:
    folders = api.get(f"/api/{box.id}/folders", headers=box.headers).json()["folders"]
    [inbox] = [f for f in folders if f["name"] == "INBOX"]
    page = api.get(
        f"/api/{box.id}/folders/{inbox['id']}/messages?limit=100", headers=box.headers
    ).json()
    details = []
    for message in page["messages"]:
        response = api.get(f"/api/{box.id}/messages/{message['id']}", headers=box.headers)
        assert response.status_code == 200, response.text
        details.append(response.json())
    return details


def download(api: Any, box: Mailbox, attachment_id: str, headers: Any = None) -> Any:
    return api.get(
        f"/api/{box.id}/attachments/{attachment_id}/download", headers=headers or box.headers
    )


class ImapCalls:
    """Counts the part fetches, whole-message fetches and logins of ``ImapSession``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.parts: list[str] = []
        self.messages = 0
        self.logins = 0
        self.refuse = False
        fetch_part, fetch, open_ = ImapSession.fetch_part, ImapSession.fetch, ImapSession.open
        calls = self

        def counting_fetch_part(session: ImapSession, uid: int, section: str) -> bytes | None:
            calls.parts.append(section)
            return fetch_part(session, uid, section)

        def counting_fetch(session: ImapSession, *args: Any, **kwargs: Any) -> Any:
            calls.messages += 1
            return fetch(session, *args, **kwargs)

        def counting_open(session: ImapSession) -> None:
            calls.logins += 1
            if calls.refuse:
                raise AssertionError("the mail server must not be asked")
            open_(session)

        monkeypatch.setattr(ImapSession, "fetch_part", counting_fetch_part)
        monkeypatch.setattr(ImapSession, "fetch", counting_fetch)
        monkeypatch.setattr(ImapSession, "open", counting_open)


@pytest.fixture
def imap_calls(monkeypatch: pytest.MonkeyPatch) -> ImapCalls:
    return ImapCalls(monkeypatch)


def originals(details: list[dict[str, Any]]) -> dict[str, dict[str, bytes]]:
    """Each synced message's attachments (by file name) as the parser reads the sample."""
    by_subject = {parse_message(raw).subject: raw for raw in corpus().values()}
    return {
        message["id"]: {
            a.filename: a.data for a in parse_message(by_subject[message["subject"]]).attachments
        }
        for message in details
    }


def server_seen(dovecot: Dovecot, user: MailUser) -> dict[int, bool]:
    client = dovecot.imap(user)
    try:
        client.select_folder("INBOX", readonly=True)
        return {
            uid: b"\\Seen" in data[b"FLAGS"] for uid, data in client.fetch("1:*", ["FLAGS"]).items()
        }
    finally:
        with contextlib.suppress(Exception):
            client.logout()


def test_sync_stores_no_blob_and_the_first_download_fetches_just_that_part(
    api: Any, mailbox: Mailbox, dovecot: Dovecot, sync_runtime: Runtime, imap_calls: ImapCalls
) -> None:
    # Given synced messages with attachments of every shape
    samples = corpus()
    for name in SAMPLES:
        dovecot.append(mailbox.user, "INBOX", samples[name])
    assert sync(api, mailbox)["status"] == "success"

    # Then nothing was uploaded: every attachment is listed, none has a blob or a URL
    stored = rows(sync_runtime, mailbox.id)
    assert len(stored) == sum(len(parse_message(samples[n]).attachments) for n in SAMPLES)
    assert all(row.stored_at is None for row in stored)
    assert not any(has_blob(sync_runtime, row.storage_key) for row in stored)
    details = inbox_details(api, mailbox)
    assert all("downloadUrl" not in a for m in details for a in m["attachments"])
    sections = {row.id: row.imap_section for row in stored}
    assert sorted(s for s in sections.values() if s) == sorted(
        ["2", "3", "2", "1.2.2", "2", "2", "2", "2", "3"]
    )
    seen_before = server_seen(dovecot, mailbox.user)

    # When each attachment is downloaded for the first time
    expected = originals(details)
    imap_calls.parts.clear()
    for message in details:
        for attachment in message["attachments"]:
            whole_before = imap_calls.messages
            response = download(api, mailbox, attachment["id"])
            # Then the bytes are the attachment's, exactly
            assert response.status_code == 200, response.text
            assert response.content == expected[message["id"]][attachment["filename"]]
            assert response.headers["content-type"].startswith(attachment["mimeType"])
            assert int(response.headers["content-length"]) == attachment["size"]
            # fetched as one part where its section is known, whole only where it is not
            whole = imap_calls.messages - whole_before
            assert whole == (0 if sections[attachment["id"]] else 1), attachment
    assert len(imap_calls.parts) == sum(1 for s in sections.values() if s)

    # and each is stored now, its row says so, and getMessage hands out presigned URLs
    assert all(row.stored_at is not None for row in rows(sync_runtime, mailbox.id))
    for message in inbox_details(api, mailbox):
        for attachment in message["attachments"]:
            with urllib.request.urlopen(attachment["downloadUrl"], timeout=10) as blob:
                assert blob.read() == expected[message["id"]][attachment["filename"]]
    # and nothing was marked read on the server (BODY.PEEK)
    assert server_seen(dovecot, mailbox.user) == seen_before

    # When they are downloaded again, the mail server is not asked at all
    imap_calls.refuse = True
    logins = imap_calls.logins
    for message in details:
        for attachment in message["attachments"]:
            response = download(api, mailbox, attachment["id"])
            assert response.status_code == 200
            assert response.content == expected[message["id"]][attachment["filename"]]
    assert imap_calls.logins == logins


def expunge_all(dovecot: Dovecot, user: MailUser, folder: str = "INBOX") -> None:
    client = dovecot.imap(user)
    try:
        client.select_folder(folder)
        client.delete_messages(client.search("ALL"))
        client.expunge()
    finally:
        with contextlib.suppress(Exception):
            client.logout()


def first_attachment(api: Any, box: Mailbox) -> dict[str, Any]:
    [message] = inbox_details(api, box)
    return dict(message["attachments"][0])


def assert_error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert set(body) == {"error", "message", "code", "timestamp"}
    assert body["code"] == code
    return body


def test_a_message_expunged_on_the_server_before_its_first_download_is_404_not_on_mail_server(
    api: Any, mailbox: Mailbox, dovecot: Dovecot, sync_runtime: Runtime
) -> None:
    dovecot.append(mailbox.user, "INBOX", corpus()["mixed_attachments"])
    assert sync(api, mailbox)["status"] == "success"
    attachment = first_attachment(api, mailbox)
    expunge_all(dovecot, mailbox.user)

    body = assert_error(download(api, mailbox, attachment["id"]), 404, "NOT_ON_MAIL_SERVER")
    assert "no longer on the mail server" in body["message"]
    # Nothing is lost or half-stored: the row is as it was, no blob was made
    [row] = [r for r in rows(sync_runtime, mailbox.id) if r.id == attachment["id"]]
    assert row.stored_at is None and not has_blob(sync_runtime, row.storage_key)
    # and the next sync removes the message, as it would have anyway
    assert sync(api, mailbox)["result"]["messagesRemoved"] == 1
    assert_error(download(api, mailbox, attachment["id"]), 404, "ATTACHMENT_NOT_FOUND")


def test_a_folder_renumbered_on_the_server_is_404_not_on_mail_server(
    api: Any, mailbox: Mailbox, dovecot: Dovecot
) -> None:
    dovecot.append(mailbox.user, "INBOX", corpus()["mixed_attachments"])
    assert sync(api, mailbox)["status"] == "success"
    attachment = first_attachment(api, mailbox)
    status = dovecot.doveadm("mailbox", "status", "-u", mailbox.user.email, "uidvalidity", "INBOX")
    uidvalidity = int(status.split("=")[1])
    dovecot.doveadm(
        "mailbox", "update", "-u", mailbox.user.email, "--uid-validity", str(uidvalidity + 7),
        "INBOX",
    )  # fmt: skip

    body = assert_error(download(api, mailbox, attachment["id"]), 404, "NOT_ON_MAIL_SERVER")
    assert "UIDVALIDITY" in body["message"]
    # After the sync that rebuilds the folder, the same file downloads under its new id
    assert sync(api, mailbox)["status"] == "success"
    again = first_attachment(api, mailbox)
    assert download(api, mailbox, again["id"]).status_code == 200


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def set_port(runtime: Runtime, account_id: str, port: int) -> None:
    with runtime.db.transaction(system=True) as session:
        session.execute(update(Account).where(Account.id == account_id).values(port=port))


def test_an_unreachable_mail_server_is_502_and_the_download_works_once_it_is_back(
    api: Any, mailbox: Mailbox, dovecot: Dovecot, sync_runtime: Runtime
) -> None:
    dovecot.append(mailbox.user, "INBOX", corpus()["mixed_attachments"])
    assert sync(api, mailbox)["status"] == "success"
    attachment = first_attachment(api, mailbox)
    set_port(sync_runtime, mailbox.id, closed_port())

    body = assert_error(download(api, mailbox, attachment["id"]), 502, "MAIL_SERVER_UNAVAILABLE")
    assert "connect" in body["message"] and mailbox.user.password not in body["message"]

    set_port(sync_runtime, mailbox.id, dovecot.imaps_port)
    response = download(api, mailbox, attachment["id"])
    assert response.status_code == 200 and len(response.content) == attachment["size"]


def test_a_refused_login_is_502_mail_login_failed(
    api: Any, mailbox: Mailbox, dovecot: Dovecot
) -> None:
    dovecot.append(mailbox.user, "INBOX", corpus()["mixed_attachments"])
    assert sync(api, mailbox)["status"] == "success"
    attachment = first_attachment(api, mailbox)
    changed = api.put(
        f"/api/accounts/{mailbox.id}",
        json={"password": "not-the-password"},
        headers=mailbox.headers,
    )
    assert changed.status_code == 200, changed.text

    body = assert_error(download(api, mailbox, attachment["id"]), 502, "MAIL_LOGIN_FAILED")
    assert "not-the-password" not in body["message"]


def test_another_tenant_gets_404_and_the_mail_server_is_not_asked(
    api: Any,
    mailbox: Mailbox,
    dovecot: Dovecot,
    mallory: Identity,
    imap_calls: ImapCalls,
) -> None:
    dovecot.append(mailbox.user, "INBOX", corpus()["mixed_attachments"])
    assert sync(api, mailbox)["status"] == "success"
    attachment = first_attachment(api, mailbox)
    theirs = account_for(api, mallory, dovecot, dovecot.new_user())

    imap_calls.refuse = True
    logins = imap_calls.logins
    # with their own account id, and with the owner's
    assert_error(download(api, theirs, attachment["id"]), 404, "ATTACHMENT_NOT_FOUND")
    assert_error(
        download(api, mailbox, attachment["id"], headers=mallory.bearer), 404, "ACCOUNT_NOT_FOUND"
    )
    assert imap_calls.logins == logins


def test_concurrent_first_downloads_all_get_the_same_bytes(
    api: Any, sync_app: Any, mailbox: Mailbox, dovecot: Dovecot, sync_runtime: Runtime
) -> None:
    raw = corpus()["mixed_attachments"]
    dovecot.append(mailbox.user, "INBOX", raw)
    assert sync(api, mailbox)["status"] == "success"
    attachment = first_attachment(api, mailbox)
    [expected] = [
        a.data for a in parse_message(raw).attachments if a.filename == attachment["filename"]
    ]

    results: list[tuple[int, bytes]] = []
    start = threading.Barrier(6)

    def fetch() -> None:
        with sync_app.test_client() as client:
            start.wait()
            response = download(client, mailbox, attachment["id"])
            results.append((response.status_code, response.content))

    threads = [threading.Thread(target=fetch) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert results == [(200, expected)] * 6
    [row] = [r for r in rows(sync_runtime, mailbox.id) if r.id == attachment["id"]]
    assert row.stored_at is not None
    assert b"".join(sync_runtime.blobs.stream(row.storage_key)) == expected


def test_pop3_attachments_are_still_stored_at_sync(
    api: Any, alice: Identity, dovecot: Dovecot, mail_user: MailUser, sync_runtime: Runtime
) -> None:
    dovecot.append(mail_user, "INBOX", corpus()["mixed_attachments"])
    box = account_for(
        api, alice, dovecot, mail_user, protocol="pop3", port=dovecot.pop3s_port, encryption="tls"
    )
    assert sync(api, box)["status"] == "success"
    stored = rows(sync_runtime, box.id)
    assert len(stored) == 2
    assert all(row.stored_at is not None and row.imap_section is None for row in stored)
    assert all(has_blob(sync_runtime, row.storage_key) for row in stored)
