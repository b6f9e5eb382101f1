"""Mirroring a POP3 account: one INBOX, incremental by UIDL, nothing deleted on the server.

POP3 has no folders, flags or UIDs that survive sessions except the UIDL unique id, so
the stored INBOX is the server's message list keyed by UIDL: new ids are retrieved,
vanished ids are removed. Read/starred/label changes made through the API stay local.
"""

from __future__ import annotations

import logging

from sqlalchemy import select

from db.models import Folder, Message, new_id, now_ms
from email_service.mail.mime import parse_message
from email_service.mail.pop3 import Pop3Session
from email_service.services.sync.base import SyncJob
from email_service.services.sync.folders import refresh_counts
from email_service.services.sync.store import (
    FolderTarget,
    Incoming,
    adjust_counts,
    remove_messages,
)

log = logging.getLogger(__name__)

INBOX = "INBOX"


def _inbox(job: SyncJob) -> str:
    with job.transaction() as session:
        row = session.scalars(
            select(Folder).where(Folder.account_id == job.account_id, Folder.name == INBOX)
        ).one_or_none()
        if row is None:
            row = Folder(
                id=new_id(),
                tenant_id=job.tenant_id,
                account_id=job.account_id,
                name=INBOX,
                display_name="Inbox",
                type="inbox",
                last_seen_uid=0,
                message_count=0,
                unread_count=0,
            )
            session.add(row)
            session.flush()
        return row.id


def sync_pop3(job: SyncJob, pop: Pop3Session) -> None:
    folder_id = _inbox(job)
    server = pop.uidl()  # unique id -> message number (this session only)
    with job.transaction() as session:
        known = dict(
            session.execute(
                select(Message.pop_uidl, Message.id).where(
                    Message.folder_id == folder_id, Message.pop_uidl.is_not(None)
                )
            ).all()
        )
    gone = [message_id for uidl, message_id in known.items() if uidl not in server]
    if gone:
        with job.transaction() as session:
            job.blob_keys.extend(remove_messages(session, gone))
            refresh_counts(session, folder_id)
        job.counts.removed += len(gone)

    # Oldest first, as the server numbers them, so a cut-off sync resumes in order.
    new = sorted((number, uidl) for uidl, number in server.items() if uidl not in known)
    target = FolderTarget(job.tenant_id, job.account_id, folder_id, INBOX, is_spam=False)
    for start in range(0, len(new), job.batch_size):
        items = []
        for number, uidl in new[start : start + job.batch_size]:
            raw = pop.retrieve(number)
            items.append(Incoming(parsed=parse_message(raw), size=len(raw), pop_uidl=uidl))
        with job.transaction() as session:
            outcome = job.store.add_batch(session, target, items)
            adjust_counts(session, folder_id, outcome.added, outcome.unread)
        job.counts.added += outcome.added
        job.counts.skipped.extend(outcome.skipped)
        job.progress(100.0 * (start + len(items)) / len(new))

    with job.transaction() as session:
        refresh_counts(session, folder_id)
        row = session.get(Folder, folder_id)
        if row is not None:
            row.synced_at = now_ms()
    job.counts.folders += 1
