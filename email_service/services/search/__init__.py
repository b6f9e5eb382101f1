"""searchMessages: one query across all of a user's accounts, on PostgreSQL and SQLite.

The query (``query.parse_query``) becomes one SQL statement over ``messages``, scoped to
the caller's live accounts (and, on PostgreSQL, to the tenant by row-level security as
well). Its text terms are answered by the index of ``db.textindex``: a ``tsvector`` with
a GIN index on PostgreSQL, FTS5 on SQLite. Both hold the same tokens, so both stores
answer the same queries the same way; ``tests/search`` runs one set of cases on each.

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
    ColumnElement,
    Float,
    and_,
    bindparam,
    cast,
    column,
    false,
    func,
    literal,
    literal_column,
    not_,
    or_,
    select,
    table,
    tuple_,
)
from sqlalchemy.dialects.postgresql import TSQUERY

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

_pg_search = table("message_search", column("message_id"), column("document"))
_fts = table("message_search", column("rowid"))
_fts_rows = table("message_search_rows", column("id"), column("message_id"))


class InvalidCursor(InvalidRequest):
    code = "INVALID_CURSOR"

    def __init__(self) -> None:
        super().__init__("The cursor is not one this query gave out")


@dataclass
class _Compiled:
    where: ColumnElement[bool]
    uses_pg_index: bool


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

    compiler = _PgCompiler(scope, account_ids) if postgres else _SqliteCompiler(scope, account_ids)
    compiled = compiler.compile(tree)
    conditions: list[ColumnElement[bool]] = [
        Message.tenant_id == caller.tenant_id,
        Message.account_id.in_(account_ids),
        compiled.where,
    ]
    if folder_id is not None:
        conditions.append(Message.folder_id == folder_id)

    fingerprint = hashlib.sha256(f"{sort}\n{q}".encode()).hexdigest()[:16]
    after = _decode_cursor(cursor, fingerprint) if cursor else None
    body_prefix = func.substr(Message.body_text, 1, BODY_PREFIX_CHARS).label("body_prefix")
    statement = select(*LIST_COLUMNS, body_prefix)
    if compiled.uses_pg_index:
        statement = statement.join(_pg_search, _pg_search.c.message_id == Message.id)
    positives = positive_texts(tree)
    score: ColumnElement[Any] | None = None
    if sort == "relevance" and positives:
        statement, score = compiler.ranked(statement, positives)
    if score is not None:
        # ts_rank: higher is better; bm25: lower is better. Both are ordered "best first"
        # by comparing ``direction * score`` ascending.
        key = (score * compiler.score_direction).label("score")
        statement = statement.add_columns(key)
        if after is not None:
            best, received, last_id = after["k"]
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
        if after is not None:
            received, last_id = after["k"][-2:]
            conditions.append(tuple_(Message.received_at, Message.id) < tuple_(received, last_id))
        ordering = [Message.received_at.desc(), Message.id.desc()]
    required = compiler.required_tsquery(tree) if isinstance(compiler, _PgCompiler) else None
    if required is None:
        rows = session.execute(
            statement.where(*conditions).order_by(*ordering).limit(limit + 1)
        ).all()
    else:
        rows = _two_step(session, statement, conditions, ordering, limit, required, score)
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
        if score is not None:
            key_values.insert(0, float(last.score))
        body["nextCursor"] = _encode_cursor(fingerprint, key_values)
    return body


def _two_step(
    session: Any,
    statement: Any,
    conditions: list[ColumnElement[bool]],
    ordering: list[Any],
    limit: int,
    required: str,
    score: ColumnElement[Any] | None,
) -> list[Any]:
    """The page, on PostgreSQL, without trusting the planner's guess for a word.

    PostgreSQL estimates how many messages match a word from sampled statistics; for a
    word outside them it guesses a fraction that makes "read the newest messages until
    a page is full" look cheap, and for a rare word that reads every message. So:
    first the newest ``RECENT_WINDOW`` messages in reach are tried (a common word fills
    its page there, in milliseconds); only when they hold no full page is the page
    taken from the GIN index's matches (few, since the recent window had so few).
    Ranking by relevance needs every match anyway, so it starts from the index.
    ``required`` (a word every match has) is what makes the index the right start.
    """
    if score is None:
        recent = (
            select(Message.id)
            .where(*conditions[:2], *conditions[3:])  # scope and cursor, not the query
            .order_by(Message.received_at.desc(), Message.id.desc())
            .limit(RECENT_WINDOW)
            .subquery("recent")
        )
        rows = session.execute(
            statement.join(recent, recent.c.id == Message.id)
            .where(*conditions)
            .order_by(*ordering)
            .limit(limit + 1)
        ).all()
        if len(rows) > limit:
            return list(rows)
    if score is None:
        # Ordered by an expression no index provides, the newest-first walk is not a
        # plan any more: PostgreSQL takes the GIN index's matches and sorts those.
        ordering = [(Message.received_at + 0).desc(), Message.id.desc()]
    return list(
        session.execute(statement.where(*conditions).order_by(*ordering).limit(limit + 1)).all()
    )


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
        self.uses_pg_index = False

    def compile(self, tree: Node) -> _Compiled:
        where = self.node(tree)
        return _Compiled(where, self.uses_pg_index)

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
    """Text terms as ``document @@ tsquery``; a pure-text AND/OR becomes one tsquery."""

    score_direction = -1

    def text(self, node: Text) -> ColumnElement[bool]:
        # ``node`` below folds text terms into tsqueries before they get here; a lone one
        # is the same condition.
        self.uses_pg_index = True
        return _pg_search.c.document.op("@@")(_tsq(_tsquery(node)))

    def node(self, node: Node) -> ColumnElement[bool]:
        query = self.tsquery(node)
        if query is not None:
            self.uses_pg_index = True
            return _pg_search.c.document.op("@@")(_tsq(query))
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
                self.uses_pg_index = True
                merged = " & ".join(texts)
                parts.insert(0, _pg_search.c.document.op("@@")(_tsq(merged)))
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
        wanted = " | ".join(_tsquery(node) for node in positives)
        score = func.ts_rank(_pg_search.c.document, _tsq(wanted))
        if not self.uses_pg_index:
            statement = statement.join(_pg_search, _pg_search.c.message_id == Message.id)
            self.uses_pg_index = True
        return statement, score


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
