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
from contextlib import ExitStack
from typing import Any

from sqlalchemy import case, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from db.models import Account, Task, now_ms
from email_service import locks, metrics
from email_service.crypto import DecryptionError
from email_service.errors import ServiceError
from email_service.jobs import Attempt, RetryLater, infrastructure_trouble
from email_service.mail.errors import MailAuthError, MailError
from email_service.mail.imap import pooled_session
from email_service.mail.pop3 import Pop3Session
from email_service.mailstore.messages import MessageStore, delete_blobs
from email_service.oauth2 import OAuth2Error, OAuth2Unavailable
from email_service.runtime import Runtime
from email_service.scope import JobUnit, Scope
from email_service.services import events, tasks
from email_service.services.accounts import account_endpoint, load_account
from email_service.services.sync.base import SyncCounts, SyncJob
from email_service.services.sync.imap_sync import sync_imap
from email_service.services.sync.pop3_sync import sync_pop3

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
    if isinstance(exc, OAuth2Error | OAuth2Unavailable):
        # Already in words: "authorization revoked; reconnect the account", say.
        return str(exc)
    if isinstance(exc, MailAuthError):
        return f"The mail server refused the login: {exc}"
    if isinstance(exc, MailError):
        return str(exc)
    if isinstance(exc, PermissionError):
        return f"The connection was not allowed: {exc}"
    if isinstance(exc, ServiceError):  # the outbound guard refusing the host, say
        return exc.message
    if isinstance(exc, DecryptionError):
        return "The stored password cannot be decrypted (is its key still configured?)"
    if isinstance(exc, DBAPIError):  # one that trying again would not pass (a program limit)
        state = getattr(exc.orig, "sqlstate", None) or type(exc.orig).__name__
        return f"The sync failed: the database refused it ({state})"
    return "The sync failed because of an internal error"


def run_sync(runtime: Runtime, tenant_id: uuid.UUID, task_id: str, attempt: Attempt) -> None:
    """Run the sync task ``task_id``. Safe to run twice: a finished task is left alone.

    Raises ``RetryLater`` when the failure is transient and retries remain (the task is
    then in ``retry`` with the reason); otherwise records ``success`` or ``failure``.
    The run owns one unit of work: every write is a step of it, the task's status
    changes folded into the steps that change the account.
    """
    unit = JobUnit(runtime, tenant_id)
    report = tasks.TaskReport(unit, task_id)
    with ExitStack() as held:
        # One step starts the run: the task read, the account's lock taken (it outlives
        # the step, on a connection of its own), and the outcome of that written.
        with unit.step() as session:
            task = report.lock(session)  # read once, locked: the start below writes it
            if task is None or task.status in tasks.FINISHED:
                return
            account_id = task.account_id
            locked = bool(account_id) and held.enter_context(
                locks.try_lock(runtime.db, f"sync:{account_id}")
            )
            # With the lock, the live account is marked syncing and read in one statement.
            account = _start_syncing(session, account_id) if locked else _live(session, account_id)
            if account is None:
                report.failed("The account no longer exists")
                return
            busy = "Another sync of this account is running"
            if not locked and attempt.last:
                # The running sync owns is_syncing; only this task's claim is dropped.
                report.failed(busy)
                _finish_account(session, account.id, task_id, None)
                return
            if not locked:
                report.retrying(busy)
            else:
                report.started(attempt.number)
        if not locked:
            raise RetryLater(busy)
        _run_locked(unit, account, task, report, attempt)


def _run_locked(
    unit: JobUnit,
    account: Account,
    task: Task,
    report: tasks.TaskReport,
    attempt: Attempt,
) -> None:
    runtime = unit.runtime
    folders = task.payload.get("folders")
    store = MessageStore(runtime.blobs)

    def succeeded(session: Session, result: dict[str, Any]) -> None:
        # In the sync's last step: the task's success and the account freed.
        report.succeeded(result)
        _finish_account(session, account.id, task.id, True)

    job = SyncJob(
        unit=unit,
        account_id=account.id,
        store=store,
        force=bool(task.payload.get("force")),
        only_folders=frozenset(folders) if folders else None,
        batch_size=runtime.settings.sync_batch_size,
        progress=lambda percent: _report_progress(report, job, percent),
        # Messages stored by an attempt that was cut off (a retry, or a worker that died
        # while the task was "started") stay counted; folders are counted afresh.
        counts=SyncCounts.resume(task.result if task.status in ("retry", "started") else None),
        on_complete=succeeded,
    )
    began = time.monotonic()
    try:
        endpoint = account_endpoint(runtime, account)
        if account.protocol == "pop3":
            with Pop3Session(endpoint) as pop:
                sync_pop3(job, pop)
        else:
            # The worker keeps the account's session across jobs (mail/pool.py): one
            # that ended cleanly serves the next sync or Sent copy after a NOOP.
            with pooled_session(endpoint, runtime.mail_pools.imap, account.id) as imap:
                sync_imap(job, imap)
        if not job.completed:  # else the sync's own last step wrote it (sync_imap)
            # Inside the try: a last step that fails is a failed (or retried) sync too.
            with unit.step() as session:
                job.complete(session)
    except Exception as exc:
        reason = _describe(exc)
        outage = infrastructure_trouble(exc)
        if outage is not None:
            # Batches already committed stay; a retry resumes after them. The last
            # attempt is followed by none and must not promise one.
            then = "that was the last attempt" if attempt.last else "it will be retried"
            reason = f"The sync was interrupted: {outage}; {then}"
            log.warning("sync of account %s interrupted: %s (%r)", account.id, outage, exc)
        elif not isinstance(exc, (MailError, PermissionError, DecryptionError, ServiceError)):
            log.exception("sync of account %s failed", account.id)
        else:
            log.warning("sync of account %s failed: %s", account.id, reason)
        transient = (isinstance(exc, MailError) and exc.transient) or outage is not None
        retry = transient and not attempt.last
        with unit.step() as session:
            if retry:
                report.retrying(reason, job.counts.result())
                _syncing(session, account.id, False)
            else:
                report.failed(reason, job.counts.result())
                _finish_account(session, account.id, task.id, False)
            if _server_problem(exc):
                # The server refused us or could not be reached (not our own bug):
                # account.error, told once until a sync succeeds again.
                events.account_failing(session, account.id, reason)
        if retry:
            raise RetryLater(reason) from exc
    except BaseException:
        # The worker is going away (shutdown, time limit): the task stays "started" for
        # the redelivered message to resume; the account is not syncing meanwhile.
        with unit.step() as session:
            _syncing(session, account.id, False)
        raise
    else:
        took = time.monotonic() - began
        metrics.observe_sync(took, job.counts.added + job.counts.updated)
        noticed = task.payload.get("noticedAt")
        if isinstance(noticed, int):
            # A sync the watcher asked for: how long from the server's notice to stored.
            metrics.observe_push_latency((now_ms() - noticed) / 1000)
        log.info("synced account %s in %.1fs: %s", account.id, took, job.counts.result())
    finally:
        store.close()
        delete_blobs(runtime.blobs, job.blob_keys)


def _report_progress(report: tasks.TaskReport, job: SyncJob, percent: float) -> None:
    counts = job.counts
    stored = (counts.added, counts.updated, counts.removed, len(counts.skipped))
    # Every change to what is stored is saved with the progress, so a rerun after a
    # crash resumes exact counts; progress alone may wait.
    save = stored != job.saved_counts
    job.saved_counts = stored
    report.progress(percent, counts.result(), save=save)


def _server_problem(exc: BaseException) -> bool:
    return isinstance(exc, (MailError, PermissionError, ServiceError))


def _live(session: Session, account_id: str | None) -> Account | None:
    """The account, unless it is gone or deleted."""
    account = session.get(Account, account_id) if account_id else None
    return account if account is not None and account.deleted_at is None else None


def _start_syncing(session: Session, account_id: str | None) -> Account | None:
    """Mark the live account syncing and return it (``None``: gone or deleted)."""
    if not account_id:
        return None
    return session.scalars(
        update(Account)
        .where(Account.id == account_id, Account.deleted_at.is_(None))
        .values(is_syncing=True)
        .returning(Account)
        .execution_options(synchronize_session=False)
    ).one_or_none()


def _syncing(session: Session, account_id: str, value: bool = True) -> None:
    session.execute(update(Account).where(Account.id == account_id).values(is_syncing=value))


def _finish_account(session: Session, account_id: str, task_id: str, success: bool | None) -> None:
    """The task is over: the account is free for the next sync.

    ``success`` True or False: this task ran the sync, which has stopped (and, when
    True, succeeded: the account's server answered, so an account that was failing
    has recovered, ``events.account_recovered``). None: this task never ran one.
    """
    if success is None:
        session.execute(
            update(Account)
            .where(Account.id == account_id, Account.sync_task_id == task_id)
            .values(sync_task_id=None)
        )
        return
    values: dict[str, Any] = {
        "is_syncing": False,
        # The account's claim is this task's only if it still names it.
        "sync_task_id": case((Account.sync_task_id == task_id, None), else_=Account.sync_task_id),
    }
    if success:
        values["last_sync_at"] = now_ms()
    # One statement: the row is locked by it until the commit, and RETURNING gives
    # ``failing_since`` as committed last (this statement does not change it).
    failing_since = session.execute(
        update(Account)
        .where(Account.id == account_id)
        .values(**values)
        .returning(Account.failing_since)
        .execution_options(synchronize_session=False)
    ).scalar_one_or_none()
    if success and failing_since is not None:
        events.account_recovered(session, account_id)
