"""Parse raw RFC 5322 messages into a ``ParsedMessage``: faithfully, and fast.

Two parsers stand behind ``parse_message``. The stdlib ``email`` package with
``policy.default`` is the reference for what a message means, but it manages a few
hundred messages a second. ``fast-mail-parser`` (Rust) manages tens of thousands, and
agrees with the stdlib on well-formed mail, but is weaker on some broken or unusual mail
(see ``_fast_draft`` for the list, each found by experiment against the stdlib). So the
fast parser takes every message it can be trusted with, and the stdlib takes the rest.
Both feed the same ``_finish`` step, so everything computed from their output (ids,
dates, previews, HTML sanitising, attachment names) is identical by construction, and
the tests hold the two parsers to agreeing on what each of them extracts.

Charset decoding follows the WHATWG Encoding Standard, as browsers and the fast parser
do, rather than Python's codec table: mail labelled ISO-8859-1 is in practice
Windows-1252, and "Shift_JIS" is Microsoft's superset. The stdlib path uses the same
table, so the two paths decode the same bytes to the same text.
"""

from __future__ import annotations

import binascii
import codecs
import io
import logging
import mimetypes
import re
import threading
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from email import policy as email_policy
from email.errors import MessageDefect, ObsoleteHeaderDefect
from email.generator import BytesGenerator
from email.headerregistry import HeaderRegistry
from email.message import Message
from email.parser import BytesParser
from email.utils import parsedate_to_datetime
from functools import cached_property, lru_cache
from urllib.parse import unquote

import fast_mail_parser

from email_service.mail.html import html_to_text, sanitize_html
from email_service.mail.mimeparts import leaf_parts

__all__ = [
    "ParsedAttachment",
    "ParsedMessage",
    "parse_message",
    "parse_message_fast",
    "parse_message_stdlib",
]

_log = logging.getLogger(__name__)

PREVIEW_LENGTH = 200
#: What an attachment whose type cannot be stored as it is (see ``storable_media_type``)
#: is stored and served as.
UNKNOWN_MEDIA_TYPE = "application/octet-stream"
# RFC 6838 section 4.2: a type and a subtype name are each at most 127 characters of
# these, so a valid type/subtype fits attachments.mime_type (String(255)).
_STORABLE_MEDIA_TYPE = re.compile(r"[a-z0-9!#$&^_.+-]{1,127}/[a-z0-9!#$&^_.+-]{1,127}")


@dataclass(frozen=True)
class ParsedAttachment:
    """One non-body part of a message.

    ``filename`` is decoded (RFC 2231 / RFC 2047), reduced to a bare name (no directory,
    no control characters) and generated from the type when the message gives none.
    ``is_inline`` is true for ``Content-Disposition: inline`` and for parts the HTML
    body refers to with a ``cid:`` URL. ``section`` is the part's IMAP body section
    (``"2"``, ``"1.2"``) and ``encoding`` its Content-Transfer-Encoding, for fetching it
    again later; ``section`` is None where the MIME tree could not be read with
    certainty (see ``mail.mimeparts``).
    """

    filename: str
    mime_type: str
    size: int
    content_id: str | None
    is_inline: bool
    data: bytes
    section: str | None = None
    encoding: str | None = None


@dataclass(frozen=True)
class ParsedMessage:
    """What a message says, decoded, with its HTML made safe to display.

    ``defects`` is empty for well-formed mail; otherwise it says in words what was
    wrong and what was done about it. ``parser`` names the parser that read the MIME
    structure: ``"fast"`` or ``"stdlib"``.

    ``html_source`` is the HTML as the message carries it (decoded, not yet safe);
    ``body_html`` is that HTML sanitised, computed on first use. Sanitising is most of
    the parsing time, and a sync only needs the text, so the mail store keeps the
    source and sanitises when the message is first opened (``sanitize_html`` of the
    source is exactly ``body_html``).
    """

    message_id: str | None
    in_reply_to: str | None
    references: tuple[str, ...]
    subject: str
    from_address: str
    from_name: str
    to: tuple[str, ...]
    cc: tuple[str, ...]
    bcc: tuple[str, ...]
    reply_to: tuple[str, ...]
    date: datetime | None
    headers: dict[str, str]
    body_text: str
    html_source: str | None
    preview: str
    attachments: tuple[ParsedAttachment, ...]
    defects: tuple[str, ...]
    parser: str

    @cached_property
    def body_html(self) -> str | None:
        """The HTML body made safe to display (``None`` when there is none)."""
        return sanitize_html(self.html_source) if self.html_source is not None else None


# ---------------------------------------------------------------------------------------
# Public entry points
# ---------------------------------------------------------------------------------------


def parse_message(raw: bytes) -> ParsedMessage:
    """Parse one raw message (RFC 5322 bytes, as fetched with IMAP ``BODY[]``).

    Uses the fast parser when it can be trusted with the message and the stdlib
    otherwise; the result's ``parser`` says which. Never raises for any ``bytes`` input
    except ``MemoryError``: input that is not mail at all still gives a
    ``ParsedMessage``, with what went wrong in ``defects``.
    """
    raw = bytes(raw)
    try:
        parsed = parse_message_fast(raw)
    except MemoryError:
        raise
    except Exception:
        # The fast path only ever declines by returning None; an exception here is a
        # bug in this module or in the extension, and the stdlib can still do the job.
        _log.warning("fast MIME parse failed unexpectedly; using the stdlib", exc_info=True)
        parsed = None
    parsed = parsed if parsed is not None else parse_message_stdlib(raw)
    return _with_sections(raw, parsed) if parsed.attachments else parsed


def _with_sections(raw: bytes, parsed: ParsedMessage) -> ParsedMessage:
    """``parsed`` with each attachment's IMAP section, when the tree is read with certainty.

    The parts that ``_collect_part`` lists as attachments, in the same order: enclosed
    messages, text bodies that have a name, and every other non-text part. Unless they
    match the parsed attachments one for one (count and type), no section is given.
    """
    try:
        leaves = leaf_parts(raw)
    except Exception:
        _log.warning("reading the MIME tree for part numbers failed", exc_info=True)
        return parsed
    if leaves is None:
        return parsed
    listed = [
        leaf
        for leaf in leaves
        if leaf.content_type.startswith("message/")
        or leaf.content_type not in ("text/plain", "text/html")
        or leaf.disposition == "attachment"
        or leaf.named
    ]
    attachments = parsed.attachments
    if len(listed) != len(attachments) or any(
        storable_media_type(leaf.content_type) != attachment.mime_type.lower()
        for leaf, attachment in zip(listed, attachments, strict=True)
    ):
        return parsed
    return replace(
        parsed,
        attachments=tuple(
            replace(attachment, section=leaf.section, encoding=leaf.encoding)
            for leaf, attachment in zip(listed, attachments, strict=True)
        ),
    )


def storable_media_type(value: str) -> str:
    """``value`` (a lower-case type/subtype, as both parsers give it) if it is a valid
    media type (RFC 6838 section 4.2: 127 characters at most on each side of the slash),
    else ``UNKNOWN_MEDIA_TYPE``.

    What a server or sender wrote there is stored in a String(255) column and sent back
    as a download's Content-Type: an overlong type would be refused by PostgreSQL (and
    lose the message), one with control or non-ASCII characters is no header value.
    """
    return value if _STORABLE_MEDIA_TYPE.fullmatch(value) else UNKNOWN_MEDIA_TYPE


def parse_message_fast(raw: bytes) -> ParsedMessage | None:
    """Parse with fast-mail-parser alone; ``None`` when it should not be trusted.

    ``None`` means the fast parser rejected the message or the message is of a kind it
    is known to read differently from the stdlib (see ``_fast_draft``). Exposed so
    tests and benchmarks can compare the two parsers; callers want ``parse_message``.
    """
    draft = _fast_draft(bytes(raw))
    return None if draft is None else _finish(draft)


def parse_message_stdlib(raw: bytes) -> ParsedMessage:
    """Parse with the stdlib ``email`` package (``policy.default``) alone.

    The reference behaviour, and the fallback of ``parse_message``. Never raises for
    any ``bytes`` input except ``MemoryError``.
    """
    raw = bytes(raw)
    try:
        draft = _stdlib_draft(raw)
    except MemoryError:
        raise
    except Exception as exc:
        # The stdlib is defensive but not bug-free on hostile input (deep nesting hits
        # the recursion limit, for one). An empty message that says why beats an error.
        _log.warning("stdlib MIME parse failed", exc_info=True)
        draft = _Draft(parser="stdlib")
        draft.defects.append(f"the message could not be parsed ({type(exc).__name__})")
    return _finish(draft)


# ---------------------------------------------------------------------------------------
# What both parsers produce, and the shared finishing step
# ---------------------------------------------------------------------------------------


@dataclass
class _Part:
    filename: str
    mime_type: str
    content_id: str | None
    disposition: str | None
    data: bytes


@dataclass
class _Draft:
    parser: str
    headers: dict[str, str] = field(default_factory=dict)
    subject: str = ""
    sender: tuple[str, str] | None = None  # (display name, address)
    to: list[str] = field(default_factory=list)
    cc: list[str] = field(default_factory=list)
    bcc: list[str] = field(default_factory=list)
    reply_to: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    htmls: list[str] = field(default_factory=list)
    attachments: list[_Part] = field(default_factory=list)
    defects: list[str] = field(default_factory=list)
    blank: bool = False  # nothing but whitespace


_MESSAGE_ID = re.compile(r"<([^<>]*)>")
_CID_REFERENCE = re.compile(r"""cid:([^\s"'<>)]+)""", re.IGNORECASE)
_CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")
_EXTENSIONS = mimetypes.MimeTypes()  # built-in table only: the result must not depend on
# which /etc/mime.types a machine happens to have.
_PREFERRED_EXTENSIONS = {
    "application/octet-stream": ".bin",
    "application/pgp-signature": ".asc",
    "image/jpeg": ".jpg",
    "message/rfc822": ".eml",
    "text/calendar": ".ics",
    "text/plain": ".txt",
}


def _finish(draft: _Draft) -> ParsedMessage:
    headers_by_key = {name.lower(): value for name, value in reversed(draft.headers.items())}
    defects = draft.defects
    if draft.blank:
        defects.append("the message is empty")
    elif "from" not in headers_by_key:
        defects.append("the message has no From header")

    date: datetime | None = None
    date_value = headers_by_key.get("date", "").split("\n", 1)[0]
    if date_value:
        date = _parse_date(date_value)
        if date is None:
            defects.append(f"the Date header could not be read: {date_value[:80]!r}")
    elif not draft.blank:
        defects.append("the message has no Date header")

    references = _message_ids(headers_by_key.get("references", ""))
    texts = [text.replace("\r\n", "\n") if "\r" in text else text for text in draft.texts]
    raw_html = "\n".join(draft.htmls) if draft.htmls else None
    enclosed_html: str | None = None
    if texts:
        body_text = "\n".join(texts)
    elif raw_html is not None:
        body_text = html_to_text(raw_html)
    else:
        # Nothing to read but an enclosed message (a forward as attachment, a bounce's
        # multipart/report): show its text, as mail clients do; it stays an attachment.
        body_text, enclosed_html = _enclosed_text(draft.attachments)

    referenced_cids: set[str] = set()
    # Three plain searches beat lower-casing a long body; other spellings of the
    # scheme are not seen in practice.
    if raw_html is not None and ("cid:" in raw_html or "CID:" in raw_html or "Cid:" in raw_html):
        referenced_cids = {unquote(cid) for cid in _CID_REFERENCE.findall(raw_html)}
    for part in draft.attachments:
        mime_type = storable_media_type(part.mime_type)
        if mime_type != part.mime_type:
            defects.append(
                f"an attachment's Content-Type is not a valid media type "
                f"({part.mime_type[:80]!r}, {len(part.mime_type)} characters); "
                f"it is kept as {mime_type}"
            )
            part.mime_type = mime_type
    attachments = tuple(
        _finish_attachment(part, position, referenced_cids)
        for position, part in enumerate(draft.attachments, start=1)
    )
    sender_name, sender_address = draft.sender or ("", "")
    return ParsedMessage(
        message_id=_first(_message_ids(headers_by_key.get("message-id", ""))),
        in_reply_to=_first(_message_ids(headers_by_key.get("in-reply-to", ""))),
        references=references,
        subject=draft.subject,
        from_address=sender_address,
        from_name=sender_name,
        to=tuple(draft.to),
        cc=tuple(draft.cc),
        bcc=tuple(draft.bcc),
        reply_to=tuple(draft.reply_to),
        date=date,
        headers=draft.headers,
        body_text=body_text,
        html_source=raw_html if raw_html is not None else enclosed_html,
        preview=_preview(body_text),
        attachments=attachments,
        defects=tuple(dict.fromkeys(defects)),
        parser=draft.parser,
    )


_ENCLOSED_TYPES = ("message/rfc822", "message/global")
_ENCLOSED_DEPTH = threading.local()
# Enclosed messages shown as the body, one inside another, at most this deep.
_MAX_ENCLOSED_DEPTH = 3


def _enclosed_text(parts: list[_Part]) -> tuple[str, str | None]:
    """The text (and HTML source) of the first enclosed message, if any."""
    enclosed = next((part for part in parts if part.mime_type in _ENCLOSED_TYPES), None)
    depth = getattr(_ENCLOSED_DEPTH, "value", 0)
    if enclosed is None or not enclosed.data or depth >= _MAX_ENCLOSED_DEPTH:
        return "", None
    _ENCLOSED_DEPTH.value = depth + 1
    try:
        inner = parse_message(enclosed.data)
    finally:
        _ENCLOSED_DEPTH.value = depth
    return inner.body_text, inner.html_source


def _finish_attachment(part: _Part, position: int, referenced_cids: set[str]) -> ParsedAttachment:
    filename = part.filename
    if "=?" in filename:
        # Outlook and others put RFC 2047 encoded-words in filename parameters, which
        # RFC 2047 forbids but every client decodes.
        filename = _decode_encoded_words(filename)
    filename = _CONTROL_CHARACTERS.sub("", filename)
    # A name is for showing and for a download's suggested name, never a path.
    filename = re.split(r"[/\\]", filename)[-1].strip()
    if filename in ("", ".", ".."):
        extension = _PREFERRED_EXTENSIONS.get(part.mime_type) or _EXTENSIONS.guess_extension(
            part.mime_type
        )
        filename = f"attachment-{position}{extension or ''}"
    content_id = part.content_id.strip().strip("<>").strip() if part.content_id else None
    return ParsedAttachment(
        filename=filename,
        mime_type=part.mime_type,
        size=len(part.data),
        content_id=content_id or None,
        is_inline=part.disposition == "inline"
        or (content_id is not None and content_id in referenced_cids),
        data=part.data,
    )


def _message_ids(value: str) -> tuple[str, ...]:
    if not value:
        return ()
    ids = _MESSAGE_ID.findall(value)
    if not ids:
        # Some senders drop the angle brackets; a bare token is still an id.
        ids = value.replace(",", " ").split()
    cleaned = ("".join(message_id.split()) for message_id in ids)
    return tuple(dict.fromkeys(message_id for message_id in cleaned if message_id))


def _first(values: tuple[str, ...]) -> str | None:
    return values[0] if values else None


def _parse_date(value: str) -> datetime | None:
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if parsed.tzinfo is None:
        # "-0000" means "UTC, but the sender's zone is unknown" (RFC 5322 3.3).
        parsed = parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        return None


def _preview(text: str) -> str:
    # Folding the whole body to show 200 characters would cost more than the rest of
    # the finishing step on a long message; a prefix almost always suffices.
    folded = " ".join(text[: PREVIEW_LENGTH * 4].split())
    if len(folded) < PREVIEW_LENGTH and len(text) > PREVIEW_LENGTH * 4:
        folded = " ".join(text.split())
    return folded[:PREVIEW_LENGTH]


def _fold_whitespace(value: str) -> str:
    return " ".join(value.split())


def _bare_address(address: str) -> str:
    local, at, domain = address.strip().rpartition("@")
    return f"{local}@{domain.lower()}" if at else domain


# ---------------------------------------------------------------------------------------
# Charsets
# ---------------------------------------------------------------------------------------

# Labels whose WHATWG decoder is a superset of what Python's codec of the same name does.
_WHATWG_CODECS = {
    "iso-8859-1": "cp1252", "iso8859-1": "cp1252", "iso_8859-1": "cp1252",
    "latin1": "cp1252", "latin-1": "cp1252", "l1": "cp1252", "cp819": "cp1252",
    "windows-1252": "cp1252", "cp1252": "cp1252", "x-cp1252": "cp1252",
    "iso-8859-9": "cp1254", "latin5": "cp1254", "windows-1254": "cp1254",
    "iso-8859-11": "cp874", "tis-620": "cp874", "windows-874": "cp874",
    "shift_jis": "cp932", "shift-jis": "cp932", "sjis": "cp932", "x-sjis": "cp932",
    "ms_kanji": "cp932", "windows-31j": "cp932", "csshiftjis": "cp932",
    "gb2312": "gb18030", "gbk": "gb18030", "x-gbk": "gb18030", "cp936": "gb18030",
    "euc-cn": "gb18030", "euc-kr": "cp949", "ks_c_5601-1987": "cp949",
    "big5": "big5hkscs", "x-x-big5": "big5hkscs",
    "iso-8859-8-i": "iso-8859-8", "utf8": "utf-8",
}  # fmt: skip
# Python decoders that are not character sets, or that interpret their input.
_NOT_CHARSETS = frozenset({"idna", "punycode", "unicode-escape", "raw-unicode-escape", "undefined"})


def _c1_passthrough(error: UnicodeError) -> tuple[str, int]:
    # WHATWG's windows-1252 maps the five bytes Microsoft left undefined to the C1
    # controls of the same value, as Latin-1 does; Python's cp1252 refuses them.
    if not isinstance(error, UnicodeDecodeError):
        raise error
    return error.object[error.start : error.end].decode("latin-1"), error.end


codecs.register_error("email_service.c1", _c1_passthrough)


@lru_cache(maxsize=256)
def _codec_for(label: str | None) -> str | None:
    """The Python codec for a charset label; None for "unlabelled or unknown"."""
    if not label:
        return None
    label = label.strip().strip("\"'").lower()
    if label in ("us-ascii", "ascii", "us_ascii", "ansi_x3.4-1968", "646"):
        return None
    name = _WHATWG_CODECS.get(label, label)
    try:
        codec = codecs.lookup(name)
    except (LookupError, ValueError):  # ValueError: a label with a NUL in it
        return "unknown"
    if codec.name in _NOT_CHARSETS:
        return "unknown"
    return "cp1252" if codec.name == "latin-1" else codec.name


def _decode_text(data: bytes, charset: str | None, defects: list[str]) -> str:
    codec = _codec_for(charset)
    if codec is None or codec == "unknown":
        if data.isascii():
            return data.decode("ascii")
        try:
            text = data.decode("utf-8")
            used = "UTF-8"
        except UnicodeDecodeError:
            text = data.decode("cp1252", errors="email_service.c1")
            used = "Windows-1252"
        if codec == "unknown":
            defects.append(f"unknown charset {charset!r}; the text was read as {used}")
        else:
            defects.append(f"8-bit text labelled us-ascii or not labelled; read as {used}")
        return text
    if codec == "cp1252":
        return data.decode("cp1252", errors="email_service.c1")
    try:
        return data.decode(codec, errors="replace")
    except (UnicodeError, LookupError):
        defects.append(f"the text could not be decoded as {charset!r}; read as UTF-8")
        return data.decode("utf-8", errors="replace")


def _repair_header_text(value: str, defects: list[str]) -> str:
    """Turn the stdlib's surrogate-escaped raw header bytes back into real text."""
    if value.isascii():
        return value
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        pass
    original = value.encode("utf-8", errors="surrogateescape")
    if _EIGHT_BIT_ENCODED_WORD.search(original):
        return _decode_eight_bit_words(original, defects)
    return _eight_bit_text(original, defects)


# An encoded word (RFC 2047) whose text holds raw 8-bit bytes, which it must not: mail
# clients read those bytes in the word's own charset, and so do we.
_EIGHT_BIT_ENCODED_WORD = re.compile(rb"=\?([^?\s]+)\?([Qq])\?([^?\s]*[\x80-\xff][^?\s]*)\?=")
# An encoded word left as it was after decoding (an unknown charset label, say).
_ENCODED_WORD_LEFT = re.compile(r"=\?[^?\s]+\?[QqBb]\?[^?\s]*\?=")


def _decode_eight_bit_words(original: bytes, defects: list[str]) -> str:
    pieces: list[str] = []
    end = 0
    for match in _EIGHT_BIT_ENCODED_WORD.finditer(original):
        pieces.append(_eight_bit_text(original[end : match.start()], defects))
        charset = match.group(1).decode("ascii", "replace").split("*", 1)[0]
        data = binascii.a2b_qp(match.group(3), header=True)
        pieces.append(_decode_text(data, charset, defects))
        end = match.end()
    pieces.append(_eight_bit_text(original[end:], defects))
    defects.append("an encoded word in a header held raw 8-bit bytes; read in its charset")
    return "".join(pieces)


def _eight_bit_text(original: bytes, defects: list[str]) -> str:
    if original.isascii():
        return original.decode("ascii")
    try:
        return original.decode("utf-8")  # RFC 6532 allows UTF-8 in headers
    except UnicodeDecodeError:
        defects.append("raw 8-bit bytes in a header that are not UTF-8; read as Windows-1252")
        return original.decode("cp1252", errors="email_service.c1")


_ENCODED_WORD_HEADERS = HeaderRegistry(use_default_map=False)  # every header unstructured


def _decode_encoded_words(value: str) -> str:
    """RFC 2047-decode text exactly as the stdlib decodes an unstructured header."""
    try:
        return str(_ENCODED_WORD_HEADERS("x-value", value))
    except Exception:
        return value


# ---------------------------------------------------------------------------------------
# The fast path
# ---------------------------------------------------------------------------------------

# Warnings about data the finishing step re-reads itself (the Date header), or that
# are repaired field by field below (address headers). Any other warning means the fast
# parser patched something up, and the stdlib decides instead.
_FAST_WARNINGS_HANDLED_HERE = frozenset({"date-unparseable", "address-unparseable"})
_ADDRESS_FIELDS = (("to", "To"), ("cc", "Cc"), ("bcc", "Bcc"), ("reply_to", "Reply-To"))
# An address the fast parser returns must look like one; anything else (seen: a group
# followed by ";," yielding ", c@z.com") sends that header to the stdlib.
_PLAIN_ADDRESS = re.compile(r'[^\s@<>()\[\],;:"\\]+@[^\s@<>()\[\],;:"\\]+')
# Syntax the fast parser reads differently from the stdlib: comments (it keeps them in
# the display name), groups, quoted pairs.
_COMPLEX_ADDRESS_SYNTAX = re.compile(r"[():;\\]")
_MEDIA_TYPE = re.compile(r"[a-z0-9!#$&^_.+-]+/[a-z0-9!#$&^_.+-]+")
_BOUNDARY_PARAMETER = re.compile(r'boundary\s*=\s*(?:"([^"]+)"|([^\s;]+))', re.IGNORECASE)
_BOUNDARY_PARAMETER_BYTES = re.compile(
    rb'boundary\s*=\s*(?:"([^"\r\n]+)"|([^\s;"]+))', re.IGNORECASE
)


_RFC2231_CONTINUATION = re.compile(rb"\*[0-9]+\*\s*=")


def _fast_draft(raw: bytes) -> _Draft | None:
    """Read ``raw`` with fast-mail-parser, or return None to leave it to the stdlib.

    Declines (each found by comparing the two parsers):
    - anything the fast parser raises on (bad base64, for one) or reports a repair for
      (unknown charset, lossy quoted-printable, missing header/body separator);
    - raw 8-bit header bytes that are not UTF-8: it reads them as Latin-1, where the
      stdlib path reads Windows-1252 and reports the defect;
    - a multipart boundary that never opens or never closes (truncated mail): it drops
      the content silently, or keeps it without saying the message was cut short;
    - a part whose Content-Type is not type/subtype: the stdlib reads that as
      text/plain (RFC 2045), the fast parser as an attachment;
    - text that looks like UTF-8 read as Windows-1252 (see ``_misread_utf8``);
    - an mbox ``From `` envelope line before the headers: the stdlib sets it aside,
      the fast parser reads it as a header;
    - RFC 2231 continued, percent-encoded parameters (``filename*0*=``): it decodes each
      piece alone and breaks a character split across two pieces;
    - a text/plain or text/html part that is not an attachment but has a name (an
      inline text file): it reads it as body only and gives no way to tell which body
      it was, where it also belongs in the attachment list (see ``_named_text_part``).
    Address headers it reads differently (comments, groups) are re-read by the stdlib
    one by one, which is far cheaper than handing over the whole message.
    """
    if raw.startswith(b"From "):
        return None
    try:
        mail = fast_mail_parser.parse_email(raw)
    except fast_mail_parser.ParseError:
        return None
    # A character broken across RFC 2231 pieces comes out as U+FFFD: only then is the
    # whole message (attachments included) worth scanning for continued parameters.
    if any("\ufffd" in part.filename for part in mail.attachments) and (
        _RFC2231_CONTINUATION.search(raw)
    ):
        return None
    if any(warning.kind not in _FAST_WARNINGS_HANDLED_HERE for warning in mail.warnings):
        return None

    header_block = raw[: _header_end(raw)]
    if not header_block.isascii() and _EIGHT_BIT_ENCODED_WORD.search(header_block):
        return None  # it drops those bytes; the stdlib path reads them in the word's charset
    if not header_block.isascii():
        try:
            header_block.decode("utf-8")
        except UnicodeDecodeError:
            return None

    fast_headers = mail.headers
    # The first occurrence of a header is the one that counts, as in the stdlib.
    first_values = {name.lower(): values[0] for name, values in reversed(fast_headers.items())}
    content_type = first_values.get("content-type", "")
    if content_type[:20].lower().lstrip().startswith("multipart/") and not _boundary_intact(
        raw, content_type
    ):
        return None

    if _named_text_part(raw, content_type, first_values.get("content-disposition", "")):
        return None

    draft = _Draft(parser="fast", blank=not raw or raw.isspace())
    draft.headers = {
        name: values[0] if len(values) == 1 else "\n".join(values)
        for name, values in fast_headers.items()
    }

    for part in mail.attachments:
        if not _MEDIA_TYPE.fullmatch(part.mimetype) or not part.content:
            return None
        draft.attachments.append(
            _Part(part.filename, part.mimetype, part.content_id, part.disposition, part.content)
        )
    draft.texts = mail.text_plain
    draft.htmls = mail.text_html
    several_bodies = len(draft.texts) + len(draft.htmls) > 1
    for text in (*draft.texts, *draft.htmls):
        if not text.isascii() and _misread_utf8(text):
            return None
        if several_bodies and (not text or text.isspace()):
            # An empty part among others: seen when a part's header block has no
            # blank line after it, where the fast parser loses the body silently.
            return None
        if "\n--" in text and _boundary_leaked(raw, text):
            return None
    draft.subject = _fold_whitespace(mail.subject)
    if "=?" in draft.subject and _ENCODED_WORD_LEFT.search(draft.subject):
        return None  # an encoded word it could not decode (unknown charset): the stdlib can

    def fallback(name: str) -> list[tuple[str, str]]:
        # The stdlib reads this one header from the raw bytes, as the stdlib path would.
        value = _raw_header_value(header_block, name)
        return [] if value is None else _stdlib_addresses(name, value, draft.defects)

    sender = mail.from_
    from_value = first_values.get("from", "")
    if from_value and (sender is None or not _trust_fast_addresses(from_value, [sender])):
        addresses = fallback("From")
        draft.sender = addresses[0] if addresses else None
    elif sender is not None:
        draft.sender = (sender.display_name or "", _bare_address(sender.address))
    for attribute, name in _ADDRESS_FIELDS:
        parsed = getattr(mail, attribute)
        value = first_values.get(name.lower(), "")
        if value and (not parsed or not _trust_fast_addresses(value, parsed)):
            setattr(draft, attribute, [address for _, address in fallback(name)])
        else:
            setattr(draft, attribute, [_bare_address(address.address) for address in parsed])
    return draft


_TEXT_BODY_TYPE = re.compile(r"\s*text/(?:plain|html)\s*(?:;|$)", re.IGNORECASE)
_NAME_PARAMETER = re.compile(r";\s*(?:file)?name\*?[0-9]*\*?\s*=", re.IGNORECASE)
_ATTACHMENT_DISPOSITION = re.compile(r"\s*attachment\s*(?:;|$)", re.IGNORECASE)
_PART_HEADER = re.compile(
    rb"^content-(type|disposition)[ \t]*:(.*(?:\r?\n[ \t].*)*)", re.IGNORECASE | re.MULTILINE
)
# Part header blocks read when looking for named text parts: more parts than this, or a
# longer header block, and the message is left to the stdlib (which is then the cheaper
# side of being wrong).
_MAX_PARTS_SCANNED = 200
_MAX_PART_HEADER = 16_384


def _named_text(content_type: str, disposition: str) -> bool:
    """A text body part (not an attachment) with a name parameter in either header."""
    if not _TEXT_BODY_TYPE.match(content_type) or _ATTACHMENT_DISPOSITION.match(disposition):
        return False
    return bool(_NAME_PARAMETER.search(content_type) or _NAME_PARAMETER.search(disposition))


def _named_text_part(raw: bytes, content_type: str, disposition: str) -> bool:
    """Whether ``raw`` may hold a named inline text part: true means "leave it to the stdlib".

    Reads only the header blocks of the message's own parts, found by plain searches
    for their delimiters, so a message with large parts costs a few ``find`` calls.
    Errs towards true (a needless hand-over costs time, never a different result).
    """
    if _named_text(content_type, disposition):
        return True
    if not content_type[:20].lower().lstrip().startswith("multipart/"):
        return False
    match = _BOUNDARY_PARAMETER.search(content_type)
    if match is None:
        return False
    boundaries = [(match.group(1) or match.group(2)).encode("utf-8", errors="replace")]
    scanned = 0
    while boundaries:
        delimiter = b"\n--" + boundaries.pop()
        position = _next_delimiter(raw, delimiter, 0)
        while position >= 0:
            scanned += 1
            if scanned > _MAX_PARTS_SCANNED:
                return True
            if raw.startswith(b"--", position + len(delimiter)):
                break  # the close delimiter: the rest is epilogue
            start = raw.find(b"\n", position + len(delimiter))
            if start < 0:
                break
            limit = start + _MAX_PART_HEADER
            end = raw.find(b"\n\r\n", start, limit)
            bare_end = raw.find(b"\n\n", start, end if end >= 0 else limit)
            if bare_end >= 0:
                end = bare_end
            if end < 0:
                end = limit
            fields = {"type": "", "disposition": ""}
            for name, value in _PART_HEADER.findall(raw[start:end]):
                key = name.decode("ascii").lower()
                if not fields[key]:
                    fields[key] = _FOLD.sub(" ", value.decode("utf-8", errors="replace"))
            if _named_text(fields["type"], fields["disposition"]):
                return True
            if fields["type"].lstrip()[:10].lower() == "multipart/":
                nested = _BOUNDARY_PARAMETER.search(fields["type"])
                if nested is not None:
                    boundaries.append(
                        (nested.group(1) or nested.group(2)).encode("utf-8", errors="replace")
                    )
            position = _next_delimiter(raw, delimiter, end)
    return False


def _next_delimiter(raw: bytes, delimiter: bytes, start: int) -> int:
    # Jumps to the next "-" (memchr speed) and searches a stretch from there: base64 has
    # no "-", so encoded attachments are skipped in one jump, not searched through.
    while True:
        dash = raw.find(b"-", start)
        if dash < 0:
            return -1
        stretch_end = dash + _DELIMITER_STRETCH
        found = raw.find(delimiter, max(start, dash - 1), stretch_end)
        if found >= 0 or stretch_end >= len(raw):
            return found
        start = stretch_end - len(delimiter)


_DELIMITER_STRETCH = 4096


def _trust_fast_addresses(header_value: str, parsed: list[fast_mail_parser.PyAddress]) -> bool:
    if _COMPLEX_ADDRESS_SYNTAX.search(header_value):
        return False
    return all(_PLAIN_ADDRESS.fullmatch(address.address) for address in parsed)


def _header_end(raw: bytes) -> int:
    # Plain searches for the blank line in the message's own line ending: a regular
    # expression covering both endings costs more here than the fast parse itself.
    first_line_end = raw.find(b"\n")
    crlf = first_line_end > 0 and raw[first_line_end - 1] == 0x0D
    separators = (b"\r\n\r\n", b"\n\n") if crlf else (b"\n\n", b"\r\n\r\n")
    for separator in separators:
        end = raw.find(separator)
        if end >= 0:
            return end
    return len(raw)


def _boundary_intact(raw: bytes, content_type: str) -> bool:
    match = _BOUNDARY_PARAMETER.search(content_type)
    if match is None:
        return False
    boundary = (match.group(1) or match.group(2)).encode("utf-8", errors="replace")
    # rfind: the closing delimiter is normally near the end, so this stays cheap on a
    # message with a large attachment.
    return raw.find(b"--" + boundary) >= 0 and raw.rfind(b"--" + boundary + b"--") >= 0


def _misread_utf8(text: str) -> bool:
    # The fast parser reads 8-bit text labelled us-ascii (or not labelled at all) as
    # Windows-1252, where the stdlib path tries UTF-8 first. Two cheap signs of UTF-8
    # read that way: "â€", which starts every misread U+2000-U+203F (dashes, curly
    # quotes, ellipsis); and text within Latin-1 whose bytes are valid UTF-8 ("cafÃ©"),
    # which legitimate text practically never is. Both are C-speed scans, unlike a
    # regular expression over the whole body.
    if "\u00e2\u20ac" in text:
        return True
    try:
        text.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return False
    return True


def _boundary_leaked(raw: bytes, text: str) -> bool:
    # A delimiter line of one of the message's own multiparts inside a decoded body
    # means the parts were split differently from how the stdlib splits them (nested
    # multiparts whose delimiters are prefixes of each other, missing close delimiters).
    for match in _BOUNDARY_PARAMETER_BYTES.finditer(raw):
        boundary = (match.group(1) or match.group(2)).decode("ascii", errors="replace")
        if f"\n--{boundary}" in text:
            return True
    return False


@lru_cache(maxsize=32)
def _header_line_pattern(name: str) -> re.Pattern[bytes]:
    return re.compile(
        rb"^" + re.escape(name.encode("ascii")) + rb"[ \t]*:(.*(?:\r?\n[ \t].*)*)",
        re.IGNORECASE | re.MULTILINE,
    )


def _raw_header_value(header_block: bytes, name: str) -> str | None:
    match = _header_line_pattern(name).search(header_block)
    if match is None:
        return None
    return _FOLD.sub(" ", match.group(1).decode("utf-8", errors="replace")).strip()


# ---------------------------------------------------------------------------------------
# The stdlib path
# ---------------------------------------------------------------------------------------

_PARSER = BytesParser(policy=email_policy.default)
_FOLD = re.compile(r"\r?\n[ \t]*")
_MAX_DEPTH = 64  # deeper MIME nesting than this is an attack, not a message


def _stdlib_draft(raw: bytes) -> _Draft:
    message = _PARSER.parsebytes(raw)
    draft = _Draft(parser="stdlib", blank=not raw or raw.isspace())
    defects = draft.defects
    decoded_headers: dict[str, list[str]] = {}
    first_values: dict[str, str] = {}
    for name, raw_value in message.raw_items():
        # Unfolded as the fast parser unfolds (each line break and the white space after
        # it become one space), so the two paths give the same header values.
        value = _FOLD.sub(" ", _repair_header_text(raw_value, defects))
        decoded_headers.setdefault(name, []).append(_decode_encoded_words(value))
        first_values.setdefault(name.lower(), value)
    draft.headers = {name: "\n".join(values) for name, values in decoded_headers.items()}
    draft.subject = _fold_whitespace(_decode_encoded_words(first_values.get("subject", "")))
    if "from" in first_values:
        senders = _stdlib_addresses("From", first_values["from"], defects)
        draft.sender = senders[0] if senders else None
    for attribute, name in _ADDRESS_FIELDS:
        if name.lower() in first_values:
            addresses = _stdlib_addresses(name, first_values[name.lower()], defects)
            setattr(draft, attribute, [address for _, address in addresses])
    linesep = "\r\n" if b"\r\n" in raw[: _header_end(raw) + 2] else "\n"
    _collect_parts(message, draft, depth=0, linesep=linesep)
    return draft


def _stdlib_addresses(name: str, value: str, defects: list[str]) -> list[tuple[str, str]]:
    """(display name, bare address) pairs, read by the stdlib's own address parser."""
    try:
        header = email_policy.default.header_factory(name, value)
        addresses = [
            (address.display_name, _bare_address(address.addr_spec))
            for address in header.addresses
            if address.addr_spec and address.addr_spec != "<>"
        ]
    except Exception:
        defects.append(f"the {name} header could not be read: {value[:80]!r}")
        return []
    _note_defects(header.defects, f"the {name} header", defects)
    if not addresses and value.strip() and not value.rstrip().endswith(";"):
        # An empty group ("undisclosed-recipients:;") is a way of saying "nobody".
        defects.append(f"no address could be read from the {name} header")
    return addresses


def _collect_parts(part: Message, draft: _Draft, depth: int, linesep: str) -> None:
    content_type = part.get_content_type()
    try:
        _collect_part(part, content_type, draft, depth, linesep)
    finally:
        # After the payload was decoded: decoding is what finds bad base64.
        where = "the message" if depth == 0 else f"the {content_type} part"
        _note_defects(part.defects, where, draft.defects)


def _collect_part(
    part: Message, content_type: str, draft: _Draft, depth: int, linesep: str
) -> None:
    if depth > _MAX_DEPTH:
        draft.defects.append("MIME parts nested too deeply; the innermost were skipped")
        return
    content_type_header = part.get("content-type")
    if content_type_header is not None:
        _note_defects(
            getattr(content_type_header, "defects", []), "a Content-Type header", draft.defects
        )
    maintype = part.get_content_maintype()
    if maintype == "multipart":
        payload = part.get_payload()
        if isinstance(payload, list):
            for child in payload:
                if isinstance(child, Message):
                    _collect_parts(child, draft, depth + 1, linesep)
        elif isinstance(payload, str) and payload.strip():
            # No boundary was found, so the "parts" are one run of text; showing it is
            # better than losing it.
            data = payload.encode("ascii", errors="surrogateescape")
            draft.texts.append(_decode_text(data, None, draft.defects))
        return
    disposition = part.get_content_disposition()
    if maintype == "message":
        # An attached message is an attachment, not more of this message's body.
        data = _message_bytes(part, linesep)
        draft.attachments.append(_stdlib_part(part, content_type, disposition, data))
        return
    decoded: object = part.get_payload(decode=True)
    data = decoded if isinstance(decoded, bytes) else b""
    if content_type in ("text/plain", "text/html") and disposition != "attachment":
        text = _decode_text(data, part.get_content_charset(), draft.defects)
        (draft.texts if content_type == "text/plain" else draft.htmls).append(text)
        named = _stdlib_part(part, content_type, disposition, data)
        if named.filename.strip():
            # A text part with a name is a file the sender attached inline: mail clients
            # show it in the body and list it among the attachments, and so do we.
            draft.attachments.append(named)
    else:
        draft.attachments.append(_stdlib_part(part, content_type, disposition, data))


def _stdlib_part(part: Message, content_type: str, disposition: str | None, data: bytes) -> _Part:
    try:
        filename = part.get_filename() or ""
    except Exception:
        filename = ""
    content_id = part.get("content-id")
    return _Part(
        filename=str(filename),
        mime_type=content_type,
        content_id=str(content_id) if content_id is not None else None,
        disposition=disposition,
        data=data,
    )


def _message_bytes(part: Message, linesep: str) -> bytes:
    # The stdlib keeps no original bytes for an attached message, only its parse, so
    # they are regenerated: compat32 with no refolding comes closest to the original.
    payload = part.get_payload()
    if not isinstance(payload, list):
        data = part.get_payload(decode=True)
        return data if isinstance(data, bytes) else b""
    buffer = io.BytesIO()
    generator = BytesGenerator(
        buffer,
        mangle_from_=False,
        maxheaderlen=0,
        policy=email_policy.compat32.clone(linesep=linesep),
    )
    for child in payload:
        if isinstance(child, Message):
            generator.flatten(child, unixfrom=False)
    return buffer.getvalue()


def _note_defects(found: list[MessageDefect], where: str, defects: list[str]) -> None:
    for defect in found:
        if isinstance(defect, ObsoleteHeaderDefect):
            continue  # obsolete syntax is still valid to read (RFC 5322 section 4)
        description = _defect_words(type(defect).__name__)
        detail = str(defect)
        if detail and detail.lower() != description:
            description = f"{description} ({detail})"
        defects.append(f"{where}: {description}")


@lru_cache(maxsize=64)
def _defect_words(class_name: str) -> str:
    words = re.findall(r"[A-Z][a-z0-9]*|[0-9]+", class_name.removesuffix("Defect"))
    return " ".join(words).lower() or class_name
