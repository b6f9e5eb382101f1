"""Signed webhooks: receivers users register, and the delivery of changes to them.

``registry`` (the CRUD operations and secrets), ``signing`` (Standard Webhooks),
``outbound`` (one bounded, guarded HTTP attempt) and ``dispatch`` (the delivery queue:
recording, ordering, retries, the sweep).
"""

from email_service.services.webhooks.dispatch import (
    DELIVER_ACTOR,
    queue_webhooks,
    record_deliveries,
    run_deliveries,
    sweep,
    wake_after_commit,
)

__all__ = [
    "DELIVER_ACTOR",
    "queue_webhooks",
    "record_deliveries",
    "run_deliveries",
    "sweep",
    "wake_after_commit",
]
