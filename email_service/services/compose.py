"""Composing mail, the request side: sending (a queued task) and saving drafts.

Both build the message here, in the request, with ``mail.compose``: the caller learns at
once about anything wrong with it (unknown account, attachment or message answered, a
message too large), and the exact bytes are kept before the task is queued (a send's in
its task row up to ``INLINE_MESSAGE_BYTES``, else in the blob store), so every run of
the job sends the same message with the same Message-ID. The jobs themselves are in
``services.delivery``.

An attachment of an IMAP message that was never downloaded is fetched from the mail
server first, as its download would be (``services.attachments``). No transaction may
stay open across that exchange: it is bounded only by the mail deadlines, and a slow or
hostile server would hold a pooled connection, a transaction and its locks for all of
them. Nor may one stay open while a message is put in the blob store (a large send, any
IMAP draft). So such a request works in two units of work (``_compose``): the first reads
what the message is made of and writes nothing; once it has ended, the attachments are
fetched, the message is built and put with no transaction open; the second queues it. A
request with nothing to fetch or put does all of it in one.
"""

from __future__ import annotations

import base64
import logging
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from db.models import Account, Attachment, Draft, Message, Task, new_id, now_ms
from email_service.blobstore import BlobNotFound, BlobStore
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
from email_service.runtime import Runtime
from email_service.scope import Scope, Scopes
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


def outgoing_key(tenant_id: uuid.UUID, name: str) -> str:
    """Blob key of a message kept for a job; tenant first, like every blob key."""
    return f"{tenant_id}/outgoing/{name}"


def send_email(
    scopes: Scopes, body: dict[str, Any], idempotency_key: str | None = None
) -> dict[str, Any]:
    """Queue ``body`` for delivery from the caller's account; returns the send task.

    ``scopes`` opens the request's units of work (one, or two around a fetch from the mail
    server: see the module docstring). With ``idempotency_key``, a request that repeats an
    earlier key of the caller returns that first task (its body is not compared) and sends
    nothing. Raises ``AccountNotFound``, ``AttachmentNotFound``, ``MessageNotFound``
    (``inReplyTo``), ``InvalidRequest``, ``PayloadTooLarge``, the build budget's
    ``BuildBusy``, and for an attachment fetched from the mail server ``NotOnMailServer``
    and ``MailServerFailed``.
    """

    def repeated(scope: Scope) -> dict[str, Any] | None:
        earlier = None if idempotency_key is None else _task_with_key(scope, idempotency_key)
        return None if earlier is None else _send_response(earlier)

    def queue(scope: Scope, account: Account, built: BuiltMessage, kept: _Kept) -> dict[str, Any]:
        return _queue_send(scope, account, built, kept, idempotency_key)

    return _compose(scopes, body, _keep_send, queue, answered=repeated)


def save_draft(scopes: Scopes, body: dict[str, Any]) -> dict[str, Any]:
    """Store a draft and, for IMAP accounts, queue its APPEND to the Drafts folder.

    POP3 accounts have no folders on the server: their drafts stay here. ``scopes`` and
    the errors are those of ``send_email``.
    """

    def store(scope: Scope, account: Account, built: BuiltMessage, kept: _Kept) -> dict[str, Any]:
        return _store_draft(scope, account, body, built, kept)

    return _compose(scopes, body, _keep_draft, store)


@dataclass(frozen=True)
class _Kept:
    """What a message leaves in the blob store for its job, put before the transaction
    that queues the job begins (``_compose``), and what the job's payload says of it."""

    blobs: dict[str, bytes]
    payload: dict[str, Any]


def _keep_send(tenant_id: uuid.UUID, account: Account, built: BuiltMessage) -> _Kept:
    """A send's message: in its task row when small, else in the blob store."""
    name = new_id()
    # Where the job notes what the SMTP server took (``delivery._record_progress``).
    payload: dict[str, Any] = {"noteKey": outgoing_key(tenant_id, f"{name}.accepted")}
    copy_size = len(built.copy) if built.copy != built.raw else 0
    if len(built.raw) + copy_size <= INLINE_MESSAGE_BYTES:
        payload["raw"] = base64.b64encode(built.raw).decode("ascii")
        if copy_size:
            payload["copy"] = base64.b64encode(built.copy).decode("ascii")
        return _Kept({}, payload)
    raw_key = outgoing_key(tenant_id, name)
    copy_key = outgoing_key(tenant_id, f"{name}.copy") if copy_size else raw_key
    payload.update(rawKey=raw_key, copyKey=copy_key)
    blobs = {raw_key: built.raw}
    if copy_key != raw_key:
        blobs[copy_key] = built.copy
    return _Kept(blobs, payload)


def _keep_draft(tenant_id: uuid.UUID, account: Account, built: BuiltMessage) -> _Kept:
    """A draft of an IMAP account waits in the blob store for its APPEND; POP3 keeps none."""
    if account.protocol == "pop3":
        return _Kept({}, {})
    draft_id = new_id()
    key = outgoing_key(tenant_id, f"draft-{draft_id}")
    return _Kept({key: built.copy}, {"draftId": draft_id, "rawKey": key})


def _put(blobs: BlobStore, kept: _Kept) -> None:
    """Put ``kept``'s blobs (no transaction may be open); none is left if one fails."""
    done: list[str] = []
    try:
        for key, data in kept.blobs.items():
            blobs.put(key, data, "message/rfc822")
            done.append(key)
    except BaseException:
        delete_blobs(blobs, done)
        raise


def _queue_send(
    scope: Scope,
    account: Account,
    built: BuiltMessage,
    kept: _Kept,
    idempotency_key: str | None,
) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "messageId": built.message_id,
        "envelopeFrom": account.email_address,
        "recipients": list(built.recipients),
        **kept.payload,
    }

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
            # The message put for this request is not needed: deleted once this
            # transaction has ended (``_compose`` deletes it if the transaction fails).
            blobs = scope.runtime.blobs
            scope.after_commit(lambda: delete_blobs(blobs, kept.blobs))
            return _send_response(earlier)
    log.info("send queued", extra={"account_id": account.id, "task_id": row.id})
    return _send_response(row)


def _store_draft(
    scope: Scope, account: Account, body: dict[str, Any], built: BuiltMessage, kept: _Kept
) -> dict[str, Any]:
    draft = Draft(
        id=kept.payload.get("draftId") or new_id(),
        tenant_id=scope.caller.tenant_id,
        user_id=scope.caller.user_id,
        account_id=account.id,
        payload=dict(body),
        internet_message_id=built.message_id,
        status="pending" if "rawKey" in kept.payload else "local",
        created_at=now_ms(),
    )
    scope.session.add(draft)
    scope.session.flush()
    response: dict[str, Any] = {
        "draftId": draft.id,
        "accountId": account.id,
        "createdAt": draft.created_at,
    }
    if "rawKey" in kept.payload:  # an IMAP account's (``_keep_draft``)
        row = tasks.queue_task(
            scope,
            "draft",
            DRAFT_ACTOR,
            account_id=account.id,
            payload={**kept.payload, "messageId": built.message_id},
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


@dataclass(frozen=True)
class _Attached:
    filename: str
    mime_type: str
    #: The bytes, or where they are on the mail server while they are only there.
    content: bytes | PartSource


@dataclass(frozen=True)
class _Parts:
    """What a message is made of besides the request's body, read in a transaction."""

    in_reply_to: str | None
    references: tuple[str, ...]
    attachments: tuple[_Attached, ...]

    @property
    def to_fetch(self) -> bool:
        return any(isinstance(a.content, PartSource) for a in self.attachments)

    def fetched(self, runtime: Runtime) -> _Parts:
        """These parts with the bytes of every attachment in hand, those only on the mail
        server fetched from it (``NotOnMailServer``, ``MailServerFailed``) and stored, as a
        download does. Call it outside any transaction: it talks to the mail server."""
        return replace(
            self,
            attachments=tuple(
                replace(a, content=fetch_bytes(runtime, a.content))
                if isinstance(a.content, PartSource)
                else a
                for a in self.attachments
            ),
        )

    def outgoing(self) -> tuple[OutgoingAttachment, ...]:
        made = []
        for a in self.attachments:
            if isinstance(a.content, PartSource):
                raise AssertionError(f"attachment {a.content.attachment_id} was not fetched")
            made.append(OutgoingAttachment(a.filename, a.mime_type, a.content))
        return tuple(made)


#: What the built message leaves in the blob store for its job, and where (no I/O).
Keep = Callable[[uuid.UUID, Account, BuiltMessage], _Kept]
#: Takes the built message into the request's transaction (a send task, a draft).
Finish = Callable[[Scope, Account, BuiltMessage, _Kept], dict[str, Any]]


def _compose(
    scopes: Scopes,
    body: dict[str, Any],
    keep: Keep,
    finish: Finish,
    *,
    answered: Callable[[Scope], dict[str, Any] | None] = lambda scope: None,
) -> dict[str, Any]:
    """Build ``body``'s message and hand it to ``finish`` within a transaction; returns what
    ``finish`` returns, or what ``answered`` returns first when that is not None.

    The build budget is held from before the first attachment is read until the message
    is built. A message that leaves nothing in the blob store (``keep``) and needs no
    attachment from the mail server is built and finished in one transaction. Otherwise
    the first transaction ends (it has only read: nothing is lost by ending it) before
    the mail server is asked for attachments and before the blobs are put, since no
    transaction, lock or pooled connection may wait on either; the message is built
    from what it read, and a second transaction loads the account again (it may have
    been deleted meanwhile) and finishes. Blobs put for a second transaction that fails
    are deleted again.
    """
    with ExitStack() as budget:
        with scopes() as scope:
            early = answered(scope)
            if early is not None:
                return early
            account = load_account(scope, body["accountId"])
            parts = _gather(scope, account, body, budget)
            tenant_id, runtime = scope.caller.tenant_id, scope.runtime
            built = None if parts.to_fetch else _built(account, body, parts, budget)
            kept = None if built is None else keep(tenant_id, account, built)
            if built is not None and kept is not None and not kept.blobs:
                return finish(scope, account, built, kept)
        if built is None or kept is None:
            parts = parts.fetched(runtime)
            built = _built(account, body, parts, budget)
            kept = keep(tenant_id, account, built)
    _put(runtime.blobs, kept)
    committed = False

    def done() -> None:
        nonlocal committed
        committed = True

    try:
        with scopes() as scope:
            scope.after_commit(done)  # the first hook: runs before any that could fail
            account = load_account(scope, body["accountId"])
            return finish(scope, account, built, kept)
    except BaseException:
        if not committed:  # else a committed task or draft refers to them
            delete_blobs(runtime.blobs, kept.blobs)
        raise


def _gather(scope: Scope, account: Account, body: dict[str, Any], budget: ExitStack) -> _Parts:
    """Read the parent being answered and the attachments, within the build budget (which
    ``budget`` then holds). Writes nothing."""
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
    budget.enter_context(scope.runtime.build_budget.reserve(estimate))
    return _Parts(in_reply_to, references, _load_attachments(scope, rows))


def _built(
    account: Account, body: dict[str, Any], parts: _Parts, budget: ExitStack
) -> BuiltMessage:
    """The message, built; the build budget ``budget`` holds is given back once it is."""
    try:
        return _build_message(account, body, parts)
    finally:
        budget.close()


def _build_message(account: Account, body: dict[str, Any], parts: _Parts) -> BuiltMessage:
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
        in_reply_to=parts.in_reply_to,
        references=parts.references,
        attachments=parts.outgoing(),
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


def _load_attachments(scope: Scope, rows: list[Attachment]) -> tuple[_Attached, ...]:
    """The attachments' bytes from the blob store, or where they are on the mail server
    for an IMAP attachment not downloaded yet (or whose blob is lost): ``_Parts.fetched``
    fetches those, outside this transaction. Raises ``AttachmentNotFound`` when one's
    content is gone, and ``attachments.part_source``'s errors."""
    attachments = []
    for row in rows:
        content: bytes | PartSource | None = None
        if row.stored_at is None:
            content = _source(scope, row)
        if content is None:
            try:
                content = b"".join(scope.runtime.blobs.stream(row.storage_key))
            except BlobNotFound as exc:
                content = _source(scope, row)
                if content is None:
                    raise AttachmentNotFound(row.id) from exc
        attachments.append(_Attached(row.filename, row.mime_type, content))
    return tuple(attachments)


def _source(scope: Scope, row: Attachment) -> PartSource | None:
    account = scope.session.get(Account, row.account_id)
    return part_source(scope, account, row) if account is not None else None
