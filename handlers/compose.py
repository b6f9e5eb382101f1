from __future__ import annotations

from typing import Any

from connexion import request

from email_service.services import compose
from email_service.web.context import request_scope


def send_email(body: dict[str, Any]) -> tuple[dict[str, Any], int]:
    # Connexion validates header parameters but does not pass them as arguments.
    key = request.headers.get("Idempotency-Key")
    with request_scope() as scope:
        queued = compose.send_email(scope, body, idempotency_key=key)
    return queued, 202


def save_draft(body: dict[str, Any]) -> tuple[dict[str, Any], int]:
    with request_scope() as scope:
        saved = compose.save_draft(scope, body)
    return saved, 201
