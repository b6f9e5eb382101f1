"""Changes made by real syncs (Dovecot), API flag changes, sends and failing logins.

Every test reads the feed over HTTP from a cursor taken before the action, and checks
which changes appear, how often, and in which order.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from typing import Any

from email_service.runtime import Runtime
from email_service.services.changes import Cursor
from tests.changes.conftest import of_type, read_feed, start_cursor
from tests.compose.conftest import await_task, listed, send
from tests.conftest import Identity
from tests.servers.dovecot import Dovecot, MailUser
from tests.sync.conftest import Mailbox, account_for, sync


def _mail(subject: str) -> bytes:
    return (
        f"From: Ann <ann@example.test>\r\nTo: bo@example.test\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject.replace(' ', '-')}@example.test>\r\n\r\nHello.\r\n"
    ).encode()


def _positions(changes: list[dict[str, Any]]) -> list[int]:
    return [Cursor.decode(c["id"]).position for c in changes]  # type: ignore[union-attr]


def test_first_mirror_is_one_sync_completed_per_folder_not_a_change_per_message(
    api: Any, alice: Identity, dovecot: Dovecot, mailbox: Mailbox
) -> None:
    for n in range(5):
        dovecot.append(mailbox.user, "INBOX", _mail(f"old {n}"))
    cursor = start_cursor(api, alice)

    task = sync(api, mailbox)
    changes, _ = read_feed(api, alice, cursor)

    assert task["status"] == "success"
    assert of_type(changes, "message.created") == []
    completed = {c["data"]["name"]: c for c in of_type(changes, "sync.completed")}
    inbox = completed["INBOX"]
    assert inbox["data"]["reason"] == "initial"
    assert inbox["data"]["messagesAdded"] == 5
    assert inbox["folderId"] == inbox["data"]["id"]
    created = {c["data"]["name"] for c in of_type(changes, "folder.created")}
    assert set(completed) == created
    statuses = [c["data"]["status"] for c in of_type(changes, "task.updated")]
    assert statuses == ["pending", "started", "success"]
    assert _positions(changes) == sorted(_positions(changes))


def test_new_mail_flag_changes_and_expunges_after_the_first_mirror_are_told_once(
    api: Any, alice: Identity, dovecot: Dovecot, mailbox: Mailbox, mail_user: MailUser
) -> None:
    # Given a mirrored INBOX of three messages
    uids = [dovecot.append(mail_user, "INBOX", _mail(f"first {n}")) for n in range(3)]
    sync(api, mailbox)
    cursor = start_cursor(api, alice)

    # When one arrives, one is flagged and one is expunged on the server, and we sync
    # twice (the second sync finds nothing new)
    dovecot.append(mail_user, "INBOX", _mail("brand new"))
    client = dovecot.imap(mail_user)
    try:
        client.select_folder("INBOX")
        client.add_flags([uids[0]], [b"\\Flagged"])
        client.delete_messages([uids[1]])
        client.expunge()
    finally:
        with contextlib.suppress(Exception):
            client.logout()
    sync(api, mailbox)
    sync(api, mailbox)
    changes, _ = read_feed(api, alice, cursor)

    # Then each is one change, with what a consumer needs in data
    messages = [c for c in changes if c["type"].startswith("message.")]
    assert Counter(c["type"] for c in messages) == {
        "message.created": 1,
        "message.updated": 1,
        "message.deleted": 1,
    }
    created = of_type(changes, "message.created")[0]
    assert created["data"]["subject"] == "brand new"
    assert created["data"]["origin"] == "sync"
    assert created["data"]["from"] == "ann@example.test"
    assert created["messageId"] == created["data"]["id"]
    updated = of_type(changes, "message.updated")[0]
    assert updated["data"]["isStarred"] is True
    assert updated["data"]["subject"] == "first 0"
    deleted = of_type(changes, "message.deleted")[0]
    inbox_ids = {m["id"] for m in listed(api, mailbox, "INBOX")}
    assert deleted["messageId"] not in inbox_ids
    assert updated["messageId"] in inbox_ids and created["messageId"] in inbox_ids
    assert of_type(changes, "sync.completed") == []
    assert _positions(changes) == sorted(_positions(changes))


def test_a_pop3_inbox_is_one_sync_completed_then_a_change_per_message(
    api: Any, alice: Identity, dovecot: Dovecot, mail_user: MailUser
) -> None:
    # Given a POP3 account whose server holds two messages
    uids = [dovecot.append(mail_user, "INBOX", _mail(f"pop {n}")) for n in range(2)]
    box = account_for(
        api, alice, dovecot, mail_user, protocol="pop3", port=dovecot.pop3s_port, encryption="tls"
    )
    cursor = start_cursor(api, alice)

    # When it is mirrored, its INBOX is one sync.completed
    assert sync(api, box)["status"] == "success"
    changes, cursor = read_feed(api, alice, cursor)
    assert of_type(changes, "message.created") == []
    (completed,) = of_type(changes, "sync.completed")
    assert completed["data"]["reason"] == "initial"
    assert completed["data"]["messagesAdded"] == 2

    # and after that, mail that arrives or goes is a change per message
    dovecot.append(mail_user, "INBOX", _mail("pop new"))
    client = dovecot.imap(mail_user)
    try:
        client.select_folder("INBOX")
        client.delete_messages([uids[0]])
        client.expunge()
    finally:
        with contextlib.suppress(Exception):
            client.logout()
    assert sync(api, box)["status"] == "success"
    changes, _ = read_feed(api, alice, cursor)
    messages = [c for c in changes if c["type"].startswith("message.")]
    assert Counter(c["type"] for c in messages) == {"message.created": 1, "message.deleted": 1}
    created = of_type(changes, "message.created")[0]
    assert created["data"]["subject"] == "pop new" and created["data"]["origin"] == "sync"
    assert of_type(changes, "sync.completed") == []


def test_a_flag_change_through_the_api_is_told_at_once_and_its_task_after(
    api: Any,
    alice: Identity,
    dovecot: Dovecot,
    mailbox: Mailbox,
    mail_user: MailUser,
    sync_runtime: Runtime,
) -> None:
    dovecot.append(mail_user, "INBOX", _mail("to read"))
    sync(api, mailbox)
    message = listed(api, mailbox, "INBOX")[0]
    cursor = start_cursor(api, alice)

    response = api.patch(
        f"/api/{mailbox.id}/messages/{message['id']}", json={"isRead": True}, headers=alice.bearer
    )
    assert response.status_code == 200, response.text
    right_after, _ = read_feed(api, alice, cursor)
    updated = of_type(right_after, "message.updated")
    assert len(updated) == 1 and updated[0]["data"]["isRead"] is True
    flags_task = of_type(right_after, "task.updated")[0]
    assert flags_task["data"]["kind"] == "flags"

    # When the write-back job has finished
    assert await_task(sync_runtime, alice, flags_task["taskId"]).status == "success"
    later, _ = read_feed(api, alice, cursor)
    statuses = [c["data"]["status"] for c in of_type(later, "task.updated")]
    assert statuses == ["pending", "started", "success"]
    # Writing the flag to the server is not a second change of the message.
    assert len(of_type(later, "message.updated")) == 1


def test_a_send_tells_its_task_and_the_copy_it_files_in_sent(
    api: Any, alice: Identity, sender: Mailbox, sync_runtime: Runtime
) -> None:
    sync(api, sender)
    cursor = start_cursor(api, alice)

    queued = send(api, sender, to=[sender.user.email], subject="News")
    await_task(sync_runtime, alice, queued["taskId"])
    changes, _ = read_feed(api, alice, cursor)

    statuses = [c["data"]["status"] for c in of_type(changes, "task.updated")]
    assert statuses[0] == "pending" and statuses[-1] == "success"
    assert all(c["taskId"] == queued["taskId"] for c in of_type(changes, "task.updated"))
    copies = of_type(changes, "message.created")
    assert len(copies) == 1
    assert copies[0]["data"]["origin"] == "send"
    assert copies[0]["data"]["subject"] == "News"
    # The next sync does not tell the copy again (only the delivery to our own INBOX).
    after_send = changes[-1]["id"]
    sync(api, sender)
    again, _ = read_feed(api, alice, after_send)
    sent_folder = copies[0]["folderId"]
    assert [c for c in of_type(again, "message.created") if c["folderId"] == sent_folder] == []
    assert [c["data"]["origin"] for c in of_type(again, "message.created")] == ["sync"]


def test_a_saved_draft_is_told_as_its_task_and_a_draft_copy(
    api: Any, alice: Identity, sender: Mailbox, sync_runtime: Runtime
) -> None:
    sync(api, sender)
    cursor = start_cursor(api, alice)

    response = api.post(
        "/api/compose/draft",
        json={
            "accountId": sender.id,
            "to": ["later@example.test"],
            "subject": "Unfinished",
            "body": "b",
        },
        headers=alice.bearer,
    )
    assert response.status_code == 201, response.text
    task_id = response.json()["taskId"]
    await_task(sync_runtime, alice, task_id)
    changes, _ = read_feed(api, alice, cursor)

    assert [c["data"]["status"] for c in of_type(changes, "task.updated")] == [
        "pending",
        "started",
        "success",
    ]
    [copy] = of_type(changes, "message.created")
    assert copy["data"]["origin"] == "draft" and copy["data"]["subject"] == "Unfinished"


def test_a_resync_that_finds_only_a_folder_gone_tells_it_before_the_tasks_success(
    api: Any, alice: Identity, dovecot: Dovecot, mailbox: Mailbox, mail_user: MailUser
) -> None:
    # Given a mirrored account with a folder of two messages
    dovecot.append(mail_user, "INBOX", _mail("stays"))
    for n in range(2):
        dovecot.append(mail_user, "Old", _mail(f"in old {n}"))
    sync(api, mailbox)
    cursor = start_cursor(api, alice)

    # When that folder is deleted on the server, and nothing else changes
    client = dovecot.imap(mail_user)
    try:
        client.delete_folder("Old")
        folders = len(client.list_folders())
    finally:
        with contextlib.suppress(Exception):
            client.logout()
    task = sync(api, mailbox)
    changes, _ = read_feed(api, alice, cursor)

    # Then the task counts the folder's messages removed and every folder synced
    assert task["status"] == "success", task
    assert task["result"]["messagesRemoved"] == 2
    assert task["result"]["foldersSync"] == folders
    # and the feed tells the folder's removal, then the task's success, once each
    [deleted] = of_type(changes, "folder.deleted")
    assert deleted["data"]["name"] == "Old" and deleted["data"]["messagesRemoved"] == 2
    updates = of_type(changes, "task.updated")
    assert [c["data"]["status"] for c in updates] == ["pending", "started", "success"]
    assert _positions([updates[1]]) < _positions([deleted]) < _positions([updates[2]])
    assert updates[2]["data"]["result"]["messagesRemoved"] == 2
    assert of_type(changes, "message.deleted") == []


def test_a_refused_login_is_one_account_error_until_a_sync_succeeds_again(
    api: Any, alice: Identity, dovecot: Dovecot, mail_user: MailUser
) -> None:
    box = account_for(api, alice, dovecot, mail_user, password="not-the-password")
    cursor = start_cursor(api, alice)

    first = sync(api, box)
    second = sync(api, box)
    failing, cursor = read_feed(api, alice, cursor, types="account.error")
    fixed = api.put(
        f"/api/accounts/{box.id}", json={"password": mail_user.password}, headers=alice.bearer
    )
    assert fixed.status_code == 200
    third = sync(api, box)
    fourth = sync(api, box)
    recovered, _ = read_feed(api, alice, cursor, types="account.error")

    assert [first["status"], second["status"]] == ["failure", "failure"]
    assert [c["data"]["state"] for c in failing] == ["failing"]
    assert "refused" in failing[0]["data"]["error"]
    assert [third["status"], fourth["status"]] == ["success", "success"]
    assert [c["data"]["state"] for c in recovered] == ["recovered"]
    assert recovered[0]["accountId"] == box.id


def test_another_tenant_sees_none_of_a_sync(
    api: Any, alice: Identity, mallory: Identity, dovecot: Dovecot, mailbox: Mailbox
) -> None:
    theirs = start_cursor(api, mallory)
    dovecot.append(mailbox.user, "INBOX", _mail("private"))

    sync(api, mailbox)

    assert read_feed(api, mallory, theirs)[0] == []


def test_a_uidvalidity_rebuild_is_one_sync_completed_not_a_replay(
    api: Any, alice: Identity, dovecot: Dovecot, mailbox: Mailbox, mail_user: MailUser
) -> None:
    # Given a mirrored Archive of three messages
    for n in range(3):
        dovecot.append(mail_user, "Archive", _mail(f"archived {n}"))
    sync(api, mailbox)
    cursor = start_cursor(api, alice)
    # When the server gives the folder a new UIDVALIDITY and we sync
    status = dovecot.doveadm("mailbox", "status", "-u", mail_user.email, "uidvalidity", "Archive")
    renumbered = str(int(status.split("=")[1]) + 7)
    dovecot.doveadm(
        "mailbox", "update", "-u", mail_user.email, "--uid-validity", renumbered, "Archive"
    )
    sync(api, mailbox)
    changes, _ = read_feed(api, alice, cursor)

    # Then the rebuild is one change with counts, and no message is told again
    assert [c for c in changes if c["type"].startswith("message.")] == []
    [rebuilt] = of_type(changes, "sync.completed")
    assert rebuilt["data"]["name"] == "Archive"
    assert rebuilt["data"]["reason"] == "rebuild"
    assert (rebuilt["data"]["messagesAdded"], rebuilt["data"]["messagesRemoved"]) == (3, 3)


def test_folders_created_and_deleted_on_the_server_are_told(
    api: Any, alice: Identity, dovecot: Dovecot, mailbox: Mailbox, mail_user: MailUser
) -> None:
    dovecot.append(mail_user, "Old", _mail("in old"))
    sync(api, mailbox)
    cursor = start_cursor(api, alice)

    client = dovecot.imap(mail_user)
    try:
        client.delete_folder("Old")
    finally:
        with contextlib.suppress(Exception):
            client.logout()
    dovecot.append(mail_user, "Projects", _mail("in projects"))
    sync(api, mailbox)
    changes, _ = read_feed(api, alice, cursor)

    [deleted] = of_type(changes, "folder.deleted")
    assert deleted["data"]["name"] == "Old" and deleted["data"]["messagesRemoved"] == 1
    [created] = of_type(changes, "folder.created")
    assert created["data"]["name"] == "Projects"
    # A new folder's first mirror is a sync.completed, its message not a message.created.
    [completed] = of_type(changes, "sync.completed")
    assert completed["folderId"] == created["folderId"]
    assert completed["data"]["messagesAdded"] == 1
    assert of_type(changes, "message.created") == []
    assert of_type(changes, "message.deleted") == []
