"""Whether the service's stores answer (``/health``: database, Redis, blob store).

The kubelet's probes are ``/livez`` and ``/readyz`` (``email_service/web/probes.py``),
which ask less on purpose.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from email_service.errors import DependencyUnavailable
from email_service.runtime import Runtime

log = logging.getLogger(__name__)

SERVICE_NAME = "email_service"


def check(runtime: Runtime) -> dict[str, Any]:
    """A healthy report, or ``DependencyUnavailable`` naming what failed."""
    failing: list[str] = []
    try:
        runtime.db.ping()
    except Exception as exc:
        log.warning("health: database unavailable: %s", type(exc).__name__)
        failing.append("database")
    if runtime.redis is not None:
        try:
            runtime.redis.ping()
        except Exception as exc:
            log.warning("health: redis unavailable: %s", type(exc).__name__)
            failing.append("redis")
    try:
        runtime.blobs.ping()
    except Exception as exc:
        log.warning("health: blob store unavailable: %s", type(exc).__name__)
        failing.append("blob store")
    if failing:
        raise DependencyUnavailable(f"Unavailable: {', '.join(failing)}")
    return {"status": "healthy", "service": SERVICE_NAME, "timestamp": int(time.time() * 1000)}
