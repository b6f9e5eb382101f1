"""What the compose and write-back jobs share: special folders, the job's own progress
markers, and storing a message we put on the server ourselves.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from db.models import Folder, Message, Task
from email_service.mail.imap import ImapSession, RemoteFolder
from email_service.mail.mime import parse_message
from email_service.runtime import Runtime
from email_service.services import events
from email_service.services.sync.folders import display_name, refresh_counts
from email_service.services.sync.store import FolderTarget, Incoming, MessageStore

log = logging.getLogger(__name__)

_TYPE_BY_USE = {"\\Sent": "sent", "\\Drafts": "drafts", "\\Junk": "spam"}


def mark(runtime: Runtime, tenant_id: uuid.UUID, task_id: str, **values: Any) -> dict[str, Any]:
    """Merge ``values`` into the task's payload and commit at once; returns the payload.

    The payload is where a job records the steps it has done ("accepted by SMTP",
    "appended as UID n"), so that a re-run skips them.
    """
    with runtime.db.transaction(tenant_id) as session:
        row = session.get(Task, task_id, with_for_update=True)
        if row is None:
            return dict(values)
        # A new dict, so the JSON column is seen as changed.
        row.payload = {**row.payload, **values}
        return dict(row.payload)


def special_folder(imap: ImapSession, use: str, default_name: str) -> RemoteFolder:
    """The account's folder for ``use`` (``\\Sent``...), created as ``default_name`` if none.

    The server's SPECIAL-USE marks decide, then well-known names (``Sent Items``...).
    """
    name = imap.find_special_folder(use)
    if name is None:
        log.info("the account has no %s folder; creating %r", use, default_name)
        imap.create_folder(default_name)
        name = default_name
    for folder in imap.list_folders():
        if folder.name == name:
            return folder
    return RemoteFolder(name, None, (), use, True)


def append_once(
    imap: ImapSession, folder: str, raw: bytes, message_id: str, flags: tuple[str, ...]
) -> int | None:
    """APPEND ``raw`` to ``folder`` unless a message with its Message-ID is there already.

    Returns the message's UID (``None`` when the server reports none). The check makes a
    re-run after a lost reply harmless, and skips our copy when the server itself filed
    the message (some providers put submitted mail into Sent on their own).
    """
    imap.select(folder, readonly=True)
    found = imap.uids_with_header("Message-ID", f"<{message_id}>")
    if found:
        return max(found)
    return imap.append(folder, raw, flags, when=datetime.now(UTC))


def local_folder(
    session: Any, tenant_id: uuid.UUID, account_id: str, folder: RemoteFolder, *, create: bool
) -> Folder | None:
    """The stored row of ``folder``; with ``create``, made if missing.

    Only create while holding the account's sync lock: the sync creates folder rows too.
    The next sync completes a created row (hierarchy, counters, UIDVALIDITY).
    """
    row: Folder | None = session.scalars(
        select(Folder).where(
            Folder.account_id == account_id,
            Folder.tenant_id == tenant_id,
            Folder.name == folder.name,
        )
    ).one_or_none()
    if row is None and create:
        row = Folder(
            tenant_id=tenant_id,
            account_id=account_id,
            name=folder.name,
            display_name=display_name(folder),
            type="inbox"
            if folder.name.upper() == "INBOX"
            else _TYPE_BY_USE.get(folder.special_use or "", "custom"),
            delimiter=folder.delimiter,
            last_seen_uid=0,
            message_count=0,
            unread_count=0,
        )
        session.add(row)
        session.flush()
        events.folder_changed(session, row, "folder.created")
    return row


def store_own_copy(
    runtime: Runtime,
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
    """
    with runtime.db.transaction(tenant_id) as session:
        row = local_folder(session, tenant_id, account_id, folder, create=False)
        if row is None:
            return None
        existing = _message_at(session, row.id, uid)
        if existing is not None:
            return existing
        store = MessageStore(runtime.blobs)
        try:
            target = FolderTarget(
                tenant_id, account_id, row.id, row.name, row.type == "spam", origin
            )
            item = Incoming(
                parsed=parse_message(raw),
                size=len(raw),
                flags=flags,
                received_at=datetime.now(UTC),
                uid=uid,
            )
            # A sync that stored this UID meanwhile wins; the store skips our duplicate.
            store.add_batch(session, target, [item])
        finally:
            store.close()
        refresh_counts(session, row.id)
        return _message_at(session, row.id, uid)


def _message_at(session: Any, folder_id: str, uid: int) -> str | None:
    found: str | None = session.scalar(
        select(Message.id).where(Message.folder_id == folder_id, Message.uid == uid)
    )
    return found
