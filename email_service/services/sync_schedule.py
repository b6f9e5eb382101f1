"""Which accounts are due for a sync, and queueing those syncs (the scheduler's work)."""

from __future__ import annotations

import logging

from sqlalchemy import BigInteger, ColumnElement, cast, exists, literal, or_, select

from db.models import Account, Task, now_ms
from email_service import locks
from email_service.errors import AccountNotFound
from email_service.identity import Caller
from email_service.runtime import Runtime
from email_service.scope import open_scope
from email_service.services.accounts import load_account
from email_service.services.syncing import request_sync

log = logging.getLogger(__name__)

SCHEDULER_LOCK = "scheduler:tick"


def _due_condition(now: int) -> tuple[ColumnElement[bool], ...]:
    # Milliseconds since 1970 need 64 bits; so does the arithmetic on them.
    interval_ms = cast(Account.sync_interval, BigInteger) * 1000
    moment = literal(now, BigInteger)
    recent_task = exists().where(
        Task.account_id == Account.id,
        Task.kind == "sync",
        Task.created_at > moment - interval_ms,
    )
    return (
        Account.deleted_at.is_(None),
        Account.is_enabled.is_(True),
        Account.is_sync_enabled.is_(True),
        # A revoked OAuth2 authorization waits for its owner to reconnect the account.
        Account.auth_error.is_(None),
        or_(Account.last_sync_at.is_(None), Account.last_sync_at + interval_ms <= moment),
        # A sync that failed (a wrong password, say) is not retried before the interval
        # has passed again: the scheduler must not hammer a server with bad logins.
        ~recent_task,
    )


def enqueue_due_syncs(runtime: Runtime, now: int | None = None) -> list[str]:
    """Queue a sync for every account whose ``syncInterval`` has passed; returns task ids.

    Safe with several schedulers: one tick runs at a time (a lock), and an account that
    already has a sync pending or running gets no second one.
    """
    now = now or now_ms()
    queued: list[str] = []
    with locks.try_lock(runtime.db, SCHEDULER_LOCK) as locked:
        if not locked:
            return queued
        with runtime.db.transaction(system=True) as session:
            due = session.execute(
                select(Account.tenant_id, Account.user_id, Account.id).where(*_due_condition(now))
            ).all()
        for tenant_id, user_id, account_id in due:
            try:
                queued.extend(_queue_one(runtime, Caller(tenant_id, user_id), account_id, now))
            except Exception:
                # One account's trouble must not keep the others from syncing.
                log.exception("could not queue the scheduled sync of account %s", account_id)
    if queued:
        log.info("scheduler queued %d sync(s)", len(queued))
    return queued


def _queue_one(runtime: Runtime, caller: Caller, account_id: str, now: int) -> list[str]:
    with open_scope(runtime, caller) as scope:
        try:
            account = load_account(scope, account_id, for_update=True)
        except AccountNotFound:
            return []
        # Checked again under the row lock: another scheduler or a request may have
        # queued one since the list above was read.
        still_due = scope.session.scalar(
            select(Account.id).where(Account.id == account_id, *_due_condition(now))
        )
        if still_due is None:
            return []
        started = request_sync(scope, account)
    return [started["taskId"]]
