"""The search language (``q``), as webmail users know it, parsed into a small tree.

    words            all must match (accents and case ignored)
    "exact phrase"   the words, adjacent and in this order
    -term            must not match (any term, or a parenthesised group)
    a OR b           either (binds tighter than the implicit AND: ``a b OR c`` is a (b|c))
    ( ... )          grouping
    from: to: cc: subject: filename:   the word or "phrase" in that field; in from:, to:
                     and cc: the last word may be the start of a word (``from:ali``)
    has:attachment  is:unread  is:read  is:starred
    in:X             folders of type X (inbox, sent, drafts, trash, spam, archive) or named X
    before:D after:D received before / on or after day D (YYYY-MM-DD, UTC)
    larger:N smaller:N  size in bytes, or with K, M, G (1024-based)

A malformed query raises ``InvalidQuery`` with the 1-based character position.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from db.textindex import FIELD_CC, FIELD_FILENAME, FIELD_FROM, FIELD_SUBJECT, FIELD_TO, tokens
from email_service.errors import InvalidRequest

MAX_QUERY_TERMS = 64
MAX_DEPTH = 16

_TEXT_FIELDS = {
    "from": FIELD_FROM,
    "to": FIELD_TO,
    "cc": FIELD_CC,
    "subject": FIELD_SUBJECT,
    "filename": FIELD_FILENAME,
}
# Address fields match the start of their last word, which covers what people type:
# a name, a user part, or the beginning of either.
_PREFIX_FIELDS = {FIELD_FROM, FIELD_TO, FIELD_CC}
_FLAGS = {
    ("has", "attachment"): "attachment",
    ("has", "attachments"): "attachment",
    ("is", "unread"): "unread",
    ("is", "read"): "read",
    ("is", "starred"): "starred",
}
_SIZE = re.compile(r"^(\d{1,12})([kmg]?)b?$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


class InvalidQuery(InvalidRequest):
    code = "INVALID_QUERY"

    def __init__(self, position: int, problem: str) -> None:
        super().__init__(f"Invalid query at character {position}: {problem}")
        self.position = position


@dataclass(frozen=True)
class Text:
    """Tokens that must follow each other (one token: a word), in a field or anywhere."""

    tokens: tuple[str, ...]
    field: str | None = None
    prefix: bool = False


@dataclass(frozen=True)
class Flag:
    name: str  # attachment | unread | read | starred


@dataclass(frozen=True)
class InFolder:
    name: str  # folded


@dataclass(frozen=True)
class Received:
    before: bool
    at_ms: int


@dataclass(frozen=True)
class Size:
    larger: bool
    bytes: int


@dataclass(frozen=True)
class Not:
    child: Node


@dataclass(frozen=True)
class And:
    children: tuple[Node, ...]


@dataclass(frozen=True)
class Or:
    children: tuple[Node, ...]


Node = Text | Flag | InFolder | Received | Size | Not | And | Or


@dataclass(frozen=True)
class _Token:
    kind: str  # word | phrase | lparen | rparen | or | and | not
    value: str
    position: int  # 1-based
    quoted_value: bool = False


def _lex(query: str) -> list[_Token]:
    out: list[_Token] = []
    i = 0
    n = len(query)
    while i < n:
        ch = query[i]
        if ch.isspace():
            i += 1
            continue
        start = i + 1
        if ch == "(":
            out.append(_Token("lparen", ch, start))
            i += 1
            continue
        if ch == ")":
            out.append(_Token("rparen", ch, start))
            i += 1
            continue
        if ch == '"':
            end = query.find('"', i + 1)
            if end < 0:
                raise InvalidQuery(start, "a quote is not closed")
            out.append(_Token("phrase", query[i + 1 : end], start))
            i = end + 1
            continue
        if ch == "-" and i + 1 < n and not query[i + 1].isspace():
            out.append(_Token("not", ch, start))
            i += 1
            continue
        j = i
        while j < n and not query[j].isspace() and query[j] not in '()"':
            j += 1
        word = query[i:j]
        # field:"a phrase"
        if word.endswith(":") and j < n and query[j] == '"':
            end = query.find('"', j + 1)
            if end < 0:
                raise InvalidQuery(j + 1, "a quote is not closed")
            out.append(_Token("word", word + query[j + 1 : end], start, quoted_value=True))
            i = end + 1
            continue
        if word == "OR":
            out.append(_Token("or", word, start))
        elif word == "AND":
            out.append(_Token("and", word, start))
        else:
            out.append(_Token("word", word, start))
        i = j
    return out


class _Parser:
    def __init__(self, query: str) -> None:
        self.query = query
        self.items = _lex(query)
        self.at = 0
        self.terms = 0

    def peek(self) -> _Token | None:
        return self.items[self.at] if self.at < len(self.items) else None

    def end_position(self) -> int:
        return len(self.query) + 1

    def parse(self) -> Node:
        if not self.items:
            raise InvalidQuery(1, "the query is empty")
        node = self.conjunction(0)
        extra = self.peek()
        if extra is not None:
            raise InvalidQuery(extra.position, "a ')' has no matching '('")
        if node is None:
            raise InvalidQuery(1, "the query has no letters or digits to search for")
        return node

    def conjunction(self, depth: int) -> Node | None:
        """Terms (or OR-chains of terms) that must all match, up to ')' or the end."""
        if depth > MAX_DEPTH:
            raise InvalidQuery(self.items[self.at - 1].position, "groups are nested too deep")
        parts: list[Node] = []
        while True:
            item = self.peek()
            if item is None or item.kind == "rparen":
                break
            if item.kind in ("or", "and"):
                if not parts:
                    raise InvalidQuery(item.position, f"{item.value} needs a term before it")
                self.at += 1
                continue  # AND is what adjacent terms mean already
            node = self.disjunction(depth)
            if node is not None:
                parts.append(node)
        if not parts:
            return None
        return parts[0] if len(parts) == 1 else And(tuple(parts))

    def disjunction(self, depth: int) -> Node | None:
        first = self.peek()
        assert first is not None
        options = [(first.position, self.unary(depth))]
        while (item := self.peek()) is not None and item.kind == "or":
            self.at += 1
            following = self.peek()
            if following is None or following.kind in ("rparen", "or", "and"):
                raise InvalidQuery(item.position, "OR needs a term after it")
            options.append((following.position, self.unary(depth)))
        if len(options) == 1:
            return options[0][1]
        for position, option in options:
            if option is None:
                # "foo OR ---": a side with nothing to search would match anything.
                raise InvalidQuery(position, "this side of OR has no letters or digits")
        return Or(tuple(option for _, option in options if option is not None))

    def unary(self, depth: int) -> Node | None:
        item = self.peek()
        assert item is not None
        if item.kind == "not":
            self.at += 1
            following = self.peek()
            if following is None or following.kind in ("rparen", "or", "and", "not"):
                raise InvalidQuery(item.position, "'-' needs a term after it")
            child = self.unary(depth)
            if child is None:
                raise InvalidQuery(item.position, "'-' needs a term with letters or digits")
            return Not(child)
        if item.kind == "lparen":
            self.at += 1
            inner = self.conjunction(depth + 1)
            closing = self.peek()
            if closing is None or closing.kind != "rparen":
                raise InvalidQuery(item.position, "a '(' is not closed")
            self.at += 1
            if inner is None:
                raise InvalidQuery(item.position, "the group is empty")
            return inner
        self.at += 1
        if item.kind == "phrase":
            return self.text(item, tokens(item.value), None, prefix=False)
        if item.kind == "word":
            return self.word(item)
        raise InvalidQuery(item.position, f"unexpected '{item.value}'")

    def text(
        self, item: _Token, found: list[str], field: str | None, *, prefix: bool
    ) -> Node | None:
        if not found:
            return None
        self.terms += 1
        if self.terms > MAX_QUERY_TERMS:
            raise InvalidQuery(item.position, f"more than {MAX_QUERY_TERMS} terms")
        return Text(tuple(found), field, prefix)

    def word(self, item: _Token) -> Node | None:
        name, colon, value = item.value.partition(":")
        key = name.lower()
        if not colon or not name:
            return self.text(item, tokens(item.value), None, prefix=False)
        value_position = item.position + len(name) + 1
        if key in _TEXT_FIELDS:
            if not value:
                raise InvalidQuery(value_position, f"{key}: needs a value")
            field = _TEXT_FIELDS[key]
            node = self.text(
                item,
                tokens(value),
                field,
                prefix=field in _PREFIX_FIELDS and not item.quoted_value,
            )
            if node is None:
                raise InvalidQuery(value_position, f"{key}: needs letters or digits")
            return node
        if key in ("has", "is"):
            flag = _FLAGS.get((key, value.lower()))
            if flag is None:
                choices = "attachment" if key == "has" else "unread, read or starred"
                raise InvalidQuery(value_position, f"{key}: takes {choices}")
            return Flag(flag)
        if key == "in":
            if not value:
                raise InvalidQuery(value_position, "in: needs a folder type or name")
            return InFolder(value.casefold())
        if key in ("before", "after"):
            try:
                day = datetime.strptime(value, "%Y-%m-%d").replace(tzinfo=UTC)
            except ValueError:
                raise InvalidQuery(value_position, f"{key}: takes a date as YYYY-MM-DD") from None
            return Received(key == "before", int(day.timestamp() * 1000))
        if key in ("larger", "smaller"):
            match = _SIZE.match(value)
            if match is None:
                raise InvalidQuery(value_position, f"{key}: takes a size such as 500K or 5M")
            size = int(match.group(1)) * _UNITS[match.group(2).lower()]
            return Size(key == "larger", size)
        # Not an operator ("re:", "http://..."): plain words.
        return self.text(item, tokens(item.value), None, prefix=False)


def parse_query(query: str) -> Node:
    """The tree of ``query``; raises ``InvalidQuery`` saying where it went wrong."""
    return _Parser(query).parse()


def positive_texts(node: Node, negated: bool = False) -> list[Text]:
    """The text terms that a match contains (those not under a negation)."""
    if isinstance(node, Text):
        return [] if negated else [node]
    if isinstance(node, Not):
        return positive_texts(node.child, not negated)
    if isinstance(node, And | Or):
        return [found for child in node.children for found in positive_texts(child, negated)]
    return []
