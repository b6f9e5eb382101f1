"""What deleting an account removes after the request: its attachments' blobs.

``delete_account`` wipes the stored password in the request's own transaction and
queues this job (after commit). The job walks the account's attachments in id order and
removes each blob from the blob store (S3/MinIO or the local directory); removing a
blob that is already gone succeeds, so the job can run any number of times. The rows
stay with the soft-deleted account, which nothing can read any more (404).

A presigned URL handed out before the deletion works until its blob is removed here or
it expires (``PRESIGN_TTL_SECONDS``), whichever comes first.
"""

from __future__ import annotations

import logging
import uuid

from sqlalchemy import select

from db.models import Attachment
from email_service.jobs import Attempt, RetryLater
from email_service.runtime import Runtime
from email_service.scope import JobUnit, Scope
from email_service.services import tasks

log = logging.getLogger(__name__)

PURGE_ACTOR = "purge_account"
BATCH = 500


def queue_purge(scope: Scope, account_id: str) -> None:
    """Queue the removal of ``account_id``'s blobs, sent once the deletion commits."""
    tasks.queue_task(scope, "purge", PURGE_ACTOR, account_id=account_id, payload={})


def run_purge(runtime: Runtime, tenant_id: uuid.UUID, task_id: str, attempt: Attempt) -> None:
    """Remove the blobs of the task's account. Raises ``RetryLater`` when the blob store
    fails (after recording it), so a later run finishes the job."""
    unit = JobUnit(runtime, tenant_id)
    report = tasks.TaskReport(unit, task_id)
    task = report.load()
    if task is None or task.status in tasks.FINISHED or task.account_id is None:
        return
    report.started(attempt.number)
    removed, after = 0, ""
    try:
        while True:
            with unit.step() as session:
                rows = session.execute(
                    select(Attachment.id, Attachment.storage_key)
                    .where(
                        Attachment.tenant_id == tenant_id,
                        Attachment.account_id == task.account_id,
                        Attachment.id > after,
                    )
                    .order_by(Attachment.id)
                    .limit(BATCH)
                ).all()
            for attachment_id, key in rows:
                runtime.blobs.delete(key)
                removed += 1
                after = attachment_id
            if len(rows) < BATCH:
                break
    except Exception as exc:  # the blob store's errors: try again later
        log.warning("purging the blobs of account %s failed", task.account_id, exc_info=True)
        error = f"removing the account's attachments failed: {type(exc).__name__}"
        if attempt.last:
            report.failed(error, {"removedBlobs": removed})
            return
        report.retrying(error, {"removedBlobs": removed})
        raise RetryLater(error) from exc
    report.succeeded({"removedBlobs": removed})
