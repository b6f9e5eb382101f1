"""Reading mirrored mail: folders, message pages, message details, attachment bytes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Integer, Row, Select, bindparam, case, select

from db.models import Account, Attachment, Folder, Message
from email_service import present
from email_service.blobstore import BlobNotFound
from email_service.errors import AttachmentNotFound, FolderNotFound, MessageNotFound
from email_service.mail.mime import storable_media_type
from email_service.mailstore.messages import sanitized_html
from email_service.scope import Scope
from email_service.services.accounts import load_account
from email_service.services.attachments import AttachmentContent, PartSource, part_source

# The columns of a message's list item (``present.message_summary``); search selects the same.
LIST_COLUMNS = (
    Message.id,
    Message.account_id,
    Message.folder_id,
    Message.from_address,
    Message.from_name,
    Message.to_addresses,
    Message.cc_addresses,
    Message.bcc_addresses,
    Message.subject,
    Message.preview,
    Message.is_read,
    Message.is_starred,
    Message.is_spam,
    Message.is_deleted,
    Message.labels,
    Message.attachment_count,
    Message.received_at,
    Message.created_at,
    Message.updated_at,
)


def list_folders(scope: Scope, account_id: str) -> dict[str, Any]:
    account = load_account(scope, account_id)
    rows = scope.session.scalars(
        select(Folder)
        .where(Folder.account_id == account.id, Folder.tenant_id == scope.caller.tenant_id)
        # INBOX first, then by name, which puts every parent before its children.
        .order_by(case((Folder.type == "inbox", 0), else_=1), Folder.name)
    ).all()
    return {"folders": [present.folder(row) for row in rows], "total": len(rows)}


@dataclass(frozen=True)
class FolderCounts:
    id: str
    message_count: int
    unread_count: int


# The folder and the ownership of its account in one query: every page asks. Built once
# with bound parameters (a page's statements are the same each time: building them and
# their cache keys cost more CPU than the page's query, README "Performance", P3).
_FOLDER_COUNTS = (
    select(Folder.id, Folder.message_count, Folder.unread_count)
    .join(Account, Account.id == Folder.account_id)
    .where(
        Folder.id == bindparam("folder_id"),
        Folder.account_id == bindparam("account_id"),
        Folder.tenant_id == bindparam("tenant_id"),
        Account.tenant_id == bindparam("tenant_id"),
        Account.user_id == bindparam("user_id"),
        Account.deleted_at.is_(None),
    )
)


def _load_folder(scope: Scope, account_id: str, folder_id: str) -> FolderCounts:
    caller = scope.caller
    # Plain columns on the session's connection (Core): a page reads, the ORM has nothing to do.
    row = (
        scope.session.connection()
        .execute(
            _FOLDER_COUNTS,
            {
                "folder_id": folder_id,
                "account_id": account_id,
                "tenant_id": caller.tenant_id,
                "user_id": caller.user_id,
            },
        )
        .one_or_none()
    )
    if row is None:
        load_account(scope, account_id)  # an unknown or foreign account is that 404
        raise FolderNotFound(folder_id)
    return FolderCounts(row[0], row[1], row[2])


@dataclass(frozen=True)
class MessagePage:
    """A page of list entries: rows of ``LIST_COLUMNS``, and its pagination."""

    rows: list[Row[Any]]
    total: int
    limit: int
    offset: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "messages": [present.message_summary(row) for row in self.rows],
            "pagination": {"total": self.total, "limit": self.limit, "offset": self.offset},
        }

    def as_json(self) -> str:
        """The listMessages body, the same text the API's encoder makes of ``as_dict``."""
        return present.message_page_json(self.rows, self.total, self.limit, self.offset)


def list_messages(
    scope: Scope,
    account_id: str,
    folder_id: str,
    *,
    limit: int,
    offset: int,
    sort: str,
    read_filter: str,
) -> dict[str, Any]:
    return message_page(
        scope,
        account_id,
        folder_id,
        limit=limit,
        offset=offset,
        sort=sort,
        read_filter=read_filter,
    ).as_dict()


_PAGE_STATEMENTS: dict[tuple[str, bool, bool], Select[Any]] = {}


def _page_statement(read_filter: str, by_sender: bool, descending: bool) -> Select[Any]:
    """The page query for one filter and ordering, built once, with bound parameters
    ``folder_id``, ``tenant_id``, ``take`` (LIMIT) and ``skip`` (OFFSET)."""
    key = (read_filter, by_sender, descending)
    statement = _PAGE_STATEMENTS.get(key)
    if statement is not None:
        return statement
    conditions = [
        Message.folder_id == bindparam("folder_id"),
        Message.tenant_id == bindparam("tenant_id"),
    ]
    if read_filter == "read":
        conditions.append(Message.is_read.is_(True))
    elif read_filter == "unread":
        conditions.append(Message.is_read.is_(False))
    column = Message.from_address if by_sender else Message.received_at
    ordering = (
        (column.desc(), Message.id.desc()) if descending else (column.asc(), Message.id.asc())
    )
    # Deferred join: find the page's ids on the narrow index first, then load only those
    # rows. A deep OFFSET then skips index entries instead of whole message rows.
    page_ids = (
        select(Message.id)
        .where(*conditions)
        .order_by(*ordering)
        .limit(bindparam("take", type_=Integer))
        .offset(bindparam("skip", type_=Integer))
    ).subquery()
    statement = (
        select(*LIST_COLUMNS).join(page_ids, page_ids.c.id == Message.id).order_by(*ordering)
    )
    _PAGE_STATEMENTS[key] = statement
    return statement


def message_page(
    scope: Scope,
    account_id: str,
    folder_id: str,
    *,
    limit: int,
    offset: int,
    sort: str,
    read_filter: str,
) -> MessagePage:
    folder = _load_folder(scope, account_id, folder_id)
    # The folder's counts are kept exact by every write to its messages (sync batches,
    # sends, flag changes), so a page never pays for counting a large folder.
    total = folder.message_count
    if read_filter == "read":
        total = folder.message_count - folder.unread_count
    elif read_filter == "unread":
        total = folder.unread_count

    field, _, direction = sort.partition(":")
    descending = direction == "desc"
    # A page past the middle is read from the other end: OFFSET walks the index from
    # where it starts, so the last page costs what the first one does.
    reverse = offset > total // 2
    skip = offset
    if reverse:
        skip = max(total - offset - limit, 0)
        descending = not descending
    take = min(limit, max(total - offset, 0)) if reverse else limit
    statement = _page_statement(read_filter, field == "from", descending)
    # Plain rows through Core, not the ORM: a page is read, never changed.
    rows = list(
        scope.session.connection()
        .execute(
            statement,
            {
                "folder_id": folder.id,
                "tenant_id": scope.caller.tenant_id,
                "take": take,
                "skip": skip,
            },
        )
        .all()
    )
    if reverse:
        rows.reverse()
    return MessagePage(rows, total, limit, offset)


def load_message(scope: Scope, account_id: str, message_id: str) -> Message:
    account = load_account(scope, account_id)
    row = scope.session.scalars(
        select(Message).where(
            Message.id == message_id,
            Message.account_id == account.id,
            Message.tenant_id == scope.caller.tenant_id,
        )
    ).one_or_none()
    if row is None:
        raise MessageNotFound(message_id)
    return row


def message_detail(scope: Scope, row: Message) -> dict[str, Any]:
    attachments = scope.session.scalars(
        select(Attachment)
        .where(Attachment.message_id == row.id, Attachment.tenant_id == scope.caller.tenant_id)
        .order_by(Attachment.created_at, Attachment.id)
    ).all()
    ttl = scope.runtime.settings.presign_ttl_seconds
    blobs = scope.runtime.blobs
    sanitized_html(scope.session, row)
    return present.message_detail(
        row,
        [
            present.attachment(
                item,
                # Not yet fetched from the mail server: no blob to sign a URL for; the
                # client downloads through downloadAttachment.
                blobs.presigned_url(
                    item.storage_key, ttl, item.filename, storable_media_type(item.mime_type)
                )
                if item.stored_at is not None
                else None,
            )
            for item in attachments
        ],
    )


def get_message(scope: Scope, account_id: str, message_id: str) -> dict[str, Any]:
    return message_detail(scope, load_message(scope, account_id, message_id))


def open_attachment(
    scope: Scope, account_id: str, attachment_id: str
) -> AttachmentContent | PartSource:
    """The attachment's bytes as a stream, or, for an attachment not yet fetched from the
    IMAP server, where it is there (``attachments.download`` fetches it, outside this
    transaction). Raises ``AttachmentNotFound`` and ``attachments.part_source``'s errors."""
    account = load_account(scope, account_id)
    row = scope.session.scalars(
        select(Attachment).where(
            Attachment.id == attachment_id,
            Attachment.account_id == account.id,
            Attachment.tenant_id == scope.caller.tenant_id,
        )
    ).one_or_none()
    if row is None:
        raise AttachmentNotFound(attachment_id)
    if row.stored_at is None:
        source = part_source(scope, account, row)
        if source is not None:
            return source
    try:
        chunks = scope.runtime.blobs.stream(row.storage_key)
    except BlobNotFound as exc:
        # A blob lost from the store is fetched again where the server still has it.
        source = part_source(scope, account, row)
        if source is not None:
            return source
        raise AttachmentNotFound(attachment_id) from exc
    return AttachmentContent(row.filename, row.mime_type, row.size, chunks)
