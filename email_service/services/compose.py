"""Composing mail, the request side: sending (a queued task) and saving drafts.

Both build the message here, in the request, with ``mail.compose``: the caller learns at
once about anything wrong with it (unknown account, attachment or message answered, a
message too large), and the exact bytes are kept before the task is queued (a send's in
its task row up to ``INLINE_MESSAGE_BYTES``, else in the blob store), so every run of
the job sends the same message with the same Message-ID. The jobs themselves are in
``services.delivery``.
"""

from __future__ import annotations

import base64
import logging
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from db.models import Account, Attachment, Draft, Message, Task, new_id, now_ms
from email_service.blobstore import BlobNotFound
from email_service.errors import (
    AttachmentNotFound,
    InvalidRequest,
    MessageNotFound,
    PayloadTooLarge,
)
from email_service.mail.compose import (
    BuiltMessage,
    OutgoingAttachment,
    OutgoingMessage,
    build_message,
    is_message_id,
    normalize_message_id,
    thread_references,
)
from email_service.mailstore.messages import delete_blobs
from email_service.scope import Scope
from email_service.services import tasks
from email_service.services.accounts import load_account
from email_service.services.attachments import PartSource, fetch_bytes, part_source

log = logging.getLogger(__name__)

SEND_ACTOR = "send_email"
DRAFT_ACTOR = "save_draft"
# A message up to this size (with the sender's copy, when it differs) travels in the task
# row, committed with it: no blob to upload, read back and delete per send. Larger ones
# are kept in the blob store until the job is done.
INLINE_MESSAGE_BYTES = 64 * 1024
# A common ceiling of mail servers (and of the request body limit): a larger message
# would mostly be refused after its upload anyway.
MAX_MESSAGE_BYTES = 25 * 1024 * 1024


def outgoing_key(scope: Scope, name: str) -> str:
    """Blob key of a message kept for a job; tenant first, like every blob key."""
    return f"{scope.caller.tenant_id}/outgoing/{name}"


def send_email(
    scope: Scope, body: dict[str, Any], idempotency_key: str | None = None
) -> dict[str, Any]:
    """Queue ``body`` for delivery from the caller's account; returns the send task.

    With ``idempotency_key``, a request that repeats an earlier key of the caller returns
    that first task (its body is not compared) and sends nothing. Raises
    ``AccountNotFound``, ``AttachmentNotFound``, ``MessageNotFound`` (``inReplyTo``),
    ``InvalidRequest`` and ``PayloadTooLarge``.
    """
    if idempotency_key is not None:
        earlier = _task_with_key(scope, idempotency_key)
        if earlier is not None:
            return _send_response(earlier)
    account = load_account(scope, body["accountId"])
    built = _build(scope, account, body)
    name = new_id()
    payload: dict[str, Any] = {
        "messageId": built.message_id,
        "envelopeFrom": account.email_address,
        "recipients": list(built.recipients),
        # Where the job notes what the SMTP server took (``delivery._record_progress``).
        "noteKey": outgoing_key(scope, f"{name}.accepted"),
    }
    keys: list[str] = []
    copy_size = len(built.copy) if built.copy != built.raw else 0
    if len(built.raw) + copy_size <= INLINE_MESSAGE_BYTES:
        payload["raw"] = base64.b64encode(built.raw).decode("ascii")
        if copy_size:
            payload["copy"] = base64.b64encode(built.copy).decode("ascii")
    else:
        raw_key = outgoing_key(scope, name)
        copy_key = outgoing_key(scope, f"{name}.copy") if copy_size else raw_key
        keys = list(dict.fromkeys([raw_key, copy_key]))
        scope.runtime.blobs.put(raw_key, built.raw, "message/rfc822")
        if copy_key != raw_key:
            scope.runtime.blobs.put(copy_key, built.copy, "message/rfc822")
        payload.update(rawKey=raw_key, copyKey=copy_key)

    def queue() -> Task:
        return tasks.queue_task(
            scope,
            "send",
            SEND_ACTOR,
            account_id=account.id,
            payload=payload,
            idempotency_key=idempotency_key,
        )

    if idempotency_key is None:
        row = queue()  # nothing unique to meet: no savepoint (two round trips) needed
    else:
        try:
            # A savepoint: two requests racing with one key meet at the unique index.
            with scope.session.begin_nested():
                row = queue()
        except IntegrityError:
            earlier = _task_with_key(scope, idempotency_key)
            if earlier is None:
                raise
            delete_blobs(scope.runtime.blobs, keys)
            return _send_response(earlier)
    log.info("send queued", extra={"account_id": account.id, "task_id": row.id})
    return _send_response(row)


def save_draft(scope: Scope, body: dict[str, Any]) -> dict[str, Any]:
    """Store a draft and, for IMAP accounts, queue its APPEND to the Drafts folder.

    POP3 accounts have no folders on the server: their drafts stay here. Raises what
    ``send_email`` raises.
    """
    account = load_account(scope, body["accountId"])
    built = _build(scope, account, body)
    draft = Draft(
        id=new_id(),
        tenant_id=scope.caller.tenant_id,
        user_id=scope.caller.user_id,
        account_id=account.id,
        payload=dict(body),
        internet_message_id=built.message_id,
        status="local" if account.protocol == "pop3" else "pending",
        created_at=now_ms(),
    )
    scope.session.add(draft)
    scope.session.flush()
    response: dict[str, Any] = {
        "draftId": draft.id,
        "accountId": account.id,
        "createdAt": draft.created_at,
    }
    if account.protocol != "pop3":
        key = outgoing_key(scope, f"draft-{draft.id}")
        scope.runtime.blobs.put(key, built.copy, "message/rfc822")
        row = tasks.queue_task(
            scope,
            "draft",
            DRAFT_ACTOR,
            account_id=account.id,
            payload={"draftId": draft.id, "messageId": built.message_id, "rawKey": key},
        )
        response["taskId"] = row.id
    return response


def _send_response(row: Task) -> dict[str, Any]:
    return {"taskId": row.id, "status": row.status, "messageId": row.payload["messageId"]}


def _task_with_key(scope: Scope, key: str) -> Task | None:
    found: Task | None = scope.session.scalars(
        select(Task).where(
            Task.tenant_id == scope.caller.tenant_id,
            Task.user_id == scope.caller.user_id,
            Task.kind == "send",
            Task.idempotency_key == key,
        )
    ).one_or_none()
    return found


def _build(scope: Scope, account: Account, body: dict[str, Any]) -> BuiltMessage:
    in_reply_to: str | None = None
    references: tuple[str, ...] = ()
    if body.get("inReplyTo"):
        in_reply_to, references = _thread(scope, account, body["inReplyTo"])
    rows = _attachment_rows(scope, body.get("attachmentIds", []))
    # Refused before any attachment is read or anything is built: a message over the
    # limit used to be built in full (several times its size in memory) to learn that.
    estimate = _estimated_size(body, rows)
    if estimate > MAX_MESSAGE_BYTES:
        raise PayloadTooLarge(
            f"The message would be about {estimate} bytes once encoded for mail; at most "
            f"{MAX_MESSAGE_BYTES} are sent",
            code="MESSAGE_TOO_LARGE",
        )
    with scope.runtime.build_budget.reserve(estimate):
        return _build_within_budget(scope, account, body, rows, in_reply_to, references)


def _build_within_budget(
    scope: Scope,
    account: Account,
    body: dict[str, Any],
    rows: list[Attachment],
    in_reply_to: str | None,
    references: tuple[str, ...],
) -> BuiltMessage:
    to, cc, bcc = body["to"], body.get("cc", []), body.get("bcc", [])
    message = OutgoingMessage(
        sender=account.email_address,
        sender_name=account.account_name,
        to=tuple(to),
        cc=tuple(cc),
        bcc=tuple(bcc),
        reply_to=body.get("replyTo"),
        subject=body["subject"],
        body=body["body"],
        is_html=bool(body.get("isHtml", False)),
        in_reply_to=in_reply_to,
        references=references,
        attachments=_load_attachments(scope, rows),
    )
    try:
        built = build_message(message)
    except ValueError as exc:
        # The spec's patterns keep control characters out; this is what is left (an
        # address the email package cannot write, say).
        # The reason is not echoed: it would repeat the caller's values.
        raise InvalidRequest(
            "The message cannot be built from these addresses and headers",
            code="INVALID_MESSAGE",
        ) from exc
    if len(built.copy) > MAX_MESSAGE_BYTES:
        raise PayloadTooLarge(
            f"The message would be {len(built.copy)} bytes; at most {MAX_MESSAGE_BYTES} are sent",
            code="MESSAGE_TOO_LARGE",
        )
    return built


def _thread(scope: Scope, account: Account, value: str) -> tuple[str, tuple[str, ...]]:
    """``inReplyTo`` → (the parent's Message-ID, the reply's References).

    ``value`` is our id of a message of this account, or a Message-ID (with or without
    brackets); a Message-ID we do not have is answered as it is, without older
    References.
    """
    owned = (Message.account_id == account.id, Message.tenant_id == scope.caller.tenant_id)
    parent = scope.session.scalars(select(Message).where(Message.id == value, *owned)).first()
    if parent is None:
        message_id = normalize_message_id(value)
        if not is_message_id(message_id):
            # Not a Message-ID, so it was meant as one of our ids.
            raise MessageNotFound(value)
        parent = scope.session.scalars(
            select(Message).where(Message.internet_message_id == message_id, *owned)
        ).first()
        if parent is None:
            return message_id, (message_id,)
    if not parent.internet_message_id or not is_message_id(parent.internet_message_id):
        raise InvalidRequest(
            "The message being answered has no usable Message-ID", code="INVALID_IN_REPLY_TO"
        )
    return parent.internet_message_id, thread_references(
        parent.references, parent.internet_message_id
    )


def _attachment_rows(scope: Scope, ids: list[str]) -> list[Attachment]:
    """The stored attachments ``ids`` of any live account of the caller, in order.

    Raises ``AttachmentNotFound`` for an id that is not the caller's (another tenant's or
    user's is unknown too).
    """
    wanted = list(dict.fromkeys(ids))
    if not wanted:
        return []
    rows = {
        row.id: row
        for row in scope.session.scalars(
            select(Attachment)
            .join(Account, Account.id == Attachment.account_id)
            .where(
                Attachment.id.in_(wanted),
                Attachment.tenant_id == scope.caller.tenant_id,
                Account.tenant_id == scope.caller.tenant_id,
                Account.user_id == scope.caller.user_id,
                Account.deleted_at.is_(None),
            )
        )
    }
    for attachment_id in wanted:
        if attachment_id not in rows:
            raise AttachmentNotFound(attachment_id)
    return [rows[attachment_id] for attachment_id in wanted]


def _encoded(size: int) -> int:
    """Bytes of ``size`` bytes in base64 with 76-character lines (MIME's encoding)."""
    return 4 * ((size + 2) // 3) * 78 // 76


def _estimated_size(body: dict[str, Any], rows: list[Attachment]) -> int:
    """About how large the built message will be, from sizes alone (nothing is read).

    Attachments go out in base64 (4/3 and line breaks); the text is counted as base64
    too (quoted-printable is chosen only where it is smaller), twice for HTML, which
    gets a plain-text alternative. The exact size is checked again after building.
    """
    text = _encoded(len(body["body"].encode("utf-8")))
    if body.get("isHtml"):
        text *= 2
    addresses = sum(len(a) + 4 for key in ("to", "cc", "bcc") for a in body.get(key, []))
    headers = 4096 + 2 * addresses + 4 * len(body.get("subject", ""))
    return headers + text + sum(_encoded(row.size) + 512 for row in rows)


def _load_attachments(scope: Scope, rows: list[Attachment]) -> tuple[OutgoingAttachment, ...]:
    """The attachments' bytes. Raises ``AttachmentNotFound`` when one's content is gone.

    An IMAP attachment not downloaded yet is fetched from the mail server first, as its
    download would (``services.attachments``): ``NotOnMailServer``, ``MailServerFailed``.
    """
    attachments = []
    for row in rows:
        source = None
        if row.stored_at is None:
            source = _source(scope, row)
        if source is None:
            try:
                data = b"".join(scope.runtime.blobs.stream(row.storage_key))
            except BlobNotFound as exc:
                source = _source(scope, row)
                if source is None:
                    raise AttachmentNotFound(row.id) from exc
        if source is not None:
            # Within the build budget this message already reserved.
            data = fetch_bytes(scope.runtime, source)
        attachments.append(OutgoingAttachment(row.filename, row.mime_type, data))
    return tuple(attachments)


def _source(scope: Scope, row: Attachment) -> PartSource | None:
    account = scope.session.get(Account, row.account_id)
    return part_source(scope, account, row) if account is not None else None
