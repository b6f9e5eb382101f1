from __future__ import annotations

from typing import Any

from email_service.runtime import get_runtime
from email_service.services import oauth2


def list_oauth2_providers() -> tuple[dict[str, Any], int]:
    return oauth2.list_providers(get_runtime()), 200
