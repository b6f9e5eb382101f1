from __future__ import annotations

from typing import Any

from email_service.services.webhooks import dispatch, registry
from email_service.web.context import request_scope


def list_webhooks() -> tuple[dict[str, Any], int]:
    with request_scope() as scope:
        return registry.list_webhooks(scope), 200


def create_webhook(body: dict[str, Any]) -> tuple[dict[str, Any], int]:
    with request_scope() as scope:
        return registry.create_webhook(scope, body), 201


def get_webhook(webhook_id: str) -> tuple[dict[str, Any], int]:
    with request_scope() as scope:
        return registry.get_webhook(scope, webhook_id), 200


def update_webhook(webhook_id: str, body: dict[str, Any]) -> tuple[dict[str, Any], int]:
    with request_scope() as scope:
        return registry.update_webhook(scope, webhook_id, body), 200


def delete_webhook(webhook_id: str) -> tuple[None, int]:
    with request_scope() as scope:
        registry.delete_webhook(scope, webhook_id)
    return None, 204


def rotate_webhook_secret(webhook_id: str) -> tuple[dict[str, Any], int]:
    with request_scope() as scope:
        return registry.rotate_secret(scope, webhook_id), 200


def list_webhook_deliveries(webhook_id: str, limit: int = 50) -> tuple[dict[str, Any], int]:
    with request_scope() as scope:
        return dispatch.list_deliveries(scope, webhook_id, limit), 200
