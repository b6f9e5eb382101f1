"""Tests for email_service.mail.mime: the fast parser, the stdlib reference, and agreement.

The corpus below is written byte by byte where the exact bytes matter (broken mail,
legacy charsets) and generated with the stdlib where they do not. Run this module as a
script for the throughput benchmark:

    .venv/bin/python -m tests.mail.test_mime --benchmark [--count N]
"""

from __future__ import annotations

import argparse
import base64
import random
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from email_service.mail.mime import (
    ParsedMessage,
    parse_message,
    parse_message_fast,
    parse_message_stdlib,
)
from tests.servers import mailgen

# ---------------------------------------------------------------------------------------
# Corpus
# ---------------------------------------------------------------------------------------

HEADERS = (
    "From: Alice Example <alice@Example.COM>\n"
    "To: Bob <bob@example.org>, carol@example.net\n"
    "Subject: Quarterly numbers\n"
    "Date: Tue, 03 Nov 2026 10:00:00 +0100\n"
    "Message-ID: <m1@example.com>\n"
    "MIME-Version: 1.0\n"
)


def message(headers: str, body: bytes | str, *, crlf: bool = False) -> bytes:
    raw = (
        headers.encode("utf-8") + b"\n" + (body.encode("utf-8") if isinstance(body, str) else body)
    )
    return raw.replace(b"\n", b"\r\n") if crlf else raw


def b64(data: bytes) -> str:
    return base64.encodebytes(data).decode("ascii")


PDF = b"%PDF-1.4\n" + bytes(range(256)) * 8
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(255, -1, -1)) * 3


def plain() -> bytes:
    return message(
        HEADERS + "Content-Type: text/plain; charset=us-ascii\n", "Hello Bob,\n\nSee you.\n"
    )


def plain_crlf() -> bytes:
    return message(
        HEADERS + "Content-Type: text/plain; charset=us-ascii\n", "Line one\nLine two\n", crlf=True
    )


def alternative() -> bytes:
    return message(
        HEADERS + 'Content-Type: multipart/alternative; boundary="alt"\n',
        "--alt\n"
        "Content-Type: text/plain; charset=utf-8\n"
        "Content-Transfer-Encoding: quoted-printable\n\n"
        "Caf=C3=A9 at noon? Na=C3=AFve question =E2=80=94 yes.\n"
        "--alt\n"
        "Content-Type: text/html; charset=utf-8\n"
        "Content-Transfer-Encoding: quoted-printable\n\n"
        "<p>Caf=C3=A9 at <b>noon</b>?</p><script>alert(1)</script>\n"
        "--alt--\n",
    )


def mixed_with_attachments() -> bytes:
    return message(
        HEADERS + 'Content-Type: multipart/mixed; boundary="mix"\n',
        "--mix\n"
        "Content-Type: text/plain; charset=utf-8\n\n"
        "Two files attached.\n"
        "--mix\n"
        'Content-Type: application/pdf; name="report.pdf"\n'
        'Content-Disposition: attachment; filename="report.pdf"\n'
        "Content-Transfer-Encoding: base64\n\n" + b64(PDF) + "--mix\n"
        "Content-Type: image/png\n"
        "Content-Disposition: attachment\n"
        "Content-Transfer-Encoding: base64\n\n" + b64(PNG) + "--mix\n"
        "Content-Type: text/plain; charset=utf-8\n"
        'Content-Disposition: attachment; filename="notes.txt"\n\n'
        "attached text, not body\n"
        "--mix--\n",
    )


def rfc2231_filenames() -> bytes:
    return message(
        HEADERS + "Content-Type: multipart/mixed; boundary=mix\n",
        "--mix\n"
        "Content-Type: text/plain\n\n"
        "names\n"
        "--mix\n"
        "Content-Type: application/pdf\n"
        "Content-Disposition: attachment; filename*=utf-8''r%C3%A9sum%C3%A9%20%E2%9C%93.pdf\n"
        "Content-Transfer-Encoding: base64\n\n" + b64(PDF) + "--mix\n"
        "Content-Type: application/octet-stream\n"
        "Content-Disposition: attachment;\n"
        " filename*0*=utf-8''%E6%97%A5%E6%9C%AC;\n"
        " filename*1*=%E8%AA%9E.txt\n"
        "Content-Transfer-Encoding: base64\n\n" + b64(b"nihongo") + "--mix\n"
        "Content-Type: application/octet-stream\n"
        "Content-Disposition: attachment; filename*=iso-8859-1''caf%E9.bin\n"
        "Content-Transfer-Encoding: base64\n\n" + b64(b"latin") + "--mix\n"
        'Content-Type: application/pdf; name="=?utf-8?B?w6lsw6huZS5wZGY=?="\n'
        "Content-Transfer-Encoding: base64\n\n" + b64(b"rfc2047 in a name") + "--mix--\n",
    )


def charset_body(charset: str, text: str, encoding: str | None = None, cte: str = "8bit") -> bytes:
    data = text.encode(encoding or charset)
    if cte == "base64":
        data = base64.encodebytes(data)
    return message(
        HEADERS
        + f"Content-Type: text/plain; charset={charset}\nContent-Transfer-Encoding: {cte}\n",
        data,
    )


def encoded_words() -> bytes:
    koi8 = base64.b64encode("Привет".encode("koi8-r")).decode()
    return message(
        "From: =?iso-8859-1?Q?Andr=E9_M=FCller?= <andre@example.de>\n"
        f"To: =?koi8-r?B?{koi8}?= <ivan@example.ru>, =?utf-8?q?J=C3=B6rg?= <jorg@example.de>\n"
        f"Subject: =?koi8-r?B?{koi8}?= =?iso-8859-1?q?caf=E9?=\n"
        "  =?windows-1252?q?=93quoted=94?= and =?ISO-2022-JP?B?GyRCJUYlOSVIGyhC?= tail\n"
        "Date: Tue, 03 Nov 2026 10:00:00 +0100\n"
        "Message-ID: <m2@example.com>\n",
        "body\n",
    )


def html_only() -> bytes:
    return message(
        HEADERS + "Content-Type: text/html; charset=utf-8\n",
        "<html><head><title>Title</title><style>p{color:red}</style></head><body>"
        "<h1>Big news</h1><p>First&nbsp;paragraph &amp; more.</p>"
        '<p>Second <a href="https://example.com/x" onclick="evil()">link</a></p>'
        "<img src=x onerror=alert(1)></body></html>\n",
    )


def related_with_cid() -> bytes:
    return message(
        HEADERS + 'Content-Type: multipart/related; boundary="rel"; type="text/html"\n',
        "--rel\n"
        "Content-Type: text/html; charset=utf-8\n\n"
        '<p>Logo: <img src="cid:logo@example.com" alt="logo"></p>\n'
        "--rel\n"
        "Content-Type: image/png\n"
        "Content-ID: <logo@example.com>\n"
        "Content-Transfer-Encoding: base64\n\n" + b64(PNG) + "--rel--\n",
    )


def nested() -> bytes:
    return message(
        HEADERS + 'Content-Type: multipart/mixed; boundary="outer"\n',
        "--outer\n"
        'Content-Type: multipart/alternative; boundary="inner"\n\n'
        "--inner\n"
        "Content-Type: text/plain; charset=utf-8\n\n"
        "Plain version.\n"
        "--inner\n"
        'Content-Type: multipart/related; boundary="deepest"\n\n'
        "--deepest\n"
        "Content-Type: text/html; charset=utf-8\n\n"
        '<p>HTML version <img src="cid:pic1"></p>\n'
        "--deepest\n"
        "Content-Type: image/png\n"
        "Content-ID: <pic1>\n"
        "Content-Disposition: inline\n"
        "Content-Transfer-Encoding: base64\n\n" + b64(PNG) + "--deepest--\n"
        "--inner--\n"
        "--outer\n"
        "Content-Type: application/zip\n"
        'Content-Disposition: attachment; filename="bundle.zip"\n'
        "Content-Transfer-Encoding: base64\n\n" + b64(b"PK\x03\x04" + bytes(100)) + "--outer--\n",
    )


def with_attached_message() -> bytes:
    inner = (
        "From: Original Sender <orig@example.com>\n"
        "To: alice@example.com\n"
        "Subject: The original\n"
        "Date: Mon, 02 Nov 2026 09:00:00 +0000\n"
        "Message-ID: <orig@example.com>\n\n"
        "Original body.\n"
    )
    return message(
        HEADERS + 'Content-Type: multipart/mixed; boundary="fwd"\n',
        "--fwd\n"
        "Content-Type: text/plain\n\n"
        "Forwarding this.\n"
        "--fwd\n"
        "Content-Type: message/rfc822\n"
        "Content-Disposition: attachment\n\n" + inner + "--fwd--\n",
    )


def addresses_with_comments_and_groups() -> bytes:
    return message(
        'From: "Doe, John" (work) <John.Doe@EXAMPLE.com>\n'
        'To: team: a@x.example, "B b" <b@y.example>;, c@z.example (Cee)\n'
        "Cc: undisclosed-recipients:;\n"
        "Reply-To: <replies@example.com>\n"
        "Subject: groups\n"
        "Date: 3 Nov 2026 10:00 -0000\n"
        "In-Reply-To: <parent@example.com> (Bob's message)\n"
        "References: <root@example.com>\n <parent@example.com>\n",
        "body\n",
    )


def quoted_display_names() -> bytes:
    return message(
        'From: "Smith, Anna" <anna@example.com>\n'
        'To: "Doe, John" <j@example.com>, other@example.com, Plain Name <p@example.com>\n'
        "Cc: =?utf-8?q?Ren=C3=A9e?= <renee@example.fr>\n"
        "Subject: names\n"
        "Date: Tue, 03 Nov 2026 10:00:00 -0500\n",
        "body\n",
    )


def repeated_headers() -> bytes:
    return message(
        "Received: from a by b; Tue, 03 Nov 2026 10:00:02 +0000\n"
        "Received: from c by d;\n\tTue, 03 Nov 2026 10:00:01 +0000\n" + HEADERS,
        "body\n",
    )


def invalid_base64() -> bytes:
    return message(
        HEADERS + 'Content-Type: multipart/mixed; boundary="b"\n',
        "--b\n"
        "Content-Type: text/plain\n\n"
        "see attachment\n"
        "--b\n"
        "Content-Type: application/pdf\n"
        'Content-Disposition: attachment; filename="broken.pdf"\n'
        "Content-Transfer-Encoding: base64\n\n"
        "JVBERi0xLjQK!!!not*base64\n"
        "--b--\n",
    )


def missing_close_boundary() -> bytes:
    return message(
        HEADERS + 'Content-Type: multipart/mixed; boundary="b"\n',
        "--b\n"
        "Content-Type: text/plain\n\n"
        "the message was cut\n"
        "--b\n"
        "Content-Type: application/pdf\n"
        'Content-Disposition: attachment; filename="half.pdf"\n'
        "Content-Transfer-Encoding: base64\n\n" + b64(PDF[:300]),
    )


def raw_8bit_latin1_headers() -> bytes:
    return (
        b"From: Jos\xe9 Garc\xeda <jose@example.es>\n"
        b"To: bob@example.org\n"
        b"Subject: Caf\xe9 \x93ol\xe9\x94\n"
        b"Date: Tue, 03 Nov 2026 10:00:00 +0100\n\n"
        b"body\n"
    )


def raw_utf8_headers() -> bytes:
    return message(
        "From: José García <josé@exämple.es>\nTo: bob@example.org\nSubject: Café olé ✓\n"
        "Date: Tue, 03 Nov 2026 10:00:00 +0100\n",
        "body\n",
    )


def no_date_no_message_id() -> bytes:
    return message("From: a@example.com\nTo: b@example.com\nSubject: draft\n", "no date\n")


def empty_body() -> bytes:
    return message(HEADERS + "Content-Type: text/plain\n", b"")


def unknown_charset() -> bytes:
    return charset_body("x-made-up", "café", "utf-8")


def ascii_labelled_utf8() -> bytes:
    return charset_body("us-ascii", "café naïve", "utf-8")


def no_content_subtype() -> bytes:
    return message(HEADERS + "Content-Type: text\n", "what type am I\n")


def generated_names() -> bytes:
    msg = EmailMessage()
    msg["From"] = "a@example.com"
    msg["To"] = "b@example.com"
    msg["Subject"] = "unnamed parts"
    msg["Date"] = "Tue, 03 Nov 2026 10:00:00 +0000"
    msg.set_content("see parts")
    msg.add_attachment(PDF, maintype="application", subtype="pdf")
    msg.add_attachment(PNG, maintype="image", subtype="png", disposition="inline")
    msg.add_attachment(b"x", maintype="application", subtype="x-unheard-of")
    msg.add_attachment(
        b"evil", maintype="application", subtype="pdf", filename="../../etc/pass\x07wd"
    )
    return msg.as_bytes(policy=policy.SMTP)


def stdlib_built() -> bytes:
    msg = EmailMessage()
    msg["From"] = "Zoë Ünicode <zoe@example.com>"
    msg["To"] = "Ørjan <orjan@example.no>, plain@example.com"
    msg["Subject"] = "Grüße — a long subject line that the stdlib will fold over more than one line"
    msg["Date"] = "Tue, 03 Nov 2026 10:00:00 +0000"
    msg["Message-ID"] = "<built@example.com>"
    msg.set_content("Grüße aus Köln.\n" * 20)
    msg.add_alternative("<p>Grüße aus <i>Köln</i>.</p>" * 20, subtype="html")
    msg.add_attachment("Straße".encode(), maintype="text", subtype="csv", filename="daten-ß.csv")
    return msg.as_bytes(policy=policy.SMTP)


CORPUS: dict[str, Callable[[], bytes]] = {
    "plain": plain,
    "plain-crlf": plain_crlf,
    "alternative": alternative,
    "mixed-with-attachments": mixed_with_attachments,
    "rfc2231-filenames": rfc2231_filenames,
    "iso-8859-1": lambda: charset_body("iso-8859-1", "café \u201cquoted\u201d", "cp1252"),
    "iso-8859-1-qp": lambda: message(
        HEADERS + "Content-Type: text/plain; charset=iso-8859-1\n"
        "Content-Transfer-Encoding: quoted-printable\n",
        "Gr=FC=DFe aus K=F6ln\n",
    ),
    "windows-1252": lambda: charset_body("windows-1252", "\u201csmart\u201d \u2014 \u20ac5"),
    "koi8-r": lambda: charset_body("koi8-r", "Привет, мир"),
    "shift_jis": lambda: charset_body("shift_jis", "日本語のテキスト", cte="base64"),
    "shift_jis-microsoft": lambda: charset_body("shift_jis", "丸数字①②", "cp932"),
    "encoded-words": encoded_words,
    "html-only": html_only,
    "related-with-cid": related_with_cid,
    "nested": nested,
    "attached-message": with_attached_message,
    "comments-and-groups": addresses_with_comments_and_groups,
    "quoted-display-names": quoted_display_names,
    "repeated-headers": repeated_headers,
    "generated-names": generated_names,
    "stdlib-built": stdlib_built,
    "raw-utf8-headers": raw_utf8_headers,
    # Broken mail
    "invalid-base64": invalid_base64,
    "missing-close-boundary": missing_close_boundary,
    "raw-8bit-latin1-headers": raw_8bit_latin1_headers,
    "no-date-no-message-id": no_date_no_message_id,
    "empty-body": empty_body,
    "unknown-charset": unknown_charset,
    "ascii-labelled-utf8": ascii_labelled_utf8,
    "no-content-subtype": no_content_subtype,
    "inline-text-files": lambda: mailgen.corpus()["inline_text_files"],
    "inline-text-file-alone": lambda: message(
        HEADERS + 'Content-Type: text/plain; charset=utf-8; name="notes.txt"\n'
        'Content-Disposition: inline; filename="notes.txt"\n',
        "Notes in a file of their own.\n",
    ),
    "empty-input": lambda: b"",
    "not-mail": lambda: b"\x00\xff\xfe garbage \r\r\n\n\x00",
}

# Well-formed mail the fast path must take; if it declined these, the agreement test
# would compare the stdlib with itself. (RFC 2231 continuations go to the stdlib: the
# fast parser breaks a character split across two pieces.)
FAST_PATH_EXPECTED = {
    "plain", "plain-crlf", "alternative", "mixed-with-attachments",
    "iso-8859-1", "iso-8859-1-qp", "windows-1252", "koi8-r", "shift_jis",
    "shift_jis-microsoft", "encoded-words", "html-only", "related-with-cid", "nested",
    "attached-message", "comments-and-groups", "quoted-display-names", "repeated-headers",
    "generated-names", "stdlib-built", "raw-utf8-headers", "no-date-no-message-id",
}  # fmt: skip


def cpython_samples() -> dict[str, Path]:
    """CPython's own test_email sample messages, when this interpreter ships them."""
    import test  # the stdlib's test package; absent from slim Python builds

    data = Path(test.__file__).parent / "test_email" / "data"
    return {path.name: path for path in sorted(data.glob("msg_*.txt"))}


try:
    CPYTHON_SAMPLES = cpython_samples()
except ImportError:
    CPYTHON_SAMPLES = {}


# ---------------------------------------------------------------------------------------
# The two parsers agree
# ---------------------------------------------------------------------------------------


def comparable(parsed: ParsedMessage) -> dict[str, object]:
    """The fields both parsers must agree on."""
    return {
        "subject": parsed.subject,
        "from": (parsed.from_address, parsed.from_name),
        "to": parsed.to,
        "cc": parsed.cc,
        "bcc": parsed.bcc,
        "reply_to": parsed.reply_to,
        "date": parsed.date,
        "message_id": parsed.message_id,
        "in_reply_to": parsed.in_reply_to,
        "references": parsed.references,
        "body_text": parsed.body_text.rstrip(),
        "body_html": (parsed.body_html or "").rstrip(),
        "attachments": [
            (a.filename, a.mime_type, a.content_id, a.is_inline) for a in parsed.attachments
        ],
    }


def assert_same_attachment_data(fast: ParsedMessage, stdlib: ParsedMessage) -> None:
    for ours, reference in zip(fast.attachments, stdlib.attachments, strict=True):
        if ours.mime_type.startswith("message/"):
            # The stdlib keeps no original bytes for an attached message and regenerates
            # them, so it is compared as the message it is rather than byte for byte.
            assert ours.data.rstrip() == reference.data.rstrip() or comparable(
                parse_message_stdlib(ours.data)
            ) == comparable(parse_message_stdlib(reference.data))
        else:
            assert (ours.size, ours.data) == (reference.size, reference.data)


def assert_parsers_agree(raw: bytes) -> ParsedMessage | None:
    reference = parse_message_stdlib(raw)
    fast = parse_message_fast(raw)
    if fast is not None:
        assert fast.parser == "fast"
        assert comparable(fast) == comparable(reference)
        assert_same_attachment_data(fast, reference)
        assert fast.headers == reference.headers
    return fast


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_fast_and_stdlib_parsers_agree_on_corpus(name: str) -> None:
    fast = assert_parsers_agree(CORPUS[name]())
    if name in FAST_PATH_EXPECTED:
        assert fast is not None, f"the fast path declined {name}"


@pytest.mark.skipif(not CPYTHON_SAMPLES, reason="this Python has no test_email sample data")
@pytest.mark.parametrize("name", sorted(CPYTHON_SAMPLES))
def test_fast_and_stdlib_parsers_agree_on_cpython_samples(name: str) -> None:
    assert_parsers_agree(CPYTHON_SAMPLES[name].read_bytes())


@pytest.mark.skipif(not CPYTHON_SAMPLES, reason="this Python has no test_email sample data")
def test_fast_path_takes_most_cpython_samples() -> None:
    # Guards against the agreement test passing by declining everything.
    taken = [n for n, p in CPYTHON_SAMPLES.items() if parse_message_fast(p.read_bytes())]
    assert len(taken) >= len(CPYTHON_SAMPLES) // 2


def test_realistic_mail_goes_through_the_fast_path_and_agrees() -> None:
    for raw in realistic_corpus(60, seed=7):
        fast = assert_parsers_agree(raw)
        assert fast is not None


# ---------------------------------------------------------------------------------------
# What parse_message promises, field by field
# ---------------------------------------------------------------------------------------


def parse(name: str) -> ParsedMessage:
    return parse_message(CORPUS[name]())


def test_plain_message_fields() -> None:
    parsed = parse("plain")
    assert parsed.parser == "fast"
    assert parsed.message_id == "m1@example.com"
    assert parsed.subject == "Quarterly numbers"
    assert (parsed.from_address, parsed.from_name) == ("alice@example.com", "Alice Example")
    assert parsed.to == ("bob@example.org", "carol@example.net")
    assert parsed.date == datetime(2026, 11, 3, 9, 0, tzinfo=UTC)
    assert parsed.body_text == "Hello Bob,\n\nSee you.\n"
    assert parsed.body_html is None
    assert parsed.preview == "Hello Bob, See you."
    assert parsed.attachments == ()
    assert parsed.defects == ()


def test_crlf_bodies_come_back_with_newlines() -> None:
    assert parse("plain-crlf").body_text == "Line one\nLine two\n"


def test_alternative_keeps_text_and_sanitises_html() -> None:
    parsed = parse("alternative")
    assert parsed.body_text.startswith("Café at noon? Naïve question — yes.")
    assert parsed.body_html is not None
    assert "<b>noon</b>" in parsed.body_html
    assert "script" not in parsed.body_html


def test_attachments_are_decoded_with_names_types_and_sizes() -> None:
    parsed = parse("mixed-with-attachments")
    assert parsed.body_text == "Two files attached."
    summary = [(a.filename, a.mime_type, a.size, a.is_inline) for a in parsed.attachments]
    assert summary == [
        ("report.pdf", "application/pdf", len(PDF), False),
        ("attachment-2.png", "image/png", len(PNG), False),
        # The line break before a delimiter belongs to the delimiter (RFC 2046 5.1.1).
        ("notes.txt", "text/plain", len(b"attached text, not body"), False),
    ]
    assert parsed.attachments[0].data == PDF


def _with_attachment_type(content_type: str) -> bytes:
    return (
        "From: a@example.test\r\nDate: Thu, 03 Dec 2026 10:00:00 +0000\r\n"
        "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=XX\r\n\r\n"
        "--XX\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
        f'--XX\r\nContent-Type: {content_type}; name="f.bin"\r\n'
        "Content-Transfer-Encoding: base64\r\n\r\naGVsbG8=\r\n--XX--\r\n"
    ).encode()


@pytest.mark.parametrize(
    "content_type",
    [
        "application/x-" + "y" * 286,  # 300 characters: more than attachments.mime_type holds
        "x" * 128 + "/pdf",  # a type name longer than RFC 6838's 127
        "application/x\x00y",  # PostgreSQL text cannot hold NUL
        "application/x-\u00e9",  # no header value
    ],
)
def test_an_attachment_type_that_is_no_valid_media_type_is_kept_as_octet_stream(
    content_type: str,
) -> None:
    raw = _with_attachment_type(content_type)
    for parse_with in (parse_message, parse_message_stdlib, parse_message_fast):
        parsed = parse_with(raw)
        if parsed is None:
            continue  # the fast parser declined
        [attachment] = parsed.attachments
        assert (attachment.filename, attachment.mime_type) == ("f.bin", "application/octet-stream")
        assert attachment.data == b"hello"
        assert any("not a valid media type" in defect for defect in parsed.defects), parse_with
    # The part is still found by its IMAP section for a later download.
    assert parse_message(raw).attachments[0].section == "2"


def test_an_attachment_type_of_127_characters_each_side_is_kept() -> None:
    longest = "a" * 127 + "/" + "b" * 127
    parsed = parse_message(_with_attachment_type(longest))
    assert parsed.attachments[0].mime_type == longest
    assert parsed.defects == ()


def test_a_charset_label_with_a_nul_is_an_unknown_charset_not_a_lost_body() -> None:
    raw = (
        b"From: a@example.test\r\nDate: Thu, 03 Dec 2026 10:00:00 +0000\r\n"
        b'Content-Type: text/plain; charset="ut\x00f-8"\r\n\r\nthe body\r\n'
    )
    parsed = parse_message(raw)
    assert parsed.body_text == "the body\n"
    assert not any("could not be parsed" in defect for defect in parsed.defects)


def test_rfc2231_and_rfc2047_filenames_are_decoded() -> None:
    names = [a.filename for a in parse("rfc2231-filenames").attachments]
    assert names == ["résumé ✓.pdf", "日本語.txt", "café.bin", "élène.pdf"]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("iso-8859-1", "café \u201cquoted\u201d"),  # read as Windows-1252, as browsers do
        ("iso-8859-1-qp", "Grüße aus Köln"),
        ("windows-1252", "\u201csmart\u201d \u2014 \u20ac5"),
        ("koi8-r", "Привет, мир"),
        ("shift_jis", "日本語のテキスト"),
        ("shift_jis-microsoft", "丸数字①②"),
        ("ascii-labelled-utf8", "café naïve"),
        ("unknown-charset", "café"),
    ],
)
def test_legacy_charsets_are_decoded(name: str, expected: str) -> None:
    assert parse(name).body_text.rstrip() == expected


def test_encoded_word_subjects_and_names_in_any_charset() -> None:
    parsed = parse("encoded-words")
    assert parsed.subject == "Приветcafé\u201cquoted\u201d and テスト tail"  # noqa: RUF001
    assert (parsed.from_address, parsed.from_name) == ("andre@example.de", "André Müller")
    assert parsed.to == ("ivan@example.ru", "jorg@example.de")


def test_html_only_message_gets_text_from_the_html() -> None:
    parsed = parse("html-only")
    assert (
        parsed.body_text
        == "Big news\n\nFirst paragraph & more.\n\nSecond link <https://example.com/x>"
    )
    assert parsed.body_html is not None
    for dangerous in ("onclick", "onerror", "<title", "<style"):
        assert dangerous not in parsed.body_html
    assert parsed.preview.startswith("Big news First paragraph & more.")


def test_cid_referenced_image_is_inline() -> None:
    parsed = parse("related-with-cid")
    (image,) = parsed.attachments
    assert (image.content_id, image.is_inline, image.filename) == (
        "logo@example.com",
        True,
        "attachment-1.png",
    )
    assert parsed.body_html is not None and 'src="cid:logo@example.com"' in parsed.body_html


def test_nested_multiparts() -> None:
    parsed = parse("nested")
    assert parsed.body_text == "Plain version."
    assert parsed.body_html is not None and "HTML version" in parsed.body_html
    assert [(a.filename, a.is_inline) for a in parsed.attachments] == [
        ("attachment-1.png", True),
        ("bundle.zip", False),
    ]


def test_attached_message_is_an_attachment_not_body() -> None:
    parsed = parse("attached-message")
    assert parsed.body_text == "Forwarding this."
    (attached,) = parsed.attachments
    assert (attached.mime_type, attached.filename) == ("message/rfc822", "attachment-1.eml")
    inner = parse_message(attached.data)
    assert (inner.subject, inner.message_id, inner.body_text) == (
        "The original",
        "orig@example.com",
        "Original body.",
    )


def test_address_comments_groups_and_message_ids() -> None:
    parsed = parse("comments-and-groups")
    assert (parsed.from_address, parsed.from_name) == ("John.Doe@example.com", "Doe, John")
    assert parsed.to == ("a@x.example", "b@y.example", "c@z.example")
    assert parsed.cc == ()
    assert parsed.reply_to == ("replies@example.com",)
    assert parsed.in_reply_to == "parent@example.com"
    assert parsed.references == ("root@example.com", "parent@example.com")
    assert parsed.date == datetime(2026, 11, 3, 10, 0, tzinfo=UTC)  # "-0000": UTC


def test_repeated_headers_are_joined_in_order() -> None:
    headers = parse("repeated-headers").headers
    assert headers["Received"] == (
        "from a by b; Tue, 03 Nov 2026 10:00:02 +0000\nfrom c by d; Tue, 03 Nov 2026 10:00:01 +0000"
    )


def test_generated_and_sanitised_attachment_names() -> None:
    names = [a.filename for a in parse("generated-names").attachments]
    assert names == ["attachment-1.pdf", "attachment-2.png", "attachment-3", "passwd"]
    assert parse("generated-names").attachments[1].is_inline


def test_raw_utf8_headers_are_read_as_utf8() -> None:
    parsed = parse("raw-utf8-headers")
    assert (parsed.subject, parsed.from_name, parsed.from_address) == (
        "Café olé ✓",
        "José García",
        "josé@exämple.es",
    )
    assert parsed.defects == ()


# ---------------------------------------------------------------------------------------
# Broken mail: parsed anyway, with the damage described
# ---------------------------------------------------------------------------------------


def test_invalid_base64_falls_back_to_stdlib_and_keeps_the_rest() -> None:
    parsed = parse("invalid-base64")
    assert parsed.parser == "stdlib"
    assert parsed.body_text == "see attachment"
    assert [a.filename for a in parsed.attachments] == ["broken.pdf"]
    assert any("base64" in defect for defect in parsed.defects)


def test_missing_close_boundary_is_reported() -> None:
    parsed = parse("missing-close-boundary")
    assert parsed.parser == "stdlib"
    assert parsed.body_text == "the message was cut"
    assert [a.filename for a in parsed.attachments] == ["half.pdf"]
    assert parsed.attachments[0].data == PDF[:300]
    assert any("close boundary not found" in defect for defect in parsed.defects)


def test_raw_latin1_header_bytes_are_read_as_windows_1252_with_a_defect() -> None:
    parsed = parse("raw-8bit-latin1-headers")
    assert parsed.subject == "Café \u201colé\u201d"
    assert (parsed.from_name, parsed.from_address) == ("José García", "jose@example.es")
    assert any("8-bit" in defect for defect in parsed.defects)


def test_missing_date_and_message_id() -> None:
    parsed = parse("no-date-no-message-id")
    assert (parsed.date, parsed.message_id) == (None, None)
    assert parsed.defects == ("the message has no Date header",)


def test_empty_body() -> None:
    parsed = parse("empty-body")
    assert (parsed.body_text, parsed.preview, parsed.attachments) == ("", "", ())


def test_content_type_without_subtype_is_read_as_text() -> None:
    parsed = parse("no-content-subtype")
    assert parsed.body_text == "what type am I\n"
    assert parsed.attachments == ()


@pytest.mark.parametrize("raw", [b"", b"\x00\xff\xfe garbage \r\r\n\n\x00", b"\n\n\n", b"::::"])
def test_garbage_gives_a_message_with_defects(raw: bytes) -> None:
    parsed = parse_message(raw)
    assert parsed.defects
    assert parsed.subject == ""
    assert parsed.from_address == ""


def _mutations() -> st.SearchStrategy[bytes]:
    seeds = [build() for build in CORPUS.values()]

    def mutate(seed_index: int, position: int, junk: bytes, cut: bool) -> bytes:
        seed = seeds[seed_index % len(seeds)]
        position %= len(seed) + 1
        return seed[:position] if cut else seed[:position] + junk + seed[position:]

    return st.one_of(
        st.binary(max_size=2000),
        st.builds(mutate, st.integers(0), st.integers(0), st.binary(max_size=40), st.booleans()),
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_mutations())
def test_parse_message_never_raises(raw: bytes) -> None:
    parsed = parse_message(raw)
    assert isinstance(parsed, ParsedMessage)
    assert parsed.parser in ("fast", "stdlib")
    assert len(parsed.preview) <= 200


def test_deeply_nested_multiparts_do_not_raise() -> None:
    depth = 300
    body = "".join(
        f'--b{i}\nContent-Type: multipart/mixed; boundary="b{i + 1}"\n\n' for i in range(depth)
    )
    body += f"--b{depth}\nContent-Type: text/plain\n\ndeep\n"
    parsed = parse_message(
        message('From: a@b.example\nContent-Type: multipart/mixed; boundary="b0"\n', body)
    )
    assert isinstance(parsed, ParsedMessage)


def test_preview_folds_whitespace_and_stops_at_200_characters() -> None:
    raw = message(HEADERS, "word\t\t" + "\n\n  ".join(["lorem ipsum"] * 100))
    preview = parse_message(raw).preview
    assert len(preview) == 200
    assert preview.startswith("word lorem ipsum lorem ipsum")
    assert "  " not in preview and "\n" not in preview


# ---------------------------------------------------------------------------------------
# Realistic mail, for the agreement test above and the benchmark below
# ---------------------------------------------------------------------------------------

_SENTENCE = (
    "the quarterly report shows growth in every region and we should discuss next steps "
    "before the friday meeting please review the attached numbers café naïve über résumé "
    "budget forecast customer feedback team launch"
)
WORDS = _SENTENCE.split()


def realistic_message(rng: random.Random, index: int) -> bytes:
    """About 11 KB of text+HTML; one in five also carries a 50-500 KB attachment."""
    paragraphs = [
        " ".join(rng.choice(WORDS) for _ in range(rng.randint(40, 70))).capitalize() + "."
        for _ in range(rng.randint(7, 10))
    ]
    text = "\n\n".join(paragraphs)
    html = (
        '<html><head><style>p { margin: 0 }</style></head><body><div style="font-family: Arial">'
        + "".join(f'<p style="color: #333">{p}</p>\n' for p in paragraphs)
        + '<table><tr><td><a href="https://example.com/unsubscribe">Unsubscribe</a></td></tr>'
        "</table></div></body></html>"
    )
    date = format_datetime(datetime(2026, 11, 3, 10, 0, tzinfo=UTC).replace(minute=index % 60))
    headers = (
        f"Received: from mx1.example.net (mx1.example.net [192.0.2.1]) by imap.example.com\n"
        f"\twith ESMTPS id {index:08x}; {date}\n"
        "Received: from mail.sender.example (mail.sender.example [198.51.100.7])\n"
        f"\tby mx1.example.net with ESMTP id {index:08x}; {date}\n"
        "DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=sender.example; s=s1;\n"
        f"\th=from:to:subject:date; bh={'A' * 44};\n\tb={'B' * 76}\n\t{'C' * 76}\n"
        f"From: =?utf-8?q?Alice_=C3=81nderson?= <alice{index % 50}@sender.example>\n"
        "To: Bob <bob@example.com>, carol@example.com\n"
        + ("Cc: Dave Smith <dave@example.org>\n" if index % 3 == 0 else "")
        + f"Subject: Re: Quarterly report #{index} =?utf-8?q?=E2=80=94_r=C3=A9sum=C3=A9?=\n"
        f"Date: {date}\n"
        f"Message-ID: <msg{index}.{rng.randrange(10**9)}@sender.example>\n"
        f"In-Reply-To: <prev{index}@example.com>\n"
        f"References: <root{index}@example.com> <prev{index}@example.com>\n"
        "X-Mailer: ExampleMailer 5.1\n"
        "MIME-Version: 1.0\n"
    )
    alternative = (
        'Content-Type: multipart/alternative; boundary="alt"\n\n'
        "--alt\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n"
        f"{text}\n"
        "--alt\nContent-Type: text/html; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n"
        f"{html}\n--alt--\n"
    )
    if index % 5 != 4:
        return (headers + alternative).encode("utf-8").replace(b"\n", b"\r\n")
    attachment = rng.randbytes(rng.randint(50_000, 500_000))
    body = (
        (
            'Content-Type: multipart/mixed; boundary="mixed"\n\n--mixed\n'
            + alternative
            + "--mixed\nContent-Type: application/pdf\n"
            f'Content-Disposition: attachment; filename="report-{index}.pdf"\n'
            "Content-Transfer-Encoding: base64\n\n"
        ).encode("utf-8")
        + base64.encodebytes(attachment)
        + b"--mixed--\n"
    )
    return (headers.encode("utf-8") + body).replace(b"\n", b"\r\n")


def realistic_corpus(count: int, seed: int = 1) -> Iterator[bytes]:
    rng = random.Random(seed)
    return (realistic_message(rng, index) for index in range(count))


def _benchmark(count: int, stdlib_count: int) -> None:
    corpus = list(realistic_corpus(count))
    size = sum(map(len, corpus)) / len(corpus) / 1024
    print(f"{count} messages, mean {size:.1f} KiB; Python {sys.version.split()[0]}")
    common = [raw for raw in corpus if len(raw) < 40_000]
    with_attachment = [raw for raw in corpus if len(raw) >= 40_000]
    for label, parse_one, sample in (
        ("parse_message (all)", parse_message, corpus),
        ("parse_message (text+HTML only)", parse_message, common),
        ("parse_message (with attachment)", parse_message, with_attachment),
        ("parse_message_stdlib (all)", parse_message_stdlib, corpus[:stdlib_count]),
    ):
        best = 0.0
        for _ in range(3):
            started = time.perf_counter()
            for raw in sample:
                parse_one(raw)
            best = max(best, len(sample) / (time.perf_counter() - started))
        print(f"  {label:34} {best:9,.0f} msg/s  (best of 3, {len(sample)} messages)")
    parsers = {parse_message(raw).parser for raw in corpus}
    print(f"  parsers used by parse_message: {sorted(parsers)}")


if __name__ == "__main__":
    arguments = argparse.ArgumentParser(description=__doc__)
    arguments.add_argument("--benchmark", action="store_true", required=True)
    arguments.add_argument("--count", type=int, default=3000)
    arguments.add_argument("--stdlib-count", type=int, default=300)
    options = arguments.parse_args()
    _benchmark(options.count, options.stdlib_count)


@pytest.mark.parametrize("name", sorted(mailgen.corpus()))
def test_fast_and_stdlib_parsers_agree_on_the_server_test_corpus(name: str) -> None:
    assert_parsers_agree(mailgen.corpus()[name])


def test_a_character_split_across_rfc2231_continuations_survives() -> None:
    parsed = parse_message(mailgen.corpus()["rfc2231_filename"])
    expected = [a["filename"] for a in mailgen.EXPECTED["rfc2231_filename"]["attachments"]]
    assert [a.filename for a in parsed.attachments] == expected


# ---------------------------------------------------------------------- enclosed messages

_ENCLOSED = (
    b"From: Original <orig@example.test>\r\n"
    b"To: someone@example.test\r\n"
    b"Subject: The original\r\n"
    b"Date: Tue, 02 Jan 2024 03:04:05 +0000\r\n"
    b"\r\n"
    b"Words of the enclosed message.\r\n"
)


def _outer(content_type: bytes, body: bytes) -> bytes:
    return (
        b"From: Forwarder <fwd@example.test>\r\n"
        b"To: someone@example.test\r\n"
        b"Subject: Fwd\r\n"
        b"Date: Tue, 02 Jan 2024 04:00:00 +0000\r\n"
        b"MIME-Version: 1.0\r\n"
        b"Content-Type: " + content_type + b"\r\n"
        b"\r\n" + body
    )


@pytest.mark.parametrize("parse", [parse_message, parse_message_stdlib], ids=["auto", "stdlib"])
@pytest.mark.parametrize(
    "raw",
    [
        _outer(b"message/rfc822", _ENCLOSED),
        _outer(
            b'multipart/mixed; boundary="b1"',
            b"--b1\r\nContent-Type: message/rfc822\r\n\r\n" + _ENCLOSED + b"--b1--\r\n",
        ),
        _outer(
            b'multipart/report; report-type=delivery-status; boundary="b2"',
            b"--b2\r\nContent-Type: message/delivery-status\r\n\r\n"
            b"Reporting-MTA: dns; mx.example.test\r\n\r\n"
            b"Final-Recipient: rfc822; gone@example.test\r\nAction: failed\r\nStatus: 5.1.1\r\n"
            b"\r\n--b2\r\nContent-Type: message/rfc822\r\n\r\n" + _ENCLOSED + b"--b2--\r\n",
        ),
    ],
    ids=["bare-rfc822", "only-an-enclosure", "report-without-text"],
)
def test_a_message_of_only_an_enclosed_message_shows_the_enclosed_text(
    raw: bytes, parse: Callable[[bytes], ParsedMessage]
) -> None:
    parsed = parse(raw)
    assert "Words of the enclosed message." in parsed.body_text
    assert parsed.preview.startswith("Words of the enclosed message.")
    assert "message/rfc822" in [a.mime_type for a in parsed.attachments]


def test_enclosed_messages_shown_as_the_body_are_read_to_a_bounded_depth() -> None:
    raw = _ENCLOSED
    for _ in range(50):
        raw = _outer(b"message/rfc822", raw)
    parsed = parse_message(raw)
    assert parsed.body_text == ""  # deeper than three enclosures: not read for the body
    assert parsed.attachments[0].mime_type == "message/rfc822"


# ---------------------------------------------------------------------- encoded words in the wild


@pytest.mark.parametrize("parse", [parse_message, parse_message_stdlib], ids=["auto", "stdlib"])
@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        (b"=?iso-8859-1?Q?Die_Hasen_und_die_Fr\xf6sche?=", "Die Hasen und die Fr\u00f6sche"),
        (b"=?utf-8?Q?caf\xc3\xa9_ok?=", "caf\u00e9 ok"),
        (
            b"Re: =?iso-8859-1?Q?Fr\xf6sche?= und =?utf-8?Q?=C3=A9t=C3=A9?=",
            "Re: Fr\u00f6sche und \u00e9t\u00e9",
        ),
        (b"=?x-unknown?Q?Hello_World?=", "Hello World"),
    ],
    ids=["raw-latin1-in-word", "raw-utf8-in-word", "mixed", "unknown-charset"],
)
def test_encoded_words_found_in_the_wild_are_decoded_as_mail_clients_show_them(
    subject: bytes, expected: str, parse: Callable[[bytes], ParsedMessage]
) -> None:
    raw = (
        b"From: a@example.test\r\nSubject: " + subject + b"\r\n"
        b"Date: Tue, 02 Jan 2024 03:04:05 +0000\r\n\r\nbody\r\n"
    )
    assert parse(raw).subject == expected


# ------------------------------------------------------------------ inline text files


def _with_text_part(part_headers: bytes, *, after: bytes = b"") -> bytes:
    return _outer(
        b'multipart/mixed; boundary="t1"',
        b"--t1\r\nContent-Type: text/plain\r\n\r\nThe body itself.\r\n"
        b"--t1\r\n" + part_headers + b"\r\n\r\nText of the file.\r\n" + after + b"--t1--\r\n",
    )


@pytest.mark.parametrize("parse", [parse_message, parse_message_stdlib], ids=["auto", "stdlib"])
@pytest.mark.parametrize(
    ("part_headers", "filename", "is_inline"),
    [
        (
            b'Content-Type: text/plain\r\nContent-Disposition: inline; filename="a.txt"',
            "a.txt",
            True,
        ),
        (b'Content-Type: text/plain; name="b.txt"', "b.txt", False),
        (b'Content-Type: text/html; name="c.html"\r\nContent-Disposition: inline', "c.html", True),
        (
            b"Content-Type: text/plain\r\nContent-Disposition: inline;\r\n"
            b" filename*=utf-8''r%C3%A9sum%C3%A9.txt",
            "r\u00e9sum\u00e9.txt",
            True,
        ),
    ],
    ids=["inline-filename", "no-disposition-name", "html-name", "rfc2231-folded"],
)
def test_a_named_inline_text_part_is_in_the_body_and_in_the_attachment_list(
    part_headers: bytes, filename: str, is_inline: bool, parse: Callable[[bytes], ParsedMessage]
) -> None:
    parsed = parse(_with_text_part(part_headers))
    [attachment] = parsed.attachments
    assert (attachment.filename, attachment.is_inline) == (filename, is_inline)
    assert attachment.data == b"Text of the file."
    assert attachment.mime_type in ("text/plain", "text/html")
    # The body is what it was before the file was listed.
    assert parsed.body_text.startswith("The body itself.")
    if attachment.mime_type == "text/plain":
        assert "Text of the file." in parsed.body_text
    else:
        assert parsed.body_html == "Text of the file."


def test_named_inline_text_parts_nested_deeper_are_listed_by_both_parsers() -> None:
    nested = (
        b'--t1\r\nContent-Type: multipart/alternative; boundary="t2"\r\n\r\n'
        b"--t2\r\nContent-Type: text/plain\r\n\r\nplain\r\n"
        b'--t2\r\nContent-Type: text/plain;\r\n name="deep.txt"\r\n\r\ndeep\r\n--t2--\r\n'
    )
    raw = _with_text_part(b"Content-Type: text/plain", after=nested)
    assert parse_message_fast(raw) is None  # left to the stdlib, which sees the name
    assert [a.filename for a in parse_message(raw).attachments] == ["deep.txt"]
    assert_parsers_agree(raw)


def test_unnamed_text_parts_and_text_attachments_stay_on_the_fast_path() -> None:
    for part_headers in (
        b"Content-Type: text/plain",
        b'Content-Type: text/plain; name="d.txt"\r\nContent-Disposition: attachment',
        b'Content-Type: application/pdf; name="e.pdf"',
        b'Content-Type: text/html\r\nX-Note: filename="not a parameter here"',
    ):
        raw = _with_text_part(part_headers)
        fast = assert_parsers_agree(raw)
        assert fast is not None, part_headers


def test_attachments_carry_their_imap_section_and_transfer_encoding() -> None:
    samples = mailgen.corpus()
    nested = parse_message(samples["nested"])
    assert [(a.section, a.encoding) for a in nested.attachments] == [
        ("1.2.2", "base64"),
        ("2", "base64"),
    ]
    # An enclosed message and inline text files: no encoding to undo (7bit or none).
    assert [
        (a.section, a.encoding) for a in parse_message(samples["forwarded_rfc822"]).attachments
    ] == [("2", None)]
    assert [a.section for a in parse_message(samples["inline_text_files"]).attachments] == [
        "2",
        "3",
    ]
    # Messages the stdlib reads are numbered the same way.
    rfc2231 = parse_message(samples["rfc2231_filename"])
    assert rfc2231.parser == "stdlib"
    assert [(a.section, a.encoding) for a in rfc2231.attachments] == [
        ("2", "base64"),
        ("3", "base64"),
    ]
    # A message that is one attachment is part 1; a multipart/digest's parts default to
    # message/rfc822.
    single = (
        b"From: a@example.test\r\nContent-Type: application/pdf\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n"
    )
    assert [(a.section, a.encoding, a.data) for a in parse_message(single).attachments] == [
        ("1", "base64", b"%PDF-1.4\n")
    ]
    digest = (
        b"From: a@example.test\r\nContent-Type: multipart/digest; boundary=d\r\n\r\n"
        b"--d\r\n\r\nFrom: b@example.test\r\nSubject: one\r\n\r\nfirst\r\n"
        b"--d\r\n\r\nFrom: c@example.test\r\nSubject: two\r\n\r\nsecond\r\n--d--\r\n"
    )
    parsed = parse_message_stdlib(digest)
    assert [a.mime_type for a in parsed.attachments] == ["message/rfc822"] * 2
    assert [a.section for a in parse_message(digest).attachments] == ["1", "2"]
    # A multipart that never closes is not numbered (its download reads the whole message).
    broken = parse_message(samples["broken_missing_boundary"])
    assert broken.attachments and all(a.section is None for a in broken.attachments)
