"""The change feed as clients read it: ``listChanges`` pages and the stream's reads.

A cursor names a place in one user's feed: the position of the last change the client
has (or the head, when it had nothing to catch up on) and the time it was made. Both
are needed: the position to continue after, the time to know whether the retention
still covers everything after it. ``db.changes`` explains why reading up to the head
never skips a change that commits later.

Retention: changes older than ``CHANGES_RETENTION_HOURS`` are pruned (``prune``, run
by the scheduler) with an hour's grace for clock differences between processes; a
cursor older than the retention answers 410 ``CURSOR_EXPIRED``, since what followed it
may be gone.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from db.changes import head_position, now_ms
from db.models import Account, Change
from email_service.errors import AccountNotFound, CursorExpired
from email_service.identity import Caller
from email_service.runtime import Runtime
from email_service.scope import Scope

log = logging.getLogger(__name__)

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
HOUR_MS = 3_600_000
# Pruning keeps changes this much longer than the retention a cursor is honoured for,
# so a clock running a little behind on another process cannot cost a change.
PRUNE_GRACE_MS = HOUR_MS


@dataclass(frozen=True)
class Cursor:
    position: int
    at_ms: int

    def encode(self) -> str:
        raw = f"{self.position}.{self.at_ms}".encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> Cursor | None:
        """The cursor ``text`` stands for, or None if it is not one this service makes."""
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode("ascii")
        except (ValueError, binascii.Error, UnicodeDecodeError):
            return None
        position, _, at_ms = raw.partition(".")
        if not (position.isdigit() and at_ms.isdigit()) or len(raw) > 40:
            return None
        return cls(int(position), int(at_ms))


def present(row: Change) -> dict[str, Any]:
    """A change row as the API's ``Change``."""
    body: dict[str, Any] = {
        "id": Cursor(row.position, row.occurred_at).encode(),
        "type": row.type,
        "accountId": row.account_id,
        "occurredAt": row.occurred_at,
        "data": row.data,
    }
    for key, value in (
        ("folderId", row.folder_id),
        ("messageId", row.message_id),
        ("taskId", row.task_id),
    ):
        if value is not None:
            body[key] = value
    return body


def retention_ms(runtime: Runtime) -> int:
    return int(runtime.settings.changes_retention_hours * HOUR_MS)


def open_cursor(runtime: Runtime, text: str) -> Cursor:
    """The cursor ``text``; raises ``CursorExpired`` when it cannot be continued from.

    A cursor older than the retention may have lost changes after it. One that this
    service did not make (another deployment's, a future format, a typo) has the same
    remedy, so it gets the same answer: one recovery path for clients.
    """
    cursor = Cursor.decode(text)
    now = now_ms()
    if cursor is None or cursor.at_ms > now + HOUR_MS:
        raise CursorExpired(
            "This cursor is unknown here: list the current state again and continue from "
            "a new cursor (listChanges without since)"
        )
    if cursor.at_ms < now - retention_ms(runtime):
        raise CursorExpired(
            "Changes this old are no longer kept: list the current state again and "
            "continue from a new cursor (listChanges without since)"
        )
    return cursor


@dataclass
class Page:
    changes: list[Change]
    cursor: Cursor
    has_more: bool


def read_page(
    session: Session,
    caller: Caller,
    after: Cursor,
    limit: int,
    *,
    account_id: str | None = None,
    types: Sequence[str] | None = None,
) -> Page:
    """Up to ``limit`` of the caller's changes after ``after``, oldest first."""
    head = head_position(session, caller.tenant_id, caller.user_id)
    stamp = now_ms()
    query = (
        select(Change)
        .where(
            Change.tenant_id == caller.tenant_id,
            Change.user_id == caller.user_id,
            Change.position > after.position,
            Change.position <= head,
        )
        .order_by(Change.position)
        .limit(limit + 1)
    )
    if account_id is not None:
        query = query.where(Change.account_id == account_id)
    if types:
        query = query.where(Change.type.in_(list(types)))
    rows = list(session.scalars(query))
    if len(rows) > limit:
        rows = rows[:limit]
        last = rows[-1]
        return Page(rows, Cursor(last.position, last.occurred_at), True)
    # Everything up to the head has been seen (filtered or not): continue from there.
    return Page(rows, Cursor(max(head, after.position), stamp), False)


def _check_account(scope: Scope, account_id: str) -> None:
    # Deleted accounts stay filterable (their account.deleted is in the feed).
    owned = scope.session.scalar(
        select(Account.id).where(
            Account.id == account_id,
            Account.tenant_id == scope.caller.tenant_id,
            Account.user_id == scope.caller.user_id,
        )
    )
    if owned is None:
        raise AccountNotFound(account_id)


def list_changes(
    scope: Scope,
    since: str | None = None,
    limit: int = DEFAULT_LIMIT,
    account_id: str | None = None,
    types: Sequence[str] | None = None,
) -> dict[str, Any]:
    """``listChanges``: the caller's changes after ``since``, or the current cursor.

    Raises ``InvalidRequest`` (``INVALID_CURSOR``), ``CursorExpired`` and
    ``AccountNotFound`` (an ``accountId`` that is not the caller's).
    """
    if account_id is not None:
        _check_account(scope, account_id)
    if since is None:
        head = head_position(scope.session, scope.caller.tenant_id, scope.caller.user_id)
        return {"changes": [], "cursor": Cursor(head, now_ms()).encode(), "hasMore": False}
    after = open_cursor(scope.runtime, since)
    page = read_page(
        scope.session,
        scope.caller,
        after,
        max(1, min(limit, MAX_LIMIT)),
        account_id=account_id,
        types=types,
    )
    return {
        "changes": [present(row) for row in page.changes],
        "cursor": page.cursor.encode(),
        "hasMore": page.has_more,
    }


def read_for_stream(
    runtime: Runtime, caller: Caller, after: Cursor, limit: int = 500
) -> tuple[list[tuple[str, str, dict[str, Any]]], Cursor]:
    """The stream's read: (id, type, Change) triples after ``after``, and where to go on."""
    with runtime.db.transaction(caller.tenant_id) as session:
        page = read_page(session, caller, after, limit)
        events = []
        for row in page.changes:
            body = present(row)
            events.append((body["id"], row.type, body))
    return events, page.cursor


def prune(runtime: Runtime) -> int:
    """Delete changes past the retention (and its grace); returns how many went."""
    cutoff = now_ms() - retention_ms(runtime) - PRUNE_GRACE_MS
    with runtime.db.transaction(system=True) as session:
        result = session.execute(delete(Change).where(Change.occurred_at < cutoff))
        removed = int(result.rowcount or 0)  # type: ignore[attr-defined]
    if removed:
        log.info("pruned %d changes older than the retention", removed)
    return removed


def stream_cursor(runtime: Runtime, caller: Caller, since: str | None) -> Cursor:
    """Where a stream starts: after ``since`` (Last-Event-ID or query), else at the head."""
    if since:
        return open_cursor(runtime, since)
    with runtime.db.transaction(caller.tenant_id) as session:
        head = head_position(session, caller.tenant_id, caller.user_id)
    return Cursor(head, now_ms())
