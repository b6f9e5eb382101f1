"""Where each part of a message sits in its MIME tree, numbered as IMAP numbers it.

An attachment that is not stored at sync time is fetched again, when it is first
downloaded, with ``UID FETCH <uid> BODY.PEEK[<section>]``: the section is the part's
position in the tree (RFC 3501 section 6.4.5: the parts of a multipart are numbered from
1, a nested multipart's parts get its number and a dot as prefix, and a message that is
not multipart is part 1). :func:`leaf_parts` finds those numbers with plain searches for
the multipart delimiters and reads only the part headers, so a message with large
attachments costs a few ``find`` calls and a header parse per part, not a MIME parse.

The reader follows the stdlib's parser on well-formed mail (delimiter lines, the line
break before a delimiter belonging to it, ``multipart/digest`` parts defaulting to
``message/rfc822``). Where mail is too odd for it (deep nesting, a great many parts, a
multipart without a boundary), it answers ``None`` and the caller keeps no sections; a
download then fetches the whole message instead. The bytes a download serves are always
checked against the SHA-256 recorded at sync, so a wrong number can only cost a fallback,
never a wrong file.
"""

from __future__ import annotations

import quopri
import re
from dataclasses import dataclass
from email import policy as email_policy
from email._encoded_words import decode_b
from email.message import Message
from email.parser import BytesHeaderParser, BytesParser

__all__ = ["DECODED_ENCODINGS", "LeafPart", "decode_part", "leaf_parts"]

#: More parts than this, or deeper nesting, and no sections are given.
MAX_PARTS = 200
MAX_DEPTH = 16

_HEADERS = BytesHeaderParser(policy=email_policy.compat32)
_UUENCODE = frozenset({"x-uuencode", "uuencode", "uue", "x-uue"})
#: Content-Transfer-Encodings that decoding undoes; any other leaves the bytes as they are.
DECODED_ENCODINGS = frozenset({"base64", "quoted-printable", *_UUENCODE})


@dataclass(frozen=True)
class LeafPart:
    """One part that is not a multipart, in the order the stdlib parser meets it."""

    section: str
    content_type: str  # lower-case type/subtype, defaults applied
    encoding: str | None  # one of DECODED_ENCODINGS; None for 7bit, 8bit, binary and others
    disposition: str | None  # "inline", "attachment", or None
    named: bool  # a file name in Content-Disposition or Content-Type


class _TooComplex(Exception):
    pass


def leaf_parts(raw: bytes) -> list[LeafPart] | None:
    """Every non-multipart part of ``raw`` with its IMAP section; None when unsure."""
    leaves: list[LeafPart] = []
    try:
        _walk(raw, 0, len(raw), "", leaves, depth=0, digest=False)
    except _TooComplex:
        return None
    return leaves


def _walk(
    raw: bytes, start: int, end: int, prefix: str, out: list[LeafPart], depth: int, digest: bool
) -> None:
    if depth > MAX_DEPTH or len(out) > MAX_PARTS:
        raise _TooComplex
    body = _body_start(raw, start, end)
    headers = _header_fields(raw[start:body], digest)
    content_type = headers.get_content_type()
    if content_type.partition("/")[0] != "multipart":  # get_content_maintype, once
        encoding = str(headers.get("content-transfer-encoding", "")).strip().lower()
        try:
            named = bool((headers.get_filename() or "").strip())
        except Exception:
            named = False
        out.append(
            LeafPart(
                section=prefix or "1",
                content_type=content_type,
                encoding=encoding if encoding in DECODED_ENCODINGS else None,
                disposition=headers.get_content_disposition(),
                named=named,
            )
        )
        return
    boundary = headers.get_boundary()
    if not boundary:
        # The stdlib reads such a "multipart" as one run of text: no parts at all.
        raise _TooComplex
    spans = _part_spans(raw, body, end, boundary.encode("utf-8", errors="surrogateescape"))
    for number, (part_start, part_end) in enumerate(spans, start=1):
        section = f"{prefix}.{number}" if prefix else str(number)
        _walk(
            raw,
            part_start,
            part_end,
            section,
            out,
            depth + 1,
            digest=content_type == "multipart/digest",
        )


def _header_fields(block: bytes, digest: bool) -> Message:
    headers = _plain_header_fields(block)
    if headers is None:
        headers = _HEADERS.parsebytes(block)
    if digest:
        headers.set_default_type("message/rfc822")
    return headers


_HEADER_NAME = re.compile(r"[\x21-\x39\x3b-\x7e]+:")
_COMPAT32 = email_policy.compat32


def _plain_header_fields(block: bytes) -> Message | None:
    """The stdlib header parser's ``Message`` for a plain block, without its feed parser.

    Plain: ASCII lines, each ``name:`` or a continuation (leading space or tab) of the
    one before, CR only before LF, and the blank line last. The feed parser was most of
    the cost of numbering a message's parts; for a plain block it makes the same
    ``Message`` as this (``compat32.header_source_parse`` of each field's lines, in
    order). Anything else is left to it (None): a line it would read as a defect, an
    mbox ``From `` line, a block without its blank line.
    """
    if not block.isascii():
        return None
    lines = block.decode("ascii").split("\n")
    if len(lines) < 2 or lines.pop() != "" or lines.pop() not in ("", "\r"):
        return None  # not ending in LF, then a blank line
    headers = Message(policy=_COMPAT32)
    field: list[str] = []
    for line in lines:
        if "\r" in line[:-1] or not line or line == "\r":
            return None  # a bare CR (a line break to the feed parser), an early blank line
        if line[0] in " \t":
            if not field:
                return None  # a continuation with nothing to continue
            field.append(line + "\n")
            continue
        if _HEADER_NAME.match(line) is None:
            return None
        if field:
            headers.set_raw(*_COMPAT32.header_source_parse(field))
        field = [line + "\n"]
    if field:
        headers.set_raw(*_COMPAT32.header_source_parse(field))
    return headers


def _body_start(raw: bytes, start: int, end: int) -> int:
    """Where the part's body begins: after the first empty line (or at once, if none)."""
    if raw.startswith(b"\r\n", start):
        return start + 2
    if raw.startswith(b"\n", start):
        return start + 1
    crlf = raw.find(b"\n\r\n", start, end)
    lf = raw.find(b"\n\n", start, crlf if crlf >= 0 else end)
    if lf >= 0:
        return lf + 2
    if crlf >= 0:
        return crlf + 3
    return end


_AFTER_DELIMITER = re.compile(rb"(--)?[ \t]*(\r\n|\r|\n|$)")


def _part_spans(raw: bytes, start: int, end: int, boundary: bytes) -> list[tuple[int, int]]:
    """The (start, end) of each part between ``start`` and ``end`` (a multipart's body).

    A delimiter is a line that starts with ``--boundary`` and holds nothing else but an
    optional ``--`` (the close delimiter) and white space; the line break before it is
    part of it. A multipart that never closes or never opens is left to the caller's
    fallback, as the stdlib would read it with defects.
    """
    marker = b"--" + boundary
    spans: list[tuple[int, int]] = []
    part_start: int | None = None
    position = start
    while True:
        found = _find(raw, marker, position, end)
        if found < 0:
            raise _TooComplex  # no close delimiter
        after = found + len(marker)
        at_line_start = found == start or raw[found - 1] == 0x0A
        match = _AFTER_DELIMITER.match(raw, after, end)
        if not at_line_start or match is None:
            position = after
            continue
        if part_start is not None:
            part_end = found - 1  # the LF that opens the delimiter line
            if part_end > part_start and raw[part_end - 1] == 0x0D:
                part_end -= 1
            spans.append((part_start, max(part_start, part_end)))
            if len(spans) > MAX_PARTS:
                raise _TooComplex
        if match.group(1):  # the close delimiter
            if part_start is None:
                raise _TooComplex
            return spans
        part_start = match.end()
        position = part_start


#: How far past a "-" one search for a delimiter looks before jumping to the next "-".
_STRETCH = 4096


def _find(raw: bytes, marker: bytes, start: int, end: int) -> int:
    """``raw.find(marker, start, end)`` for a marker that starts with "-", faster.

    Jumps to the next "-" (memchr speed) and searches a stretch from there: base64 holds
    no "-", so a large encoded attachment is crossed in one jump instead of a search.
    """
    stretch = max(_STRETCH, 4 * len(marker))
    while True:
        dash = raw.find(b"-", start, end)
        if dash < 0:
            return -1
        stretch_end = min(end, dash + stretch)
        found = raw.find(marker, dash, stretch_end)
        if found >= 0 or stretch_end >= end:
            return found
        # A marker that starts before the stretch's end and ends after it starts here or later.
        start = stretch_end - len(marker) + 1


def decode_part(body: bytes, encoding: str | None) -> bytes:
    """A part's body (as ``BODY[<section>]`` returns it) without its transfer encoding.

    Decodes as the stdlib's ``get_payload(decode=True)`` does, which both parsers agree
    with on well-formed mail: base64 with its padding repairs, quoted-printable, and the
    uuencode family through the stdlib itself; any other encoding is left as it is.
    """
    cte = (encoding or "").strip().lower()
    if cte == "base64":
        value, _defects = decode_b(b"".join(body.splitlines()))
        return bytes(value)
    if cte == "quoted-printable":
        return quopri.decodestring(body)
    if cte in _UUENCODE:
        entity = b"Content-Transfer-Encoding: " + cte.encode("ascii") + b"\r\n\r\n" + body
        decoded = BytesParser(policy=email_policy.compat32).parsebytes(entity)
        data = decoded.get_payload(decode=True)
        return data if isinstance(data, bytes) else b""
    return body
