"""Synchronising an account with its mail server: starting a sync, and running one.

``start_sync`` runs in a request (or the scheduler): it creates the task row and queues
the job, or returns the sync already under way. ``run_sync`` runs in a worker: it takes
the account's lock, mirrors the account (``imap_sync`` / ``pop3_sync``), and records
progress and outcome in the task row.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from sqlalchemy import update

from db.models import Account, Task, now_ms
from email_service import locks, metrics
from email_service.crypto import DecryptionError
from email_service.jobs import Attempt, RetryLater
from email_service.mail.errors import MailAuthError, MailError
from email_service.mail.imap import ImapSession
from email_service.mail.pop3 import Pop3Session
from email_service.runtime import Runtime
from email_service.scope import Scope
from email_service.services import tasks
from email_service.services.accounts import account_endpoint, load_account
from email_service.services.sync.base import SyncCounts, SyncJob
from email_service.services.sync.imap_sync import sync_imap
from email_service.services.sync.pop3_sync import sync_pop3
from email_service.services.sync.store import MessageStore, delete_blobs

log = logging.getLogger(__name__)

SYNC_ACTOR = "sync_account"


def start_sync(scope: Scope, account_id: str, body: dict[str, Any] | None) -> dict[str, Any]:
    """Queue a sync of the caller's account, or return the one already pending/running.

    Raises ``AccountNotFound`` for an unknown, deleted or foreign account.
    """
    body = body or {}
    account = load_account(scope, account_id, for_update=True)
    return request_sync(scope, account, force=body.get("force", False), folders=body.get("folders"))


def request_sync(
    scope: Scope, account: Account, *, force: bool = False, folders: list[str] | None = None
) -> dict[str, Any]:
    """``start_sync`` for an account row already loaded (and locked) by the caller."""
    if account.sync_task_id:
        current = scope.session.get(Task, account.sync_task_id)
        if tasks.is_active(current):
            assert current is not None
            return {
                "taskId": current.id,
                "status": "started" if current.status != "pending" else "pending",
                "message": "A sync of this account is already under way",
            }
    payload: dict[str, Any] = {"force": bool(force)}
    if folders:
        payload["folders"] = list(dict.fromkeys(folders))
    row = tasks.queue_task(scope, "sync", SYNC_ACTOR, account_id=account.id, payload=payload)
    account.sync_task_id = row.id
    return {"taskId": row.id, "status": "pending", "message": "Sync queued"}


def _describe(exc: BaseException) -> str:
    if isinstance(exc, MailAuthError):
        return f"The mail server refused the login: {exc}"
    if isinstance(exc, MailError):
        return str(exc)
    if isinstance(exc, PermissionError):
        return f"The connection was not allowed: {exc}"
    if isinstance(exc, DecryptionError):
        return "The stored password cannot be decrypted (is its key still configured?)"
    return "The sync failed because of an internal error"


def run_sync(runtime: Runtime, tenant_id: uuid.UUID, task_id: str, attempt: Attempt) -> None:
    """Run the sync task ``task_id``. Safe to run twice: a finished task is left alone.

    Raises ``RetryLater`` when the failure is transient and retries remain (the task is
    then in ``retry`` with the reason); otherwise records ``success`` or ``failure``.
    """
    report = tasks.TaskReport(runtime, tenant_id, task_id)
    task = report.load()
    if task is None or task.status in tasks.FINISHED:
        return
    with runtime.db.transaction(tenant_id) as session:
        account = session.get(Account, task.account_id) if task.account_id else None
        if account is None or account.deleted_at is not None:
            account = None
    if account is None:
        report.failed("The account no longer exists")
        return

    with locks.try_lock(runtime.db, f"sync:{account.id}") as locked:
        if not locked:
            message = "Another sync of this account is running"
            if attempt.last:
                report.failed(message)
                _release(runtime, tenant_id, account.id, task_id, success=False)
                return
            report.retrying(message)
            raise RetryLater(message)
        _run_locked(runtime, tenant_id, account, task, report, attempt)


def _run_locked(
    runtime: Runtime,
    tenant_id: uuid.UUID,
    account: Account,
    task: Task,
    report: tasks.TaskReport,
    attempt: Attempt,
) -> None:
    report.started(attempt.number)
    _set_syncing(runtime, tenant_id, account.id, True)
    folders = task.payload.get("folders")
    store = MessageStore(runtime.blobs)
    job = SyncJob(
        db=runtime.db,
        tenant_id=tenant_id,
        account_id=account.id,
        store=store,
        force=bool(task.payload.get("force")),
        only_folders=frozenset(folders) if folders else None,
        batch_size=runtime.settings.sync_batch_size,
        progress=lambda percent: report.progress(percent, job.counts.result()),
        # Messages stored by an attempt that was cut off (a retry, or a worker that died
        # while the task was "started") stay counted; folders are counted afresh.
        counts=SyncCounts.resume(task.result if task.status in ("retry", "started") else None),
    )
    began = time.monotonic()
    success = False
    try:
        endpoint = account_endpoint(runtime, account)
        if account.protocol == "pop3":
            with Pop3Session(endpoint) as pop:
                sync_pop3(job, pop)
        else:
            with ImapSession(endpoint) as imap:
                sync_imap(job, imap)
    except Exception as exc:
        reason = _describe(exc)
        if not isinstance(exc, (MailError, PermissionError, DecryptionError)):
            log.exception("sync of account %s failed", account.id)
        else:
            log.warning("sync of account %s failed: %s", account.id, reason)
        transient = isinstance(exc, MailError) and exc.transient
        if transient and not attempt.last:
            report.retrying(reason, job.counts.result())
            raise RetryLater(reason) from exc
        report.failed(reason, job.counts.result())
    else:
        success = True
        report.succeeded(job.counts.result())
        took = time.monotonic() - began
        metrics.observe_sync(took, job.counts.added + job.counts.updated)
        log.info("synced account %s in %.1fs: %s", account.id, took, job.counts.result())
    finally:
        store.close()
        delete_blobs(runtime.blobs, job.blob_keys)
        _set_syncing(runtime, tenant_id, account.id, False)
    _release(runtime, tenant_id, account.id, task.id, success=success)


def _set_syncing(runtime: Runtime, tenant_id: uuid.UUID, account_id: str, value: bool) -> None:
    with runtime.db.transaction(tenant_id) as session:
        session.execute(update(Account).where(Account.id == account_id).values(is_syncing=value))


def _release(
    runtime: Runtime, tenant_id: uuid.UUID, account_id: str, task_id: str, *, success: bool
) -> None:
    """The task is over: the account is free for the next sync."""
    with runtime.db.transaction(tenant_id) as session:
        session.execute(
            update(Account)
            .where(Account.id == account_id, Account.sync_task_id == task_id)
            .values(sync_task_id=None)
        )
        if success:
            session.execute(
                update(Account).where(Account.id == account_id).values(last_sync_at=now_ms())
            )
