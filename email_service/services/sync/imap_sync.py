"""Mirroring an IMAP account: folders, new messages, flag changes and expunges.

Each folder is synced in four steps:

1. the server's state: the LIST-STATUS answer that listed the folders, else an EXAMINE
   (UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ where offered); an unchanged folder stops here;
2. one short read of the folder's stored messages (UID, flags, pending local changes);
3. the server's answers to what the plan needs (``plan.questions``): every UID or the
   QRESYNC ``VANISHED`` ones, every flag or those changed since the saved mod-sequence,
   the UIDs above the last one stored; the IMAP session's bounds on hostile answers hold;
4. ``plan.plan_folder`` decides everything (nothing to do, rebuild, what to remove,
   which flags to write, which UIDs to fetch, per-message changes or one
   ``sync.completed``), and the plan is applied: removals and flags in one
   transaction, new mail (fetched with ``BODY.PEEK[]``, so nothing is marked read)
   batch by batch, the folder's new state last.

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
    reconcile_folders,
)
from email_service.mailstore.messages import (
    FolderTarget,
    Incoming,
    remove_from_folder,
    write_flags,
)
from email_service.services.sync.base import MAX_BATCH_BYTES, SyncJob
from email_service.services.sync.pipeline import BatchWriter
from email_service.services.sync.plan import (
    FolderPlan,
    LocalState,
    Mode,
    Questions,
    RemoteState,
    StoredMessage,
    folder_mode,
    plan_folder,
    questions,
)

log = logging.getLogger(__name__)


def sync_imap(job: SyncJob, imap: ImapSession) -> None:
    """Mirror every folder (or ``job.only_folders``) of the account behind ``imap``.

    When the LIST-STATUS answer shows every folder unchanged, nothing is left to ask the
    server: the folder list and the sync's completion (``job.complete``: the folders'
    "synced at", the task's success) are one step, and ``job.completed`` is set.
    """
    # With LIST-STATUS the folder list also says which folders changed at all.
    remote = imap.list_folders(with_status=True)
    statuses = {folder.name: folder.status for folder in remote if folder.status}
    done = False
    with job.transaction() as session:
        changes = reconcile_folders(session, job.tenant_id, job.account_id, remote)
        folders = [
            folder
            for folder in changes.folders
            if job.only_folders is None or folder.name in job.only_folders
        ]
        if job.on_complete is not None and all(
            _unchanged(job, folder, statuses.get(folder.name)) for folder in folders
        ):
            # Counted as of this step's commit (nothing is counted if it rolls back).
            counts = replace(
                job.counts,
                removed=job.counts.removed + changes.removed_messages,
                folders=job.counts.folders + len(folders),
            )
            job.unchanged.extend(folder.id for folder in folders)
            job.complete(session, counts)
            done = True
    job.counts.removed += changes.removed_messages
    job.blob_keys.extend(changes.blob_keys)
    if done:
        job.counts.folders += len(folders)
        job.completed = True
        return
    for position, folder in enumerate(folders):

        def folder_progress(fraction: float, position: int = position) -> None:
            job.progress(100.0 * (position + fraction) / len(folders))

        sync_folder(job, imap, folder, folder_progress, statuses.get(folder.name))
        job.counts.folders += 1
        folder_progress(1.0)


def sync_folder(
    job: SyncJob,
    imap: ImapSession,
    folder: LocalFolder,
    progress: Callable[[float], None],
    listed: FolderState | None = None,
) -> None:
    """Sync one folder: learn the server's state, plan (``plan.plan_folder``), apply.

    The server's state comes first (the LIST-STATUS answer, else an EXAMINE), so an
    unchanged folder costs no read of its stored messages; then one short read of what
    is stored, the server's answers to what the plan needs, and the writes.
    """
    if _unchanged(job, folder, listed):
        job.unchanged.append(folder.id)  # known from LIST-STATUS: no SELECT needed
        return
    state = imap.select(folder.name, readonly=True)
    mode = folder_mode(folder, state, job.force)
    if mode is Mode.UNCHANGED:
        job.unchanged.append(folder.id)
        return
    local = _read_local(job, folder, mode)
    remote = _ask_server(imap, local, state, questions(mode, local, qresync=imap.supports_qresync))
    _apply(job, imap, folder, plan_folder(local, remote, job.force), progress)


def _unchanged(job: SyncJob, folder: LocalFolder, listed: FolderState | None) -> bool:
    """Whether the LIST-STATUS answer (``listed``) shows ``folder`` unchanged."""
    return listed is not None and folder_mode(folder, listed, job.force) is Mode.UNCHANGED


def _read_local(job: SyncJob, folder: LocalFolder, mode: Mode) -> LocalState:
    """The folder's stored messages by UID (none read for a rebuild: they are void)."""
    if mode is Mode.REBUILD:
        return LocalState(folder, {})
    with job.transaction() as session:
        messages = {
            uid: StoredMessage(message_id, tuple(flags), bool(pending))
            for message_id, uid, flags, pending in session.execute(
                select(Message.id, Message.uid, Message.flags, Message.pending_changes).where(
                    Message.folder_id == folder.id, Message.uid.is_not(None)
                )
            )
        }
    return LocalState(folder, messages)


def _ask_server(
    imap: ImapSession, local: LocalState, state: FolderState, ask: Questions
) -> RemoteState:
    """The answers to ``ask`` from the selected folder (the IMAP session's bounds hold)."""
    uids = imap.uids() if ask.all_uids else None
    vanished = None
    if ask.vanished_since is not None:
        vanished = imap.vanished_since(ask.vanished_since, local.messages)
    flags = None
    if ask.all_flags:
        flags = imap.flags()
    elif ask.flags_since is not None:
        flags, _ = imap.changed_since(ask.flags_since)
    above = imap.uids_above(ask.uids_above) if ask.uids_above is not None else None
    return RemoteState(state, uids=uids, vanished=vanished, flags=flags, above=above)


def _apply(
    job: SyncJob,
    imap: ImapSession,
    folder: LocalFolder,
    plan: FolderPlan,
    progress: Callable[[float], None],
) -> None:
    """Write what ``plan`` decided: removals and flags, then new mail batch by batch
    (each batch a checkpoint of its own), then the folder's new state."""
    added_before, skipped_before = job.counts.added, len(job.counts.skipped)
    removed = 0
    if plan.empty_first or plan.remove or plan.flags:
        blob_keys: list[str] = []
        with job.transaction() as session:
            if plan.empty_first:
                log.info("UIDVALIDITY of %s changed: rebuilding the folder", folder.name)
                stale, keys = empty_folder(session, folder.id)
                blob_keys.extend(keys)
                removed += stale
            if plan.remove:
                blob_keys.extend(
                    remove_from_folder(
                        session, folder.id, list(plan.remove), plan.removed_unread, plan.announce
                    )
                )
                removed += len(plan.remove)
            if plan.flags:
                write_flags(
                    session,
                    job.account_id,
                    folder.id,
                    folder.type == "spam",
                    list(plan.flags),
                    plan.unread_delta,
                    plan.announce,
                )
        job.blob_keys.extend(blob_keys)
        job.counts.removed += removed
        job.counts.updated += len(plan.flags)
    if plan.fetch:
        _fetch_new(job, imap, folder, list(plan.fetch), progress, announce=plan.announce)
    completed = None
    if plan.completed_reason is not None:
        completed = {
            "reason": plan.completed_reason,
            "added": job.counts.added - added_before,
            "removed": removed,
            "skipped": len(job.counts.skipped) - skipped_before,
        }
    _finish_folder(job, folder, plan.state, completed)


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
        # Attachments are fetched from the server when first downloaded, not now.
        lazy_attachments=True,
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
