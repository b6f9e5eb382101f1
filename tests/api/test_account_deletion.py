"""Deleting an account deletes its secrets: the password at once, the blobs by a job."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from db.models import Account, Attachment, Task
from email_service.blobstore import BlobNotFound
from email_service.jobs import Attempt
from email_service.runtime import Runtime
from email_service.services.accounts import WIPED_KEY_ID
from email_service.services.purge import run_purge
from tests.conftest import Identity
from tests.factories import SeededAttachment, SeededMessage, create_account, seed_folder


def _with_attachments(client, who: Identity, runtime: Runtime) -> tuple[str, list[str]]:
    account = create_account(client, who.bearer, password="delete-me-please")
    files = [SeededAttachment(f"f{n}.txt", "text/plain", b"x" * 100) for n in range(3)]
    seed_folder(
        runtime, who.caller, account["id"], messages=[SeededMessage("s", attachments=files)]
    )
    with runtime.db.transaction(who.caller.tenant_id) as session:
        keys = list(
            session.scalars(
                select(Attachment.storage_key).where(Attachment.account_id == account["id"])
            )
        )
    assert len(keys) == 3
    return account["id"], keys


def _readable(runtime: Runtime, key: str) -> bool:
    try:
        b"".join(runtime.blobs.stream(key))
    except BlobNotFound:
        return False
    return True


def test_deleting_an_account_wipes_its_password_and_a_job_removes_its_blobs(
    client, alice: Identity, runtime: Runtime
) -> None:
    doomed, keys = _with_attachments(client, alice, runtime)
    kept, kept_keys = _with_attachments(client, alice, runtime)

    assert client.delete(f"/api/accounts/{doomed}", headers=alice.bearer).status_code == 204

    # At once, in the request's transaction: no ciphertext left to steal or decrypt.
    with runtime.db.transaction(alice.caller.tenant_id) as session:
        row = session.scalars(select(Account).where(Account.id == doomed)).one()
        assert (row.password_key_id, row.password_ciphertext) == (WIPED_KEY_ID, b"")
        task = session.scalars(
            select(Task).where(Task.account_id == doomed, Task.kind == "purge")
        ).one()
    assert all(_readable(runtime, key) for key in keys)  # until the job runs

    # The job (run here as the worker would run it) removes the blobs, only that
    # account's, and can run again harmlessly.
    run_purge(runtime, alice.caller.tenant_id, task.id, Attempt(0, last=False))
    assert not any(_readable(runtime, key) for key in keys)
    assert all(_readable(runtime, key) for key in kept_keys)
    status = client.get(f"/api/sync/task/{task.id}", headers=alice.bearer).json()
    assert status["status"] == "success" and status["result"] == {"removedBlobs": 3}
    run_purge(runtime, alice.caller.tenant_id, task.id, Attempt(0, last=False))
    assert client.get(f"/api/accounts/{kept}", headers=alice.bearer).status_code == 200


def test_a_failing_blob_store_leaves_the_job_to_retry(
    client, alice: Identity, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    from email_service.jobs import RetryLater

    doomed, keys = _with_attachments(client, alice, runtime)
    client.delete(f"/api/accounts/{doomed}", headers=alice.bearer)
    with runtime.db.transaction(alice.caller.tenant_id) as session:
        task_id = session.scalars(select(Task.id).where(Task.account_id == doomed)).one()

    def unavailable(key: str) -> None:
        raise OSError("blob store unavailable")

    monkeypatch.setattr(runtime.blobs, "delete", unavailable)
    with pytest.raises(RetryLater):
        run_purge(runtime, alice.caller.tenant_id, task_id, Attempt(0, last=False))
    monkeypatch.undo()
    run_purge(runtime, alice.caller.tenant_id, task_id, Attempt(1, last=False))
    assert not any(_readable(runtime, key) for key in keys)
