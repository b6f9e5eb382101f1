from __future__ import annotations

from typing import Any

from flask import Response

from email_service.services import mailbox, search, writeback
from email_service.web.context import request_scope


def list_messages(
    account_id: str,
    folder_id: str,
    limit: int = 50,
    offset: int = 0,
    sort: str = "receivedAt:desc",
    filter_: str = "all",
) -> Response:
    with request_scope() as scope:
        page = mailbox.message_page(
            scope, account_id, folder_id, limit=limit, offset=offset, sort=sort, read_filter=filter_
        )
    # Written directly (the same bytes Connexion's encoder would make): the list path is
    # the API's hottest, and its generic JSON walk cost more than the query.
    return Response(page.as_json(), status=200, mimetype="application/json")


def get_message(account_id: str, message_id: str) -> tuple[dict[str, Any], int]:
    with request_scope() as scope:
        return mailbox.get_message(scope, account_id, message_id), 200


def update_message(
    account_id: str, message_id: str, body: dict[str, Any]
) -> tuple[dict[str, Any], int]:
    with request_scope() as scope:
        updated = writeback.update_message(scope, account_id, message_id, body)
    return updated, 200


def search_messages(
    q: str,
    account_id: str | None = None,
    folder_id: str | None = None,
    limit: int = 25,
    cursor: str | None = None,
    sort: str = "date",
) -> tuple[dict[str, Any], int]:
    with request_scope() as scope:
        found = search.search_messages(
            scope,
            q,
            account_id=account_id,
            folder_id=folder_id,
            limit=limit,
            cursor=cursor,
            sort=sort,
        )
    return found, 200
