from __future__ import annotations

from typing import Any

from email_service.errors import ServiceError
from email_service.services import changes
from email_service.web.context import request_scope


def list_changes(
    since: str | None = None,
    limit: int = 100,
    account_id: str | None = None,
    types: list[str] | None = None,
) -> tuple[dict[str, Any], int]:
    with request_scope() as scope:
        page = changes.list_changes(scope, since, limit, account_id=account_id, types=types)
    return page, 200


def stream_changes(**_params: Any) -> tuple[dict[str, Any], int]:
    # Served by email_service.web.stream.ChangeStreamMiddleware before the request reaches
    # Flask (a stream must not hold one of a2wsgi's few threads); Connexion still needs
    # the operation to resolve to a function, and reaching it means the app is miswired.
    raise ServiceError("The change stream is not installed in this server")
