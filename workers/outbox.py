"""Jobs that never reached the queue are sent again.

A request commits its task row first and hands the job to the broker after the commit
(``email_service.jobs``), so that no worker can see a job whose row does not exist.
If the broker cannot be reached at that moment (Redis restarting), or the process dies
in between, the row is ``pending`` with no job behind it. Two sweeps close that gap:

* :func:`sweep` (every scheduler tick, Redis broker): an active task untouched for
  ``OUTBOX_GRACE_SECONDS`` whose message is in none of its queue's hashes (ready,
  delayed, or taken by a worker and not yet acknowledged) is sent again, with the same
  message id. The hashes are read only when such tasks exist, so a healthy system pays
  one indexed query per tick. A task being worked on is never duplicated: its message stays in the
  queue's hash until the worker acknowledges it, which happens after the task row
  says how it ended.
* :func:`resume_interrupted` (start of the embedded ``serve``, whose queue lives in
  memory): every task still pending, started or waiting for a retry belonged to the
  process that died, and is sent again. Jobs are idempotent (a finished task is left
  alone, a sync resumes from its committed batches, a send never delivers twice), so
  sending one again is always safe; at worst a job runs and finds nothing to do.
"""

from __future__ import annotations

import logging

from sqlalchemy import select

from db.models import Task, now_ms
from email_service.runtime import Runtime
from email_service.services import compose, tasks, writeback
from email_service.services.syncing import SYNC_ACTOR
from workers.broker import DramatiqJobs

log = logging.getLogger(__name__)

#: The actor that runs each kind of task.
ACTOR_BY_KIND = {
    "sync": SYNC_ACTOR,
    "send": compose.SEND_ACTOR,
    "draft": compose.DRAFT_ACTOR,
    "flags": writeback.FLAGS_ACTOR,
}

_BATCH = 500


def sweep(runtime: Runtime, jobs: DramatiqJobs, now: int | None = None) -> list[str]:
    """Send again the jobs of active tasks that are in no queue; returns their ids.

    Does nothing on a broker that cannot tell what it holds (the in-memory one).
    """
    if not jobs.can_inspect:
        return []
    cutoff = (now or now_ms()) - int(runtime.settings.outbox_grace_seconds * 1000)
    with runtime.db.transaction(system=True) as session:
        rows = session.execute(
            select(Task.id, Task.tenant_id, Task.kind)
            .where(Task.status.in_(tasks.ACTIVE), Task.updated_at < cutoff)
            .order_by(Task.updated_at)
            .limit(_BATCH)
        ).all()
    if not rows:
        return []
    queued = jobs.queued_job_ids(ACTOR_BY_KIND.values())
    sent = []
    for task_id, tenant_id, kind in rows:
        actor = ACTOR_BY_KIND.get(kind)
        if actor is None or task_id in queued or not _still_active(runtime, task_id):
            continue
        jobs.prepare(actor, task_id, tenant_id=str(tenant_id)).send()
        sent.append(task_id)
    if sent:
        log.warning("outbox: sent %d job(s) again that had not reached the queue", len(sent))
    return sent


def _still_active(runtime: Runtime, task_id: str) -> bool:
    # Read after the queue was looked at: a job records its outcome before its message
    # is acknowledged, so a job that finished just now shows here as finished.
    with runtime.db.transaction(system=True) as session:
        status = session.scalar(select(Task.status).where(Task.id == task_id))
    return status in tasks.ACTIVE


def resume_interrupted(runtime: Runtime, jobs: DramatiqJobs) -> list[str]:
    """Send again every active task's job (the embedded default, at start); their ids."""
    with runtime.db.transaction(system=True) as session:
        rows = session.execute(
            select(Task.id, Task.tenant_id, Task.kind)
            .where(Task.status.in_(tasks.ACTIVE))
            .order_by(Task.created_at)
        ).all()
    sent = []
    for task_id, tenant_id, kind in rows:
        actor = ACTOR_BY_KIND.get(kind)
        if actor is not None:
            jobs.prepare(actor, task_id, tenant_id=str(tenant_id)).send()
            sent.append(task_id)
    if sent:
        log.info("resuming %d task(s) that were pending or running when we stopped", len(sent))
    return sent
