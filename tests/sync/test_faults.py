"""Infrastructure failing under a sync or a send: nothing lost, nothing twice, every task ends.

PostgreSQL sessions killed mid-sync (``pg_terminate_backend``), S3 answering 500 for a
while (a proxy in front of the test S3 server), Redis stopped when a request commits (a
private ``redis-server``, never the shared one). Each case runs the real path: HTTP in,
Dramatiq worker, Dovecot and S3 behind.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from email.message import EmailMessage
from typing import Any

import pytest
import sqlalchemy as sa

import workers
from db.models import Task
from email_service.config import Settings
from email_service.runtime import Runtime
from email_service.services import syncing
from email_service.services.tasks import TaskReport
from tests.conftest import Identity
from tests.servers.dovecot import Dovecot, MailUser
from tests.servers.faults import FlakyS3, PrivateRedis, terminate_backends
from tests.servers.s3 import S3Server
from tests.sync.conftest import Mailbox, account_for, sync, wait_for_task
from tests.sync.test_imap_sync import all_messages, folders_by_name
from workers import outbox


def fill(dovecot: Dovecot, user: MailUser, count: int, *, attachment: bool = False) -> None:
    client = dovecot.imap(user)
    try:
        for n in range(count):
            msg = EmailMessage()
            msg["From"] = "sender@example.test"
            msg["To"] = user.email
            msg["Subject"] = f"message {n:04d}"
            msg["Message-ID"] = f"<m{n}.{user.email}>"
            msg.set_content(f"body {n}\n")
            if attachment:
                msg.add_attachment(
                    b"x" * 100, maintype="application", subtype="octet-stream", filename=f"a{n}.bin"
                )
            client.append("INBOX", msg.as_bytes())
    finally:
        client.logout()


def inbox_subjects(api: Any, box: Mailbox) -> list[str]:
    folders = folders_by_name(api, box)
    return [m["subject"] for m in all_messages(api, box, folders["INBOX"]["id"])]


def test_database_sessions_killed_mid_sync_lose_and_duplicate_nothing(
    api: Any, alice: Identity, dovecot: Dovecot, mail_user: MailUser, sync_settings: Settings
) -> None:
    # Given a mailbox of 120 messages, synced in batches of 4
    fill(dovecot, mail_user, 120)
    box = account_for(api, alice, dovecot, mail_user)
    response = api.post(f"/api/sync/{box.id}", json={}, headers=box.headers)
    task_id = response.json()["taskId"]

    # When every database session is killed while the sync is under way
    wait_for_task(api, box.headers, task_id, until=lambda t: t["progress"] >= 10, timeout=30)
    assert sync_settings.database_url is not None
    killed = terminate_backends(sync_settings.database_url)
    task = wait_for_task(api, box.headers, task_id, timeout=60)

    # Then the sync still ends well, with every message exactly once
    assert killed > 0
    assert task["status"] == "success", task
    subjects = inbox_subjects(api, box)
    assert len(subjects) == 120 and len(set(subjects)) == 120


def test_s3_answering_500_for_a_while_delays_the_sync_but_loses_nothing(
    custom_app: Callable[..., tuple[Any, Runtime]],
    alice: Identity,
    dovecot: Dovecot,
    mail_user: MailUser,
    s3_server: S3Server,
    sync_settings: Settings,
) -> None:
    # Given attachments to store, and an S3 that will answer 500 to the next 10 requests
    # (more than the client's own retries of one request absorb). A POP3 account: an IMAP
    # sync stores no attachment blobs (they are fetched on first download), POP3 still does.
    flaky = FlakyS3(s3_server.endpoint)
    try:
        client, _rt = custom_app(s3_endpoint=flaky.endpoint)
        fill(dovecot, mail_user, 12, attachment=True)
        box = account_for(
            client, alice, dovecot, mail_user, protocol="pop3", port=dovecot.pop3s_port,
            encryption="tls",
        )  # fmt: skip
        flaky.fail(10)

        # When the account is synced
        task = sync(client, box)

        # Then the sync was retried and every message and attachment is stored once
        assert task["status"] == "success", task
        assert flaky.failed == 10
        subjects = inbox_subjects(client, box)
        assert sorted(subjects) == [f"message {n:04d}" for n in range(12)]
    finally:
        flaky.close()


def test_s3_down_through_every_attempt_fails_the_sync_without_promising_a_retry(
    custom_app: Callable[..., tuple[Any, Runtime]],
    alice: Identity,
    dovecot: Dovecot,
    mail_user: MailUser,
    s3_server: S3Server,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a POP3 account with attachments to store, and an S3 that answers 500 to
    # every request from now on (the same outage on every attempt)
    reasons: list[str] = []
    retrying = TaskReport.retrying

    def noted(self: TaskReport, error: str, result: dict[str, Any] | None = None) -> None:
        reasons.append(error)
        retrying(self, error, result)

    monkeypatch.setattr(TaskReport, "retrying", noted)
    flaky = FlakyS3(s3_server.endpoint)
    try:
        client, rt = custom_app(s3_endpoint=flaky.endpoint)
        fill(dovecot, mail_user, 2, attachment=True)
        box = account_for(
            client, alice, dovecot, mail_user, protocol="pop3", port=dovecot.pop3s_port,
            encryption="tls",
        )  # fmt: skip
        flaky.fail(1_000_000)

        # When the account is synced
        task = sync(client, box)

        # Then every attempt met the outage; the earlier ones said they would be retried,
        # the last one fails and says it was the last
        assert task["status"] == "failure", task
        assert len(reasons) == rt.settings.task_max_retries, reasons
        assert all("blob store" in r and r.endswith("it will be retried") for r in reasons)
        assert "blob store" in task["error"], task
        assert "retried" not in task["error"], task
        assert "last attempt" in task["error"], task
    finally:
        flaky.close()


def test_a_database_error_that_no_retry_passes_fails_the_sync_at_once_with_its_reason(
    api: Any, alice: Identity, dovecot: Dovecot, mail_user: MailUser,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    # Given a sync whose last step meets a real PostgreSQL program limit (SQLSTATE
    # 54000, a tsvector over 1 MiB): an OperationalError to the driver, as a lock
    # timeout is, but one that every other attempt would meet again
    reasons: list[str] = []
    retrying = TaskReport.retrying

    def noted(self: TaskReport, error: str, result: dict[str, Any] | None = None) -> None:
        reasons.append(error)
        retrying(self, error, result)

    finish = syncing._finish_account

    def too_long(session: Any, account_id: str, task_id: str, success: bool | None) -> None:
        if success:
            session.execute(
                sa.text(
                    "SELECT to_tsvector('simple', string_agg(md5(i::text), ' '))"
                    " FROM generate_series(1, 40000) AS i"
                )
            )
        finish(session, account_id, task_id, success)

    monkeypatch.setattr(TaskReport, "retrying", noted)
    monkeypatch.setattr(syncing, "_finish_account", too_long)
    fill(dovecot, mail_user, 2)
    box = account_for(api, alice, dovecot, mail_user)

    # When the account is synced
    task = sync(api, box)

    # Then the first attempt fails for good, saying why, and no retry was promised
    assert task["status"] == "failure", task
    assert reasons == []
    assert "the database refused it (54000)" in task["error"], task
    account = api.get(f"/api/accounts/{box.id}", headers=box.headers).json()
    assert account["isSyncing"] is False, account


def test_redis_down_at_commit_time_the_outbox_sends_the_job_once_it_is_back(
    custom_app: Callable[..., tuple[Any, Runtime]],
    private_redis: PrivateRedis,
    alice: Identity,
    dovecot: Dovecot,
    mail_user: MailUser,
) -> None:
    redis = private_redis  # stopped after custom_app's worker: the fixtures' order
    redis.start()
    client, rt = custom_app(redis_url=redis.url, outbox_grace_seconds=0.5)
    fill(dovecot, mail_user, 3)
    box = account_for(client, alice, dovecot, mail_user)

    # Given Redis going away just before a sync is requested
    redis.stop()
    response = client.post(f"/api/sync/{box.id}", json={}, headers=box.headers)

    # Then the request is still accepted; its task waits with no job behind it
    assert response.status_code == 202, response.text
    task_id = response.json()["taskId"]
    again = client.post(f"/api/sync/{box.id}", json={}, headers=box.headers)
    assert again.json()["taskId"] == task_id

    # When Redis is back and the scheduler's outbox sweep runs
    redis.start()
    time.sleep(0.6)
    assert isinstance(rt.jobs, workers.DramatiqJobs)
    assert outbox.sweep(rt, rt.jobs) == [task_id]
    assert outbox.sweep(rt, rt.jobs) == []  # queued now: not sent twice

    # Then the same task runs and completes
    task = wait_for_task(client, box.headers, task_id, timeout=30)
    assert task["status"] == "success", task
    assert sorted(inbox_subjects(client, box)) == [f"message {n:04d}" for n in range(3)]


def test_a_dead_workers_job_is_taken_up_again_within_the_heartbeat_timeout(
    custom_app: Callable[..., tuple[Any, Runtime]],
    alice: Identity,
    dovecot: Dovecot,
    mail_user: MailUser,
    private_redis: PrivateRedis,
) -> None:
    # Given a job taken by a worker that then vanished without acknowledging it (what
    # a SIGKILL leaves behind: the message sits in the dead worker's ack set)
    redis = private_redis  # stopped after custom_app's worker: the fixtures' order
    redis.start()
    client, rt = custom_app(
        redis_url=redis.url,
        queue_namespace="dead",
        queue_heartbeat_timeout_ms=1000,
        worker=False,
    )
    fill(dovecot, mail_user, 3)
    box = account_for(client, alice, dovecot, mail_user)
    task_id = client.post(f"/api/sync/{box.id}", json={}, headers=box.headers).json()["taskId"]
    broker: Any = rt.jobs.broker  # type: ignore[attr-defined]
    consumer = broker.consume("sync", prefetch=1, timeout=1000)
    taken = next(message for message in consumer if message is not None)
    assert taken.message_id == task_id
    broker.broker_id = "a-fresh-process"  # the consumer above is the dead one now

    # When a live worker runs, past the dead one's heartbeat timeout
    started = time.monotonic()
    jobs = rt.jobs
    assert isinstance(jobs, workers.DramatiqJobs)
    live = workers.start_worker(jobs, threads=1)
    try:
        task = wait_for_task(client, box.headers, task_id, timeout=60)
    finally:
        live.stop()

    # Then the job was delivered again and ran, long before Dramatiq's old 5 minutes
    assert task["status"] == "success", task
    assert time.monotonic() - started < 30


def test_embedded_restart_resumes_the_tasks_the_dead_process_left(
    runtime: Runtime,
    sync_runtime: Runtime,
    api: Any,
    alice: Identity,
    dovecot: Dovecot,
    mail_user: MailUser,
) -> None:
    # Given a task left "started" by a process that died (its in-memory queue is gone)
    fill(dovecot, mail_user, 5)
    box = account_for(api, alice, dovecot, mail_user)
    with sync_runtime.db.transaction(alice.caller.tenant_id) as session:
        task = Task(
            tenant_id=alice.caller.tenant_id,
            user_id=alice.caller.user_id,
            account_id=box.id,
            kind="sync",
            status="started",
            payload={"force": False},
        )
        session.add(task)
        session.flush()
        task_id = task.id
        session.execute(
            sa.text("UPDATE accounts SET sync_task_id = :t WHERE id = :a"),
            {"t": task_id, "a": box.id},
        )
    # a sync request meanwhile returns that same task
    assert api.post(f"/api/sync/{box.id}", json={}, headers=box.headers).json()["taskId"] == task_id

    # When the process starts again and resumes what was left
    assert isinstance(sync_runtime.jobs, workers.DramatiqJobs)
    assert task_id in outbox.resume_interrupted(sync_runtime, sync_runtime.jobs)

    # Then the task completes and the account is fully synced
    done = wait_for_task(api, box.headers, task_id, timeout=30)
    assert done["status"] == "success", done
    assert len(inbox_subjects(api, box)) == 5
