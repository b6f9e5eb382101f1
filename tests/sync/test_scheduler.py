"""The scheduler: due accounts only, never two syncs of one account, no call needed."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

from sqlalchemy import select, update

from db.models import Account, Task, now_ms
from email_service.runtime import Runtime
from email_service.services.sync_schedule import enqueue_due_syncs
from tests.conftest import Identity
from tests.servers.dovecot import Dovecot, MailUser
from tests.servers.mailgen import corpus
from tests.sync.conftest import Mailbox, account_for, sync, wait_for_task
from tests.sync.test_imap_sync import all_messages, folders_by_name


def _age(runtime: Runtime, tenant: uuid.UUID, account_id: str, seconds: int) -> None:
    """Pretend the account's last sync (and its task) happened ``seconds`` ago."""
    past = now_ms() - seconds * 1000
    with runtime.db.transaction(tenant) as session:
        session.execute(update(Account).where(Account.id == account_id).values(last_sync_at=past))
        session.execute(update(Task).where(Task.account_id == account_id).values(created_at=past))


def _tasks_of(runtime: Runtime, tenant: uuid.UUID, account_id: str) -> list[Task]:
    with runtime.db.transaction(tenant) as session:
        return list(session.scalars(select(Task).where(Task.account_id == account_id)))


def test_only_due_accounts_are_queued(
    api: Any, sync_runtime: Runtime, alice: Identity, dovecot: Dovecot
) -> None:
    # Given four accounts: never synced, synced long ago, synced just now, sync disabled
    users = [dovecot.new_user() for _ in range(4)]
    never, old, fresh, disabled = (account_for(api, alice, dovecot, u) for u in users)
    for box in (old, fresh):
        assert sync(api, box)["status"] == "success"
    _age(sync_runtime, alice.caller.tenant_id, old.id, 600)
    api.put(f"/api/accounts/{disabled.id}", json={"isSyncEnabled": False}, headers=alice.bearer)

    queued = enqueue_due_syncs(sync_runtime)

    queued_accounts = {
        task.account_id
        for box in (never, old, fresh, disabled)
        for task in _tasks_of(sync_runtime, alice.caller.tenant_id, box.id)
        if task.id in queued
    }
    assert queued_accounts == {never.id, old.id}
    for task_id in queued:
        assert wait_for_task(api, alice.bearer, task_id)["status"] == "success"


def test_two_schedulers_at_once_never_queue_two_syncs_of_one_account(
    api: Any, sync_runtime: Runtime, alice: Identity, dovecot: Dovecot
) -> None:
    boxes = [account_for(api, alice, dovecot, dovecot.new_user()) for _ in range(5)]
    results: list[list[str]] = []
    barrier = threading.Barrier(4)

    def run() -> None:
        barrier.wait()
        results.append(enqueue_due_syncs(sync_runtime))

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # A second round right away finds nothing due: each account has its sync.
    results.append(enqueue_due_syncs(sync_runtime))

    queued = [task for batch in results for task in batch]
    assert len(queued) == len(set(queued)) == len(boxes)
    for box in boxes:
        assert len(_tasks_of(sync_runtime, alice.caller.tenant_id, box.id)) == 1


def test_a_failing_account_is_not_retried_before_its_interval(
    api: Any, sync_runtime: Runtime, alice: Identity, dovecot: Dovecot, mail_user: MailUser
) -> None:
    box = account_for(api, alice, dovecot, mail_user, password="wrong-password")
    [task_id] = enqueue_due_syncs(sync_runtime)
    assert wait_for_task(api, alice.bearer, task_id)["status"] == "failure"
    assert enqueue_due_syncs(sync_runtime) == []
    _age(sync_runtime, alice.caller.tenant_id, box.id, box.account["syncInterval"] + 1)
    assert len(enqueue_due_syncs(sync_runtime)) == 1


def test_new_and_flagged_mail_shows_up_after_the_next_scheduled_sync(
    api: Any, sync_runtime: Runtime, mailbox: Mailbox, dovecot: Dovecot, monkeypatch: Any
) -> None:
    # Given a synced account with one unread message
    uid = dovecot.append(mailbox.user, "INBOX", corpus()["plain_ascii"])
    assert sync(api, mailbox)["status"] == "success"
    # When mail arrives and is read elsewhere, and the sync interval passes
    dovecot.append(mailbox.user, "INBOX", corpus()["utf8_qp"])
    client = dovecot.imap(mailbox.user)
    try:
        client.select_folder("INBOX")
        client.add_flags([uid], ["\\Seen"])
    finally:
        client.logout()
    _age(sync_runtime, uuid.UUID(mailbox.account["tenantId"]), mailbox.id, 301)
    monkeypatch.setattr(sync_runtime.settings, "scheduler_tick_seconds", 0.1)
    from workers.scheduler import start_scheduler_thread

    thread, stop = start_scheduler_thread(sync_runtime)
    try:
        # Then, without any request, the API shows it
        deadline = time.monotonic() + 30
        while True:
            inbox = folders_by_name(api, mailbox)["INBOX"]
            if inbox["messageCount"] == 2 and inbox["unreadCount"] == 1:
                break
            assert time.monotonic() < deadline, inbox
            time.sleep(0.1)
    finally:
        stop.set()
        thread.join(timeout=10)
    messages = all_messages(api, mailbox, inbox["id"])
    assert sorted(m["isRead"] for m in messages) == [False, True]
