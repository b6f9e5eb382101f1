"""Where a send keeps its message until the job is done: in the task row when small, in
the blob store when large; and nothing of it left behind once the task has finished.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from email_service.blobstore import BlobNotFound
from email_service.runtime import Runtime
from email_service.services import compose, delivery
from tests.compose.conftest import await_task, send, task_row
from tests.compose.test_fetch_outside_transactions import Checkouts, backend_states
from tests.conftest import Identity
from tests.servers.dovecot import Dovecot
from tests.servers.smtp import SmtpServer
from tests.sync.conftest import Mailbox


class BlobLog:
    """The blob store's puts and deletes, recorded as the API and the worker make them."""

    def __init__(self, runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
        self.puts: list[str] = []
        self.deletes: list[str] = []
        blobs = runtime.blobs
        put, delete = blobs.put, blobs.delete

        def recording_put(key: str, data: bytes, content_type: str) -> None:
            self.puts.append(key)
            put(key, data, content_type)

        def recording_delete(key: str) -> None:
            self.deletes.append(key)
            delete(key)

        monkeypatch.setattr(blobs, "put", recording_put)
        monkeypatch.setattr(blobs, "delete", recording_delete)


def eventually(check: Callable[[], bool], timeout: float = 30.0) -> bool:
    """Whether ``check`` comes true in time (the worker deletes blobs after reporting)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def received(smtp_server: SmtpServer, message_id: str) -> list[Any]:
    return [m for m in smtp_server.received if f"<{message_id}>".encode() in m.raw]


def test_a_small_message_travels_in_its_task_row_and_is_dropped_once_sent(
    api: Any, sync_runtime: Runtime, alice: Identity, sender: Mailbox, dovecot: Dovecot,
    smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    blobs = BlobLog(sync_runtime, monkeypatch)
    to, hidden = dovecot.new_user("to"), dovecot.new_user("bcc")

    # When a small message with a Bcc recipient is sent
    queued = send(api, sender, to=[to.email], bcc=[hidden.email], body="Short and sweet.")
    row = await_task(sync_runtime, alice, queued["taskId"])

    # Then it went out once, without its Bcc header, and the Sent copy names the Bcc
    assert row.status == "success", row.error
    [submitted] = received(smtp_server, queued["messageId"])
    assert b"Short and sweet." in submitted.raw and b"\nBcc:" not in submitted.raw
    assert row.result is not None and row.result["sentFolder"] == "Sent"
    # and the only blob the send wrote is the worker's note of the acceptance, deleted
    # at the end; the message itself never went to the blob store
    note = delivery.note_key(row.payload)
    assert eventually(lambda: blobs.deletes == [note]), blobs.deletes
    assert blobs.puts == [note]
    # and the finished task keeps neither the message nor the sender's copy
    assert "raw" not in row.payload and "copy" not in row.payload


def test_a_large_message_is_kept_in_the_blob_store_until_sent(
    api: Any, sync_runtime: Runtime, alice: Identity, sender: Mailbox, dovecot: Dovecot,
    smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    blobs = BlobLog(sync_runtime, monkeypatch)
    to = dovecot.new_user("to")
    body = "A long letter. " * (compose.INLINE_MESSAGE_BYTES // 10)

    # When a message larger than a task row keeps is sent
    queued = send(api, sender, to=[to.email], body=body)
    row = await_task(sync_runtime, alice, queued["taskId"])

    # Then it was uploaded once, delivered once, and its blob and the note are gone
    assert row.status == "success", row.error
    assert len(received(smtp_server, queued["messageId"])) == 1
    raw_key = row.payload["rawKey"]
    assert row.payload["copyKey"] == raw_key and "raw" not in row.payload
    note = delivery.note_key(row.payload)
    assert eventually(lambda: sorted(blobs.deletes) == sorted([raw_key, note])), blobs.deletes
    assert blobs.puts == [raw_key, note]
    for key in (raw_key, note):
        with pytest.raises(BlobNotFound):
            b"".join(sync_runtime.blobs.stream(key))


def test_a_failed_send_drops_its_message_too(
    api: Any, sync_runtime: Runtime, alice: Identity, sender: Mailbox, dovecot: Dovecot,
    smtp_server: SmtpServer,
) -> None:  # fmt: skip
    # When a send fails for good (the server refuses its only recipient)
    queued = send(api, sender, to=["nobody-here@example.test"], body="Lost letter.")
    row = await_task(sync_runtime, alice, queued["taskId"])

    # Then the task says why, and keeps no copy of the message
    assert row.status == "failure" and row.error
    again = task_row(sync_runtime, alice, queued["taskId"])
    assert "raw" not in again.payload and "copy" not in again.payload


@pytest.mark.parametrize(
    ("path", "status", "size"),
    [
        ("/api/compose/send", 202, compose.INLINE_MESSAGE_BYTES),  # a send kept as a blob
        ("/api/compose/draft", 201, 10),  # every IMAP draft waits as a blob
    ],
    ids=["large-send", "draft"],
)
def test_a_message_is_put_in_the_blob_store_with_no_transaction_open(
    api: Any, sync_runtime: Runtime, alice: Identity, sender: Mailbox, dovecot: Dovecot,
    smtp_server: SmtpServer, monkeypatch: pytest.MonkeyPatch, path: str, status: int,
    size: int,
) -> None:  # fmt: skip
    # Given a watch on which pooled connections each thread holds, and on every put of
    # a message the request keeps for its job
    checkouts = Checkouts(sync_runtime.db.engine)
    puts: list[tuple[str, list[int], set[int], dict[int, str]]] = []
    blobs = sync_runtime.blobs
    put = blobs.put

    def watched_put(key: str, data: bytes, content_type: str) -> None:
        if "/outgoing/" in key and not key.endswith(".accepted"):
            thread = threading.get_ident()
            used = set(checkouts.used[thread])
            # (a connection the pool has handed to another thread since is that thread's)
            states = backend_states(used - checkouts.held_by_others(thread))
            puts.append((key, checkouts.held_by(thread), used, states))
        put(key, data, content_type)

    monkeypatch.setattr(blobs, "put", watched_put)
    to = dovecot.new_user("to")
    body = {
        "accountId": sender.id,
        "to": [to.email],
        "subject": "Kept",
        "body": "A long letter. " * (size // 10),
    }

    # When the message is sent (or saved as a draft)
    try:
        response = api.post(path, json=body, headers=sender.headers)
    finally:
        checkouts.close()

    # Then, while it was put, the request held no database connection, and none of
    # those it had used was idle in a transaction
    assert response.status_code == status, response.text
    [(key, held, used, states)] = puts
    assert held == [], key
    assert used, "the request read nothing from the database before the put"
    assert not [s for s in states.values() if s.startswith("idle in transaction")], states
    # and the job still finds the message
    assert await_task(sync_runtime, alice, response.json()["taskId"]).status == "success"


def test_a_kept_message_whose_task_is_not_committed_is_deleted_again(
    api: Any, sync_runtime: Runtime, sender: Mailbox, dovecot: Dovecot,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    # Given a transaction that fails as the send's task is queued, after its message
    # was put in the blob store
    blobs = BlobLog(sync_runtime, monkeypatch)

    def failing(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the task could not be queued")

    monkeypatch.setattr(compose.tasks, "queue_task", failing)
    to = dovecot.new_user("to")
    body = "A long letter. " * (compose.INLINE_MESSAGE_BYTES // 10)

    # When a message larger than a task row keeps is sent
    values = {"accountId": sender.id, "to": [to.email], "subject": "Lost", "body": body}
    response = api.post("/api/compose/send", json=values, headers=sender.headers)

    # Then the request fails, and the message it put is deleted again
    assert response.status_code == 500, response.text
    assert len(blobs.puts) == 1 and "/outgoing/" in blobs.puts[0]
    assert blobs.deletes == blobs.puts
    with pytest.raises(BlobNotFound):
        b"".join(sync_runtime.blobs.stream(blobs.puts[0]))
