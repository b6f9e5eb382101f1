"""Attachment bytes of IMAP mail, fetched from the mail server when first downloaded.

A sync records each attachment of an IMAP message (name, type, size, SHA-256, the part's
IMAP body section and transfer encoding) but uploads nothing: most attachments are never
opened, and uploading every one made the blob store the limit of a sync. The first
download does what a mail client does when an attachment is opened: it logs in, opens the
message's folder read-only, checks that its UIDVALIDITY is still the one the message was
synced under, fetches just that part (``UID FETCH <uid> BODY.PEEK[<section>]``, which
leaves ``\\Seen`` alone), undoes the transfer encoding and checks the bytes against the
SHA-256 recorded at sync. Where the section is unknown or the bytes do not match, the whole
message is fetched and parsed again, as the sync did (``MAX_MESSAGE_BYTES`` bounds it as
it bounds a sync). The bytes then go to the blob store under the attachment's own key, the
row records that they did, and later downloads (and ``getMessage``'s presigned URLs) are
served from the blob store without the mail server.

The fetch happens in the request, as webmail does, bounded by the mail connection
deadlines (``MAIL_*_TIMEOUT``) and by the process's message build budget (memory), so the
caller gets the file or a clear error in one answer rather than a task to follow:

* the message is no longer in its folder, the folder is gone, or its UIDVALIDITY changed:
  404 ``NOT_ON_MAIL_SERVER`` (the next sync removes or replaces the message);
* the server cannot be reached, times out, or refuses the login or a command: 502
  ``MAIL_SERVER_UNAVAILABLE`` (``MAIL_LOGIN_FAILED`` for a refused login); the caller may
  try again, nothing is lost.

Concurrent first downloads are safe: the blob key is the attachment's own, a blob store
write replaces a blob whole, and recording ``stored_at`` is idempotent. Downloads of one
attachment in one process wait for each other, so the server is asked once. If storing
the blob fails, the bytes are still served and the next download fetches them again.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy import select, update

from db.models import Account, Attachment, Folder, Message, now_ms
from email_service.blobstore import CHUNK, BlobNotFound
from email_service.errors import MailServerFailed, NotOnMailServer
from email_service.mail.endpoint import MailEndpoint
from email_service.mail.errors import MailAuthError, MailError, MailProtocolError
from email_service.mail.imap import ImapSession
from email_service.mail.mime import ParsedAttachment, parse_message
from email_service.mail.mimeparts import decode_part
from email_service.runtime import Runtime
from email_service.scope import Scope
from email_service.services.accounts import endpoint_later

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AttachmentContent:
    filename: str
    mime_type: str
    size: int
    chunks: Iterator[bytes]


@dataclass(frozen=True)
class PartSource:
    """An attachment whose bytes are still only on the mail server, and how to get them."""

    tenant_id: uuid.UUID
    attachment_id: str
    storage_key: str
    filename: str
    mime_type: str
    size: int
    sha256: str | None
    section: str | None
    encoding: str | None
    folder_name: str
    #: The folder's UIDVALIDITY the UID belongs to; None while the folder's first mirror
    #: (or rebuild) is still running, when the stored UIDs are the server's current ones.
    uidvalidity: int | None
    uid: int
    #: The account's endpoint, got when the server is to be asked (with no transaction
    #: open): an OAuth2 access token is refreshed then, if it needs to be.
    endpoint: Callable[[], MailEndpoint]


def part_source(scope: Scope, account: Account, row: Attachment) -> PartSource | None:
    """Where ``row``'s bytes are on ``account``'s IMAP server; None when they are not there
    to be fetched (a POP3 account, a message without a UID). Raises ``MailServerFailed``
    when the account cannot log in (OAuth2 authorization lost). Asks no one outside the
    database: an OAuth2 token to refresh is refreshed when the server is asked."""
    if account.protocol != "imap":
        return None
    found = scope.session.execute(
        select(Message.uid, Folder.name, Folder.uidvalidity)
        .join(Folder, Folder.id == Message.folder_id)
        .where(Message.id == row.message_id, Message.tenant_id == scope.caller.tenant_id)
    ).one_or_none()
    if found is None:
        return None
    uid, folder_name, uidvalidity = found
    if uid is None:
        return None  # a copy of ours the server has not numbered
    try:
        endpoint = endpoint_later(scope.runtime, account)
    except MailError as exc:
        raise _server_failed(exc) from exc
    return PartSource(
        tenant_id=scope.caller.tenant_id,
        attachment_id=row.id,
        storage_key=row.storage_key,
        filename=row.filename,
        mime_type=row.mime_type,
        size=row.size,
        sha256=row.sha256,
        section=row.imap_section,
        encoding=row.transfer_encoding,
        folder_name=folder_name,
        uidvalidity=uidvalidity,
        uid=uid,
        endpoint=endpoint,
    )


def download(runtime: Runtime, source: PartSource) -> AttachmentContent:
    """The attachment's bytes, fetched from the server and stored (see the module doc).

    Call it outside any transaction: it talks to the mail server. Raises
    ``NotOnMailServer``, ``MailServerFailed`` or the build budget's ``BuildBusy``.
    """
    with runtime.build_budget.reserve(source.size):
        data = fetch_bytes(runtime, source)
    return AttachmentContent(source.filename, source.mime_type, len(data), _chunks(data))


def fetch_bytes(runtime: Runtime, source: PartSource) -> bytes:
    """The attachment's bytes: from the blob store if another download of this process
    stored them meanwhile, else from the mail server (then stored). Raises what
    :func:`download` raises, except ``BuildBusy`` (the caller holds the budget)."""
    with _one_at_a_time(source.attachment_id) as waited:
        if waited:
            try:
                return b"".join(runtime.blobs.stream(source.storage_key))
            except BlobNotFound:
                pass
        data = _from_server(source)
        _store(runtime, source, data)
        return data


def _chunks(data: bytes) -> Iterator[bytes]:
    view = memoryview(data)
    for start in range(0, len(data), CHUNK):
        yield bytes(view[start : start + CHUNK])


def _from_server(source: PartSource) -> bytes:
    where = f"the message (UID {source.uid} in {source.folder_name!r})"
    try:
        with ImapSession(source.endpoint()) as imap:
            try:
                state = imap.select(source.folder_name, readonly=True)
            except MailProtocolError as exc:
                raise NotOnMailServer(
                    f"The folder {source.folder_name!r} can no longer be opened on the mail "
                    f"server ({exc.message}); sync the account again"
                ) from exc
            if source.uidvalidity is not None and state.uidvalidity != source.uidvalidity:
                raise NotOnMailServer(
                    f"The folder {source.folder_name!r} was renumbered on the mail server "
                    "(its UIDVALIDITY changed) since the message was synced; sync the "
                    "account again and open the message anew"
                )
            if source.section is not None:
                body = imap.fetch_part(source.uid, source.section)
                if body is None:
                    raise _gone(where)
                decoded = decode_part(body, source.encoding)
                for candidate in _candidates(decoded, source.mime_type):
                    if _matches(source, candidate):
                        return candidate
                log.info(
                    "attachment %s: part %s did not match the synced bytes; reading the "
                    "whole message",
                    source.attachment_id,
                    source.section,
                )
            fetched = next(iter(imap.fetch([source.uid], batch_size=1)), None)
    except MailError as exc:
        raise _server_failed(exc) from exc
    if fetched is None:
        raise _gone(where)
    if fetched.unreadable is not None or fetched.too_large:
        raise MailServerFailed(
            f"The mail server's copy of {where} cannot be read: "
            + (fetched.unreadable or "it is larger than MAX_MESSAGE_BYTES allows"),
            code="MAIL_SERVER_ERROR",
        )
    return _pick(source, parse_message(fetched.raw).attachments, where)


def _candidates(decoded: bytes, mime_type: str) -> Iterator[bytes]:
    yield decoded
    # The fast parser keeps an enclosed message without the line break that ends the
    # part; the server's part includes it.
    if mime_type.startswith("message/"):
        for ending in (b"\r\n", b"\n"):
            if decoded.endswith(ending):
                yield decoded[: -len(ending)]
                break


def _matches(source: PartSource, data: bytes) -> bool:
    if source.sha256 is None:
        return len(data) == source.size
    return hashlib.sha256(data).hexdigest() == source.sha256


def _pick(source: PartSource, parsed: tuple[ParsedAttachment, ...], where: str) -> bytes:
    for attachment in parsed:
        if _matches(source, attachment.data):
            return attachment.data
    # Same UID, same UIDVALIDITY: by IMAP's rules the same message. Bytes that differ
    # can only come from a parser that reads the message differently than at sync time;
    # a single attachment of the same name and type is then the one.
    same = [a for a in parsed if (a.filename, a.mime_type) == (source.filename, source.mime_type)]
    if len(same) == 1:
        log.warning(
            "attachment %s: the message parses to other bytes than at sync time; serving "
            "the part of the same name and type",
            source.attachment_id,
        )
        return same[0].data
    raise NotOnMailServer(
        f"The attachment {source.filename!r} is no longer in {where} on the mail server; "
        "sync the account again"
    )


def _gone(where: str) -> NotOnMailServer:
    return NotOnMailServer(
        f"{where[0].upper()}{where[1:]} is no longer on the mail server (deleted or moved "
        "there); the next sync removes it here"
    )


def _server_failed(exc: MailError) -> MailServerFailed:
    if isinstance(exc, MailAuthError):
        return MailServerFailed(
            f"The mail server refused the account's login: {exc.message}",
            code="MAIL_LOGIN_FAILED",
        )
    return MailServerFailed(f"The mail server could not be asked for the attachment: {exc.message}")


def _store(runtime: Runtime, source: PartSource, data: bytes) -> None:
    """Put the blob, then record it; a failure of either leaves the next download to
    fetch again (and the bytes in hand are still served)."""
    try:
        runtime.blobs.put(source.storage_key, data, source.mime_type)
    except Exception:
        log.warning("could not store attachment %s", source.attachment_id, exc_info=True)
        return
    try:
        with runtime.db.transaction(source.tenant_id) as session:
            result = session.execute(
                update(Attachment)
                .where(Attachment.id == source.attachment_id)
                .values(
                    stored_at=now_ms(),
                    sha256=hashlib.sha256(data).hexdigest(),
                    size=len(data),
                )
            )
            gone = not result.rowcount  # type: ignore[attr-defined]
    except Exception:
        log.warning("could not record attachment %s", source.attachment_id, exc_info=True)
        return
    if gone:
        # The message went (a sync or deletion) while we fetched: its blob keys were
        # deleted before this blob existed, so this one is ours to remove.
        try:
            runtime.blobs.delete(source.storage_key)
        except Exception:
            log.warning("could not delete blob %s", source.storage_key, exc_info=True)


_inflight: dict[str, tuple[threading.Lock, int]] = {}
_inflight_guard = threading.Lock()


@contextmanager
def _one_at_a_time(attachment_id: str) -> Iterator[bool]:
    """Serialise downloads of one attachment in this process; yields whether we waited."""
    with _inflight_guard:
        lock, users = _inflight.get(attachment_id, (threading.Lock(), 0))
        _inflight[attachment_id] = (lock, users + 1)
    waited = not lock.acquire(blocking=False)
    if waited:
        lock.acquire()
    try:
        yield waited
    finally:
        lock.release()
        with _inflight_guard:
            lock, users = _inflight[attachment_id]
            if users <= 1:
                del _inflight[attachment_id]
            else:
                _inflight[attachment_id] = (lock, users - 1)
