"""Signed webhooks: receivers users register, and the delivery of changes to them.

``registry`` (the CRUD operations and secrets), ``signing`` (Standard Webhooks),
``outbound`` (one bounded, guarded HTTP attempt), ``fanout`` (the change feed handed to
webhooks, once each) and ``dispatch`` (the delivery queue: recording, ordering, retries,
the sweep).
"""

from email_service.services.webhooks.dispatch import (
    DELIVER_ACTOR,
    queue_webhooks,
    record_deliveries,
    run_deliveries,
    sweep,
    wake_after_commit,
)
from email_service.services.webhooks.fanout import FANOUT_ACTOR, fan_out
from email_service.services.webhooks.fanout import install as install_fanout
from email_service.services.webhooks.fanout import sweep as sweep_fanout

__all__ = [
    "DELIVER_ACTOR",
    "FANOUT_ACTOR",
    "fan_out",
    "install_fanout",
    "queue_webhooks",
    "record_deliveries",
    "run_deliveries",
    "sweep",
    "sweep_fanout",
    "wake_after_commit",
]
