from __future__ import annotations

from typing import Any

from email_service.errors import NotImplementedYet


def send_email(body: dict[str, Any]) -> tuple[dict[str, Any], int]:
    raise NotImplementedYet("Sending is not available yet")


def save_draft(body: dict[str, Any]) -> tuple[dict[str, Any], int]:
    raise NotImplementedYet("Drafts are not available yet")
