"""On the embedded store (SQLite), a locked database is not a refused batch.

A sync batch's savepoint begins its transaction with BEGIN IMMEDIATE, which waits for
another connection's write lock up to the busy timeout and then fails with "database is
locked". That says nothing about the messages: the job runs again, nothing is skipped
(trying each message alone waited out the busy timeout once per message, then listed
every one of them as refused by the database, lost from the mirror until a forced sync).
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

import workers
from db.migrate import upgrade
from email_service.app import create_app
from email_service.mailstore.messages import MessageStore
from email_service.runtime import Runtime, build_runtime, set_runtime
from tests.conftest import Identity, make_settings
from tests.servers.dovecot import Dovecot, MailUser
from tests.sync.conftest import account_for, sync
from tests.sync.test_sync_jobs import SAMPLES, fill, stored_uids, task_row

# Short, so a test that waits it out once per message (the old behaviour) still ends.
BUSY_TIMEOUT_MS = 300


@pytest.fixture
def embedded(
    tmp_path: Path, dovecot: Dovecot, runtime: Runtime
) -> Iterator[tuple[Any, Runtime, Path]]:
    """The embedded default: SQLite file, in-process broker and worker, local blobs."""
    path = tmp_path / "embedded.sqlite3"
    rt = build_runtime(
        make_settings(
            tmp_path / "data",
            f"sqlite:///{path}",
            mail_ca_file=str(dovecot.ca_file),
            sync_batch_size=4,
            task_max_retries=3,
            task_min_backoff_ms=50,
            task_max_backoff_ms=200,
            rate_limit_enabled=False,
        )
    )

    @event.listens_for(rt.db.engine, "connect")
    def _short_busy_timeout(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")

    rt.db.engine.dispose()  # no connection made before the listener stays pooled
    upgrade(rt.db.engine)
    jobs = workers.install(rt)
    worker = workers.start_worker(jobs, threads=2)
    try:
        with create_app(runtime=rt, validate_responses=True).test_client() as client:
            set_runtime(rt)
            yield client, rt, path
    finally:
        worker.stop()
        rt.close()
        set_runtime(runtime)


@pytest.mark.parametrize("protocol", ["imap", "pop3"])
def test_a_batch_meeting_a_locked_embedded_database_is_retried_not_skipped(
    embedded: tuple[Any, Runtime, Path], dovecot: Dovecot, mail_user: MailUser,
    alice: Identity, monkeypatch: pytest.MonkeyPatch, protocol: str,
) -> None:  # fmt: skip
    client, rt, path = embedded
    port = {"imap": dovecot.imaps_port, "pop3": dovecot.pop3s_port}[protocol]
    mailbox = account_for(
        client, alice, dovecot, mail_user, protocol=protocol, port=port, encryption="tls"
    )
    fill(dovecot, mailbox.user)

    # Given another connection that takes SQLite's write lock just before the second
    # batch (of 4) is written, and holds it until that batch's store gives up
    add_batch, upload = MessageStore.add_batch, MessageStore._upload
    calls = {"n": 0}
    holder: list[sqlite3.Connection] = []
    waited: list[float] = []

    def noted(self: MessageStore, *args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        began = time.monotonic()
        try:
            return add_batch(self, *args, **kwargs)
        finally:
            if holder:
                waited.append(time.monotonic() - began)
                other = holder.pop()
                other.rollback()
                other.close()

    def locked(self: MessageStore, *args: Any) -> Any:
        if calls["n"] == 2:  # after the uploads, just before the batch's savepoint
            other = sqlite3.connect(path, timeout=5, check_same_thread=False)
            other.execute("BEGIN IMMEDIATE")
            holder.append(other)
        return upload(self, *args)

    monkeypatch.setattr(MessageStore, "add_batch", noted)
    monkeypatch.setattr(MessageStore, "_upload", locked)

    # When the account is synced
    task = sync(client, mailbox)

    # Then nothing was taken for refused, and the job ran again once the lock was free
    assert task["status"] == "success", task
    assert "skipped" not in task["result"] and not task["result"].get("messagesSkipped"), task
    row = task_row(rt, alice.caller.tenant_id, task["taskId"])
    assert row.attempts == 2
    # ... the locked batch having waited out one busy timeout, not one per message
    assert len(waited) == 1 and waited[0] < 4 * BUSY_TIMEOUT_MS / 1000, waited
    # ... storing every message exactly once
    assert task["result"]["messagesAdded"] == len(SAMPLES)
    with contextlib.closing(sqlite3.connect(path)) as other:
        (count,) = other.execute(
            "SELECT count(*) FROM messages WHERE account_id = ?", (mailbox.id,)
        ).fetchone()
    assert count == len(SAMPLES)
    if protocol == "imap":
        uids = stored_uids(rt, alice.caller.tenant_id, mailbox.id)
        assert uids == sorted(set(uids)) and len(uids) == len(SAMPLES)
