from __future__ import annotations

from typing import Any

from email_service.services import accounts
from email_service.web.context import request_scope


def list_accounts(limit: int = 100, offset: int = 0) -> tuple[dict[str, Any], int]:
    with request_scope() as scope:
        return accounts.list_accounts(scope, limit, offset), 200


def create_account(body: dict[str, Any]) -> tuple[dict[str, Any], int]:
    with request_scope() as scope:
        return accounts.create_account(scope, body), 201


def get_account(account_id: str) -> tuple[dict[str, Any], int]:
    with request_scope() as scope:
        return accounts.get_account(scope, account_id), 200


def update_account(account_id: str, body: dict[str, Any]) -> tuple[dict[str, Any], int]:
    with request_scope() as scope:
        return accounts.update_account(scope, account_id, body), 200


def delete_account(account_id: str) -> tuple[None, int]:
    with request_scope() as scope:
        accounts.delete_account(scope, account_id)
    return None, 204
