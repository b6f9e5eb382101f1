"""Numbering a message's parts as IMAP does (``mail.mimeparts``), and its shortcuts.

``leaf_parts`` reads plain part headers without the stdlib's feed parser and crosses
base64 bodies by jumping to the next "-"; both shortcuts must give exactly what the
stdlib parser and ``bytes.find`` give, which these tests hold them to.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from email_service.mail import mimeparts
from email_service.mail.mimeparts import LeafPart, leaf_parts
from tests.mail.test_mime import CORPUS, CPYTHON_SAMPLES, realistic_corpus
from tests.servers.mailgen import bulk, corpus


def _messages() -> Iterator[bytes]:
    yield from corpus().values()
    yield from (make() for make in CORPUS.values())
    yield from (path.read_bytes() for path in CPYTHON_SAMPLES.values())
    yield from realistic_corpus(40, seed=3)
    yield from bulk(40, seed=1, attachment_ratio=0.5)


def _header_blocks(raw: bytes, monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    blocks: list[bytes] = []
    read = mimeparts._header_fields

    def noted(block: bytes, digest: bool) -> object:
        blocks.append(block)
        return read(block, digest)

    monkeypatch.setattr(mimeparts, "_header_fields", noted)
    try:
        leaf_parts(raw)
    finally:
        monkeypatch.setattr(mimeparts, "_header_fields", read)
    return blocks


def _as_the_stdlib_reads(block: bytes) -> object:
    headers = mimeparts._HEADERS.parsebytes(block)
    return _fields(headers)


def _fields(headers: object) -> object:
    return (
        headers.items(),  # type: ignore[attr-defined]
        headers.get_content_type(),  # type: ignore[attr-defined]
        headers.get_boundary(),  # type: ignore[attr-defined]
        headers.get_filename(),  # type: ignore[attr-defined]
        headers.get_content_disposition(),  # type: ignore[attr-defined]
        headers.get("content-transfer-encoding"),  # type: ignore[attr-defined]
    )


def _stdlib_only(raw: bytes, monkeypatch: pytest.MonkeyPatch) -> list[LeafPart] | None:
    with monkeypatch.context() as patched:
        patched.setattr(mimeparts, "_plain_header_fields", lambda _block: None)
        patched.setattr(mimeparts, "_find", lambda raw, marker, s, e: raw.find(marker, s, e))
        return leaf_parts(raw)


def test_part_headers_are_read_as_the_stdlib_reads_them(monkeypatch: pytest.MonkeyPatch) -> None:
    plain = 0
    for raw in _messages():
        for block in _header_blocks(raw, monkeypatch):
            fast = mimeparts._plain_header_fields(block)
            if fast is not None:
                plain += 1
                assert _fields(fast) == _as_the_stdlib_reads(block), block
    assert plain > 200  # the shortcut is taken, not only declined


def test_sections_are_the_same_as_with_the_stdlib_parser_and_plain_searches(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for raw in _messages():
        assert leaf_parts(raw) == _stdlib_only(raw, monkeypatch)


def test_a_bench_message_with_an_attachment_is_numbered_without_the_feed_parser(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    [raw] = bulk(1, seed=1, attachment_ratio=1.0)
    monkeypatch.setattr(mimeparts._HEADERS, "parsebytes", None)  # would fail if called
    assert [leaf.section for leaf in leaf_parts(raw) or []] == ["1.1", "1.2", "2"]


_LINES = [
    'Content-Type: multipart/mixed; boundary="b"',
    'Content-Type: text/plain; name="a.txt"',
    "Content-Type: application/pdf;",
    ' name="folded.pdf"',
    "\tcharset=utf-8",
    "Content-Disposition: attachment; filename*=utf-8''caf%C3%A9.txt",
    "Content-Transfer-Encoding: base64",
    "content-type:image/png",
    "From someone",
    "From: a@b.example",
    ":no name",
    "no colon here",
    "X-Odd: caf\u00e9",
    "X-Empty:",
    "X-Tab:\tvalue\t",
    "X:\ra",
    "",
]


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.sampled_from(_LINES), max_size=8),
    st.lists(st.sampled_from(["\r\n", "\n", "\r"]), min_size=9, max_size=9),
    st.sampled_from(["\r\n", "\n", "", "\r"]),
)
def test_any_header_block_the_shortcut_takes_reads_as_the_stdlib_reads_it(
    lines: list[str], endings: list[str], blank: str
) -> None:
    block = (
        "".join(line + ending for line, ending in zip(lines, endings, strict=False)) + blank
    ).encode("utf-8")
    fast = mimeparts._plain_header_fields(block)
    if fast is not None:
        assert _fields(fast) == _as_the_stdlib_reads(block)


@settings(max_examples=400, deadline=None)
@given(
    st.binary(max_size=300).map(
        lambda data: data.translate(bytes(b"-ab\n"[i % 4] for i in range(256)))
    ),
    st.integers(min_value=1, max_value=6),
    st.integers(min_value=0, max_value=300),
    st.integers(min_value=0, max_value=300),
    st.integers(min_value=1, max_value=16),
)
def test_finding_a_delimiter_is_finding_it_with_bytes_find(
    raw: bytes, length: int, start: int, end: int, stretch: int
) -> None:
    marker = b"--" + b"ab-"[: length % 3 + 1] * length
    with pytest.MonkeyPatch.context() as patched:
        patched.setattr(mimeparts, "_STRETCH", stretch)
        assert mimeparts._find(raw, marker, start, end) == raw.find(marker, start, end)
