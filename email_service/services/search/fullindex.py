"""Completing the search index after the commit: whole bodies, not only their start.

The mail store indexes the first ``BODY_AT_ONCE_CHARS`` characters of a body in the
transaction that stores the message (new mail is findable at once, and sync pays little)
and marks the entries of longer bodies ``pending`` (``db.textindex``). This module
completes them:

1. **Woken after commit.** A listener (:func:`install`) queues :data:`INDEX_ACTOR` for
   each tenant whose commit left entries pending. It only queues; the committing
   transaction pays nothing more.
2. **Idempotent and resumable.** :func:`complete_pending` takes the tenant's marked
   entries ``BATCH`` at a time, each batch in a transaction of its own under the
   tenant's row-level security: rebuilt from the message over its first
   ``BODY_INDEX_CHARS`` characters, mark cleared, committed. A run that dies loses at
   most its open batch, whose marks are still set; two runs for one tenant skip each
   other's locked rows on PostgreSQL and share the work.
3. **Nothing lost.** A wake-up that is lost (broker outage, a process killed between
   its commit and the queueing, entries marked by migration 0018f) is made good by
   :func:`sweep`, which the scheduler runs every ``SWEEP_EVERY_SECONDS``: every tenant
   with marked entries is queued.

A message deleted or moved meanwhile needs nothing here: deleting takes its entry (and
mark) with it, and folders and flags are read from the message.
"""

from __future__ import annotations

import logging
import time
import uuid

from db import textindex
from db.models import new_id
from email_service.runtime import Runtime

log = logging.getLogger(__name__)

INDEX_ACTOR = "search.complete_index"
#: Entries completed per transaction.
BATCH = 100
#: A run stops after this long and queues the rest, so a large backlog (a first sync of
#: a big mailbox) takes turns with the other jobs on its queue.
RUN_SECONDS = 30.0
#: How often the scheduler looks for tenants with marked entries.
SWEEP_EVERY_SECONDS = 60.0


def queue_completion(runtime: Runtime, tenant_id: uuid.UUID) -> None:
    runtime.jobs.prepare(INDEX_ACTOR, new_id(), tenant_id=str(tenant_id)).send()


def complete_pending(
    runtime: Runtime, tenant_id: uuid.UUID, *, seconds: float | None = RUN_SECONDS
) -> int:
    """Complete the tenant's marked entries (for ``seconds`` at most, then queue the
    rest; ``None``: all of them); returns how many were completed."""
    began = time.monotonic()
    done = 0
    while True:
        with runtime.db.transaction(tenant_id) as session:
            count = textindex.complete_documents(session, tenant_id, BATCH)
        done += count
        if count < BATCH:
            return done
        if seconds is not None and time.monotonic() - began >= seconds:
            queue_completion(runtime, tenant_id)
            return done


def sweep(runtime: Runtime) -> int:
    """Queue a completion for every tenant with marked entries; returns how many."""
    with runtime.db.transaction(system=True) as session:
        tenants = textindex.tenants_with_pending(session)
    for tenant_id in tenants:
        try:
            queue_completion(runtime, tenant_id)
        except Exception:
            log.exception("could not queue the search index completion of tenant %s", tenant_id)
    return len(tenants)


def install(runtime: Runtime) -> None:
    """Queue a completion after every commit of this process that left entries pending."""
    textindex.LISTENERS.install(
        runtime,
        runtime.db.engine,
        lambda tenant_id: queue_completion(runtime, tenant_id),
        job="search index completion",
    )


def uninstall(runtime: Runtime) -> None:
    """Stop queueing completions for ``runtime`` (a runtime being closed, or a test)."""
    textindex.LISTENERS.uninstall(runtime)
