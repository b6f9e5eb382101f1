"""Build outgoing messages (RFC 5322 bytes) with the stdlib ``email`` package.

:func:`build_message` turns an :class:`OutgoingMessage` into the bytes handed to SMTP and
the copy kept in the Sent or Drafts folder. Headers are set through the ``email``
package's header registry with ``policy.SMTP``, which encodes non-ASCII text (RFC 2047 /
RFC 2231) and refuses CR or LF in any header value, so nothing a caller passes can add a
header. Bodies are encoded for 7-bit transport (quoted-printable or base64 as the
package decides), which every SMTP server accepts.

No database and no network here: the caller supplies attachment bytes and the thread
(``In-Reply-To``/``References``) it looked up.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage

from email_service.mail.html import html_to_text

__all__ = [
    "BuiltMessage",
    "OutgoingAttachment",
    "OutgoingMessage",
    "build_message",
    "is_message_id",
    "new_message_id",
    "normalize_message_id",
    "thread_references",
]

# SMTP policy (CRLF line ends), bodies encoded for 7-bit transport.
_POLICY = policy.SMTP.clone(cte_type="7bit")
# A msg-id between its angle brackets: visible ASCII without spaces, brackets or quotes.
_MESSAGE_ID_RE = re.compile(r"[!#-'*-;=?-Z^-~\[\]]+@[!#-'*-;=?-Z^-~\[\]]+")
_MIME_TYPE_RE = re.compile(r"([a-z0-9][a-z0-9!#$&^_.+-]*)/([a-z0-9][a-z0-9!#$&^_.+-]*)")
# RFC 5322 asks to keep References short; the first (the thread's root) and the
# latest entries are the ones threading needs.
MAX_REFERENCES = 20


@dataclass(frozen=True)
class OutgoingAttachment:
    filename: str
    mime_type: str
    data: bytes


@dataclass(frozen=True)
class OutgoingMessage:
    """What to send. Addresses are bare ``local@domain``; ids are without brackets."""

    sender: str
    sender_name: str
    to: tuple[str, ...]
    subject: str
    body: str
    is_html: bool = False
    cc: tuple[str, ...] = ()
    bcc: tuple[str, ...] = ()
    reply_to: str | None = None
    in_reply_to: str | None = None
    references: tuple[str, ...] = ()
    attachments: tuple[OutgoingAttachment, ...] = ()


@dataclass(frozen=True)
class BuiltMessage:
    """A built message.

    ``raw`` is what SMTP delivers (no ``Bcc`` header); ``copy`` is what the sender keeps
    in Sent or Drafts (with ``Bcc``, as mail clients keep it; equal to ``raw`` without
    Bcc recipients). ``recipients`` is the SMTP envelope: To, Cc and Bcc, each address
    once. ``message_id`` is without angle brackets.
    """

    raw: bytes
    copy: bytes
    message_id: str
    recipients: tuple[str, ...]


def normalize_message_id(value: str) -> str:
    """``<id@host>`` or ``id@host`` → ``id@host`` (surrounding spaces removed)."""
    value = value.strip()
    if value.startswith("<") and value.endswith(">"):
        value = value[1:-1].strip()
    return value


def is_message_id(value: str) -> bool:
    """Whether ``value`` (without brackets) can be written as a Message-ID reference."""
    return bool(_MESSAGE_ID_RE.fullmatch(value)) and len(value) <= 900


def new_message_id(sender: str) -> str:
    """A fresh, globally unique Message-ID in the sender's domain (without brackets)."""
    domain = sender.rpartition("@")[2] or "localhost"
    try:
        domain = domain.encode("idna").decode("ascii")
    except UnicodeError:
        domain = "localhost"
    return f"{uuid.uuid4().hex}@{domain}"


def thread_references(parent_references: Iterable[str], parent_id: str | None) -> tuple[str, ...]:
    """The References of a reply: the parent's References, then the parent's Message-ID.

    Entries that are not valid message ids are dropped, duplicates kept once, and a long
    chain shortened to its first entry plus the most recent ones (RFC 5322 3.6.4).
    """
    chain = [*parent_references, *([parent_id] if parent_id else [])]
    clean = list(dict.fromkeys(ref for ref in (normalize_message_id(r) for r in chain) if ref))
    clean = [ref for ref in clean if is_message_id(ref)]
    if len(clean) > MAX_REFERENCES:
        clean = [clean[0], *clean[-(MAX_REFERENCES - 1) :]]
    return tuple(clean)


def _addresses(values: Sequence[str]) -> tuple[Address, ...]:
    return tuple(Address(addr_spec=value) for value in values)


def _unique(addresses: Iterable[str]) -> tuple[str, ...]:
    seen: set[str] = set()
    unique: list[str] = []
    for address in addresses:
        key = address.lower()
        if key not in seen:
            seen.add(key)
            unique.append(address)
    return tuple(unique)


def _mime_type(value: str) -> tuple[str, str]:
    match = _MIME_TYPE_RE.fullmatch(value.strip().lower())
    if match is None:
        return "application", "octet-stream"
    return match.group(1), match.group(2)


#: Line breaks to Python (``str.splitlines``) and to some mail readers, beside CR and
#: LF: NEL, LINE SEPARATOR, PARAGRAPH SEPARATOR. The ``email`` package refuses only
#: CR/LF in header values.
_HEADER_BREAKS = re.compile("[\r\n\x85\u2028\u2029]")


def _refuse_line_breaks(message: OutgoingMessage) -> None:
    # The API's schema refuses these already; the builder keeps the promise on its own.
    fields = {
        "subject": [message.subject],
        "sender name": [message.sender_name],
        "address": [message.sender, *message.to, *message.cc, *message.bcc],
        "reply-to": [message.reply_to or ""],
        "in-reply-to": [message.in_reply_to or "", *message.references],
    }
    for name, values in fields.items():
        if any(_HEADER_BREAKS.search(value) for value in values):
            raise ValueError(f"a line break in a header value ({name})")


def build_message(
    message: OutgoingMessage, *, message_id: str | None = None, date: datetime | None = None
) -> BuiltMessage:
    """Build ``message``; a fresh Message-ID and the current time unless given.

    HTML bodies go out as ``multipart/alternative`` with a plain-text part made by
    ``html_to_text``; the HTML is sent as the user wrote it (making it safe to display is
    the reader's job, and ours when we show the stored copy). Raises ``ValueError`` for
    a header value holding a line break (CR, LF, NEL, U+2028, U+2029), a malformed
    address, or an invalid ``in_reply_to``/``message_id``.
    """
    message_id = message_id or new_message_id(message.sender)
    if not is_message_id(message_id):
        raise ValueError("invalid Message-ID")
    _refuse_line_breaks(message)
    email = EmailMessage(policy=_POLICY)
    email["Message-ID"] = f"<{message_id}>"
    email["Date"] = date or datetime.now(UTC)
    email["From"] = Address(display_name=message.sender_name, addr_spec=message.sender)
    email["To"] = _addresses(message.to)
    if message.cc:
        email["Cc"] = _addresses(message.cc)
    if message.reply_to:
        email["Reply-To"] = Address(addr_spec=message.reply_to)
    email["Subject"] = message.subject
    if message.in_reply_to:
        parent = normalize_message_id(message.in_reply_to)
        if not is_message_id(parent):
            raise ValueError("invalid In-Reply-To message id")
        email["In-Reply-To"] = f"<{parent}>"
    references = thread_references(message.references, None)
    if references:
        email["References"] = " ".join(f"<{ref}>" for ref in references)

    if message.is_html:
        email.set_content(html_to_text(message.body) or " ")
        email.add_alternative(message.body, subtype="html")
    else:
        email.set_content(message.body)
    for attachment in message.attachments:
        maintype, subtype = _mime_type(attachment.mime_type)
        email.add_attachment(
            attachment.data, maintype=maintype, subtype=subtype, filename=attachment.filename
        )

    raw = email.as_bytes()
    copy = raw
    if message.bcc:
        # The sender's own copy names the Bcc recipients; the delivered one never does.
        email["Bcc"] = _addresses(message.bcc)
        copy = email.as_bytes()
    recipients = _unique([*message.to, *message.cc, *message.bcc])
    return BuiltMessage(raw=raw, copy=copy, message_id=message_id, recipients=recipients)
