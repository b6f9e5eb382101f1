"""Syncing from servers that answer in bad faith, through the real path.

HTTP in, Dramatiq worker, and Dovecot behind the rewriting proxy of
``tests/servers/hostile.py``. Each case checks that the task ends within its deadline
(with an error in words, or with success and the bad message skipped or kept as it
could be), and that an honest account synced by the same worker afterwards is complete.
"""

from __future__ import annotations

import re
import resource
import time
import urllib.request
from collections.abc import Iterator
from email.message import EmailMessage
from typing import Any

import pytest
import sqlalchemy as sa

from db.models import Attachment, Folder, Message
from email_service.config import Settings
from email_service.runtime import Runtime
from tests.conftest import Identity
from tests.servers import hostile
from tests.servers.dovecot import Dovecot, MailUser
from tests.sync.conftest import Mailbox, account_for, sync
from tests.sync.test_imap_sync import all_messages, detail, folders_by_name


def message(subject: str, *, date: str = "Tue, 02 Jan 2024 03:04:05 +0000") -> bytes:
    msg = EmailMessage()
    msg["From"] = "Sender <sender@example.test>"
    msg["To"] = "someone@example.test"
    msg["Subject"] = subject
    msg["Date"] = date
    msg["Message-ID"] = f"<{subject.replace(' ', '.')}@example.test>"
    msg.set_content(f"Body of {subject}.\n")
    return msg.as_bytes()


@pytest.fixture
def proxy(dovecot: Dovecot) -> Iterator[hostile.HostileProxy]:
    with hostile.HostileProxy(dovecot.imap_port) as server:
        yield server


def proxied_account(
    api: Any, identity: Identity, dovecot: Dovecot, user: MailUser, proxy: hostile.HostileProxy
) -> Mailbox:
    return account_for(
        api, identity, dovecot, user, hostname="127.0.0.1", port=proxy.port, encryption="none"
    )


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def inbox_subjects(api: Any, box: Mailbox) -> list[str]:
    folders = folders_by_name(api, box)
    return sorted(m["subject"] for m in all_messages(api, box, folders["INBOX"]["id"]))


def assert_honest_account_syncs(api: Any, alice: Identity, dovecot: Dovecot) -> None:
    """The same worker still serves an honest account completely."""
    user = dovecot.new_user("honest")
    for n in range(3):
        dovecot.append(user, "INBOX", message(f"honest {n}"))
    box = account_for(api, alice, dovecot, user)
    task = sync(api, box)
    assert task["status"] == "success", task
    assert inbox_subjects(api, box) == ["honest 0", "honest 1", "honest 2"]


def not_kept(runtime: Runtime, box: Mailbox) -> bool:
    """Whether the worker kept no IMAP session of the account for its next job."""
    return runtime.mail_pools.imap.idle_count(box.id) == 0


def test_esearch_naming_four_billion_uids_is_bounded_by_the_folder(
    api: Any,
    alice: Identity,
    dovecot: Dovecot,
    mail_user: MailUser,
    proxy: hostile.HostileProxy,
    sync_runtime: Runtime,
) -> None:
    # Given a server whose every ESEARCH ALL answer is "1:4294967295"
    for n in range(3):
        dovecot.append(mail_user, "INBOX", message(f"hello {n}"))
    proxy.rules = [hostile.huge_esearch]
    box = proxied_account(api, alice, dovecot, mail_user, proxy)
    rss_before = peak_rss_mib()

    # When the account is synced (twice: the second one compares every UID)
    started = time.monotonic()
    first = sync(api, box)
    second = sync(api, box, force=True)

    # Then both end quickly, holding only the UIDs the folder can have
    assert time.monotonic() - started < 20
    assert first["status"] == "success", first
    assert second["status"] == "success", second
    assert inbox_subjects(api, box) == ["hello 0", "hello 1", "hello 2"]
    assert second["result"]["messagesRemoved"] == 0
    assert peak_rss_mib() - rss_before < 100
    # And the session that was told of them is not kept for another job
    assert not_kept(sync_runtime, box)
    assert_honest_account_syncs(api, alice, dovecot)


def test_vanished_naming_four_billion_uids_removes_only_what_we_know(
    api: Any, alice: Identity, dovecot: Dovecot, mail_user: MailUser, proxy: hostile.HostileProxy
) -> None:
    # Given a synced account
    for n in range(3):
        dovecot.append(mail_user, "INBOX", message(f"kept {n}"))
    box = proxied_account(api, alice, dovecot, mail_user, proxy)
    assert sync(api, box)["status"] == "success"

    # When new mail arrives and the server then reports everything above 1 as expunged
    dovecot.append(mail_user, "INBOX", message("new one"))

    def vanished(line: bytes) -> bytes | None:
        if line.split(b" ", 2)[1:2] == [b"OK"] and b"Fetch completed" in line:
            return b"* VANISHED (EARLIER) 2:4294967295\r\n" + line
        return line

    proxy.rules = [vanished]
    rss_before = peak_rss_mib()
    started = time.monotonic()
    task = sync(api, box)

    # Then the sync ends at once, removing only the stored messages the server named
    assert time.monotonic() - started < 20
    assert task["status"] == "success", task
    assert task["result"]["messagesRemoved"] == 2
    assert "kept 0" in inbox_subjects(api, box)
    assert peak_rss_mib() - rss_before < 100
    assert_honest_account_syncs(api, alice, dovecot)


def test_internaldate_nil_falls_back_to_the_date_header_and_the_sync_goes_on(
    api: Any, alice: Identity, dovecot: Dovecot, mail_user: MailUser, proxy: hostile.HostileProxy
) -> None:
    # Given a server that sends INTERNALDATE NIL for every message
    dovecot.append(mail_user, "INBOX", message("dated", date="Wed, 03 Jan 2024 10:00:00 +0000"))
    undated = message("undated").replace(b"Date: Tue, 02 Jan 2024 03:04:05 +0000\n", b"")
    dovecot.append(mail_user, "INBOX", undated)
    proxy.rules = [hostile.internaldate_nil]
    box = proxied_account(api, alice, dovecot, mail_user, proxy)

    # When it is synced
    before_ms = int(time.time() * 1000)
    task = sync(api, box)

    # Then every message is stored: with the Date header's time, or the time of the sync
    assert task["status"] == "success", task
    assert task["result"]["messagesAdded"] == 2
    folders = folders_by_name(api, box)
    received = {
        m["subject"]: m["receivedAt"] for m in all_messages(api, box, folders["INBOX"]["id"])
    }
    assert received["dated"] == 1704276000000  # 2024-01-03T10:00:00Z
    assert received["undated"] >= before_ms


def test_a_fetch_answer_that_cannot_be_parsed_is_skipped_and_never_asked_for_again(
    api: Any,
    alice: Identity,
    dovecot: Dovecot,
    mail_user: MailUser,
    proxy: hostile.HostileProxy,
    sync_runtime: Runtime,
) -> None:
    # Given a server whose FETCH answer for one message (the middle one) is garbled
    uids = [dovecot.append(mail_user, "INBOX", message(f"item {n}")) for n in range(3)]
    garbled = hostile.GarbledFetch(uids[1])
    proxy.rules = [garbled]
    box = proxied_account(api, alice, dovecot, mail_user, proxy)

    # When the account is synced
    task = sync(api, box)

    # Then the sync succeeds, the others are stored, and that UID is skipped with the reason
    assert task["status"] == "success", task
    assert garbled.count == 1
    assert task["result"]["messagesAdded"] == 2
    [skipped] = task["result"]["skipped"]
    assert (skipped["uid"], skipped["folder"]) == (uids[1], "INBOX")
    assert "could not be read" in skipped["reason"]
    assert inbox_subjects(api, box) == ["item 0", "item 2"]
    with sync_runtime.db.transaction(system=True) as session:
        last_seen = session.scalar(
            sa.select(Folder.last_seen_uid).where(
                Folder.account_id == box.id, Folder.name == "INBOX"
            )
        )
    assert last_seen == uids[2]  # the resume point moved past it
    assert not_kept(sync_runtime, box)  # nor is the session that read the garbled answer

    # And the next sync, with new mail, does not ask for the unreadable one again
    dovecot.append(mail_user, "INBOX", message("item 3"))
    again = sync(api, box)
    assert again["status"] == "success", again
    assert again["result"]["messagesAdded"] == 1
    assert "skipped" not in again["result"]
    assert garbled.count == 1
    assert inbox_subjects(api, box) == ["item 0", "item 2", "item 3"]
    assert_honest_account_syncs(api, alice, dovecot)


# ---------------------------------------------------------------------- deadlines and caps


@pytest.fixture
def tight_limits(sync_runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Deadlines of a second and small caps, so a stalled server fails a task quickly."""
    settings = sync_runtime.settings
    monkeypatch.setattr(settings, "mail_login_timeout", 1.0)
    monkeypatch.setattr(settings, "mail_command_timeout", 1.0)
    monkeypatch.setattr(settings, "mail_max_line_bytes", 256 * 1024)
    return settings


@pytest.mark.parametrize(
    ("rule", "error"),
    [
        (hostile.silent_after_login, r"did not answer within 1 s while"),
        (hostile.drip_after_login, r"did not answer within 1 s while logging in"),
        (hostile.endless_after_login, r"sent a line longer than 256 KiB while"),
    ],
    ids=["silent", "drip", "endless-line"],
)
def test_a_stalling_server_fails_the_task_within_its_deadlines(
    api: Any,
    alice: Identity,
    dovecot: Dovecot,
    mail_user: MailUser,
    proxy: hostile.HostileProxy,
    tight_limits: Settings,
    rule: hostile.Rule,
    error: str,
) -> None:
    # Given a server that stalls (or floods) right after the login
    dovecot.append(mail_user, "INBOX", message("never read"))
    proxy.rules = [rule]
    proxy.drip_interval = 0.3
    box = proxied_account(api, alice, dovecot, mail_user, proxy)
    rss_before = peak_rss_mib()

    # When the account is synced (every attempt: the task's retries included)
    started = time.monotonic()
    task = sync(api, box)

    # Then the task fails within its deadlines, saying why in words
    assert time.monotonic() - started < 20
    assert task["status"] == "failure", task
    assert re.search(error, task["error"]), task["error"]
    assert peak_rss_mib() - rss_before < 100
    proxy.rules = []
    assert_honest_account_syncs(api, alice, dovecot)


def stored_size(runtime: Runtime, message_id: str) -> int:
    with runtime.db.transaction(system=True) as session:
        size = session.scalar(sa.select(Message.size).where(Message.id == message_id))
    assert size is not None
    return int(size)


def big_message(subject: str, size: int) -> bytes:
    msg = EmailMessage()
    msg["From"] = "Sender <sender@example.test>"
    msg["To"] = "someone@example.test"
    msg["Subject"] = subject
    msg["Date"] = "Tue, 02 Jan 2024 03:04:05 +0000"
    msg.set_content("line of text\n" * (size // 13))
    return msg.as_bytes()


def test_a_message_above_max_message_bytes_is_kept_with_headers_and_size_only(
    api: Any,
    alice: Identity,
    dovecot: Dovecot,
    mail_user: MailUser,
    sync_runtime: Runtime,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a mailbox with a message above the cap between two small ones
    monkeypatch.setattr(sync_runtime.settings, "max_message_bytes", 20_000)
    dovecot.append(mail_user, "INBOX", message("small 1"))
    big_uid = dovecot.append(mail_user, "INBOX", big_message("too big", 200_000))
    dovecot.append(mail_user, "INBOX", message("small 2"))
    box = account_for(api, alice, dovecot, mail_user)

    # When it is synced
    task = sync(api, box)

    # Then all three are listed, the big one with its size, headers and no body
    assert task["status"] == "success", task
    assert task["result"]["messagesAdded"] == 3
    [skipped] = task["result"]["skipped"]
    assert skipped["uid"] == big_uid and "MAX_MESSAGE_BYTES" in skipped["reason"]
    folders = folders_by_name(api, box)
    listed = {m["subject"]: m for m in all_messages(api, box, folders["INBOX"]["id"])}
    assert sorted(listed) == ["small 1", "small 2", "too big"]
    big = detail(api, box, listed["too big"]["id"])
    assert stored_size(sync_runtime, big["id"]) > 200_000
    assert big["from"] == "sender@example.test"
    assert "line of text" not in big["body"]
    assert "Body of small 1" in detail(api, box, listed["small 1"]["id"])["body"]


def test_a_body_bigger_than_its_announced_size_is_thrown_away_and_the_sync_goes_on(
    api: Any,
    alice: Identity,
    dovecot: Dovecot,
    mail_user: MailUser,
    proxy: hostile.HostileProxy,
    sync_runtime: Runtime,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a server that says every message is 100 bytes but sends one of 300 KB
    monkeypatch.setattr(sync_runtime.settings, "max_message_bytes", 20_000)
    dovecot.append(mail_user, "INBOX", message("honest size"))
    dovecot.append(mail_user, "INBOX", big_message("liar", 300_000))
    proxy.rules = [hostile.lying_size(100)]
    box = proxied_account(api, alice, dovecot, mail_user, proxy)

    # When it is synced
    task = sync(api, box)

    # Then the oversized body was never kept: that message is listed as skipped
    assert task["status"] == "success", task
    assert task["result"]["messagesAdded"] == 2
    [skipped] = task["result"]["skipped"]
    assert "MAX_MESSAGE_BYTES" in skipped["reason"]
    assert "honest size" in inbox_subjects(api, box)
    assert not_kept(sync_runtime, box)  # the session that threw the body away is closed


def test_pop3_message_above_max_message_bytes_is_kept_with_headers_only(
    api: Any,
    alice: Identity,
    dovecot: Dovecot,
    mail_user: MailUser,
    sync_runtime: Runtime,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a POP3 mailbox with one message above the cap
    monkeypatch.setattr(sync_runtime.settings, "max_message_bytes", 20_000)
    dovecot.append(mail_user, "INBOX", message("pop small"))
    dovecot.append(mail_user, "INBOX", big_message("pop big", 200_000))
    box = account_for(
        api, alice, dovecot, mail_user, protocol="pop3", port=dovecot.pop3_port, encryption="none"
    )

    # When it is synced
    task = sync(api, box)

    # Then both are listed; the big one by its headers and size, and named as skipped
    assert task["status"] == "success", task
    assert task["result"]["messagesAdded"] == 2
    [skipped] = task["result"]["skipped"]
    assert "uidl" in skipped and "MAX_MESSAGE_BYTES" in skipped["reason"]
    folders = folders_by_name(api, box)
    listed = {m["subject"]: m for m in all_messages(api, box, folders["INBOX"]["id"])}
    big = detail(api, box, listed["pop big"]["id"])
    assert stored_size(sync_runtime, big["id"]) > 200_000
    assert "line of text" not in big["body"]


def test_an_attachment_whose_content_type_is_too_long_is_stored_as_octet_stream(
    api: Any, alice: Identity, dovecot: Dovecot, mail_user: MailUser, sync_runtime: Runtime
) -> None:
    # Given a message whose attachment's type/subtype is 300 characters long (more than
    # attachments.mime_type holds, and no valid media type), and an honest message
    overlong = "application/x-" + "y" * 286
    attachment = EmailMessage()
    attachment["From"] = "Sender <sender@example.test>"
    attachment["Subject"] = "overlong type"
    attachment["Date"] = "Tue, 02 Jan 2024 03:04:05 +0000"
    attachment.set_content("See the file.\n")
    attachment.add_attachment(b"the file's bytes", "application", "octet-stream", filename="f.bin")
    raw = attachment.as_bytes().replace(b"application/octet-stream", overlong.encode())
    assert raw.count(overlong.encode()) == 1
    dovecot.append(mail_user, "INBOX", raw)
    dovecot.append(mail_user, "INBOX", message("honest"))
    box = account_for(api, alice, dovecot, mail_user)

    # When it is synced
    task = sync(api, box)

    # Then both are stored, none skipped, the attachment listed as octet-stream
    assert task["status"] == "success", task
    assert task["result"]["messagesAdded"] == 2
    assert not task["result"].get("skipped"), task["result"]
    listed = {
        m["subject"]: m for m in all_messages(api, box, folders_by_name(api, box)["INBOX"]["id"])
    }
    [stored] = detail(api, box, listed["overlong type"]["id"])["attachments"]
    assert (stored["filename"], stored["mimeType"]) == ("f.bin", "application/octet-stream")
    with sync_runtime.db.transaction(system=True) as session:
        defects = session.scalar(
            sa.select(Message.defects).where(Message.id == listed["overlong type"]["id"])
        )
    assert any("300 characters" in defect for defect in defects or []), defects

    # and it downloads with its bytes, sent as application/octet-stream
    response = api.get(f"/api/{box.id}/attachments/{stored['id']}/download", headers=box.headers)
    assert response.status_code == 200, response.text
    assert response.content == b"the file's bytes"
    assert response.headers["content-type"] == "application/octet-stream"

    # and a row stored before types were bounded, with one that is no header value, is
    # served as application/octet-stream too, through the API and its presigned URL
    with sync_runtime.db.transaction(system=True) as session:
        session.execute(
            sa.update(Attachment)
            .where(Attachment.id == stored["id"])
            .values(mime_type="application/x-\u00e9" + "z" * 200)
        )
    response = api.get(f"/api/{box.id}/attachments/{stored['id']}/download", headers=box.headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    [again] = detail(api, box, listed["overlong type"]["id"])["attachments"]
    with urllib.request.urlopen(again["downloadUrl"], timeout=10) as blob:
        assert blob.read() == b"the file's bytes"
        assert blob.headers["Content-Type"] == "application/octet-stream"


def test_a_pop3_message_whose_uidl_is_too_long_is_skipped_with_its_reason_not_retrieved(
    api: Any, alice: Identity, dovecot: Dovecot, mail_user: MailUser
) -> None:
    # Given a POP3 server that gives its second message a UIDL of 300 characters (RFC 1939
    # allows 70; messages.pop_uidl holds 255, and cutting it could make two messages one)
    dovecot.append(mail_user, "INBOX", message("pop kept"))
    dovecot.append(mail_user, "INBOX", message("pop long uidl"))
    with hostile.HostileProxy(dovecot.pop3_port) as pop_proxy:
        long_uidl = b"U" * 300
        retrieved: list[bytes] = []

        def lengthen_second_uidl(line: bytes) -> bytes | None:
            return re.sub(rb"^2 \S+\r\n$", b"2 " + long_uidl + b"\r\n", line)

        def note_retr(line: bytes) -> bytes:
            if line.upper().startswith(b"RETR "):
                retrieved.append(line.split()[1])
            return line

        pop_proxy.rules = [lengthen_second_uidl]
        pop_proxy.client_rules = [note_retr]
        box = account_for(
            api,
            alice,
            dovecot,
            mail_user,
            protocol="pop3",
            hostname="127.0.0.1",
            port=pop_proxy.port,
            encryption="none",
        )

        # When it is synced, twice
        first, second = sync(api, box), sync(api, box)

    # Then the other message is stored, and this one is named as skipped each time, with
    # a reason in words and its UIDL shortened; it was never downloaded
    for task in (first, second):
        assert task["status"] == "success", task
        [skipped] = task["result"]["skipped"]
        assert "UIDL" in skipped["reason"] and "300 characters" in skipped["reason"]
        assert skipped["uidl"] == "U" * 70 + "..."
    assert first["result"]["messagesAdded"] == 1
    assert second["result"]["messagesAdded"] == 0
    assert retrieved == [b"1"]
    assert inbox_subjects(api, box) == ["pop kept"]


def test_a_hierarchy_delimiter_longer_than_one_character_reads_the_folders_as_flat(
    api: Any, alice: Identity, dovecot: Dovecot, mail_user: MailUser, proxy: hostile.HostileProxy
) -> None:
    # Given a server whose LIST names a 20-character hierarchy delimiter (RFC 3501 allows
    # one character or NIL; folders.delimiter holds 8)
    dovecot.append(mail_user, "INBOX", message("in inbox"))
    dovecot.append(mail_user, "Work/Projects", message("in projects"))

    def long_delimiter(line: bytes) -> bytes | None:
        return re.sub(rb'^(\* LIST \([^)]*\) )"/"', rb'\1"' + b"=" * 20 + b'"', line)

    proxy.rules = [long_delimiter]
    box = proxied_account(api, alice, dovecot, mail_user, proxy)

    # When it is synced
    task = sync(api, box)

    # Then every folder and message is stored, each folder under its whole name, flat
    assert task["status"] == "success", task
    assert task["result"]["messagesAdded"] == 2
    folders = folders_by_name(api, box)
    projects = folders["Work/Projects"]
    assert projects["displayName"] == "Work/Projects"
    assert projects["parentId"] is None
    subjects = [m["subject"] for m in all_messages(api, box, projects["id"])]
    assert subjects == ["in projects"]


def test_a_folder_whose_name_has_a_nul_is_left_out_and_the_others_are_synced(
    api: Any, alice: Identity, dovecot: Dovecot, mail_user: MailUser, proxy: hostile.HostileProxy
) -> None:
    # Given a server that lists a folder under a name with a NUL (IMAP allows none;
    # PostgreSQL refused the folder row and failed the whole sync)
    dovecot.append(mail_user, "INBOX", message("in inbox"))
    dovecot.append(mail_user, "Projects", message("in projects"))

    def nul_in_name(line: bytes) -> bytes | None:
        if not line.startswith(b"* LIST "):
            return line
        nul = b' "Pro\x00jects"\r\n'
        return line.replace(b' "Projects"\r\n', nul).replace(b" Projects\r\n", nul)

    proxy.rules = [nul_in_name]
    box = proxied_account(api, alice, dovecot, mail_user, proxy)

    # When it is synced
    task = sync(api, box)

    # Then the other folders and their messages are stored; that one is left out
    assert task["status"] == "success", task
    assert task["result"]["messagesAdded"] == 1
    assert inbox_subjects(api, box) == ["in inbox"]
    assert not any("jects" in name for name in folders_by_name(api, box))


def test_an_announced_size_beyond_what_messages_size_holds_is_stored_as_its_largest(
    api: Any,
    alice: Identity,
    dovecot: Dovecot,
    mail_user: MailUser,
    proxy: hostile.HostileProxy,
    sync_runtime: Runtime,
) -> None:
    # Given a server that announces 5,000,000,000 bytes for a message (messages.size is a
    # 32-bit integer: PostgreSQL refused the row and the message was lost)
    dovecot.append(mail_user, "INBOX", message("claims to be huge"))
    proxy.rules = [hostile.lying_size(5_000_000_000)]
    box = proxied_account(api, alice, dovecot, mail_user, proxy)

    # When it is synced
    task = sync(api, box)

    # Then it is kept with its headers, as any message above the cap, its size at the most
    # the column holds, and the announced size named in the reason
    assert task["status"] == "success", task
    assert task["result"]["messagesAdded"] == 1
    [skipped] = task["result"]["skipped"]
    assert "5000000000 bytes" in skipped["reason"] and "MAX_MESSAGE_BYTES" in skipped["reason"]
    [listed] = all_messages(api, box, folders_by_name(api, box)["INBOX"]["id"])
    assert listed["subject"] == "claims to be huge"
    assert stored_size(sync_runtime, listed["id"]) == 2**31 - 1
