from __future__ import annotations

from typing import Any

from email_service.runtime import get_runtime
from email_service.services import health


def health_check() -> tuple[dict[str, Any], int]:
    return health.check(get_runtime()), 200
