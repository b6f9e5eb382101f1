from __future__ import annotations

from typing import Any

from email_service.services import mailbox
from email_service.web.context import request_scope


def list_folders(account_id: str) -> tuple[dict[str, Any], int]:
    with request_scope() as scope:
        return mailbox.list_folders(scope, account_id), 200
