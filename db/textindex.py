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

The body is indexed in two steps. In the transaction that stores a message, only its
first ``BODY_AT_ONCE_CHARS`` characters go in (the cost of indexing, which sync pays for
every message, grows with the length), so new mail is findable at once by its fields
and the start of its text (what the list view shows of it). A message whose body is
longer is marked ``pending`` in the same statement; after the commit, a background job
(``complete_documents``, run by ``email_service.services.search.fullindex``) replaces
its entry with one over the first ``BODY_INDEX_CHARS`` characters and clears the mark,
a batch per transaction.
Rebuilding an entry from the message is idempotent, and the mark is committed with the
message, so no body is left half-indexed for good: a sweep finds every marked row.

This module also writes the index rows (``index_messages``; migrations 0016 and 0018f
made the tables). Deleting a message removes its index row through the foreign key, and
a message that moves keeps its row, since folders and flags are read from the message.
"""

from __future__ import annotations

import json
import logging
import re
import unicodedata
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, event, text
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session, sessionmaker

from db.listeners import CommitListeners

log = logging.getLogger(__name__)

# The start of a body that the transaction storing the message indexes: what the list
# view shows of it (the preview is its first 200 characters), so a word seen in the list
# is found at once. Indexing costs sync per character (to_tsvector and GIN entries, which
# the completion writes again): with 600 characters the index cost sync 12-19 % of its
# CPU, with 200 about 5 % (README "Search: what it costs").
BODY_AT_ONCE_CHARS = 200
# The prefix migration 0016 indexed, and how much of the body a search reads with each
# hit for its snippet before it reads further.
BODY_PREFIX_CHARS = 600
# How much of the body the completed entry covers: 100,000 characters, some 15,000
# words; text past that (rare in mail that people write) is not searched.
BODY_INDEX_CHARS = 100_000
# tsvector limit: positions above 16,383 are not kept (and a lexeme keeps 256 positions,
# which the tsvector input enforces itself).
_MAX_POSITION = 16383
_MAX_TOKEN_CHARS = 100
# A lexeme that no text here is ever cut into (tokens hold no underscore).
_GAP = "_"

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


# Every ASCII character that is not a letter or digit becomes a space.
_ASCII_SEPARATORS = str.maketrans(
    {chr(code): " " for code in range(128) if not chr(code).isalnum() or chr(code) == "_"}
)


def tokens(value: str) -> list[str]:
    """The folded tokens of ``value``, in order."""
    if value.isascii():
        found = value.lower().translate(_ASCII_SEPARATORS).split()
    else:
        found = TOKEN.findall(fold(value))
    if max(map(len, found), default=0) > _MAX_TOKEN_CHARS:
        return [token[:_MAX_TOKEN_CHARS] for token in found]
    return found


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
    # The body went beyond what this document holds: a completed entry is owed.
    pending: bool = False

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
        body_chars: int = BODY_PREFIX_CHARS,
    ) -> SearchDocument:
        return cls(
            message_id=message_id,
            subject=tokens(subject),
            sender=tokens(f"{from_name} {from_address}"),
            recipients=tokens(" ".join(to)),
            copied=tokens(" ".join(cc)),
            filenames=tokens(" ".join(filenames)),
            body=token_text(body_text[:body_chars]),
            pending=len(body_text) > body_chars and body_chars < BODY_INDEX_CHARS,
        )

    def field_tsvector(self, *, gap_after: bool = False) -> str:
        """The fields' part of the PostgreSQL ``tsvector``, in its text form.

        Every token is there plainly and field-marked at the same position. Fields follow
        each other with a gap of two positions, so no phrase spans two fields. A body
        prefix's ``to_tsvector`` goes before it (``||`` shifts these positions past the
        body's). A completed entry puts the fields first instead, since a long body
        reaches the largest position a ``tsvector`` keeps (16,383) and the fields would
        all collapse onto it: ``gap_after`` then ends the fields with ``_`` (a lexeme no
        tokenizer here makes), two positions on, which the writer deletes after ``||``
        has shifted the body past it.
        """
        # Each occurrence goes out as its own entry: the tsvector input sorts the lexemes
        # and merges the positions of repeated ones (keeping the first 256), which costs
        # less there than a dictionary of positions costs here.
        parts: list[str] = []
        position = 3
        for marker, words in (
            (FIELD_SUBJECT, self.subject),
            (FIELD_FROM, self.sender),
            (FIELD_TO, self.recipients),
            (FIELD_CC, self.copied),
            (FIELD_FILENAME, self.filenames),
        ):
            if position + len(words) > _MAX_POSITION + 1:
                words = words[: max(_MAX_POSITION + 1 - position, 0)]
            # Tokens hold neither quotes nor backslashes, so no escaping is needed.
            parts.extend(
                f"'{word}':{at} '{marker}:{word}':{at}" for at, word in enumerate(words, position)
            )
            position += len(words) + 2
        if gap_after and parts:
            parts.append(f"'{_GAP}':{min(position - 1, _MAX_POSITION)}")
        return " ".join(parts)

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
        body_chars=BODY_AT_ONCE_CHARS,
    )


# The body is cut by PostgreSQL's parser, in C and in the database's own process, from
# text that holds nothing but our tokens and spaces: it finds exactly those tokens.
_PG_INSERT = text(
    "INSERT INTO message_search (message_id, tenant_id, document, pending) "
    "SELECT id, CAST(:tenant_id AS uuid), "
    "to_tsvector('simple', body) || CAST(fields AS tsvector), pending "
    "FROM unnest(CAST(:ids AS text[]), CAST(:bodies AS text[]), CAST(:fields AS text[]), "
    "CAST(:pending AS boolean[])) AS d(id, body, fields, pending)"
)
_PG_INSERT_COMPLETE = text(
    "INSERT INTO message_search (message_id, tenant_id, document) "
    "SELECT id, CAST(:tenant_id AS uuid), "
    "to_tsvector('simple', body) || CAST(fields AS tsvector) "
    "FROM unnest(CAST(:ids AS text[]), CAST(:bodies AS text[]), CAST(:fields AS text[])) "
    "AS d(id, body, fields)"
)
_SQLITE_ROWID = text(
    "INSERT INTO message_search_rows (message_id, pending) VALUES (:message_id, :pending)"
)
_SQLITE_ROWID_COMPLETE = text("INSERT INTO message_search_rows (message_id) VALUES (:message_id)")
_SQLITE_INSERT = text(
    "INSERT INTO message_search (rowid, subject, sender, recipients, copied, filenames, body) "
    "VALUES (:rowid, :subject, :sender, :recipients, :copied, :filenames, :body)"
)

#: ``session.info`` key: the tenants whose entries this transaction left pending.
_PENDING_TENANTS = "search_pending_tenants"

#: ``listener(engine, tenant_ids)`` after every commit that left entries pending, in this
#: process (``tenant_ids``: the tenants they belong to).
LISTENERS: CommitListeners[Any] = CommitListeners("search index")


def index_messages(
    session: Session | Connection,
    tenant_id: Any,
    documents: Sequence[SearchDocument],
    *,
    track_pending: bool = True,
) -> None:
    """Add the documents of newly inserted messages to the index, in the caller's
    transaction (one statement for the batch on PostgreSQL).

    Documents that hold only a body prefix are marked ``pending``, and after the commit
    the ``LISTENERS`` hear which tenants have entries to complete.
    ``track_pending=False`` is for migration 0016, whose tables have no mark yet.
    """
    if not documents:
        return
    bind = session.get_bind() if isinstance(session, Session) else session
    if track_pending and isinstance(session, Session) and any(doc.pending for doc in documents):
        session.info.setdefault(_PENDING_TENANTS, set()).add(tenant_id)
    if bind.dialect.name == "postgresql":
        params: dict[str, Any] = {
            "tenant_id": str(tenant_id),
            "ids": [doc.message_id for doc in documents],
            "bodies": [doc.body for doc in documents],
            "fields": [doc.field_tsvector() for doc in documents],
        }
        if track_pending:
            params["pending"] = [doc.pending for doc in documents]
        session.execute(_PG_INSERT if track_pending else _PG_INSERT_COMPLETE, params)
        return
    for doc in documents:
        if track_pending:
            rowid = session.execute(  # type: ignore[attr-defined]
                _SQLITE_ROWID, {"message_id": doc.message_id, "pending": int(doc.pending)}
            ).lastrowid
        else:
            rowid = session.execute(  # type: ignore[attr-defined]
                _SQLITE_ROWID_COMPLETE, {"message_id": doc.message_id}
            ).lastrowid
        session.execute(_SQLITE_INSERT, {"rowid": rowid, **doc.fts_columns()})


# Completing entries. A batch of the tenant's pending rows is taken and locked first
# (PostgreSQL: rows another run holds are skipped, so two runs for one tenant share the
# work), by the partial index and in no particular order, so a batch reads only its own
# rows; then their messages are read by id. (Taking them in id order joined with their
# messages read and sorted the text of every pending message for every batch of 100:
# half of the completion's cost at 4,000 pending entries, and quadratic in a backlog.)
_PG_TAKE_PENDING = text(
    "SELECT message_id FROM message_search"
    " WHERE tenant_id = CAST(:tenant_id AS uuid) AND pending"
    " LIMIT :n FOR UPDATE SKIP LOCKED"
)
_PG_READ_PENDING = text(
    "SELECT m.id, m.subject, m.from_name, m.from_address, m.to_addresses, m.cc_addresses,"
    " substr(m.body_text, 1, :chars) AS body"
    " FROM messages m WHERE m.id = ANY(CAST(:ids AS text[]))"
)
_PG_COMPLETE = text(
    "UPDATE message_search s SET pending = false,"
    " document = ts_delete(CAST(d.fields AS tsvector) || to_tsvector('simple', d.body), '_')"
    " FROM unnest(CAST(:ids AS text[]), CAST(:bodies AS text[]), CAST(:fields AS text[]))"
    " AS d(id, body, fields)"
    # ``= ANY`` as well: the rows are found by their ids whatever the planner guesses
    # of the table (a nested loop over a sequential scan, with statistics of an empty
    # table, compared every row with every id: 1 s per batch of 100 at 4,000 rows).
    " WHERE s.message_id = d.id AND s.message_id = ANY(CAST(:ids AS text[]))"
    " AND s.tenant_id = CAST(:tenant_id AS uuid)"
)
_SQLITE_TAKE_PENDING = text(
    "SELECT r.id AS rowid, m.id, m.subject, m.from_name, m.from_address, m.to_addresses,"
    " m.cc_addresses, substr(m.body_text, 1, :chars) AS body"
    " FROM message_search_rows r JOIN messages m ON m.id = r.message_id"
    " WHERE r.pending = 1 AND m.tenant_id = :tenant_id LIMIT :n"
)
_SQLITE_COMPLETE_BODY = text("UPDATE message_search SET body = :body WHERE rowid = :rowid")
_SQLITE_COMPLETE_ROW = text("UPDATE message_search_rows SET pending = 0 WHERE id = :rowid")
_FILENAMES = text(
    "SELECT message_id, filename FROM attachments WHERE message_id IN :ids"
).bindparams(bindparam("ids", expanding=True))


def complete_documents(session: Session, tenant_id: Any, limit: int) -> int:
    """Replace up to ``limit`` of the tenant's pending entries with entries over the
    first ``BODY_INDEX_CHARS`` characters of their bodies; returns how many.

    Idempotent: an entry is rebuilt from its message, whatever it held before.
    """
    postgres = session.get_bind().dialect.name == "postgresql"
    tenant = str(tenant_id) if postgres else tenant_id_for_sqlite(tenant_id)
    if postgres:
        taken = session.scalars(_PG_TAKE_PENDING, {"tenant_id": tenant, "n": limit}).all()
        if not taken:
            return 0
        rows = session.execute(
            _PG_READ_PENDING, {"ids": list(taken), "chars": BODY_INDEX_CHARS}
        ).all()
    else:
        rows = session.execute(
            _SQLITE_TAKE_PENDING, {"tenant_id": tenant, "chars": BODY_INDEX_CHARS, "n": limit}
        ).all()
    if not rows:
        return 0
    names: dict[str, list[str]] = {}
    for message_id, filename in session.execute(_FILENAMES, {"ids": [row.id for row in rows]}):
        names.setdefault(message_id, []).append(filename)
    documents = [
        SearchDocument.of(
            row.id,
            subject=row.subject,
            from_name=row.from_name,
            from_address=row.from_address,
            to=_strings(row.to_addresses),
            cc=_strings(row.cc_addresses),
            filenames=names.get(row.id, ()),
            body_text=row.body or "",
            body_chars=BODY_INDEX_CHARS,
        )
        for row in rows
    ]
    if postgres:
        session.execute(
            _PG_COMPLETE,
            {
                "tenant_id": tenant,
                "ids": [doc.message_id for doc in documents],
                "bodies": [doc.body for doc in documents],
                "fields": [doc.field_tsvector(gap_after=True) for doc in documents],
            },
        )
    else:
        for row, doc in zip(rows, documents, strict=True):
            session.execute(_SQLITE_COMPLETE_BODY, {"rowid": row.rowid, "body": doc.body})
            session.execute(_SQLITE_COMPLETE_ROW, {"rowid": row.rowid})
    return len(rows)


_PG_PENDING_TENANTS = text("SELECT DISTINCT tenant_id FROM message_search WHERE pending")
_SQLITE_PENDING_TENANTS = text(
    "SELECT DISTINCT m.tenant_id FROM message_search_rows r"
    " JOIN messages m ON m.id = r.message_id WHERE r.pending = 1"
)


def tenants_with_pending(session: Session) -> list[uuid.UUID]:
    """Every tenant with entries still to complete (a system-scope session)."""
    postgres = session.get_bind().dialect.name == "postgresql"
    found = session.scalars(_PG_PENDING_TENANTS if postgres else _SQLITE_PENDING_TENANTS)
    return [value if isinstance(value, uuid.UUID) else uuid.UUID(str(value)) for value in found]


def tenant_id_for_sqlite(tenant_id: Any) -> str:
    """A tenant id as the SQLite store keeps it (32 hex digits, SQLAlchemy's Uuid)."""
    return uuid.UUID(str(tenant_id)).hex


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):  # SQLite returns JSON as text here
        value = json.loads(value)
    return [str(item) for item in value or []]


def _after_commit(session: Session) -> None:
    if session.in_nested_transaction():
        # A savepoint released (SQLAlchemy calls that a commit too): nothing is committed
        # yet, and a completion woken now would find no entry and end, leaving it pending.
        return
    tenants: set[Any] | None = session.info.pop(_PENDING_TENANTS, None)
    if tenants:
        LISTENERS.notify(session.get_bind(), tenants)


def _after_rollback(session: Session) -> None:
    if session.in_nested_transaction():
        # A savepoint rolled back: the entries written before it are still to commit. A
        # tenant noted inside it costs at most a completion that finds nothing.
        return
    session.info.pop(_PENDING_TENANTS, None)


def install(sessions: sessionmaker[Session]) -> None:
    """Tell the pending listeners after every commit of ``sessions`` that left some."""
    event.listen(sessions, "after_commit", _after_commit)
    event.listen(sessions, "after_rollback", _after_rollback)
