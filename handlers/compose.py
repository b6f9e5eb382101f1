from __future__ import annotations

from typing import Any

from connexion import request

from email_service.services import compose
from email_service.web.context import request_scope


def send_email(body: dict[str, Any]) -> tuple[dict[str, Any], int]:
    # Connexion validates header parameters but does not pass them as arguments.
    key = request.headers.get("Idempotency-Key")
    # Opens its transactions through request_scope: it may leave one while it waits on
    # the mail server for an attachment.
    return compose.send_email(request_scope, body, idempotency_key=key), 202


def save_draft(body: dict[str, Any]) -> tuple[dict[str, Any], int]:
    return compose.save_draft(request_scope, body), 201
