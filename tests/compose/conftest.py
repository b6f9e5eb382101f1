"""Fixtures for compose and write-back tests: the sync tests' runtime, plus SMTP.

The runtime, app, worker and ``api`` client are those of ``tests/sync/conftest.py``
(imported into this module, which is how pytest finds fixtures of another directory):
PostgreSQL, Dramatiq on Redis with a worker thread, S3 (moto) and the session Dovecot.
Accounts made here also send, through ``smtp_server`` (STARTTLS, AUTH against Dovecot,
delivering into Dovecot over LMTP).

Task states are awaited by reading the task row, not by polling the API: the API is rate
limited per caller (50 requests a minute for status reads), and a test makes only the
requests whose answers it checks.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any

import pytest

from db.models import Task
from email_service.runtime import Runtime
from tests.conftest import Identity
from tests.servers.dovecot import Dovecot, MailUser
from tests.servers.smtp import SmtpServer
from tests.sync import conftest as sync_fixtures
from tests.sync.conftest import Mailbox, account_for

# The sync tests' fixtures and hook, found here by their names.
pytest_configure = sync_fixtures.pytest_configure
sync_settings = sync_fixtures.sync_settings
sync_runtime = sync_fixtures.sync_runtime
sync_app = sync_fixtures.sync_app
worker = sync_fixtures.worker
api = sync_fixtures.api
private_redis = sync_fixtures.private_redis
custom_app = sync_fixtures.custom_app


def sender_for(
    client: Any,
    identity: Identity,
    dovecot: Dovecot,
    smtp_server: SmtpServer,
    user: MailUser,
    **overrides: Any,
) -> Mailbox:
    """An IMAP account of ``user`` that sends through ``smtp_server`` (STARTTLS, AUTH)."""
    values: dict[str, Any] = {
        "accountName": "Ada Sender",
        "smtpHostname": "localhost",
        "smtpPort": smtp_server.port,
        "smtpEncryption": "starttls",
    }
    values.update(overrides)
    return account_for(client, identity, dovecot, user, **values)


@pytest.fixture
def sender(
    api: Any, alice: Identity, dovecot: Dovecot, smtp_server: SmtpServer, mail_user: MailUser
) -> Mailbox:
    return sender_for(api, alice, dovecot, smtp_server, mail_user)


def task_row(runtime: Runtime, identity: Identity, task_id: str) -> Task:
    with runtime.db.transaction(identity.caller.tenant_id) as session:
        row = session.get(Task, task_id)
    assert row is not None, f"no task {task_id}"
    return row


def await_task(
    runtime: Runtime,
    identity: Identity,
    task_id: str,
    *,
    until: Callable[[Task], bool] | None = None,
    timeout: float = 60.0,
) -> Task:
    """Wait until the task has finished (or ``until`` holds); returns its row."""
    done = until or (lambda row: row.status in ("success", "failure"))
    deadline = time.monotonic() + timeout
    while True:
        row = task_row(runtime, identity, task_id)
        if done(row):
            return row
        if time.monotonic() > deadline:
            raise AssertionError(f"task {task_id} did not get there in {timeout}s: {row.status}")
        time.sleep(0.05)


def task_status(client: Any, box: Mailbox, task_id: str) -> dict[str, Any]:
    """The task as the API shows it."""
    response = client.get(f"/api/sync/task/{task_id}", headers=box.headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def finished(client: Any, runtime: Runtime, box: Mailbox, identity: Identity, task_id: str) -> Any:
    await_task(runtime, identity, task_id)
    return task_status(client, box, task_id)


def sync_now(client: Any, runtime: Runtime, box: Mailbox, identity: Identity) -> dict[str, Any]:
    response = client.post(f"/api/sync/{box.id}", json={}, headers=box.headers)
    assert response.status_code == 202, response.text
    task: dict[str, Any] = finished(client, runtime, box, identity, response.json()["taskId"])
    assert task["status"] == "success", task
    return task


def send(client: Any, box: Mailbox, **body: Any) -> dict[str, Any]:
    headers = dict(box.headers)
    key = body.pop("idempotency_key", None)
    if key is not None:
        headers["Idempotency-Key"] = key
    values: dict[str, Any] = {"accountId": box.id, "subject": "Hello", "body": "Hi there."}
    values.update(body)
    response = client.post("/api/compose/send", json=values, headers=headers)
    assert response.status_code == 202, response.text
    queued: dict[str, Any] = response.json()
    return queued


def folders_by_name(client: Any, box: Mailbox) -> dict[str, dict[str, Any]]:
    response = client.get(f"/api/{box.id}/folders", headers=box.headers)
    assert response.status_code == 200, response.text
    return {folder["name"]: folder for folder in response.json()["folders"]}


def listed(client: Any, box: Mailbox, folder_name: str) -> list[dict[str, Any]]:
    """Every message the API lists in the folder ``folder_name`` (details included)."""
    folder = folders_by_name(client, box)[folder_name]
    response = client.get(
        f"/api/{box.id}/folders/{folder['id']}/messages?limit=100", headers=box.headers
    )
    assert response.status_code == 200, response.text
    return list(response.json()["messages"])


def detail(client: Any, box: Mailbox, message_id: str) -> dict[str, Any]:
    response = client.get(f"/api/{box.id}/messages/{message_id}", headers=box.headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


@contextlib.contextmanager
def imap_of(dovecot: Dovecot, user: MailUser) -> Iterator[Any]:
    client = dovecot.imap(user)
    try:
        yield client
    finally:
        with contextlib.suppress(Exception):
            client.logout()


def server_messages(dovecot: Dovecot, user: MailUser, folder: str) -> dict[int, dict[str, Any]]:
    """UID → {"flags": set, "message": EmailMessage, "raw": bytes} of ``folder``, over IMAP."""
    with imap_of(dovecot, user) as client:
        client.select_folder(folder, readonly=True)
        uids = client.search("ALL")
        fetched = client.fetch(uids, ["FLAGS", "BODY.PEEK[]"]) if uids else {}
    parser = BytesParser(policy=policy.default)
    return {
        uid: {
            "flags": {f.decode() if isinstance(f, bytes) else str(f) for f in data[b"FLAGS"]},
            "raw": data[b"BODY[]"],
            "message": parser.parsebytes(data[b"BODY[]"]),
        }
        for uid, data in fetched.items()
    }


def with_message_id(
    messages: dict[int, dict[str, Any]], message_id: str
) -> list[tuple[int, dict[str, Any]]]:
    return [
        (uid, entry)
        for uid, entry in messages.items()
        if str(entry["message"]["Message-ID"]).strip() == f"<{message_id}>"
    ]


def mail_with_attachments(
    sender: str, recipient: str, files: dict[str, tuple[str, bytes]]
) -> bytes:
    """A message carrying ``files`` (name → (MIME type, bytes)), for APPEND."""
    message = EmailMessage(policy=policy.SMTP)
    message["From"] = sender
    message["To"] = recipient
    message["Subject"] = "Files for you"
    message["Message-ID"] = f"<files-{time.monotonic_ns()}@example.test>"
    message.set_content("See attached.")
    for name, (mime_type, data) in files.items():
        maintype, subtype = mime_type.split("/")
        message.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
    return message.as_bytes()
