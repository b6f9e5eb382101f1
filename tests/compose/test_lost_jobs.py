"""Sends whose job or whose record was lost on the way: delivered once, never stuck.

* Redis down when the request commits: the request is still accepted; an idempotent
  retry returns the same task; once Redis is back the outbox sends the job and the mail
  goes out once.
* Every database session killed the moment the SMTP server accepts: the acceptance is
  still recorded (retried), the task succeeds, the mail is not sent twice.
* A run that died after the server accepted but before the task row said so (only the
  note in the blob store knows): the next run sends nothing and completes.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from db.models import Task
from email_service import locks
from email_service.jobs import Attempt
from email_service.runtime import Runtime
from email_service.services import delivery
from tests.compose.conftest import await_task, send, sender_for, task_row
from tests.conftest import Identity
from tests.servers.dovecot import Dovecot, MailUser
from tests.servers.faults import PrivateRedis, terminate_backends
from tests.servers.smtp import SmtpServer
from tests.sync.conftest import Mailbox
from workers import DramatiqJobs, outbox


def delivered(smtp_server: SmtpServer, message_id: str) -> int:
    return sum(
        1
        for t in smtp_server.transactions
        if t.accepted and t.raw is not None and message_id.encode() in t.raw
    )


def await_despite_kills(runtime: Runtime, identity: Identity, task_id: str) -> Task:
    """``await_task``, for a test whose own database sessions may be ended too."""
    for _ in range(5):
        try:
            return await_task(runtime, identity, task_id)
        except OperationalError:
            time.sleep(0.1)
    return await_task(runtime, identity, task_id)


def test_redis_down_at_commit_the_send_goes_out_once_redis_is_back(
    custom_app: Callable[..., tuple[Any, Runtime]],
    alice: Identity,
    dovecot: Dovecot,
    smtp_server: SmtpServer,
    mail_user: MailUser,
    private_redis: PrivateRedis,
) -> None:
    redis = private_redis  # stopped after custom_app's worker: the fixtures' order
    redis.start()
    client, rt = custom_app(redis_url=redis.url, outbox_grace_seconds=0.2)
    box = sender_for(client, alice, dovecot, smtp_server, mail_user)
    to = dovecot.new_user("to")

    # Given Redis gone when the send commits
    redis.stop()
    first = send(client, box, to=[to.email], idempotency_key="lost-1")
    # the client retries with the same key: the same task, still waiting
    again = send(client, box, to=[to.email], idempotency_key="lost-1")
    assert again["taskId"] == first["taskId"] and again["status"] == "pending"

    # When Redis is back and the outbox sweeps
    redis.start()
    time.sleep(0.3)
    assert isinstance(rt.jobs, DramatiqJobs)
    assert outbox.sweep(rt, rt.jobs) == [first["taskId"]]

    # Then the mail goes out once, and the idempotent retry shows it done
    row = await_task(rt, alice, first["taskId"])
    assert row.status == "success", row.error
    assert delivered(smtp_server, first["messageId"]) == 1
    assert send(client, box, to=[to.email], idempotency_key="lost-1")["status"] == "success"


def test_database_lost_when_smtp_accepts_is_recorded_and_not_sent_twice(
    api: Any,
    sync_runtime: Runtime,
    alice: Identity,
    dovecot: Dovecot,
    smtp_server: SmtpServer,
    sender: Mailbox,
) -> None:
    # Given every database session ended the moment the SMTP server takes the message
    assert sync_runtime.settings.database_url is not None
    url = sync_runtime.settings.database_url
    smtp_server.on_accept = lambda: terminate_backends(url) and None
    to = dovecot.new_user("to")

    # When a message is sent
    queued = send(api, sender, to=[to.email])

    # Then the acceptance is recorded all the same, and the mail went out once
    row = await_despite_kills(sync_runtime, alice, queued["taskId"])
    assert row.status == "success", row.error
    assert row.payload["accepted"] == [to.email]
    assert delivered(smtp_server, queued["messageId"]) == 1


def _wait_until_not_running(runtime: Runtime, task_id: str, timeout: float = 30.0) -> None:
    """Wait until no run of the send task holds its lock (``delivery.run_send``)."""
    deadline = time.monotonic() + timeout
    while True:
        with locks.try_lock(runtime.db, f"send:{task_id}") as taken:
            if taken:
                return
        assert time.monotonic() < deadline, f"send task {task_id} kept running"
        time.sleep(0.05)


def test_a_run_that_died_after_acceptance_never_sends_again(
    api: Any,
    sync_runtime: Runtime,
    alice: Identity,
    dovecot: Dovecot,
    smtp_server: SmtpServer,
    sender: Mailbox,
) -> None:
    # Given a send whose server acceptance only the blob store's note knows (the run
    # that got the 250 died before the task row could say so)
    to = dovecot.new_user("to")
    smtp_server.on_accept = None
    queued = send(api, sender, to=[to.email])
    row = await_task(sync_runtime, alice, queued["taskId"])
    assert row.status == "success" and delivered(smtp_server, queued["messageId"]) == 1
    # (the worker reports success before it deletes the task's blobs and lets go of the
    # task's lock: wait for that, or the run below finds the task "running elsewhere")
    _wait_until_not_running(sync_runtime, row.id)
    batch = {"accepted": [to.email], "refused": {}, "deferred": {}}
    note = {"step": 1, "batches": [batch], "retries": []}
    note_key = delivery.note_key(row.payload)
    sync_runtime.blobs.put(note_key, json.dumps(note).encode(), "application/json")
    with sync_runtime.db.transaction(alice.caller.tenant_id) as session:
        task = session.get(Task, row.id)
        assert task is not None
        task.status = "started"
        recorded = ("acceptedAt", "batches", "retries", "noteStep")
        task.payload = {k: v for k, v in task.payload.items() if k not in recorded}
        # (the finished task dropped the message it kept: give the run one again)
        task.payload["raw"] = base64.b64encode(b"From: a@example.test\r\n\r\nx").decode()

    # When the job runs again
    delivery.run_send(sync_runtime, alice.caller.tenant_id, row.id, Attempt(0, False))

    # Then nothing more was sent, and the task ends with the noted recipients
    again = task_row(sync_runtime, alice, row.id)
    assert again.status == "success", again.error
    assert again.payload["accepted"] == [to.email]
    assert delivered(smtp_server, queued["messageId"]) == 1


def test_a_send_meeting_a_database_error_no_retry_passes_fails_at_once_saying_why(
    api: Any, sync_runtime: Runtime, alice: Identity, sender: Mailbox, dovecot: Dovecot,
    smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    # Given a send job that meets a real PostgreSQL program limit (SQLSTATE 54000)
    # before it talks to the SMTP server: an error its service does not expect, which
    # every other attempt would meet again
    endpoint = delivery.account_endpoint
    attempts: list[int] = []

    def too_long(runtime: Runtime, account: Any, **kwargs: Any) -> Any:
        attempts.append(1)
        with runtime.db.transaction(account.tenant_id) as session:
            session.execute(
                text(
                    "SELECT to_tsvector('simple', string_agg(md5(i::text), ' '))"
                    " FROM generate_series(1, 40000) AS i"
                )
            )
        return endpoint(runtime, account, **kwargs)

    monkeypatch.setattr(delivery, "account_endpoint", too_long)
    to = dovecot.new_user("to")

    # When a message is sent
    queued = send(api, sender, to=[to.email], body="Never sent.")
    row = await_task(sync_runtime, alice, queued["taskId"], timeout=30)

    # Then the first attempt fails for good and the task says why; nothing was sent
    assert row.status == "failure", (row.status, row.error)
    assert row.error == "The task failed: the database refused it (54000)"
    assert attempts == [1]
    assert delivered(smtp_server, queued["messageId"]) == 0
