"""The search index's text: one tokenizer for documents and queries, on both stores.

Mail arrives in every language, so nothing is stemmed: text is *folded* (compatibility
decomposition, accents and other combining marks dropped, case folded: "Müller",
"MÜLLER" and "muller" are one word; "Straße" is "strasse") and cut into tokens, runs of
letters and digits. Chinese, Japanese and Korean are written without spaces between
words, so each of their characters is a token of its own and a word of several becomes
a phrase (adjacent tokens), which finds it anywhere inside a sentence.

The tokens are made here, in Python, for both stores, so a query is cut exactly the way
its documents were. The body (the bulk) is reduced to its tokens separated by spaces,
which PostgreSQL's ``to_tsvector('simple', ...)`` and SQLite FTS5's ``ascii`` tokenizer
both split at exactly those spaces and nowhere else (neither has any punctuation left
to act on; FTS5 counts every non-ASCII character as a token character). The short
fields go to PostgreSQL as a ready ``tsvector`` in its text form.

Fields. Every word of the subject, the addresses and names, the attachment names and
the body is a plain token, which a bare query word matches. The fields that the query
language can name (``from:``, ``to:``, ``cc:``, ``subject:``, ``filename:``) also carry
a field-marked copy of their tokens at the same positions: ``f:alice``. On SQLite each
field is an FTS5 column instead.

Only the first ``BODY_PREFIX_CHARS`` characters of the body are indexed: where a word
occurs in a long body, it nearly always occurs in its first few kilobytes as well, and
the cost of indexing (which sync pays for every message) grows with the length.

This module also writes the index rows (``index_messages``; migration 0016 made the
tables). Deleting a message removes its index row through the foreign key, and a message
that moves keeps its row, since folders and flags are read from the message itself.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

BODY_PREFIX_CHARS = 600
# tsvector limits: positions above 16,383 are not kept; a lexeme keeps 256 positions.
_MAX_POSITION = 16383
_MAX_POSITIONS_PER_LEXEME = 255
_MAX_TOKEN_CHARS = 100

# Field markers (PostgreSQL lexeme prefixes); the query language's field names map here.
FIELD_SUBJECT = "s"
FIELD_FROM = "f"
FIELD_TO = "t"
FIELD_CC = "c"
FIELD_FILENAME = "n"
FIELDS = (FIELD_SUBJECT, FIELD_FROM, FIELD_TO, FIELD_CC, FIELD_FILENAME)
# The FTS5 column of each field; ``body`` holds the body prefix.
FTS_COLUMNS = {
    FIELD_SUBJECT: "subject",
    FIELD_FROM: "sender",
    FIELD_TO: "recipients",
    FIELD_CC: "copied",
    FIELD_FILENAME: "filenames",
}

# Combining marks that decomposition leaves behind: Latin/Greek/Cyrillic accents, the
# extended ranges, Hebrew and Arabic points, and the kana voicing marks.
_COMBINING = re.compile(
    "[\u0300-\u036f\u0483-\u0489\u0591-\u05c7\u0610-\u061a\u064b-\u065f\u0670"
    "\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f\u3099\u309a]+"
)
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
# A token: one CJK character, or a run of letters and digits (no underscore).
TOKEN = re.compile(f"[{_CJK}]|[^\\W_{_CJK}]+")


def fold(value: str) -> str:
    """Case and accents removed, compatibility forms unified (full-width, ligatures)."""
    if value.isascii():
        return value.lower()
    decomposed = unicodedata.normalize("NFKD", value)
    return _COMBINING.sub("", decomposed).casefold()


def tokens(value: str) -> list[str]:
    """The folded tokens of ``value``, in order."""
    return [token[:_MAX_TOKEN_CHARS] for token in TOKEN.findall(fold(value))]


# Every ASCII character that is not a letter or digit becomes a space.
_ASCII_SEPARATORS = str.maketrans(
    {chr(code): " " for code in range(128) if not chr(code).isalnum() or chr(code) == "_"}
)


def token_text(value: str) -> str:
    """``tokens(value)`` separated by spaces, made fast for the common ASCII case.

    Used for the body, the bulk of every document: ``str.translate`` runs at C speed
    where the regular expression costs sync a tenth of a millisecond per message.
    """
    if value.isascii():
        return value.lower().translate(_ASCII_SEPARATORS)
    return " ".join(TOKEN.findall(fold(value)))


@dataclass
class SearchDocument:
    """What the index holds for one message, field by field (each a list of tokens)."""

    message_id: str
    subject: list[str]
    sender: list[str]
    recipients: list[str]
    copied: list[str]
    filenames: list[str]
    body: str  # tokens separated by whitespace

    @classmethod
    def of(
        cls,
        message_id: str,
        *,
        subject: str,
        from_name: str,
        from_address: str,
        to: Iterable[str],
        cc: Iterable[str],
        filenames: Iterable[str],
        body_text: str,
    ) -> SearchDocument:
        return cls(
            message_id=message_id,
            subject=tokens(subject),
            sender=tokens(f"{from_name} {from_address}"),
            recipients=tokens(" ".join(to)),
            copied=tokens(" ".join(cc)),
            filenames=tokens(" ".join(filenames)),
            body=token_text(body_text[:BODY_PREFIX_CHARS]),
        )

    def field_tsvector(self) -> str:
        """The fields' part of the PostgreSQL ``tsvector``, in its text form.

        Every token is there plainly and field-marked at the same position. Fields follow
        each other with a gap of two positions, so no phrase spans two fields; the body's
        ``to_tsvector`` goes before it (``||`` shifts these positions past the body's).
        """
        positions: dict[str, list[str]] = {}
        position = 3
        for marker, words in (
            (FIELD_SUBJECT, self.subject),
            (FIELD_FROM, self.sender),
            (FIELD_TO, self.recipients),
            (FIELD_CC, self.copied),
            (FIELD_FILENAME, self.filenames),
        ):
            for word in words:
                if position > _MAX_POSITION:
                    break
                where = str(position)
                for lexeme in (word, f"{marker}:{word}"):
                    found = positions.get(lexeme)
                    if found is None:
                        positions[lexeme] = [where]
                    elif len(found) < _MAX_POSITIONS_PER_LEXEME:
                        found.append(where)
                position += 1
            position += 2
        # Tokens hold neither quotes nor backslashes, so no escaping is needed.
        return " ".join(f"'{lexeme}':{','.join(at)}" for lexeme, at in positions.items())

    def fts_columns(self) -> dict[str, str]:
        """The FTS5 row: each field's tokens joined by spaces."""
        return {
            "subject": " ".join(self.subject),
            "sender": " ".join(self.sender),
            "recipients": " ".join(self.recipients),
            "copied": " ".join(self.copied),
            "filenames": " ".join(self.filenames),
            "body": self.body,
        }


def document_for_row(row: dict[str, Any], filenames: Sequence[str]) -> SearchDocument:
    """The document of a message row as the mail store builds it (column names as keys)."""
    return SearchDocument.of(
        row["id"],
        subject=row["subject"],
        from_name=row["from_name"],
        from_address=row["from_address"],
        to=row["to_addresses"],
        cc=row["cc_addresses"],
        filenames=filenames,
        body_text=row["body_text"],
    )


# The body is cut by PostgreSQL's parser, in C and in the database's own process, from
# text that holds nothing but our tokens and spaces: it finds exactly those tokens.
_PG_INSERT = text(
    "INSERT INTO message_search (message_id, tenant_id, document) "
    "SELECT id, CAST(:tenant_id AS uuid), "
    "to_tsvector('simple', body) || CAST(fields AS tsvector) "
    "FROM unnest(CAST(:ids AS text[]), CAST(:bodies AS text[]), CAST(:fields AS text[])) "
    "AS d(id, body, fields)"
)
_SQLITE_ROWID = text("INSERT INTO message_search_rows (message_id) VALUES (:message_id)")
_SQLITE_INSERT = text(
    "INSERT INTO message_search (rowid, subject, sender, recipients, copied, filenames, body) "
    "VALUES (:rowid, :subject, :sender, :recipients, :copied, :filenames, :body)"
)


def index_messages(
    session: Session | Connection, tenant_id: Any, documents: Sequence[SearchDocument]
) -> None:
    """Add the documents of newly inserted messages to the index, in the caller's
    transaction (one statement for the batch on PostgreSQL)."""
    if not documents:
        return
    bind = session.get_bind() if isinstance(session, Session) else session
    if bind.dialect.name == "postgresql":
        session.execute(
            _PG_INSERT,
            {
                "tenant_id": str(tenant_id),
                "ids": [doc.message_id for doc in documents],
                "bodies": [doc.body for doc in documents],
                "fields": [doc.field_tsvector() for doc in documents],
            },
        )
        return
    for doc in documents:
        rowid = session.execute(_SQLITE_ROWID, {"message_id": doc.message_id}).lastrowid  # type: ignore[attr-defined]
        session.execute(_SQLITE_INSERT, {"rowid": rowid, **doc.fts_columns()})
