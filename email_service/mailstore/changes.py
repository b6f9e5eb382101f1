"""The changes a write of mail state records: folders, messages, whole mirrors.

The mail store calls these in the transaction of the write they describe (``db.changes``
explains the guarantees); nothing here commits. ``data`` is what a consumer needs
without a second call: a message's list fields, a folder. Account and task changes are
the use cases' own (``email_service.services.events``).

A folder's first mirror (and its rebuild after a UIDVALIDITY change) is told as one
``sync.completed`` with counts, not a ``message.created`` per message: the sync engine
decides that and stores such batches with no ``origin``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from types import SimpleNamespace
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.changes import account_owner, record_change
from db.models import Folder, Message
from email_service import present

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
