from __future__ import annotations

from typing import Any

from email_service.services import syncing, tasks
from email_service.web.context import request_scope


def sync_account(account_id: str, body: dict[str, Any] | None = None) -> tuple[dict[str, Any], int]:
    with request_scope() as scope:
        started = syncing.start_sync(scope, account_id, body)
    return started, 202


def get_sync_status(task_id: str) -> tuple[dict[str, Any], int]:
    with request_scope() as scope:
        return tasks.get_task(scope, task_id), 200
