"""Changes made through the API to stored messages, and what their write-back settles.

A flag edit is stored at once (and counted as a change to write to the server while the
account is IMAP); the write-back job then closes that pending change and, when the
server moved the message (spam in or out), moves the row with it.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm.attributes import set_committed_value

from db.models import Message, now_ms
from email_service.mail.imap import RemoteFolder
from email_service.mailstore import changes
from email_service.mailstore.folders import local_folder
from email_service.mailstore.messages import adjust_counts, remove_messages


def edit_message(
    session: Any,
    row: Message,
    *,
    is_read: bool,
    is_starred: bool,
    is_spam: bool,
    labels: list[str],
    flags: list[str],
    pending: bool,
) -> None:
    """Store an edit of ``row`` (a ``message.updated``); ``pending`` when it is still to be
    written to the server (a sync then leaves the row's flags alone)."""
    # The folder's stored counts move by this edit alone (a recount would scan the whole
    # folder per PATCH). Whether the read state changes is what the database holds now,
    # not what was read before: on SQLite the read ran outside the write lock.
    flipped = session.execute(
        update(Message)
        .where(Message.id == row.id, Message.is_read.is_not(is_read))
        .values(is_read=is_read)
        .execution_options(synchronize_session=False)
    ).rowcount
    set_committed_value(row, "is_read", is_read)
    row.is_starred = is_starred
    row.is_spam = is_spam
    row.labels = labels
    row.flags = flags
    row.updated_at = now_ms()
    if pending:
        row.pending_changes += 1
    session.flush()
    if flipped:
        adjust_counts(session, row.folder_id, 0, -1 if is_read else 1)
    changes.message_updated(session, row)


def settle_pending(row: Message) -> None:
    """One change of ``row`` has been written to the server (or given up)."""
    row.pending_changes = max(0, row.pending_changes - 1)


def move_message(
    session: Any,
    tenant_id: uuid.UUID,
    row: Message,
    moved_to: RemoteFolder,
    new_uid: int | None,
    result: dict[str, Any],
) -> list[str]:
    """The server moved ``row``'s message to ``moved_to`` as ``new_uid``: follow it.

    Notes what happened in ``result`` (``folder``, and ``uid`` or ``removed``); returns
    the blob keys to delete.
    """
    old_folder = row.folder_id
    unread = 0 if row.is_read else 1
    target = local_folder(session, tenant_id, row.account_id, moved_to, create=True)
    assert target is not None
    result["folder"] = target.name
    taken = (
        new_uid is not None
        and session.scalar(
            select(Message.id).where(Message.folder_id == target.id, Message.uid == new_uid)
        )
        is not None
    )
    if new_uid is None or taken:
        # Without COPYUID the row cannot be matched to the moved message, and a row that
        # a sync already made for it is the same message: drop ours, the sync has (or
        # brings) the message in its new folder.
        keys = remove_messages(session, [row.id])
        result["removed"] = True
        adjust_counts(session, old_folder, -1, -unread)
        return keys
    row.folder_id = target.id
    row.uid = new_uid
    row.modseq = None
    row.updated_at = now_ms()
    result["uid"] = new_uid
    session.flush()
    adjust_counts(session, old_folder, -1, -unread)
    adjust_counts(session, target.id, 1, unread)
    changes.message_updated(session, row, previousFolderId=old_folder)
    return []
