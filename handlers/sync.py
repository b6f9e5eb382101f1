from __future__ import annotations

from typing import Any

from email_service.errors import NotImplementedYet


def sync_account(account_id: str, body: dict[str, Any] | None = None) -> tuple[dict[str, Any], int]:
    raise NotImplementedYet("Synchronisation is not available yet")


def get_sync_status(task_id: str) -> tuple[dict[str, Any], int]:
    raise NotImplementedYet("Task status is not available yet")
