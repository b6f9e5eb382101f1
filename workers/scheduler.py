"""The scheduler loop: every tick, queue the syncs whose interval has passed, re-queue
webhook fan-outs and deliveries whose jobs were lost, and send again the task jobs that
never reached the queue (``workers/outbox.py``); every minute, queue the completion of
search index entries still marked pending; every few minutes, prune the change feed
past its retention."""

from __future__ import annotations

import logging
import threading
import time

from email_service.runtime import Runtime
from email_service.services import webhooks
from email_service.services.changes import prune
from email_service.services.search import fullindex
from email_service.services.sync_schedule import enqueue_due_syncs
from workers import outbox
from workers.broker import DramatiqJobs

log = logging.getLogger(__name__)

# Retention is counted in hours: pruning every ten minutes keeps the table close to it.
PRUNE_EVERY_SECONDS = 600.0


def run_scheduler(runtime: Runtime, stop: threading.Event) -> None:
    """Tick every ``SCHEDULER_TICK_SECONDS`` until ``stop`` is set."""
    interval = runtime.settings.scheduler_tick_seconds
    log.info("scheduler running, checking every %.0fs", interval)
    pruned_at = float("-inf")
    swept_search_at = float("-inf")
    while not stop.is_set():
        try:
            enqueue_due_syncs(runtime)
            if time.monotonic() - pruned_at >= PRUNE_EVERY_SECONDS:
                pruned_at = time.monotonic()
                prune(runtime)
        except Exception:
            # The database may be briefly away; the next tick tries again.
            log.exception("scheduler tick failed")
        try:
            webhooks.sweep_fanout(runtime)
            webhooks.sweep(runtime)
        except Exception:
            log.exception("webhook sweep failed")
        if time.monotonic() - swept_search_at >= fullindex.SWEEP_EVERY_SECONDS:
            try:
                swept_search_at = time.monotonic()
                fullindex.sweep(runtime)
            except Exception:
                log.exception("search index sweep failed")
        if isinstance(runtime.jobs, DramatiqJobs):
            try:
                outbox.sweep(runtime, runtime.jobs)
            except Exception:
                # Redis may still be away; the next tick tries again.
                log.exception("outbox sweep failed")
        stop.wait(interval)


def start_scheduler_thread(runtime: Runtime) -> tuple[threading.Thread, threading.Event]:
    """The scheduler on a daemon thread of this process (the embedded default)."""
    stop = threading.Event()
    thread = threading.Thread(
        target=run_scheduler, args=(runtime, stop), name="scheduler", daemon=True
    )
    thread.start()
    return thread, stop
