"""Folder rows: from the server's folder list (types, display names, the hierarchy), the
folders jobs create on the server, and the stored counts."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import case, delete, func, select, update
from sqlalchemy.orm import Session

from db.models import Folder, Message, new_id, now_ms
from email_service.mail.imap import RemoteFolder, special_use_by_name
from email_service.mailstore import changes
from email_service.mailstore.messages import remove_messages

# The one folder of a POP3 account.
POP3_INBOX = "INBOX"
# Folders a job creates on the server itself (Sent, Drafts...), typed before a sync lists them.
_TYPE_BY_USE = {"\\Sent": "sent", "\\Drafts": "drafts", "\\Junk": "spam"}
_TYPE_BY_SPECIAL_USE = {
    "\\Sent": "sent",
    "\\Drafts": "drafts",
    "\\Junk": "spam",
    "\\Trash": "trash",
}


@dataclass(frozen=True)
class LocalFolder:
    """What a sync needs to know about a stored folder, detached from any session."""

    id: str
    name: str
    type: str
    uidvalidity: int | None
    uidnext: int | None
    highest_modseq: int | None
    last_seen_uid: int
    message_count: int

    @classmethod
    def of(cls, row: Folder) -> LocalFolder:
        return cls(
            row.id,
            row.name,
            row.type,
            row.uidvalidity,
            row.uidnext,
            row.highest_modseq,
            row.last_seen_uid,
            row.message_count,
        )


def folder_types(remote: list[RemoteFolder]) -> dict[str, str]:
    """The API ``type`` of every folder: inbox, sent, drafts, spam, trash or custom.

    The server's SPECIAL-USE attributes decide; where the server marks no folder for a
    use, a well-known name (``Sent Items``, ``Spam``...) stands in, first match wins.
    """
    types: dict[str, str] = {}
    marked = {folder.special_use for folder in remote if folder.special_use}
    for folder in remote:
        if folder.name.upper() == "INBOX":
            types[folder.name] = "inbox"
            continue
        use = folder.special_use
        if use is None:
            guess = special_use_by_name(folder)
            if guess is not None and guess not in marked and guess in _TYPE_BY_SPECIAL_USE:
                kind = _TYPE_BY_SPECIAL_USE[guess]
                if kind not in types.values():
                    use = guess
        types[folder.name] = _TYPE_BY_SPECIAL_USE.get(use or "", "custom")
    return types


def display_name(folder: RemoteFolder) -> str:
    if folder.name.upper() == "INBOX":
        return "Inbox"
    if folder.delimiter:
        return folder.name.rsplit(folder.delimiter, 1)[-1]
    return folder.name


def _parent_name(folder: RemoteFolder, names: set[str]) -> str | None:
    """The nearest ancestor that is itself a stored folder."""
    if not folder.delimiter:
        return None
    parts = folder.name.split(folder.delimiter)
    for depth in range(len(parts) - 1, 0, -1):
        candidate = folder.delimiter.join(parts[:depth])
        if candidate in names:
            return candidate
    return None


@dataclass
class FolderChanges:
    folders: list[LocalFolder]
    removed_messages: int
    blob_keys: list[str]


def reconcile_folders(
    session: Session, tenant_id: uuid.UUID, account_id: str, remote: list[RemoteFolder]
) -> FolderChanges:
    """Make the stored folders match ``remote`` (selectable folders only).

    New folders are created, renamed types and parents updated, and folders gone from
    the server removed together with their messages (the caller deletes the blobs).
    Each is a ``folder.*`` change; a removed folder's messages go with it silently
    (``folder.deleted`` says how many).
    """
    selectable = [folder for folder in remote if folder.selectable]
    names = {folder.name for folder in selectable}
    types = folder_types(selectable)
    existing = {
        row.name: row
        for row in session.scalars(
            select(Folder).where(Folder.account_id == account_id, Folder.tenant_id == tenant_id)
        )
    }
    gone = [row for name, row in existing.items() if name not in names]
    removed_ids: list[str] = []
    blob_keys: list[str] = []
    if gone:
        removed_ids = list(
            session.scalars(
                select(Message.id).where(Message.folder_id.in_([row.id for row in gone]))
            )
        )
        for row in gone:
            inside = session.scalar(
                select(func.count()).select_from(Message).where(Message.folder_id == row.id)
            )
            changes.folder_changed(session, row, "folder.deleted", messagesRemoved=int(inside or 0))
        blob_keys = remove_messages(session, removed_ids, announce=False)
        # Children first would be needed without ON DELETE SET NULL on parent_id.
        session.execute(delete(Folder).where(Folder.id.in_([row.id for row in gone])))
    for row in gone:
        del existing[row.name]
    stamp = now_ms()
    created: list[Folder] = []
    before = {name: _shape(row) for name, row in existing.items()}
    for folder in selectable:
        current = existing.get(folder.name)
        if current is None:
            current = Folder(
                id=new_id(),
                tenant_id=tenant_id,
                account_id=account_id,
                name=folder.name,
                last_seen_uid=0,
                message_count=0,
                unread_count=0,
                created_at=stamp,
            )
            session.add(current)
            existing[folder.name] = current
            created.append(current)
        current.display_name = display_name(folder)
        current.type = types[folder.name]
        current.delimiter = folder.delimiter
    session.flush()
    for folder in selectable:
        parent = _parent_name(folder, names)
        existing[folder.name].parent_id = existing[parent].id if parent else None
    session.flush()
    for row in created:
        changes.folder_changed(session, row, "folder.created")
    for name, shape in before.items():
        if _shape(existing[name]) != shape:
            changes.folder_changed(session, existing[name], "folder.updated")
    return FolderChanges(
        folders=[LocalFolder.of(existing[folder.name]) for folder in selectable],
        removed_messages=len(removed_ids),
        blob_keys=blob_keys,
    )


def _shape(row: Folder) -> tuple[str | None, ...]:
    # What a folder.updated is about: its names, type and place (counts change always).
    return (row.display_name, row.type, row.parent_id, row.delimiter)


def refresh_counts(session: Session, folder_id: str) -> None:
    """Set the folder's messageCount and unreadCount from its stored messages."""
    total, unread = session.execute(
        select(
            func.count(),
            func.coalesce(func.sum(case((Message.is_read.is_(False), 1), else_=0)), 0),
        ).where(Message.folder_id == folder_id)
    ).one()
    row = session.get(Folder, folder_id)
    if row is not None:
        row.message_count = int(total)
        row.unread_count = int(unread)


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
        changes.folder_changed(session, row, "folder.created")
    return row


def mark_synced(session: Session, folder_ids: Sequence[str]) -> None:
    """Folders found as they were: the same state, so the same counts; only the time is new."""
    session.execute(update(Folder).where(Folder.id.in_(folder_ids)).values(synced_at=now_ms()))


def empty_folder(session: Session, folder_id: str) -> tuple[int, list[str]]:
    """Remove every message of a folder to be mirrored again (its UIDVALIDITY changed).

    Its sync state is reset (UIDVALIDITY is set again by ``finish_folder`` once the folder
    is complete). The removals are not changes of their own: the rebuild is told as one
    ``sync.completed``. Returns how many messages went, and the blob keys to delete.
    """
    stale = list(session.scalars(select(Message.id).where(Message.folder_id == folder_id)))
    keys = remove_messages(session, stale, announce=False)
    session.execute(
        update(Folder)
        .where(Folder.id == folder_id)
        .values(
            last_seen_uid=0,
            highest_modseq=None,
            uidvalidity=None,
            message_count=0,
            unread_count=0,
        )
    )
    return len(stale), keys


def advance_last_seen(session: Session, folder_id: str, highest: int) -> None:
    """Every UID up to ``highest`` is stored: a resumed sync starts after it."""
    session.execute(
        update(Folder)
        .where(Folder.id == folder_id, Folder.last_seen_uid < highest)
        .values(last_seen_uid=highest)
    )


def finish_folder(
    session: Session,
    folder_id: str,
    *,
    uidvalidity: int | None,
    uidnext: int | None,
    highest_modseq: int | None,
    completed: dict[str, Any] | None,
) -> None:
    """Save a synced folder's new state; ``completed`` holds the counts of a whole mirror.

    A whole mirror (first or rebuild) is recorded as one ``sync.completed``.
    """
    session.execute(
        update(Folder)
        .where(Folder.id == folder_id)
        .values(
            uidvalidity=uidvalidity,
            uidnext=uidnext,
            highest_modseq=highest_modseq,
            synced_at=now_ms(),
        )
    )
    refresh_counts(session, folder_id)
    if completed is not None:
        row = session.get(Folder, folder_id)
        if row is not None:
            changes.sync_completed(session, row, **completed)


def pop3_inbox(session: Session, tenant_id: uuid.UUID, account_id: str) -> tuple[str, bool]:
    """A POP3 account's one folder, made if missing (``folder.created``).

    Returns the INBOX row's id, and whether it was never mirrored yet.
    """
    row = session.scalars(
        select(Folder).where(Folder.account_id == account_id, Folder.name == POP3_INBOX)
    ).one_or_none()
    if row is None:
        row = Folder(
            id=new_id(),
            tenant_id=tenant_id,
            account_id=account_id,
            name=POP3_INBOX,
            display_name="Inbox",
            type="inbox",
            last_seen_uid=0,
            message_count=0,
            unread_count=0,
        )
        session.add(row)
        session.flush()
        changes.folder_changed(session, row, "folder.created")
    return row.id, row.synced_at is None


def finish_pop3_inbox(session: Session, folder_id: str, completed: dict[str, Any] | None) -> None:
    """Save a POP3 sync's end: counts and time; a first mirror is one ``sync.completed``."""
    refresh_counts(session, folder_id)
    row = session.get(Folder, folder_id)
    if row is not None:
        row.synced_at = now_ms()
        if completed is not None:
            changes.sync_completed(session, row, **completed)
