"""Sync as a job: retries, interruptions, task states, the actor called directly."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest
from sqlalchemy import event, select, text

from db.models import Attachment, Message, Task
from email_service.jobs import Attempt
from email_service.mail.errors import MailConnectionError
from email_service.mail.mime import parse_message
from email_service.mailstore.messages import FolderTarget, Incoming, MessageStore
from email_service.runtime import Runtime
from email_service.scope import open_scope
from email_service.services import syncing as sync_service
from email_service.services.accounts import load_account
from email_service.services.tasks import TaskReport
from tests.conftest import Identity
from tests.servers.dovecot import Dovecot, MailUser
from tests.servers.mailgen import corpus
from tests.sync.conftest import Mailbox, account_for, sync, wait_for_task
from tests.sync.test_imap_sync import all_messages, folders_by_name

SAMPLES = [
    "plain_ascii", "alternative", "mixed_attachments", "latin1_qp", "utf8_qp", "utf8_base64",
    "thread_1", "thread_3", "nested", "encoded_headers", "koi8r_8bit",
]  # fmt: skip


def fill(dovecot: Dovecot, user: MailUser) -> None:
    samples = corpus()
    for name in SAMPLES:
        dovecot.append(user, "INBOX", samples[name])


def stored_uids(runtime: Runtime, tenant: uuid.UUID, account_id: str) -> list[int]:
    with runtime.db.transaction(tenant) as session:
        return sorted(
            uid
            for uid in session.scalars(select(Message.uid).where(Message.account_id == account_id))
            if uid is not None
        )


def task_row(runtime: Runtime, tenant: uuid.UUID, task_id: str) -> Task:
    with runtime.db.transaction(tenant) as session:
        row = session.get(Task, task_id)
        assert row is not None
        return row


def test_a_sync_cut_off_half_way_completes_on_retry_without_duplicates(
    api: Any, mailbox: Mailbox, dovecot: Dovecot, sync_runtime: Runtime, alice: Identity,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    # Given a mailbox of 11 messages, synced in batches of 4, whose connection drops
    # once, after the first batch was stored
    fill(dovecot, mailbox.user)
    original = MessageStore.add_batch
    calls = {"n": 0}

    def flaky(self: MessageStore, *args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:
            raise MailConnectionError("the connection to the IMAP server was lost")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(MessageStore, "add_batch", flaky)

    # When it is synced
    task = sync(api, mailbox)

    # Then the retry finished the job, with exact counts and no message twice
    assert task["status"] == "success", task
    assert task["result"]["messagesAdded"] == len(SAMPLES)
    assert task_row(sync_runtime, alice.caller.tenant_id, task["taskId"]).attempts == 2
    uids = stored_uids(sync_runtime, alice.caller.tenant_id, mailbox.id)
    assert uids == sorted(set(uids)) and len(uids) == len(SAMPLES)
    inbox = folders_by_name(api, mailbox)["INBOX"]
    assert inbox["messageCount"] == len(SAMPLES)
    assert len(all_messages(api, mailbox, inbox["id"])) == len(SAMPLES)


def test_a_batch_whose_database_connection_dies_is_retried_not_stored_one_by_one(
    sync_runtime: Runtime, api: Any, mailbox: Mailbox, dovecot: Dovecot, alice: Identity,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    # Given a mailbox of 11 messages, synced in batches of 4, whose database session is
    # killed (a server restart, an administrator) just as the second batch is stored
    fill(dovecot, mailbox.user)
    add_batch, upload = MessageStore.add_batch, MessageStore._upload
    calls: dict[str, Any] = {"n": 0}

    def noted(self: MessageStore, session: Any, *args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        calls["session"] = session
        return add_batch(self, session, *args, **kwargs)

    def killed(self: MessageStore, *args: Any) -> Any:
        # Just before the batch's insert (the blob uploads come first)
        if calls["n"] == 2:
            pid = calls["session"].execute(text("SELECT pg_backend_pid()")).scalar_one()
            with sync_runtime.db.engine.connect() as other:
                other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        return upload(self, *args)

    monkeypatch.setattr(MessageStore, "add_batch", noted)
    monkeypatch.setattr(MessageStore, "_upload", killed)

    # When it is synced
    task = sync(api, mailbox)

    # Then the lost connection was taken for what it is (the job ran again), not as a
    # refused batch whose messages are then tried one by one on the dead connection
    assert task["status"] == "success", task
    assert task_row(sync_runtime, alice.caller.tenant_id, task["taskId"]).attempts == 2
    uids = stored_uids(sync_runtime, alice.caller.tenant_id, mailbox.id)
    assert uids == sorted(set(uids)) and len(uids) == len(SAMPLES)


def test_a_worker_dying_mid_sync_leaves_a_task_the_rerun_completes_exactly(
    sync_runtime: Runtime, api: Any, mailbox: Mailbox, dovecot: Dovecot, alice: Identity,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    # Given a sync task whose first run dies (the process going away) after a batch
    fill(dovecot, mailbox.user)
    task_id = _pending_task(sync_runtime, alice, mailbox.id)
    original = MessageStore.add_batch
    calls = {"n": 0}

    class WorkerKilled(BaseException):
        pass

    def dying(self: MessageStore, *args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:
            raise WorkerKilled
        return original(self, *args, **kwargs)

    monkeypatch.setattr(MessageStore, "add_batch", dying)
    tenant = alice.caller.tenant_id
    with pytest.raises(WorkerKilled):
        sync_service.run_sync(sync_runtime, tenant, task_id, Attempt(0, last=False))
    assert task_row(sync_runtime, tenant, task_id).status == "started"

    # When the broker redelivers the message and it runs again
    monkeypatch.setattr(MessageStore, "add_batch", original)
    sync_service.run_sync(sync_runtime, tenant, task_id, Attempt(0, last=False))

    # Then the counts are those of the whole job and nothing is stored twice
    row = task_row(sync_runtime, tenant, task_id)
    assert row.status == "success"
    assert row.result is not None and row.result["messagesAdded"] == len(SAMPLES)
    assert len(stored_uids(sync_runtime, tenant, mailbox.id)) == len(SAMPLES)
    # and running it once more (a duplicate delivery) changes nothing
    sync_service.run_sync(sync_runtime, tenant, task_id, Attempt(1, last=False))
    assert task_row(sync_runtime, tenant, task_id).result == row.result


def _pending_task(runtime: Runtime, identity: Identity, account_id: str) -> str:
    """A sync task row as a request creates it, without sending the job to a worker."""
    with open_scope(runtime, identity.caller) as scope:
        account = load_account(scope, account_id, for_update=True)
        started = sync_service.request_sync(scope, account)
        scope._hooks.clear()  # keep the job away from the running worker
    return str(started["taskId"])


def test_task_goes_pending_then_started_with_progress_then_success(
    sync_runtime: Runtime, api: Any, mailbox: Mailbox, dovecot: Dovecot, alice: Identity,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    fill(dovecot, mailbox.user)
    task_id = _pending_task(sync_runtime, alice, mailbox.id)
    seen: list[tuple[str, int]] = []

    def observe() -> None:
        task = api.get(f"/api/sync/task/{task_id}", headers=mailbox.headers).json()
        seen.append((task["status"], task["progress"]))

    observe()
    original = MessageStore.add_batch

    totals: list[int] = []

    def observed(self: MessageStore, *args: Any, **kwargs: Any) -> Any:
        observe()
        # The folder's counts (pagination.total) are right between any two batches.
        inbox = folders_by_name(api, mailbox)["INBOX"]
        assert len(all_messages(api, mailbox, inbox["id"])) == inbox["messageCount"]
        totals.append(inbox["messageCount"])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(MessageStore, "add_batch", observed)
    account = api.get(f"/api/accounts/{mailbox.id}", headers=mailbox.headers).json()
    assert account["isSyncing"] is False

    # The actor's function, called directly (the broker path is covered elsewhere)
    sync_service.run_sync(sync_runtime, alice.caller.tenant_id, task_id, Attempt(0, last=False))
    observe()

    assert seen[0] == ("pending", 0)
    running = [progress for status, progress in seen[1:-1]]
    assert all(status == "started" for status, _ in seen[1:-1]) and len(running) >= 3
    assert running == sorted(running) and running[-1] > running[0]
    assert seen[-1] == ("success", 100)
    assert totals == [0, 4, 8]


def test_each_batch_commits_the_tasks_counts_in_its_own_transaction(
    sync_runtime: Runtime, api: Any, mailbox: Mailbox, dovecot: Dovecot, alice: Identity,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    fill(dovecot, mailbox.user)
    task_id = _pending_task(sync_runtime, alice, mailbox.id)
    original = TaskReport._update
    joined: list[bool] = []

    def noted(self: TaskReport, **values: Any) -> None:
        if threading.current_thread().name == "sync-writer":
            # The batch's step is open on this thread: the report joins it.
            joined.append(getattr(self.unit._local, "step", None) is not None)
        original(self, **values)

    monkeypatch.setattr(TaskReport, "_update", noted)
    sync_service.run_sync(sync_runtime, alice.caller.tenant_id, task_id, Attempt(0, last=False))

    # Every batch's counts were written with the batch, never in a transaction after it
    assert len(joined) == 3 and all(joined)
    task = task_row(sync_runtime, alice.caller.tenant_id, task_id)
    assert task.status == "success" and task.result["messagesAdded"] == len(SAMPLES)


def test_a_second_request_while_a_sync_is_pending_returns_that_task(
    sync_runtime: Runtime, api: Any, mailbox: Mailbox, alice: Identity
) -> None:
    task_id = _pending_task(sync_runtime, alice, mailbox.id)
    response = api.post(f"/api/sync/{mailbox.id}", json={"force": True}, headers=mailbox.headers)
    assert response.status_code == 202
    assert response.json()["taskId"] == task_id


def test_an_unreachable_server_is_retried_then_fails_with_the_reason(
    api: Any, alice: Identity, dovecot: Dovecot, mail_user: MailUser, sync_runtime: Runtime
) -> None:
    from tests.mail.conftest import unused_port

    box = account_for(api, alice, dovecot, mail_user, port=unused_port())
    response = api.post(f"/api/sync/{box.id}", json={}, headers=box.headers)
    task = wait_for_task(api, box.headers, response.json()["taskId"])
    assert task["status"] == "failure"
    assert "connect" in task["error"].lower()
    attempts = task_row(sync_runtime, alice.caller.tenant_id, task["taskId"]).attempts
    assert attempts == sync_runtime.settings.task_max_retries + 1


def test_a_worker_keeps_an_accounts_imap_session_across_syncs_until_its_password_changes(
    api: Any, alice: Identity, dovecot: Dovecot, mail_user: MailUser, sync_runtime: Runtime
) -> None:
    pool = sync_runtime.mail_pools.imap
    # Given an account synced once
    box = account_for(api, alice, dovecot, mail_user)
    assert sync(api, box)["status"] == "success"
    assert pool.idle_count(box.id) == 1
    reused = pool.reused

    # When new mail arrives and it syncs again
    dovecot.append(mail_user, "INBOX", corpus()["plain_ascii"])
    task = sync(api, box)

    # Then the second sync went over the first one's session (a NOOP, no login)
    assert task["status"] == "success" and task["result"]["messagesAdded"] == 1, task
    assert pool.reused == reused + 1 and pool.idle_count(box.id) == 1

    # When the stored password is changed (here to a wrong one)
    changed = api.put(
        f"/api/accounts/{box.id}", json={"password": "not-the-password"}, headers=box.headers
    )
    assert changed.status_code == 200
    task = sync(api, box)

    # Then the session opened with the old one is closed, never used: the login is refused
    assert task["status"] == "failure" and "refused the login" in task["error"], task
    assert pool.reused == reused + 1 and pool.idle_count(box.id) == 0


def test_pop3_account_end_to_end(
    api: Any, alice: Identity, dovecot: Dovecot, mail_user: MailUser
) -> None:
    # Given a POP3 account (POP3S, certificate verified) with three messages
    samples = corpus()
    uids = [
        dovecot.append(mail_user, "INBOX", samples[name])
        for name in ("plain_ascii", "mixed_attachments", "utf8_qp")
    ]
    box = account_for(
        api, alice, dovecot, mail_user, protocol="pop3", port=dovecot.pop3s_port, encryption="tls"
    )

    # When it is synced, one INBOX holds them, with their attachments
    task = sync(api, box)
    assert task["status"] == "success", task
    assert task["result"]["messagesAdded"] == 3
    folders = folders_by_name(api, box)
    assert list(folders) == ["INBOX"] and folders["INBOX"]["type"] == "inbox"
    messages = all_messages(api, box, folders["INBOX"]["id"])
    assert len(messages) == 3
    with_files = [m for m in messages if m["attachmentCount"]]
    assert len(with_files) == 1
    full = api.get(f"/api/{box.id}/messages/{with_files[0]['id']}", headers=box.headers).json()
    attachment = full["attachments"][0]
    download = api.get(
        f"/api/{box.id}/attachments/{attachment['id']}/download", headers=box.headers
    )
    assert download.status_code == 200 and len(download.content) == attachment["size"]

    # and a message removed on the server is removed locally, one added is added
    client = dovecot.imap(mail_user)
    try:
        client.select_folder("INBOX")
        client.delete_messages([uids[0]])
        client.expunge()
    finally:
        client.logout()
    dovecot.append(mail_user, "INBOX", samples["latin1_qp"])
    again = sync(api, box)
    assert again["result"]["messagesAdded"] == 1 and again["result"]["messagesRemoved"] == 1
    assert folders_by_name(api, box)["INBOX"]["messageCount"] == 3
    assert sync(api, box)["result"]["messagesAdded"] == 0


def test_a_broken_message_never_fails_the_sync(
    api: Any, mailbox: Mailbox, dovecot: Dovecot
) -> None:
    samples = corpus()
    broken = [name for name in samples if name.startswith("broken_")]
    for name in broken:
        dovecot.append(mailbox.user, "INBOX", samples[name])
    task = sync(api, mailbox)
    assert task["status"] == "success"
    assert task["result"]["messagesAdded"] == len(broken)
    inbox = folders_by_name(api, mailbox)["INBOX"]
    assert len(all_messages(api, mailbox, inbox["id"])) == len(broken)


def test_text_postgresql_cannot_hold_is_cleaned_not_fatal(
    api: Any, mailbox: Mailbox, sync_runtime: Runtime, alice: Identity
) -> None:
    # Dovecot itself turns NUL into 0x80 on APPEND, so this goes to the store directly:
    # PostgreSQL text and JSONB refuse NUL, which other servers do deliver.
    assert sync(api, mailbox)["status"] == "success"
    inbox = folders_by_name(api, mailbox)["INBOX"]
    raw = b"Subject: nul\x00 inside\r\nFrom: a@b.example\r\nX-Odd: v\x00\r\n\r\nbody\x00end\r\n"
    target = FolderTarget(alice.caller.tenant_id, mailbox.id, inbox["id"], "INBOX", is_spam=False)
    store = MessageStore(sync_runtime.blobs)
    try:
        with sync_runtime.db.transaction(alice.caller.tenant_id) as session:
            item = Incoming(parsed=parse_message(raw), size=len(raw), uid=999)
            outcome = store.add_batch(session, target, [item])
    finally:
        store.close()
    assert outcome.added == 1 and not outcome.skipped
    [message] = all_messages(api, mailbox, inbox["id"])
    assert message["subject"] == "nul inside"


def test_a_batch_is_one_insert_per_table_whatever_its_rows_leave_empty(
    api: Any, mailbox: Mailbox, sync_runtime: Runtime, alice: Identity
) -> None:
    # Given messages whose rows leave different columns NULL (no Message-ID, a reply,
    # HTML or none; attachments with and without Content-ID, section and encoding)
    assert sync(api, mailbox)["status"] == "success"
    inbox = folders_by_name(api, mailbox)["INBOX"]
    samples = corpus()
    raws = [
        b"From: a@b.example\r\nSubject: no id\r\n\r\nplain\r\n",
        samples["thread_3"],
        samples["related_inline_image"],
        samples["alternative"],
        samples["mixed_attachments"],
        samples["plain_ascii"],
    ]
    items = [
        Incoming(parsed=parse_message(raw), size=len(raw), uid=9000 + n, modseq=n or None)
        for n, raw in enumerate(raws)
    ]
    assert {item.parsed.message_id is None for item in items} == {True, False}
    assert {item.parsed.html_source is None for item in items} == {True, False}
    attachments = [part for item in items for part in item.parsed.attachments]
    assert {part.content_id is None for part in attachments} == {True, False}
    target = FolderTarget(
        alice.caller.tenant_id, mailbox.id, inbox["id"], "INBOX", False, lazy_attachments=True
    )
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement.split("(", 1)[0].strip())

    store = MessageStore(sync_runtime.blobs)
    event.listen(sync_runtime.db.engine, "before_cursor_execute", record)
    try:
        with sync_runtime.db.transaction(alice.caller.tenant_id) as session:
            outcome = store.add_batch(session, target, items)
    finally:
        event.remove(sync_runtime.db.engine, "before_cursor_execute", record)
        store.close()

    # Then the batch is one INSERT of messages and one of attachments
    assert outcome.added == len(items) and not outcome.skipped
    assert statements.count("INSERT INTO messages") == 1
    assert statements.count("INSERT INTO attachments") == 1
    # and what a row leaves empty is NULL, which no column default would have replaced
    for model in (Message, Attachment):
        for column in model.__table__.columns:
            assert not column.nullable or (column.default, column.server_default) == (None, None)
    with sync_runtime.db.transaction(alice.caller.tenant_id) as session:
        stored = session.execute(
            select(Message.uid, Message.internet_message_id, Message.modseq).where(
                Message.folder_id == inbox["id"], Message.uid >= 9000
            )
        ).all()
        kept = session.scalars(
            select(Attachment.content_id).where(Attachment.account_id == mailbox.id)
        ).all()
    assert sorted(stored) == sorted(
        (item.uid, item.parsed.message_id, item.modseq) for item in items
    )
    assert sorted(kept, key=str) == sorted((part.content_id for part in attachments), key=str)


def test_a_sync_moves_the_task_and_sync_metrics(
    api: Any, mailbox: Mailbox, dovecot: Dovecot
) -> None:
    from tests.api.test_observability import metric_value, scrape

    fill(dovecot, mailbox.user)
    before = scrape(api)
    assert sync(api, mailbox)["status"] == "success"
    after = scrape(api)

    def delta(name: str, **labels: str) -> float:
        return metric_value(after, name, **labels) - metric_value(before, name, **labels)

    for status in ("pending", "started", "success"):
        assert delta("email_service_tasks_total", kind="sync", status=status) == 1, status
    assert delta("email_service_sync_duration_seconds_count") == 1
    assert delta("email_service_messages_synced_total") == len(SAMPLES)
    assert delta("email_service_http_requests_total", operation="syncAccount", status="202") == 1
