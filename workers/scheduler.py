"""The scheduler loop: every tick, queue the syncs whose interval has passed, and
re-queue webhook deliveries whose jobs were lost."""

from __future__ import annotations

import logging
import threading

from email_service.runtime import Runtime
from email_service.services import webhooks
from email_service.services.sync.schedule import enqueue_due_syncs

log = logging.getLogger(__name__)


def run_scheduler(runtime: Runtime, stop: threading.Event) -> None:
    """Tick every ``SCHEDULER_TICK_SECONDS`` until ``stop`` is set."""
    interval = runtime.settings.scheduler_tick_seconds
    log.info("scheduler running, checking every %.0fs", interval)
    while not stop.is_set():
        try:
            enqueue_due_syncs(runtime)
        except Exception:
            # The database may be briefly away; the next tick tries again.
            log.exception("scheduler tick failed")
        try:
            webhooks.sweep(runtime)
        except Exception:
            log.exception("webhook sweep failed")
        stop.wait(interval)


def start_scheduler_thread(runtime: Runtime) -> tuple[threading.Thread, threading.Event]:
    """The scheduler on a daemon thread of this process (the embedded default)."""
    stop = threading.Event()
    thread = threading.Thread(
        target=run_scheduler, args=(runtime, stop), name="scheduler", daemon=True
    )
    thread.start()
    return thread, stop
