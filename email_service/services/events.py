"""The change vocabulary: what each write of mail state records for the feed.

The writers of folders, messages, tasks and accounts call these in the transaction of
their write (``db.changes`` explains the guarantees); nothing here commits. ``data`` is
what a consumer needs without a second call: a message's list fields, a folder, a
task's status and result, an account without secrets.

A folder's first mirror (and its rebuild after a UIDVALIDITY change) is told as one
``sync.completed`` with counts, not a ``message.created`` per message: the sync engine
decides that and simply does not call ``message_created`` then.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from types import SimpleNamespace
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.changes import account_owner, record_change
from db.models import Account, Folder, Message, Task, now_ms
from email_service.services import present

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

#: Where a new message came from (``data.origin`` of ``message.created``).
ORIGIN_SYNC = "sync"
ORIGIN_SEND = "send"
ORIGIN_DRAFT = "draft"


def _record_for_account(session: Session, account_id: str, type: str, **fields: Any) -> None:
    owner = account_owner(session, account_id)
    if owner is None:
        return  # the account is gone: nobody to tell
    record_change(
        session, tenant_id=owner[0], user_id=owner[1], type=type, account_id=account_id, **fields
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


# ----------------------------------------------------------------------------- folders


def folder_changed(session: Session, row: Folder, type: str, **extra: Any) -> None:
    """``folder.created`` / ``folder.updated`` / ``folder.deleted`` for ``row``."""
    data = present.folder(row)
    data.update(extra)
    _record_for_account(session, row.account_id, type, folder_id=row.id, data=data)


def sync_completed(
    session: Session,
    row: Folder,
    *,
    reason: str,
    added: int,
    removed: int,
    skipped: int,
) -> None:
    """A folder was mirrored whole (first time, or rebuilt): one change with counts."""
    data = present.folder(row)
    data.update(
        {
            "reason": reason,
            "messagesAdded": added,
            "messagesRemoved": removed,
            "messagesSkipped": skipped,
        }
    )
    _record_for_account(session, row.account_id, "sync.completed", folder_id=row.id, data=data)


# ----------------------------------------------------------------------------- messages


def messages_created(
    session: Session, account_id: str, rows: Iterable[dict[str, Any]], origin: str
) -> None:
    """``message.created`` for freshly inserted message rows (dicts of their columns)."""
    for row in rows:
        data = present.message_summary(SimpleNamespace(**row))  # type: ignore[arg-type]
        data["origin"] = origin
        _record_for_account(
            session,
            account_id,
            "message.created",
            folder_id=row["folder_id"],
            message_id=row["id"],
            data=data,
        )


def message_updated(session: Session, row: Message, **extra: Any) -> None:
    data = present.message_summary(row)
    data.update(extra)
    _record_for_account(
        session,
        row.account_id,
        "message.updated",
        folder_id=row.folder_id,
        message_id=row.id,
        data=data,
    )


def messages_updated(session: Session, account_id: str, message_ids: Sequence[str]) -> None:
    """``message.updated`` for rows changed by bulk statements (read back once)."""
    for start in range(0, len(message_ids), 500):
        chunk = message_ids[start : start + 500]
        for row in session.scalars(select(Message).where(Message.id.in_(chunk))):
            message_updated(session, row)


def messages_deleted(session: Session, gone: Iterable[tuple[str, str, str]]) -> None:
    """``message.deleted`` for (message id, account id, folder id) triples."""
    for message_id, account_id, folder_id in gone:
        _record_for_account(
            session,
            account_id,
            "message.deleted",
            folder_id=folder_id,
            message_id=message_id,
            data={"id": message_id, "accountId": account_id, "folderId": folder_id},
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
