"""Writing mirrored mail into the database and the blob store, in batches.

A batch is parsed messages of one folder; it becomes message rows (one multi-row
INSERT), their search index entries (one more statement, see ``db.textindex``),
attachment blobs (uploaded in parallel, before the rows that point at them are
committed) and attachment rows. A target with ``lazy_attachments`` (an IMAP folder)
uploads no blobs: its attachment rows say where each part is on the server, and the
first download fetches it (``services.attachments``). A message the database refuses
is retried alone and, if it still fails, skipped with the reason recorded: one bad
message never stops a sync. A failure that is not about the rows (a lost connection, a
locked database, a deadlock; ``db.session.passing_trouble``) is raised instead, and the
job runs again.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from db.models import Attachment, Folder, Message, new_id, now_ms
from db.rows import RowInsert
from db.session import passing_trouble
from db.textindex import SearchDocument, document_for_row, index_messages
from email_service.blobstore import BlobStore
from email_service.mail.html import sanitize_html
from email_service.mail.mime import ParsedMessage
from email_service.mailstore import changes

log = logging.getLogger(__name__)

# Keywords that mean something to mail clients rather than being a user's labels
# (RFC 5788 registry names start with "$": $Forwarded, $MDNSent, $Junk, ...). Only the
# registered $Junk marks spam: a user's own label "Junk" is just a label.
_JUNK_KEYWORDS = {"$junk"}
# S3 uploads are network-bound: several in flight hide each one's round trip.
_UPLOAD_THREADS = 8
_CONVERSATION_NAMESPACE = uuid.UUID("5b0e3c0a-7d7e-4d55-9a43-4a3c8f1f2e11")
# A batch's rows in one statement per table (``db.rows``). The ORM's bulk insert leaves
# a None out of a row (so that a column default could apply) and sends one statement per
# run of rows with the same columns: a sync batch of 100 messages was 20-30 INSERTs,
# each a round trip. Every row here names every column, and no column that may be None
# here has a default (tests/sync/test_sync_jobs.py holds both), so NULL is what the row
# means.
_INSERT_MESSAGES = RowInsert(Message)
_INSERT_ATTACHMENTS = RowInsert(Attachment)


@dataclass
class Incoming:
    """One message to store: where it came from on the server, and what it says."""

    parsed: ParsedMessage
    size: int
    flags: tuple[str, ...] = ()
    received_at: datetime | None = None
    uid: int | None = None
    modseq: int | None = None
    pop_uidl: str | None = None
    #: Not stored at all (it could not be read); listed in the task's skipped messages
    #: with this reason, and the resume point still moves past it.
    skip_reason: str | None = None
    #: Stored as far as it could be read (too large: headers and size only), and listed
    #: in the skipped messages with this reason.
    partial_reason: str | None = None


@dataclass
class Skipped:
    folder: str
    reason: str
    uid: int | None = None
    pop_uidl: str | None = None

    def as_dict(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"folder": self.folder, "reason": self.reason}
        if self.uid is not None:
            entry["uid"] = self.uid
        if self.pop_uidl is not None:
            entry["uidl"] = self.pop_uidl
        return entry


@dataclass
class FlagState:
    """What the flags of a message mean for the API's fields."""

    flags: list[str]
    is_read: bool
    is_starred: bool
    is_draft: bool
    is_deleted: bool
    labels: list[str]
    junk_keyword: bool

    @classmethod
    def of(cls, flags: Iterable[str]) -> FlagState:
        clean = sorted({flag for flag in flags if flag.lower() != "\\recent"})
        lowered = {flag.lower() for flag in clean}
        return cls(
            flags=clean,
            is_read="\\seen" in lowered,
            is_starred="\\flagged" in lowered,
            is_draft="\\draft" in lowered,
            is_deleted="\\deleted" in lowered,
            labels=[flag for flag in clean if not flag.startswith(("\\", "$"))],
            junk_keyword=bool(lowered & _JUNK_KEYWORDS),
        )

    def columns(self, *, in_spam_folder: bool) -> dict[str, Any]:
        return {
            "flags": self.flags,
            "is_read": self.is_read,
            "is_starred": self.is_starred,
            "is_draft": self.is_draft,
            "is_deleted": self.is_deleted,
            "labels": self.labels,
            "is_spam": in_spam_folder or self.junk_keyword,
        }


@dataclass
class FolderTarget:
    """The folder a batch goes into."""

    tenant_id: uuid.UUID
    account_id: str
    folder_id: str
    folder_name: str
    is_spam: bool
    # ``data.origin`` of the ``message.created`` changes; None while a folder is first
    # mirrored or rebuilt, which is told as one ``sync.completed`` instead.
    origin: str | None = changes.ORIGIN_SYNC
    # Record attachments with their IMAP section instead of uploading their blobs (the
    # first download fetches them from the server). Only for messages with a UID.
    lazy_attachments: bool = False


@dataclass
class BatchOutcome:
    added: int = 0
    unread: int = 0
    skipped: list[Skipped] = field(default_factory=list)


#: The largest messages.size (a 32-bit integer column).
MAX_STORED_SIZE = 2**31 - 1


def _clean(value: str) -> str:
    # PostgreSQL text and JSONB cannot hold NUL; mail sometimes does.
    return value.replace("\x00", "") if "\x00" in value else value


def _clean_all(values: Iterable[str]) -> list[str]:
    return [_clean(value) for value in values]


def conversation_for_root(account_id: str, root: str) -> str:
    return str(uuid.uuid5(_CONVERSATION_NAMESPACE, f"{account_id}\n{root}"))


def _thread_root(parsed: ParsedMessage, fallback: str) -> str:
    if parsed.references:
        return parsed.references[0]
    if parsed.in_reply_to:
        return parsed.in_reply_to
    return parsed.message_id or fallback


def assign_conversations(session: Session, account_id: str, rows: list[dict[str, Any]]) -> None:
    """Give every row a ``conversation_id`` shared with the messages it is linked to.

    A message joins the conversation of any known message it answers or references
    (in any folder of the account); otherwise its conversation is named after its
    thread root (the first References entry, else In-Reply-To, else itself), which
    replies that arrive before their original compute the same way. Conversations that
    were started by replies whose original arrives only now are merged into it.
    """
    wanted: set[str] = set()
    for row in rows:
        wanted.update(row["references"])
        if row["in_reply_to"]:
            wanted.add(row["in_reply_to"])
        if row["internet_message_id"]:
            wanted.add(row["internet_message_id"])
    known: dict[str, str] = {}
    if wanted:
        for chunk in _chunks(sorted(wanted), 500):
            for message_id, conversation in session.execute(
                select(Message.internet_message_id, Message.conversation_id).where(
                    Message.account_id == account_id,
                    Message.internet_message_id.in_(chunk),
                    Message.conversation_id.is_not(None),
                )
            ):
                if message_id and conversation:
                    known.setdefault(message_id, conversation)
    orphans: dict[str, str] = {}
    for row in rows:
        linked = [row["in_reply_to"], *reversed(row["references"])]
        conversation = next((known[ref] for ref in linked if ref and ref in known), None)
        own_id = row["internet_message_id"]
        if conversation is None and own_id and own_id in known:
            conversation = known[own_id]  # a copy of a message we already have
        if conversation is None:
            conversation = conversation_for_root(account_id, row.pop("_root"))
        else:
            row.pop("_root")
        row["conversation_id"] = conversation
        if own_id:
            known.setdefault(own_id, conversation)
            own_root = conversation_for_root(account_id, own_id)
            if own_root != conversation:
                orphans[own_root] = conversation
    if orphans:
        existing = set(
            session.scalars(
                select(Message.conversation_id)
                .where(
                    Message.account_id == account_id,
                    Message.conversation_id.in_(list(orphans)),
                )
                .distinct()
            )
        )
        for orphan in existing:
            if orphan is None:
                continue
            session.execute(
                update(Message)
                .where(Message.account_id == account_id, Message.conversation_id == orphan)
                .values(conversation_id=orphans[orphan])
            )


def _chunks(items: Sequence[str], size: int) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _ms(value: datetime | None) -> int | None:
    return int(value.timestamp() * 1000) if value is not None else None


def message_row(target: FolderTarget, item: Incoming) -> dict[str, Any]:
    parsed = item.parsed
    message_id = new_id()
    received = _ms(item.received_at) or _ms(parsed.date) or now_ms()
    state = FlagState.of(item.flags)
    stamp = now_ms()
    row: dict[str, Any] = {
        "id": message_id,
        "tenant_id": target.tenant_id,
        "account_id": target.account_id,
        "folder_id": target.folder_id,
        "uid": item.uid,
        "pop_uidl": item.pop_uidl,
        "modseq": item.modseq,
        "internet_message_id": _clean(parsed.message_id) if parsed.message_id else None,
        "in_reply_to": _clean(parsed.in_reply_to) if parsed.in_reply_to else None,
        "references": _clean_all(parsed.references),
        "from_address": _clean(parsed.from_address),
        "from_name": _clean(parsed.from_name),
        "to_addresses": _clean_all(parsed.to),
        "cc_addresses": _clean_all(parsed.cc),
        "bcc_addresses": _clean_all(parsed.bcc),
        "reply_to": _clean_all(parsed.reply_to),
        "subject": _clean(parsed.subject),
        "preview": _clean(parsed.preview)[:200],
        "body_text": _clean(parsed.body_text),
        "body_html": None,
        "body_html_source": None,
        "headers": {_clean(k): _clean(v) for k, v in parsed.headers.items()},
        # The size a server announces for a message not downloaded is only its word:
        # beyond what messages.size holds it is stored as the most it holds.
        "size": min(item.size, MAX_STORED_SIZE),
        "attachment_count": len(parsed.attachments),
        "received_at": received,
        "defects": list(parsed.defects),
        "pending_changes": 0,
        "created_at": stamp,
        "updated_at": stamp,
        "_root": _clean(_thread_root(parsed, message_id)),
    }
    html = parsed.html_source
    if html is not None:
        if "\x00" in html:
            # Dropping NULs before sanitising is not always the same as after: such
            # (rare) HTML is sanitised now, as it always was.
            row["body_html"] = _clean(sanitize_html(html))
        else:
            # Sanitised when the message is first opened (``sanitized_html``).
            row["body_html_source"] = html
    row.update(state.columns(in_spam_folder=target.is_spam))
    return row


def sanitized_html(session: Session, message: Message) -> str | None:
    """The message's HTML body, safe to display; sanitised and kept on first use.

    A synced message keeps its HTML as sent until it is first opened; then it is
    sanitised once and stored in its place (``updated_at`` stays: the message did not
    change). Two readers racing both write the same text.
    """
    if message.body_html is not None or message.body_html_source is None:
        return message.body_html
    html = sanitize_html(message.body_html_source)
    session.execute(
        update(Message)
        .where(Message.id == message.id)
        .values(body_html=html, body_html_source=None, updated_at=Message.updated_at)
    )
    set_committed_value(message, "body_html", html)
    set_committed_value(message, "body_html_source", None)
    return html


def attachment_key(tenant_id: uuid.UUID, account_id: str, attachment_id: str) -> str:
    """Blob keys start with the tenant, so no listing or leaked key mixes tenants."""
    return f"{tenant_id}/{account_id}/{attachment_id}"


class MessageStore:
    """Stores batches of messages for one account; uploads run on a small thread pool."""

    def __init__(self, blobs: BlobStore) -> None:
        self.blobs = blobs
        self._pool = ThreadPoolExecutor(_UPLOAD_THREADS, thread_name_prefix="blob-upload")

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def add_batch(
        self, session: Session, target: FolderTarget, items: Sequence[Incoming]
    ) -> BatchOutcome:
        """Insert ``items`` into ``target`` within ``session`` (the caller commits)."""
        outcome = BatchOutcome()
        for item in items:
            reason = item.skip_reason or item.partial_reason
            if reason:
                outcome.skipped.append(
                    Skipped(target.folder_name, reason, uid=item.uid, pop_uidl=item.pop_uidl)
                )
        items = [item for item in items if item.skip_reason is None]
        if not items:
            return outcome
        rows = [message_row(target, item) for item in items]
        assign_conversations(session, target.account_id, rows)
        attachments = self._upload(target, rows, items)
        # The search index is written with the rows, in the same transaction.
        documents = _documents(rows, attachments)
        try:
            with session.begin_nested():
                _INSERT_MESSAGES(session, rows)
                _INSERT_ATTACHMENTS(session, attachments)
                index_messages(session, target.tenant_id, documents)
            outcome.added = len(rows)
            outcome.unread = sum(1 for row in rows if not row["is_read"])
            self._announce(session, target, rows)
            return outcome
        except (IntegrityError, DBAPIError) as exc:
            if passing_trouble(exc):
                # Not a refusal of the rows: the connection is gone, or the database was
                # locked (SQLite's busy timeout, PostgreSQL's lock timeout), or the
                # transaction lost a serialization or deadlock race. The job runs again
                # (jobs.infrastructure_trouble), nothing skipped; trying each message
                # alone would only wait out the same lock once per message.
                raise
            log.warning("a batch of %d messages was refused; storing them one by one", len(rows))
        by_message: dict[str, list[dict[str, Any]]] = {}
        for attachment in attachments:
            by_message.setdefault(attachment["message_id"], []).append(attachment)
        for row, item, document in zip(rows, items, documents, strict=True):
            try:
                with session.begin_nested():
                    _INSERT_MESSAGES(session, [row])
                    _INSERT_ATTACHMENTS(session, by_message.get(row["id"], []))
                    index_messages(session, target.tenant_id, [document])
                outcome.added += 1
                outcome.unread += 0 if row["is_read"] else 1
                self._announce(session, target, [row])
            except (IntegrityError, DBAPIError) as exc:
                if passing_trouble(exc):
                    raise
                if item.uid is not None and _stored_already(session, target.folder_id, item.uid):
                    # Stored meanwhile by a send or draft job filing its own copy.
                    continue
                reason = f"the database refused the message ({type(exc.orig).__name__})"
                log.warning("skipping a message in %s: %s", target.folder_name, reason)
                outcome.skipped.append(
                    Skipped(target.folder_name, reason, uid=item.uid, pop_uidl=item.pop_uidl)
                )
        return outcome

    @staticmethod
    def _announce(session: Session, target: FolderTarget, rows: list[dict[str, Any]]) -> None:
        if target.origin is not None:
            changes.messages_created(session, target.account_id, rows, target.origin)

    def _upload(
        self, target: FolderTarget, rows: list[dict[str, Any]], items: Sequence[Incoming]
    ) -> list[dict[str, Any]]:
        attachments: list[dict[str, Any]] = []
        uploads: list[tuple[str, bytes, str]] = []
        stamp = now_ms()
        for row, item in zip(rows, items, strict=True):
            lazy = target.lazy_attachments and item.uid is not None
            for part in item.parsed.attachments:
                attachment_id = new_id()
                key = attachment_key(target.tenant_id, target.account_id, attachment_id)
                if not lazy:
                    uploads.append((key, part.data, part.mime_type))
                section = part.section if lazy and len(part.section or "") <= 64 else None
                attachments.append(
                    {
                        "id": attachment_id,
                        "tenant_id": target.tenant_id,
                        "account_id": target.account_id,
                        "message_id": row["id"],
                        "filename": _clean(part.filename),
                        "mime_type": part.mime_type,
                        "size": part.size,
                        "content_id": _clean(part.content_id) if part.content_id else None,
                        "is_inline": part.is_inline,
                        "storage_key": key,
                        "sha256": hashlib.sha256(part.data).hexdigest(),
                        "imap_section": section,
                        "transfer_encoding": part.encoding if section else None,
                        "stored_at": None if lazy else stamp,
                        "created_at": stamp,
                        "updated_at": stamp,
                    }
                )
        # Blobs go first: a committed row must never point at a missing blob. A blob
        # whose rows are then refused is an orphan, which is harmless.
        list(self._pool.map(lambda upload: self.blobs.put(*upload), uploads))
        return attachments


def _documents(
    rows: list[dict[str, Any]], attachments: list[dict[str, Any]]
) -> list[SearchDocument]:
    names: dict[str, list[str]] = {}
    for attachment in attachments:
        names.setdefault(attachment["message_id"], []).append(attachment["filename"])
    return [document_for_row(row, names.get(row["id"], ())) for row in rows]


def _stored_already(session: Session, folder_id: str, uid: int) -> bool:
    found = session.scalar(
        select(Message.id).where(Message.folder_id == folder_id, Message.uid == uid)
    )
    return found is not None


def adjust_counts(session: Session, folder_id: str, total: int, unread: int) -> None:
    """Move the folder's stored counts by what this transaction added or removed.

    The counts are what listMessages reports as ``pagination.total``; keeping them
    right in the same transaction as the change spares every page a COUNT.
    """
    if total or unread:
        session.execute(
            update(Folder)
            .where(Folder.id == folder_id)
            .values(
                message_count=Folder.message_count + total,
                unread_count=Folder.unread_count + unread,
            )
        )


def remove_messages(
    session: Session, message_ids: Sequence[str], *, announce: bool = True
) -> list[str]:
    """Delete messages (and their attachment rows); returns the blob keys to delete.

    Each removal is recorded as ``message.deleted`` unless ``announce`` is False (a
    folder that goes, or is rebuilt, is told as a whole by its caller).
    """
    keys: list[str] = []
    for chunk in _chunks(list(message_ids), 500):
        if announce:
            gone = session.execute(
                select(Message.id, Message.account_id, Message.folder_id).where(
                    Message.id.in_(chunk)
                )
            ).all()
            changes.messages_deleted(session, [(row[0], row[1], row[2]) for row in gone])
        keys.extend(
            session.scalars(select(Attachment.storage_key).where(Attachment.message_id.in_(chunk)))
        )
        session.execute(delete(Attachment).where(Attachment.message_id.in_(chunk)))
        session.execute(delete(Message).where(Message.id.in_(chunk)))
    return keys


def delete_blobs(blobs: BlobStore, keys: Iterable[str]) -> None:
    """Best effort: a blob left behind costs storage, never correctness."""
    for key in keys:
        try:
            blobs.delete(key)
        except Exception:
            log.warning("could not delete blob %s", key, exc_info=True)


def remove_from_folder(
    session: Session, folder_id: str, message_ids: Sequence[str], unread: int, announce: bool
) -> list[str]:
    """Remove messages gone from the server's folder and move its counts with them.

    ``unread`` is how many of them were unread. Returns the blob keys to delete.
    """
    keys = remove_messages(session, message_ids, announce=announce)
    adjust_counts(session, folder_id, -len(message_ids), -unread)
    return keys


def write_flags(
    session: Session,
    account_id: str,
    folder_id: str,
    in_spam_folder: bool,
    updates: Sequence[tuple[str, FlagState]],
    unread_delta: int,
    announce: bool,
) -> list[str]:
    """Store flags read from the server; each written message is a ``message.updated``
    (when ``announce``).

    A message with a local change still to be written to the server is left alone (that
    change wins). Returns the ids of the messages written.
    """
    written: list[str] = []
    for message_id, state in updates:
        result = session.execute(
            update(Message)
            .where(Message.id == message_id, Message.pending_changes == 0)
            .values(**state.columns(in_spam_folder=in_spam_folder), updated_at=now_ms())
        )
        if result.rowcount:  # type: ignore[attr-defined]
            written.append(message_id)
    adjust_counts(session, folder_id, 0, unread_delta)
    if announce:
        changes.messages_updated(session, account_id, written)
    return written
