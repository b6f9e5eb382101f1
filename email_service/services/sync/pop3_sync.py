"""Mirroring a POP3 account: one INBOX, incremental by UIDL, nothing deleted on the server.

POP3 has no folders, flags or UIDs that survive sessions except the UIDL unique id, so
the stored INBOX is the server's message list keyed by UIDL: new ids are retrieved,
vanished ids are removed. Read/starred/label changes made through the API stay local.
"""

from __future__ import annotations

import logging
import re
from dataclasses import replace

from sqlalchemy import select

from db.models import Message
from email_service.mail.mime import parse_message
from email_service.mail.pop3 import MessageTooLarge, Pop3Session
from email_service.mailstore.changes import ORIGIN_SYNC
from email_service.mailstore.folders import (
    POP3_INBOX,
    finish_pop3_inbox,
    pop3_inbox,
    refresh_counts,
)
from email_service.mailstore.messages import (
    FolderTarget,
    Incoming,
    Skipped,
    adjust_counts,
    remove_messages,
)
from email_service.services.sync.base import MAX_BATCH_BYTES, SyncJob
from email_service.services.sync.plan import plan_pop3

log = logging.getLogger(__name__)

INBOX = POP3_INBOX

#: Longest UIDL kept (messages.pop_uidl is String(255)). RFC 1939 allows 1 to 70
#: characters 0x21-0x7E; longer ones seen in the wild are kept as long as they fit.
MAX_UIDL = 255
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def unstorable_uidl(uidl: str) -> str | None:
    """Why the message with this UIDL cannot be stored, or None.

    The UIDL is the message's identity across sessions: cutting it to fit could make two
    messages one, so a message whose UIDL does not fit, or has control characters (no
    valid UIDL has; PostgreSQL text cannot hold NUL), is not retrieved at all.
    """
    if len(uidl) > MAX_UIDL:
        return (
            f"the server's unique id (UIDL) for this message is {len(uidl)} characters "
            f"long, more than the {MAX_UIDL} kept (RFC 1939 allows 70): it was not retrieved"
        )
    if _CONTROL.search(uidl):
        return (
            "the server's unique id (UIDL) for this message has control characters "
            "(RFC 1939 allows printable ASCII only): it was not retrieved"
        )
    return None


def _read_local(job: SyncJob) -> tuple[str, bool, dict[str, str]]:
    """The INBOX row's id (made if missing), whether it was never mirrored yet, and its
    stored messages as UIDL -> message id: one short transaction."""
    with job.transaction() as session:
        folder_id, first = pop3_inbox(session, job.tenant_id, job.account_id)
        stored = {
            uidl: message_id
            for uidl, message_id in session.execute(
                select(Message.pop_uidl, Message.id).where(
                    Message.folder_id == folder_id, Message.pop_uidl.is_not(None)
                )
            )
            if uidl is not None
        }
    return folder_id, first, stored


def _retrieve(pop: Pop3Session, number: int, uidl: str, listed_size: int) -> Incoming:
    """Message ``number``; one above MAX_MESSAGE_BYTES as its headers and size only."""
    size = listed_size
    if listed_size <= pop.limits.max_message_bytes:
        try:
            raw = pop.retrieve(number)
            return Incoming(parsed=parse_message(raw), size=len(raw), pop_uidl=uidl)
        except MessageTooLarge as exc:  # the server's LIST said less than it sent
            size = exc.size
    reason = (
        f"the message is {size} bytes, more than MAX_MESSAGE_BYTES allows: "
        "only its headers and size were kept"
    )
    parsed = parse_message(pop.headers(number))
    parsed = replace(parsed, defects=(*parsed.defects, reason))
    return Incoming(parsed=parsed, size=size, pop_uidl=uidl, partial_reason=reason)


def _store(job: SyncJob, target: FolderTarget, items: list[Incoming]) -> int:
    with job.transaction() as session:
        outcome = job.store.add_batch(session, target, items)
        adjust_counts(session, target.folder_id, outcome.added, outcome.unread)
    job.counts.added += outcome.added
    job.counts.skipped.extend(outcome.skipped)
    return len(items)


def sync_pop3(job: SyncJob, pop: Pop3Session) -> None:
    """Read what is stored, list the server's UIDLs, plan (``plan.plan_pop3``), apply."""
    folder_id, first, stored = _read_local(job)
    plan = plan_pop3(stored, pop.uidl(), first)  # UIDL -> message number (this session)
    added_before, skipped_before = job.counts.added, len(job.counts.skipped)
    if plan.remove:
        with job.transaction() as session:
            keys = remove_messages(session, list(plan.remove), announce=plan.announce)
            job.blob_keys.extend(keys)
            refresh_counts(session, folder_id)
        job.counts.removed += len(plan.remove)

    # The first mirror is told as one sync.completed, not a message.created per message.
    origin = ORIGIN_SYNC if plan.announce else None
    target = FolderTarget(job.tenant_id, job.account_id, folder_id, INBOX, False, origin)
    sizes = pop.sizes() if plan.fetch else {}
    done = 0
    # Batches end at batch_size messages or MAX_BATCH_BYTES of mail, whichever comes first.
    items: list[Incoming] = []
    batch_bytes = 0
    for number, uidl in plan.fetch:
        reason = unstorable_uidl(uidl)
        if reason is not None:
            log.warning("skipping POP3 message %d: %s", number, reason)
            shown = repr(uidl[:70])[1:-1] + ("..." if len(uidl) > 70 else "")
            job.counts.skipped.append(Skipped(INBOX, reason, pop_uidl=shown))
            continue
        item = _retrieve(pop, number, uidl, sizes.get(number, 0))
        items.append(item)
        batch_bytes += item.size
        if len(items) >= job.batch_size or batch_bytes >= MAX_BATCH_BYTES:
            done += _store(job, target, items)
            job.progress(100.0 * done / len(plan.fetch))
            items, batch_bytes = [], 0
    if items:
        _store(job, target, items)

    completed = None
    if plan.completed_reason is not None:
        completed = {
            "reason": plan.completed_reason,
            "added": job.counts.added - added_before,
            "removed": len(plan.remove),
            "skipped": len(job.counts.skipped) - skipped_before,
        }
    with job.transaction() as session:
        finish_pop3_inbox(session, folder_id, completed)
    job.counts.folders += 1
