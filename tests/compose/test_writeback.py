"""Changing flags: at once through the API, then on the IMAP server by a ``flags`` task."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from sqlalchemy import event, select, update

from db.models import Message, Task
from email_service import locks
from email_service.errors import InvalidRequest
from email_service.jobs import Attempt
from email_service.runtime import Runtime
from email_service.services import writeback
from tests.compose.conftest import (
    await_task,
    detail,
    folders_by_name,
    imap_of,
    listed,
    server_messages,
    sync_now,
    task_row,
)
from tests.conftest import Identity
from tests.servers.dovecot import Dovecot, MailUser
from tests.sync.conftest import Mailbox, account_for


def plain(subject: str) -> bytes:
    return (
        f"From: Someone <someone@example.test>\r\nTo: me@example.test\r\n"
        f"Subject: {subject}\r\nMessage-ID: <{subject.replace(' ', '-')}@example.test>\r\n"
        "\r\nHello.\r\n"
    ).encode()


def patch(client: Any, box: Mailbox, message_id: str, **body: Any) -> Any:
    return client.patch(f"/api/{box.id}/messages/{message_id}", json=body, headers=box.headers)


def flag_tasks(runtime: Runtime, identity: Identity, account_id: str) -> list[Task]:
    with runtime.db.transaction(identity.caller.tenant_id) as session:
        return list(
            session.scalars(
                select(Task)
                .where(Task.account_id == account_id, Task.kind == "flags")
                .order_by(Task.created_at)
            )
        )


def await_writes(runtime: Runtime, identity: Identity, box: Mailbox) -> list[Task]:
    rows = flag_tasks(runtime, identity, box.id)
    assert rows, "no flags task was queued"
    return [await_task(runtime, identity, row.id) for row in rows]


def pending(runtime: Runtime, identity: Identity, message_id: str) -> int:
    with runtime.db.transaction(identity.caller.tenant_id) as session:
        value = session.scalar(select(Message.pending_changes).where(Message.id == message_id))
    assert value is not None
    return value


def synced_message(
    api: Any, runtime: Runtime, identity: Identity, box: Mailbox, dovecot: Dovecot, subject: str
) -> dict[str, Any]:
    dovecot.append(box.user, "INBOX", plain(subject))
    sync_now(api, runtime, box, identity)
    [message] = [m for m in listed(api, box, "INBOX") if m["subject"] == subject]
    return message


def test_read_starred_and_labels_reach_the_server_and_survive_a_sync(
    api: Any, sync_runtime: Runtime, alice: Identity, sender: Mailbox, dovecot: Dovecot
) -> None:
    # Given a synced, unread message that already has an IMAP keyword of the "$" kind
    uid = dovecot.append(sender.user, "INBOX", plain("Budget"), flags=["$Forwarded", "Old"])
    sync_now(api, sync_runtime, sender, alice)
    [message] = listed(api, sender, "INBOX")
    assert message["labels"] == ["Old"] and message["isRead"] is False

    # When it is marked read and starred and labelled
    response = patch(api, sender, message["id"], isRead=True, isStarred=True, labels=["Work", "q3"])

    # Then the answer shows the change at once
    assert response.status_code == 200, response.text
    changed = response.json()
    assert (changed["isRead"], changed["isStarred"], changed["labels"]) == (
        True, True, ["Work", "q3"],
    )  # fmt: skip
    assert folders_by_name(api, sender)["INBOX"]["unreadCount"] == 0
    # and the task writes it to the server
    [task] = await_writes(sync_runtime, alice, sender)
    assert task.status == "success", task.error
    flags = server_messages(dovecot, sender.user, "INBOX")[uid]["flags"]
    assert flags == {"\\Seen", "\\Flagged", "Work", "q3", "$Forwarded"}
    assert pending(sync_runtime, alice, message["id"]) == 0
    # and a sync keeps it
    sync_now(api, sync_runtime, sender, alice)
    after = detail(api, sender, message["id"])
    assert (after["isRead"], after["isStarred"], after["labels"]) == (True, True, ["Work", "q3"])

    # When it is marked unread, unstarred and its labels cleared
    response = patch(api, sender, message["id"], isRead=False, isStarred=False, labels=[])
    assert response.status_code == 200, response.text
    assert all(row.status == "success" for row in await_writes(sync_runtime, alice, sender))
    assert server_messages(dovecot, sender.user, "INBOX")[uid]["flags"] == {"$Forwarded"}
    sync_now(api, sync_runtime, sender, alice)
    after = detail(api, sender, message["id"])
    assert (after["isRead"], after["isStarred"], after["labels"]) == (False, False, [])


def test_spam_moves_the_message_to_junk_and_back(
    api: Any, sync_runtime: Runtime, alice: Identity, sender: Mailbox, dovecot: Dovecot
) -> None:
    message = synced_message(api, sync_runtime, alice, sender, dovecot, "Cheap watches")

    # When it is marked as spam
    response = patch(api, sender, message["id"], isSpam=True)
    assert response.status_code == 200 and response.json()["isSpam"] is True
    [task] = await_writes(sync_runtime, alice, sender)
    assert task.status == "success", task.error

    # Then on the server it moved from INBOX to Junk, marked $Junk
    assert server_messages(dovecot, sender.user, "INBOX") == {}
    [(junk_uid, entry)] = server_messages(dovecot, sender.user, "Junk").items()
    assert "$Junk" in entry["flags"]
    # and the same message (same id) now lives in the Junk folder, with the new UID
    folders = folders_by_name(api, sender)
    moved = detail(api, sender, message["id"])
    assert moved["folderId"] == folders["Junk"]["id"] and moved["isSpam"] is True
    with sync_runtime.db.transaction(alice.caller.tenant_id) as session:
        assert session.scalar(select(Message.uid).where(Message.id == message["id"])) == junk_uid
    # and a sync neither duplicates nor loses it
    sync_now(api, sync_runtime, sender, alice)
    assert [m["id"] for m in listed(api, sender, "Junk")] == [message["id"]]
    assert listed(api, sender, "INBOX") == []

    # When it is marked as not spam, it goes back to INBOX without $Junk
    response = patch(api, sender, message["id"], isSpam=False)
    assert response.status_code == 200 and response.json()["isSpam"] is False
    assert all(row.status == "success" for row in await_writes(sync_runtime, alice, sender))
    assert server_messages(dovecot, sender.user, "Junk") == {}
    [(_, back)] = server_messages(dovecot, sender.user, "INBOX").items()
    assert "$Junk" not in back["flags"]
    sync_now(api, sync_runtime, sender, alice)
    assert [m["id"] for m in listed(api, sender, "INBOX")] == [message["id"]]
    assert detail(api, sender, message["id"])["isSpam"] is False


def test_folder_counts_follow_edits_and_moves_without_a_recount(
    api: Any, sync_runtime: Runtime, alice: Identity, sender: Mailbox, dovecot: Dovecot
) -> None:
    # Given three unread messages in INBOX
    for subject in ("One", "Two", "Three"):
        dovecot.append(sender.user, "INBOX", plain(subject))
    sync_now(api, sync_runtime, sender, alice)
    first, second, _ = listed(api, sender, "INBOX")
    statements: list[str] = []

    def note(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement.lower())

    # When one is marked read (twice, the second a no-op), then marked read and
    # unread again, and another is moved to Junk by its write-back
    event.listen(sync_runtime.db.engine, "before_cursor_execute", note)
    try:
        for body in ({"isRead": True}, {"isRead": True}, {"isRead": False}, {"isRead": True}):
            assert patch(api, sender, first["id"], **body).status_code == 200
        assert patch(api, sender, second["id"], isSpam=True).status_code == 200
        assert all(row.status == "success" for row in await_writes(sync_runtime, alice, sender))
    finally:
        event.remove(sync_runtime.db.engine, "before_cursor_execute", note)

    # Then the stored counts moved by each change, before any sync
    folders = folders_by_name(api, sender)
    assert (folders["INBOX"]["messageCount"], folders["INBOX"]["unreadCount"]) == (2, 1)
    assert (folders["Junk"]["messageCount"], folders["Junk"]["unreadCount"]) == (1, 1)
    # and no step counted a folder's messages to get there
    assert statements and not [s for s in statements if "count(" in s and "messages" in s]
    # and a sync (which recounts a folder it mirrors) agrees
    sync_now(api, sync_runtime, sender, alice)
    again = folders_by_name(api, sender)
    assert (again["INBOX"]["messageCount"], again["INBOX"]["unreadCount"]) == (2, 1)
    assert (again["Junk"]["messageCount"], again["Junk"]["unreadCount"]) == (1, 1)


def test_the_write_waits_for_a_running_sync_and_the_local_change_wins(
    api: Any, sync_runtime: Runtime, alice: Identity, sender: Mailbox, dovecot: Dovecot
) -> None:
    message = synced_message(api, sync_runtime, alice, sender, dovecot, "Contested")
    tenant = alice.caller.tenant_id

    # Given the account's sync lock is held (as by a running sync)
    release = threading.Event()
    held = threading.Event()

    def hold_lock() -> None:
        with locks.try_lock(sync_runtime.db, f"sync:{sender.id}") as taken:
            assert taken
            held.set()
            release.wait(60)

    holder = threading.Thread(target=hold_lock)
    holder.start()
    try:
        assert held.wait(10)
        # When the message is starred, the write-back task waits (status retry)
        response = patch(api, sender, message["id"], isStarred=True)
        assert response.status_code == 200
        [task] = flag_tasks(sync_runtime, alice, sender.id)
        waiting = await_task(sync_runtime, alice, task.id, until=lambda row: row.status == "retry")
        assert "being synchronised" in (waiting.error or "")
        assert pending(sync_runtime, alice, message["id"]) == 1
        # and meanwhile another client marks it read on the server
        with imap_of(dovecot, sender.user) as client:
            client.select_folder("INBOX")
            client.add_flags(client.search("ALL"), ["\\Seen"])
    finally:
        release.set()
        holder.join()

    # Then the task writes the star once the lock is free
    done = await_task(sync_runtime, alice, task.id)
    assert done.status == "success", done.error
    [entry] = server_messages(dovecot, sender.user, "INBOX").values()
    assert {"\\Flagged", "\\Seen"} <= entry["flags"]
    assert pending(sync_runtime, alice, message["id"]) == 0
    # and a sync then takes the server's other change too
    sync_now(api, sync_runtime, sender, alice)
    after = detail(api, sender, message["id"])
    assert after["isStarred"] is True and after["isRead"] is True

    # When the finished task's job runs again, it does not close a change twice
    with sync_runtime.db.transaction(tenant) as session:
        session.execute(
            update(Message).where(Message.id == message["id"]).values(pending_changes=1)
        )
        session.execute(update(Task).where(Task.id == task.id).values(status="started"))
    writeback.run_flags(sync_runtime, tenant, task.id, Attempt(1, False))
    assert task_row(sync_runtime, alice, task.id).status == "success"
    assert pending(sync_runtime, alice, message["id"]) == 1


def test_labels_that_are_not_imap_keywords_are_refused(
    api: Any, sync_runtime: Runtime, alice: Identity, sender: Mailbox, dovecot: Dovecot
) -> None:
    message = synced_message(api, sync_runtime, alice, sender, dovecot, "Labels")
    for label in ("two words", "$Junk", "\\Seen", "naïve", 'quo"te', "(paren)"):
        response = patch(api, sender, message["id"], labels=[label])
        assert response.status_code == 400, label
        assert response.json()["code"] == "VALIDATION_ERROR"
        assert "'labels.0'" in response.json()["message"]
    assert flag_tasks(sync_runtime, alice, sender.id) == []
    assert detail(api, sender, message["id"])["labels"] == []


def test_the_service_refuses_labels_it_could_not_write_whoever_calls_it() -> None:
    with pytest.raises(InvalidRequest) as refused:
        writeback.check_labels(["fine", "not fine"])
    assert refused.value.code == "INVALID_LABEL"
    assert writeback.check_labels(["Work", "work", "q3"]) == ["Work", "q3"]


def test_a_pop3_message_changes_locally_without_a_task(
    api: Any, sync_runtime: Runtime, alice: Identity, dovecot: Dovecot, mail_user: MailUser
) -> None:
    dovecot.append(mail_user, "INBOX", plain("Pop"))
    box = account_for(
        api, alice, dovecot, mail_user, protocol="pop3", port=dovecot.pop3s_port, encryption="tls"
    )
    sync_now(api, sync_runtime, box, alice)
    [message] = listed(api, box, "INBOX")

    response = patch(api, box, message["id"], isRead=True, labels=["kept"])

    assert response.status_code == 200
    assert (response.json()["isRead"], response.json()["labels"]) == (True, ["kept"])
    assert flag_tasks(sync_runtime, alice, box.id) == []
    assert pending(sync_runtime, alice, message["id"]) == 0
    sync_now(api, sync_runtime, box, alice)
    assert detail(api, box, message["id"])["isRead"] is True
