"""searchMessages: one query across all of a user's accounts, on PostgreSQL and SQLite.

The query (``query.parse_query``) becomes SQL over ``messages``, scoped to the caller's
live accounts (and, on PostgreSQL, to the tenant by row-level security as well). Its
text terms are answered by the index of ``db.textindex``: a ``tsvector`` with a GIN index
on PostgreSQL, FTS5 on SQLite. Both hold the same tokens, so both stores answer the same
queries the same way; ``tests/search`` runs one set of cases on each. On PostgreSQL the
runtime role cannot read the index's text: the owner's ``search_documents`` (migration
0020r) answers which entries of the transaction's tenant match which tsqueries, and
``_pg_rows`` decides which entries to ask it about.

Pages are keyset pages: the cursor holds the last hit's sort key, so mail that arrives
between two pages never shifts a hit into the next page twice or out of it. With
``sort=relevance`` (PostgreSQL ``ts_rank``, SQLite ``bm25``) the key is the score first,
then the date; ranking reads every match, so it costs more than date order for common
words.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Boolean,
    ColumnElement,
    Float,
    Integer,
    and_,
    bindparam,
    cast,
    column,
    false,
    func,
    literal,
    literal_column,
    not_,
    null,
    or_,
    select,
    table,
    true,
    tuple_,
)
from sqlalchemy import Text as SqlText
from sqlalchemy.dialects.postgresql import ARRAY, TSQUERY, aggregate_order_by

from db.models import Account, Folder, Message
from db.textindex import BODY_INDEX_CHARS, BODY_PREFIX_CHARS, FTS_COLUMNS, TOKEN, fold
from email_service import present
from email_service.errors import AccountNotFound, FolderNotFound, InvalidRequest
from email_service.scope import Scope
from email_service.services.mailbox import LIST_COLUMNS
from email_service.services.search.query import (
    And,
    Flag,
    InFolder,
    Node,
    Not,
    Or,
    Received,
    Size,
    Text,
    parse_query,
    positive_texts,
)

SNIPPET_CHARS = 160
# How many of the newest messages a search tries before it asks the index (PostgreSQL).
RECENT_WINDOW = 500
_SNIPPET_LEAD = 50

_fts = table("message_search", column("rowid"))
_fts_rows = table("message_search_rows", column("id"), column("message_id"))


class InvalidCursor(InvalidRequest):
    code = "INVALID_CURSOR"

    def __init__(self) -> None:
        super().__init__("The cursor is not one this query gave out")


def search_messages(
    scope: Scope,
    q: str,
    *,
    account_id: str | None = None,
    folder_id: str | None = None,
    limit: int = 25,
    cursor: str | None = None,
    sort: str = "date",
) -> dict[str, Any]:
    """One page of the caller's messages matching ``q``, newest (or best) first.

    Raises ``InvalidQuery`` (400, says where), ``InvalidCursor`` (400),
    ``AccountNotFound`` / ``FolderNotFound`` (404) for an id the caller does not own.
    """
    tree = parse_query(q)
    caller = scope.caller
    session = scope.session
    postgres = session.get_bind().dialect.name == "postgresql"
    accounts_query = select(Account.id).where(
        Account.tenant_id == caller.tenant_id,
        Account.user_id == caller.user_id,
        Account.deleted_at.is_(None),
    )
    if account_id is not None:
        accounts_query = accounts_query.where(Account.id == account_id)
    account_ids = list(session.scalars(accounts_query))
    if account_id is not None and not account_ids:
        raise AccountNotFound(account_id)
    if folder_id is not None:
        owned = session.scalar(
            select(Folder.id).where(
                Folder.id == folder_id,
                Folder.tenant_id == caller.tenant_id,
                Folder.account_id.in_(account_ids or [""]),
            )
        )
        if owned is None:
            raise FolderNotFound(folder_id)
    if not account_ids:
        return {"messages": []}

    scoped: list[ColumnElement[bool]] = [
        Message.tenant_id == caller.tenant_id,
        Message.account_id.in_(account_ids),
    ]
    if folder_id is not None:
        scoped.append(Message.folder_id == folder_id)

    fingerprint = hashlib.sha256(f"{sort}\n{q}".encode()).hexdigest()[:16]
    after = _decode_cursor(cursor, fingerprint) if cursor else None
    positives = positive_texts(tree)
    ranked = sort == "relevance" and bool(positives)
    page = _Page(scoped, after, ranked, limit)
    if postgres:
        rows, score_used = _pg_rows(session, _PgCompiler(scope, account_ids), tree, positives, page)
    else:
        compiler = _SqliteCompiler(scope, account_ids)
        statement, score = page.select(), None
        if ranked:
            statement, score = compiler.ranked(statement, positives)
        finished = page.finish(statement, compiler.node(tree), score, compiler.score_direction)
        rows = list(session.execute(finished).all())
        score_used = score is not None
    more = len(rows) > limit
    rows = rows[:limit]
    terms = _marked_terms(positives)
    sources = {row.id: row.body_prefix or row.preview for row in rows}
    # A match past the prefix (the index covers the body to BODY_INDEX_CHARS): the
    # snippet comes from the text that holds it, read for those hits only.
    further = [
        row.id
        for row in rows
        if terms[0]
        and len(row.body_prefix or "") >= BODY_PREFIX_CHARS
        and not _matches_in(sources[row.id], terms)
    ]
    if further:
        for message_id, text in session.execute(
            select(Message.id, func.substr(Message.body_text, 1, BODY_INDEX_CHARS)).where(
                Message.tenant_id == caller.tenant_id, Message.id.in_(further)
            )
        ):
            sources[message_id] = text
    hits = []
    for row in rows:
        hit = present.message_summary(row)
        hit["snippet"] = snippet(sources[row.id], terms)
        hits.append(hit)
    body: dict[str, Any] = {"messages": hits}
    if more and rows:
        last = rows[-1]
        key_values: list[Any] = [last.received_at, last.id]
        if score_used:
            key_values.insert(0, float(last.score))
        body["nextCursor"] = _encode_cursor(fingerprint, key_values)
    return body


@dataclass
class _Page:
    """What every statement of one search shares: the caller's reach, the cursor, the
    order and the page size."""

    scoped: list[ColumnElement[bool]]  # tenant, accounts, folder
    after: dict[str, Any] | None
    ranked: bool
    limit: int

    @staticmethod
    def select() -> Any:
        body_prefix = func.substr(Message.body_text, 1, BODY_PREFIX_CHARS).label("body_prefix")
        return select(*LIST_COLUMNS, body_prefix)

    def date_cursor(self) -> list[ColumnElement[bool]]:
        if self.after is None or self.ranked:
            return []
        received, last_id = self.after["k"][-2:]
        return [tuple_(Message.received_at, Message.id) < tuple_(received, last_id)]

    def newest(self, *columns: Any) -> Any:
        """The caller's messages in reach past the cursor, newest first."""
        return (
            select(*columns)
            .where(*self.scoped, *self.date_cursor())
            .order_by(Message.received_at.desc(), Message.id.desc())
        )

    def finish(
        self,
        statement: Any,
        where: ColumnElement[bool],
        score: ColumnElement[Any] | None,
        direction: int,
        *,
        sorted_here: bool = False,
    ) -> Any:
        """``statement`` filtered by ``where``, the reach and the cursor, ordered, limited.

        ``sorted_here``: order by an expression no index provides, so that PostgreSQL
        sorts the few rows the index function gave instead of walking the newest
        messages until a page is full (which, for a page that is not full, is all of
        them)."""
        conditions = [*self.scoped, where]
        if score is not None:
            # ts_rank: higher is better; bm25: lower is better. Both are ordered "best
            # first" by comparing ``direction * score`` ascending.
            key = (score * direction).label("score")
            statement = statement.add_columns(key)
            if self.after is not None:
                best, received, last_id = self.after["k"]
                conditions.append(
                    or_(
                        key > bindparam("cursor_score", best, type_=Float),
                        and_(
                            key == bindparam("cursor_score_eq", best, type_=Float),
                            tuple_(Message.received_at, Message.id) < tuple_(received, last_id),
                        ),
                    )
                )
            ordering = [key.asc(), Message.received_at.desc(), Message.id.desc()]
        else:
            conditions.extend(self.date_cursor())
            received_at = (Message.received_at + 0) if sorted_here else Message.received_at
            ordering = [received_at.desc(), Message.id.desc()]
        return statement.where(*conditions).order_by(*ordering).limit(self.limit + 1)


def _pg_rows(
    session: Any, compiler: _PgCompiler, tree: Node, positives: list[Text], page: _Page
) -> tuple[list[Any], bool]:
    """The page on PostgreSQL (and whether it is ranked).

    The index's entries are read only through ``search_documents`` (migration 0020r),
    which answers for the transaction's tenant which tsqueries each entry matches; the
    runtime role cannot read their text. Which entries it is asked about decides the
    cost, and PostgreSQL's guess for a word cannot be trusted (its statistics cannot
    list every word; for one it has not sampled it guesses a fraction that makes
    "read the newest messages until a page is full" look cheap, and for a rare word
    that reads every message). So, in date order:

    1. the newest ``RECENT_WINDOW`` messages in reach that meet the conditions without
       text (``has:attachment``, ``in:``, dates: the conjuncts without text) are asked
       about, in one call, in date order; a common word fills its page there. When the
       rest of the query is one tsquery (``filtered``), the function returns only the
       entries that match it and, if nothing else is left to test, stops once it has a
       page's worth;
    2. only when that holds no full page: the tenant's entries that match the words
       every match has (``required``), from the GIN index (few, since the window had
       so few); with no such word, all of the tenant's entries, tested one by one (what
       a query like ``-word`` or ``word OR is:unread`` costs in any plan).

    Relevance ranks every match, so it starts at step 2. No text term: ``messages``
    alone.
    """
    required = compiler.required_tsquery(tree)
    ranking = " | ".join(_tsquery(node) for node in positives) if page.ranked else None
    # What every match satisfies: the words it must have, or a query of text alone.
    filtered = required if required is not None else compiler.tsquery(tree)
    compiler.start(None, filtered, None)
    where = compiler.node(tree)
    if not compiler.has_text:
        return list(session.execute(page.finish(page.select(), where, None, 1)).all()), False
    parts = tree.children if isinstance(tree, And) else (tree,)
    # Nothing but ``filtered`` to test: each part with text is text alone, and ``filtered``
    # covers them (it is what they compile to).
    exact = not compiler.queries and all(
        compiler.tsquery(part) is not None for part in parts if _has_text(part)
    )

    def rows(ids: Any, wanted: int | None = None) -> list[Any]:
        documents = compiler.start(ids, filtered, ranking, wanted)
        where = compiler.node(tree)
        statement = page.select().join(documents, documents.c.message_id == Message.id)
        score = documents.c.rank if ranking is not None else None
        statement = page.finish(statement, where, score, -1, sorted_here=True)
        return list(session.execute(statement, {"search_queries": compiler.queries}).all())

    if ranking is None:
        plain = [compiler.node(part) for part in parts if not _has_text(part)]
        recent = (
            page.newest(Message.id, Message.received_at)
            .where(*plain)
            .limit(RECENT_WINDOW)
            .subquery("recent")
        )
        newest_first = aggregate_order_by(
            recent.c.id, recent.c.received_at.desc(), recent.c.id.desc()
        )
        ids = select(func.array_agg(newest_first)).scalar_subquery()
        found = rows(ids, page.limit + 1 if exact else None)
        if len(found) > page.limit:
            return found, False
    return rows(None), ranking is not None


def _has_text(node: Node) -> bool:
    if isinstance(node, Text):
        return True
    if isinstance(node, Not):
        return _has_text(node.child)
    if isinstance(node, And | Or):
        return any(_has_text(child) for child in node.children)
    return False


def _encode_cursor(fingerprint: str, key: list[Any]) -> str:
    raw = json.dumps({"f": fingerprint, "k": key}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str, fingerprint: str) -> dict[str, Any]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        decoded = json.loads(raw)
        key = decoded["k"]
        valid = (
            decoded["f"] == fingerprint
            and isinstance(key, list)
            and len(key) in (2, 3)
            and isinstance(key[-2], int)
            and isinstance(key[-1], str)
            and all(isinstance(value, int | float) for value in key[:-2])
        )
    except (ValueError, KeyError, TypeError):
        valid = False
    if not valid:
        raise InvalidCursor()
    return dict(decoded)


class _Compiler(ABC):
    """Query tree → SQL condition over ``messages``; the text terms are per store."""

    score_direction = 1

    def __init__(self, scope: Scope, account_ids: list[str]) -> None:
        self.scope = scope
        self.account_ids = account_ids
        self._folders: dict[str, ColumnElement[bool]] = {}

    def node(self, node: Node) -> ColumnElement[bool]:
        if isinstance(node, And):
            return and_(*(self.node(child) for child in node.children))
        if isinstance(node, Or):
            return or_(*(self.node(child) for child in node.children))
        if isinstance(node, Not):
            return not_(self.node(node.child))
        if isinstance(node, Text):
            return self.text(node)
        if isinstance(node, Flag):
            return {
                "attachment": Message.attachment_count > 0,
                "unread": Message.is_read.is_(False),
                "read": Message.is_read.is_(True),
                "starred": Message.is_starred.is_(True),
            }[node.name]
        if isinstance(node, Received):
            if node.before:
                return Message.received_at < node.at_ms
            return Message.received_at >= node.at_ms
        if isinstance(node, Size):
            return Message.size > node.bytes if node.larger else Message.size < node.bytes
        if isinstance(node, InFolder):
            return self.in_folder(node.name)
        raise AssertionError(node)

    def in_folder(self, name: str) -> ColumnElement[bool]:
        if name not in self._folders:
            self._folders[name] = self._in_folder(name)
        return self._folders[name]

    def _in_folder(self, name: str) -> ColumnElement[bool]:
        # A handful of folders per account: matched here (Unicode case folding, the same
        # on both stores), so the plan sees ids.
        folders = [
            folder_id
            for folder_id, kind, folder_name, display in self.scope.session.execute(
                select(Folder.id, Folder.type, Folder.name, Folder.display_name).where(
                    Folder.tenant_id == self.scope.caller.tenant_id,
                    Folder.account_id.in_(self.account_ids),
                )
            )
            if name in (kind, folder_name.casefold(), display.casefold())
        ]
        if not folders:
            return false()
        return Message.folder_id.in_(folders)

    @abstractmethod
    def text(self, node: Text) -> ColumnElement[bool]:
        """The condition of one text term, in this store's index."""

    @abstractmethod
    def ranked(self, statement: Any, positives: list[Text]) -> tuple[Any, ColumnElement[Any]]:
        """``statement`` joined to what ranks it, and the rank column (relevance sort)."""


def _tsq(query: str) -> ColumnElement[Any]:
    # Our tokens are the lexemes already: the text form, not to_tsquery (no parsing).
    return cast(literal(query), TSQUERY)


def _tsquery(node: Text) -> str:
    marker = f"{node.field}:" if node.field else ""
    lexemes = [f"'{marker}{token}'" for token in node.tokens]
    if node.prefix:
        lexemes[-1] += ":*"
    joined = " <-> ".join(lexemes)
    return f"({joined})" if len(lexemes) > 1 else joined


class _PgCompiler(_Compiler):
    """Text terms as "entry matches tsquery i" (``matched[i]`` of ``search_documents``);
    a pure-text AND/OR becomes one tsquery."""

    score_direction = -1

    def __init__(self, scope: Scope, account_ids: list[str]) -> None:
        super().__init__(scope, account_ids)
        self.documents: Any = None
        self.required: str | None = None
        self.queries: list[str] = []
        self.has_text = False

    def start(
        self, ids: Any, required: str | None, ranking: str | None, wanted: int | None = None
    ) -> Any:
        """Compile against ``search_documents(ids, required, queries, ranking, wanted)``
        (ids: an array expression, or None for all of the tenant's entries; migration
        0020r says what each does): returns it, to join as ``s``. The tsqueries the tree
        asks about are collected in ``queries`` while it compiles; they go in as the
        parameter ``search_queries``."""
        self.required = required
        self.queries = []
        self.has_text = False
        self.documents = (
            func.search_documents(
                ids if ids is not None else cast(null(), ARRAY(SqlText)),
                _tsq(required) if required is not None else cast(null(), TSQUERY),
                cast(bindparam("search_queries", type_=ARRAY(SqlText)), ARRAY(TSQUERY)),
                _tsq(ranking) if ranking is not None else cast(null(), TSQUERY),
                cast(literal(wanted) if wanted is not None else null(), Integer),
            )
            .table_valued(
                column("message_id", SqlText),
                column("matched", ARRAY(Boolean)),
                column("rank", Float),
            )
            .alias("s")
        )
        return self.documents

    def match(self, query: str) -> ColumnElement[bool]:
        self.has_text = True
        if self.required is not None and query in (self.required, f"({self.required})"):
            return true()  # the function returned only entries that match it
        if query not in self.queries:
            self.queries.append(query)
        return self.documents.c.matched[self.queries.index(query) + 1]

    def text(self, node: Text) -> ColumnElement[bool]:
        # ``node`` below folds text terms into tsqueries before they get here; a lone one
        # is the same condition.
        return self.match(_tsquery(node))

    def node(self, node: Node) -> ColumnElement[bool]:
        query = self.tsquery(node)
        if query is not None:
            return self.match(query)
        if isinstance(node, And):
            # Merge the text children into one tsquery, the rest stays SQL.
            texts: list[str] = []
            parts: list[ColumnElement[bool]] = []
            for child in node.children:
                query = self.tsquery(child)
                if query is None:
                    parts.append(self.node(child))
                else:
                    texts.append(query)
            if texts:
                parts.insert(0, self.match(" & ".join(texts)))
            return and_(*parts)
        return super().node(node)

    def required_tsquery(self, tree: Node) -> str | None:
        """A tsquery that every match satisfies, with at least one word that must be
        present (so the GIN index can find the candidates), or None."""
        parts = tree.children if isinstance(tree, And) else (tree,)
        wanted = [
            query
            for part in parts
            if not isinstance(part, Not) and (query := self.tsquery(part)) is not None
        ]
        return " & ".join(wanted) if wanted else None

    def tsquery(self, node: Node) -> str | None:
        """The tsquery text of a node made of text terms only, else None."""
        if isinstance(node, Text):
            return _tsquery(node)
        if isinstance(node, Not):
            inner = self.tsquery(node.child)
            return f"!({inner})" if inner is not None else None
        if isinstance(node, And | Or):
            parts = [self.tsquery(child) for child in node.children]
            if any(part is None for part in parts):
                return None
            glue = " & " if isinstance(node, And) else " | "
            return "(" + glue.join(part for part in parts if part is not None) + ")"
        return None

    def ranked(self, statement: Any, positives: list[Text]) -> tuple[Any, ColumnElement[Any]]:
        # The rank comes from ``search_documents`` (``_pg_rows`` asks for it).
        return statement, self.documents.c.rank


def _fts_match(expression: str) -> ColumnElement[bool]:
    return literal_column("message_search").op("MATCH")(literal(expression))


def _fts_expression(node: Text) -> str:
    phrase = '"' + " ".join(node.tokens) + '"' + (" *" if node.prefix else "")
    if node.field:
        return "{" + FTS_COLUMNS[node.field] + "} : " + phrase
    return phrase


class _SqliteCompiler(_Compiler):
    """Each text term is an FTS5 MATCH subquery (the embedded store is one user's size)."""

    def text(self, node: Text) -> ColumnElement[bool]:
        matching = select(_fts.c.rowid).where(_fts_match(_fts_expression(node)))
        ids = select(_fts_rows.c.message_id).where(_fts_rows.c.id.in_(matching))
        return Message.id.in_(ids)

    def ranked(self, statement: Any, positives: list[Text]) -> tuple[Any, ColumnElement[Any]]:
        wanted = " OR ".join(f"({_fts_expression(node)})" for node in positives)
        scores = (
            select(
                _fts_rows.c.message_id,
                literal_column("bm25(message_search, 10.0, 5.0, 3.0, 3.0, 5.0, 1.0)").label("bm25"),
            )
            .select_from(_fts.join(_fts_rows, _fts_rows.c.id == _fts.c.rowid))
            .where(_fts_match(wanted))
            .subquery("ranks")
        )
        statement = statement.outerjoin(scores, scores.c.message_id == Message.id)
        return statement, func.coalesce(scores.c.bm25, 0.0)


def _marked_terms(texts: list[Text]) -> tuple[set[str], tuple[str, ...]]:
    whole: set[str] = set()
    starts: list[str] = []
    for node in texts:
        whole.update(node.tokens)
        if node.prefix:
            starts.append(node.tokens[-1])
    return whole, tuple(starts)


def _matching(source: str, terms: tuple[set[str], tuple[str, ...]]) -> Iterator[re.Match[str]]:
    """The words of ``source`` that match a term, in order."""
    whole, starts = terms
    for found in TOKEN.finditer(source):
        for token in TOKEN.findall(fold(found.group())):
            if token in whole or (starts and token.startswith(starts)):
                yield found
                break


def _matches_in(source: str, terms: tuple[set[str], tuple[str, ...]]) -> bool:
    return next(_matching(source, terms), None) is not None


def snippet(source: str, terms: tuple[set[str], tuple[str, ...]]) -> str:
    """About ``SNIPPET_CHARS`` characters of ``source`` around its first matching word,
    HTML-escaped, with each matching word in ``<mark>``."""
    found = []
    for match in _matching(source, terms):
        found.append((match.start(), match.end()))
        if match.start() > found[0][0] + SNIPPET_CHARS:
            break  # past the snippet: the rest of a long body need not be read
    begin = 0
    if found:
        begin = max(found[0][0] - _SNIPPET_LEAD, 0)
        # Start at a word boundary.
        space = source.rfind(" ", 0, begin + 1) if begin else -1
        begin = space + 1 if space >= 0 and found[0][0] - space < _SNIPPET_LEAD + 20 else begin
    end = min(begin + SNIPPET_CHARS, len(source))
    pieces: list[str] = ["…" if begin > 0 else ""]
    cursor = begin
    for start, stop in found:
        if start < begin or stop > end:
            continue
        pieces.append(html.escape(source[cursor:start]))
        pieces.append("<mark>" + html.escape(source[start:stop]) + "</mark>")
        cursor = stop
    pieces.append(html.escape(source[cursor:end]))
    if end < len(source):
        pieces.append("…")
    return " ".join("".join(pieces).split())
