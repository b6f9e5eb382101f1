"""The change vocabulary, and the changes that are the use cases' own: accounts and tasks.

The writers of accounts and tasks call these in the transaction of their write
(``db.changes`` explains the guarantees); nothing here commits. ``data`` is what a
consumer needs without a second call: a task's status and result, an account without
secrets. Changes of mail state (folders, messages, whole mirrors) are recorded by the
mail store, the one writer of that state (``email_service.mailstore.changes``).
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from db.changes import record_change
from db.models import Account, Task, now_ms
from email_service import present

CHANGE_TYPES = (
    "account.created",
    "account.updated",
    "account.deleted",
    "account.error",
    "folder.created",
    "folder.updated",
    "folder.deleted",
    "message.created",
    "message.updated",
    "message.deleted",
    "sync.completed",
    "task.updated",
)


# ----------------------------------------------------------------------------- accounts


def account_changed(session: Session, row: Account, type: str) -> None:
    """``account.created`` / ``account.updated`` / ``account.deleted`` for ``row``."""
    record_change(
        session,
        tenant_id=row.tenant_id,
        user_id=row.user_id,
        type=type,
        account_id=row.id,
        data=present.account(row, with_username=False),
    )


def account_failing(session: Session, account_id: str, reason: str) -> None:
    """The account's server refuses the login or cannot be reached.

    Records ``account.error`` (``data.state`` "failing") only when the account was
    healthy until now: a sync retried every few minutes against a dead server tells it
    once. Safe to call from any job that talks to the account's servers.
    """
    row = session.get(Account, account_id, with_for_update=True)
    if row is None or row.failing_since is not None:
        return
    row.failing_since = now_ms()
    record_change(
        session,
        tenant_id=row.tenant_id,
        user_id=row.user_id,
        type="account.error",
        account_id=row.id,
        data={"state": "failing", "error": reason, "since": row.failing_since},
    )


def account_recovered(session: Session, account_id: str) -> None:
    """The account's server answered again: ``account.error`` with state "recovered",
    once, and only if it was failing."""
    row = session.get(Account, account_id, with_for_update=True)
    if row is None or row.failing_since is None:
        return
    since = row.failing_since
    row.failing_since = None
    record_change(
        session,
        tenant_id=row.tenant_id,
        user_id=row.user_id,
        type="account.error",
        account_id=row.id,
        data={"state": "recovered", "failingSince": since, "recoveredAt": now_ms()},
    )


# ----------------------------------------------------------------------------- tasks


#: Tasks a client starts and follows (getSyncStatus); internal ones (account purges)
#: are not changes of the user's mail.
TOLD_TASK_KINDS = frozenset({"sync", "send", "draft", "flags"})


def task_updated(session: Session, row: Task) -> None:
    """``task.updated``: the task's status changed (created, started, retry, finished)."""
    if row.kind not in TOLD_TASK_KINDS:
        return
    record_change(
        session,
        tenant_id=row.tenant_id,
        user_id=row.user_id,
        type="task.updated",
        account_id=row.account_id,
        task_id=row.id,
        data=present.task(row),
    )
