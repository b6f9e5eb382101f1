"""Storing a message we put on the server ourselves (a Sent copy, a draft)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import Message
from email_service.blobstore import BlobStore
from email_service.mail.imap import RemoteFolder
from email_service.mail.mime import parse_message
from email_service.mailstore.folders import local_folder
from email_service.mailstore.messages import FolderTarget, Incoming, MessageStore, adjust_counts


def store_own_copy(
    session: Session,
    blobs: BlobStore,
    tenant_id: uuid.UUID,
    account_id: str,
    folder: RemoteFolder,
    uid: int,
    raw: bytes,
    flags: tuple[str, ...],
    origin: str,
) -> str | None:
    """Store the message we just put on the server as UID ``uid`` of ``folder``.

    The row is what a sync would have made of it (the sync's own store does it), so the
    message is listed at once and a later sync, which skips UIDs it knows, does not add
    it again. Nothing is stored when the folder has no row yet (the account was never
    synced): its first sync brings the folder and the message. Returns our message id.
    The new message is a ``message.created`` change with ``data.origin`` = ``origin``.
    Written in ``session``; the caller commits.
    """
    row = local_folder(session, tenant_id, account_id, folder, create=False)
    if row is None:
        return None
    existing = _message_at(session, row.id, uid)
    if existing is not None:
        return existing
    store = MessageStore(blobs)
    try:
        target = FolderTarget(tenant_id, account_id, row.id, row.name, row.type == "spam", origin)
        item = Incoming(
            parsed=parse_message(raw),
            size=len(raw),
            flags=flags,
            received_at=datetime.now(UTC),
            uid=uid,
        )
        # A sync that stored this UID meanwhile wins; the store skips our duplicate.
        outcome = store.add_batch(session, target, [item])
    finally:
        store.close()
    adjust_counts(session, row.id, outcome.added, outcome.unread)
    return _message_at(session, row.id, uid)


def _message_at(session: Session, folder_id: str, uid: int) -> str | None:
    found: str | None = session.scalar(
        select(Message.id).where(Message.folder_id == folder_id, Message.uid == uid)
    )
    return found
