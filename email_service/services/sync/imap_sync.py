"""Mirroring an IMAP account: folders, new messages, flag changes and expunges.

Per folder, the saved state (UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ, the last UID stored)
decides how little needs asking:

* nothing changed (same UIDVALIDITY, UIDNEXT and HIGHESTMODSEQ, with CONDSTORE): known
  from the LIST-STATUS answer that listed the folders, so not even an EXAMINE (one
  EXAMINE where the server lacks LIST-STATUS);
* UIDVALIDITY changed: every stored message of the folder is void, the folder is rebuilt;
* otherwise expunges come from QRESYNC ``VANISHED`` (or a UID comparison), flag changes
  from CONDSTORE ``CHANGEDSINCE`` (or a sweep of every flag), and new mail is the UIDs
  above the last one stored, fetched with ``BODY.PEEK[]`` so nothing is marked read.

``force`` trusts none of the saved state: every UID and every flag is compared.

Changes for the feed: a folder mirrored for the first time (no UIDVALIDITY stored yet)
or rebuilt is told as one ``sync.completed`` with counts once it is complete; after
that, every message stored, changed or removed is a ``message.*`` change of its own.
A rebuild clears the stored UIDVALIDITY in its first transaction, so a rebuild that is
cut off and resumed is still a first mirror (one ``sync.completed``, reason
``initial``).

New mail is stored batch by batch, each batch in its own transaction together with the
folder's "last UID stored", so a sync that is cut off resumes where it stopped and
never stores a message twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import Message
from email_service.mail.imap import FetchedMessage, FolderState, ImapSession
from email_service.mail.mime import parse_message
from email_service.mailstore.changes import ORIGIN_SYNC
from email_service.mailstore.folders import (
    LocalFolder,
    advance_last_seen,
    empty_folder,
    finish_folder,
    mark_synced,
    reconcile_folders,
)
from email_service.mailstore.messages import (
    FlagState,
    FolderTarget,
    Incoming,
    remove_from_folder,
    write_flags,
)
from email_service.services.sync.base import MAX_BATCH_BYTES, SyncJob
from email_service.services.sync.pipeline import BatchWriter

log = logging.getLogger(__name__)


def sync_imap(job: SyncJob, imap: ImapSession) -> None:
    """Mirror every folder (or ``job.only_folders``) of the account behind ``imap``."""
    # With LIST-STATUS the folder list also says which folders changed at all.
    remote = imap.list_folders(with_status=True)
    statuses = {folder.name: folder.status for folder in remote if folder.status}
    with job.transaction() as session:
        changes = reconcile_folders(session, job.tenant_id, job.account_id, remote)
    job.counts.removed += changes.removed_messages
    job.blob_keys.extend(changes.blob_keys)
    folders = [
        folder
        for folder in changes.folders
        if job.only_folders is None or folder.name in job.only_folders
    ]
    for position, folder in enumerate(folders):

        def folder_progress(fraction: float, position: int = position) -> None:
            job.progress(100.0 * (position + fraction) / len(folders))

        sync_folder(job, imap, folder, folder_progress, statuses.get(folder.name))
        job.counts.folders += 1
        folder_progress(1.0)
    if job.unchanged:
        # Same state as last time, so the same counts: only the time is new.
        with job.transaction() as session:
            mark_synced(session, job.unchanged)


def sync_folder(
    job: SyncJob,
    imap: ImapSession,
    folder: LocalFolder,
    progress: Callable[[float], None],
    listed: FolderState | None = None,
) -> None:
    if listed is not None and not job.force and _unchanged(folder, listed):
        job.unchanged.append(folder.id)  # known from LIST-STATUS: no SELECT needed
        return
    state = imap.select(folder.name, readonly=True)
    rebuild = folder.uidvalidity is not None and folder.uidvalidity != state.uidvalidity
    first = rebuild or folder.uidvalidity is None
    full = job.force or first
    if not full and _unchanged(folder, state):
        job.unchanged.append(folder.id)
        return
    added_before, skipped_before = job.counts.added, len(job.counts.skipped)
    removed = 0

    known: dict[int, tuple[str, list[str], int]] = {}
    with job.transaction() as session:
        if rebuild:
            log.info("UIDVALIDITY of %s changed: rebuilding the folder", folder.name)
            stale, keys = empty_folder(session, folder.id)
            job.blob_keys.extend(keys)
            job.counts.removed += stale
            removed += stale
        else:
            for message_id, uid, flags, pending in session.execute(
                select(Message.id, Message.uid, Message.flags, Message.pending_changes).where(
                    Message.folder_id == folder.id, Message.uid.is_not(None)
                )
            ):
                known[uid] = (message_id, flags, pending)

    server_uids: list[int] | None = None
    if known:
        if full or not imap.supports_qresync or folder.highest_modseq is None:
            server_uids = imap.uids()
            present = set(server_uids)
            gone = [uid for uid in known if uid not in present]
        else:
            gone = imap.vanished_since(folder.highest_modseq, known)
        # A row with a change still to be written stays until that job has run (it may
        # be moving the message right now); the next sync removes it if it is gone.
        gone = [uid for uid in gone if not known[uid][2]]
        if gone:
            unread = sum(1 for uid in gone if "\\Seen" not in known[uid][1])
            with job.transaction() as session:
                job.blob_keys.extend(
                    remove_from_folder(
                        session, folder.id, [known[uid][0] for uid in gone], unread, not first
                    )
                )
            job.counts.removed += len(gone)
            removed += len(gone)
            for uid in gone:
                del known[uid]

    if known:
        if full or folder.highest_modseq is None:
            changed = imap.flags()
        else:
            changed, _ = imap.changed_since(folder.highest_modseq)
        _apply_flags(job, folder, known, changed, announce=not first)

    if full:
        if server_uids is None:
            server_uids = imap.uids()
        new_uids = [uid for uid in server_uids if uid not in known]
    else:
        new_uids = imap.uids_above(folder.last_seen_uid)
        new_uids = [uid for uid in new_uids if uid not in known]
    if new_uids:
        _fetch_new(job, imap, folder, new_uids, progress, announce=not first)
    completed = None
    if first:
        completed = {
            "reason": "rebuild" if rebuild else "initial",
            "added": job.counts.added - added_before,
            "removed": removed,
            "skipped": len(job.counts.skipped) - skipped_before,
        }
    _finish_folder(job, folder, state, completed)


def _unchanged(folder: LocalFolder, state: FolderState) -> bool:
    return (
        state.highestmodseq is not None
        and folder.highest_modseq == state.highestmodseq
        and folder.uidnext == state.uidnext
        and folder.uidvalidity == state.uidvalidity
    )


def _apply_flags(
    job: SyncJob,
    folder: LocalFolder,
    known: dict[int, tuple[str, list[str], int]],
    changed: dict[int, tuple[str, ...]],
    *,
    announce: bool,
) -> None:
    updates: list[tuple[str, FlagState]] = []
    unread_delta = 0
    for uid, flags in changed.items():
        entry = known.get(uid)
        if entry is None:
            continue  # new mail; fetched below
        message_id, stored, pending = entry
        if pending:
            continue  # a local change is still being written to the server; it wins
        state = FlagState.of(flags)
        if state.flags != sorted(stored):
            updates.append((message_id, state))
            was_read = "\\Seen" in stored
            unread_delta += int(was_read) - int(state.is_read)
    if not updates:
        return
    in_spam = folder.type == "spam"
    with job.transaction() as session:
        write_flags(session, job.account_id, folder.id, in_spam, updates, unread_delta, announce)
    job.counts.updated += len(updates)


def _fetch_new(
    job: SyncJob,
    imap: ImapSession,
    folder: LocalFolder,
    uids: list[int],
    progress: Callable[[float], None],
    *,
    announce: bool,
) -> None:
    uids = sorted(uids)
    target = FolderTarget(
        tenant_id=job.tenant_id,
        account_id=job.account_id,
        folder_id=folder.id,
        folder_name=folder.name,
        is_spam=folder.type == "spam",
        origin=ORIGIN_SYNC if announce else None,
    )
    done = 0

    def stored(count: int) -> None:
        nonlocal done
        done += count
        progress(done / len(uids))

    # The resume point is the end of the run of asked-for UIDs (ascending) that are all
    # stored: answers may come out of order (a too-large message's headers come before
    # its batch's bodies), and a resume must not step over one still to be stored.
    handled: set[int] = set()
    position = 0

    def mark_seen(session: Session, items: Sequence[Incoming]) -> None:
        nonlocal position
        handled.update(item.uid for item in items if item.uid is not None)
        start = position
        while position < len(uids) and uids[position] in handled:
            handled.discard(uids[position])
            position += 1
        if position == start:
            return
        advance_last_seen(session, folder.id, uids[position - 1])

    with BatchWriter(job, target, mark_seen, stored) as writer:
        for batch in _parsed_batches(imap.fetch(uids, batch_size=job.batch_size), job.batch_size):
            writer.submit(batch)


def _incoming(message: FetchedMessage) -> Incoming:
    if message.unreadable is not None:
        # Nothing to store, but the UID counts as handled: the resume point moves past
        # it, so the next sync does not ask for it again (a forced one does).
        return Incoming(
            parsed=parse_message(b""),
            size=message.size,
            uid=message.uid,
            skip_reason=message.unreadable,
        )
    parsed = parse_message(message.raw)
    partial = None
    if message.too_large:
        partial = (
            f"the message is {message.size} bytes, more than MAX_MESSAGE_BYTES allows: "
            "only its headers and size were kept"
        )
        parsed = replace(parsed, defects=(*parsed.defects, partial))
    return Incoming(
        parsed=parsed,
        size=message.size,
        flags=message.flags,
        received_at=message.internaldate,
        uid=message.uid,
        modseq=message.modseq,
        partial_reason=partial,
    )


def _parsed_batches(messages: Iterator[FetchedMessage], size: int) -> Iterator[list[Incoming]]:
    """Messages parsed as they arrive (their raw bytes dropped at once), in batches."""
    batch: list[Incoming] = []
    batch_bytes = 0
    for message in messages:
        batch.append(_incoming(message))
        batch_bytes += len(message.raw)
        if len(batch) >= size or batch_bytes >= MAX_BATCH_BYTES:
            yield batch
            batch, batch_bytes = [], 0
    if batch:
        yield batch


def _finish_folder(
    job: SyncJob, folder: LocalFolder, state: FolderState, completed: dict[str, Any] | None
) -> None:
    """Save the folder's new state; ``completed`` holds the counts of a whole mirror."""
    with job.transaction() as session:
        finish_folder(
            session,
            folder.id,
            uidvalidity=state.uidvalidity,
            uidnext=state.uidnext,
            highest_modseq=state.highestmodseq,
            completed=completed,
        )
