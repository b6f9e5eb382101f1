"""Background tasks: the row a job reports into, and what callers read of it.

A task row is created in the request's transaction together with the job that will run
it; the job is sent after commit. Workers then move the row through
``pending → started → (retry →)* success | failure``, each change in a step of the
job's unit of work (``scope.JobUnit``), committed before the job talks to a mail server
again, so the API sees progress while the job runs.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from db.models import Account, Task, new_id, now_ms
from email_service import metrics, present
from email_service.errors import TaskNotFound
from email_service.runtime import Runtime
from email_service.scope import JobUnit, Scope
from email_service.services import events

log = logging.getLogger(__name__)

ACTIVE = ("pending", "started", "retry")
FINISHED = ("success", "failure")
# A task is "stuck" when it neither started nor reported anything for this long; a new
# request then replaces it instead of waiting for it forever (a lost enqueue, say).
STALE_AFTER_MS = 15 * 60 * 1000
PROGRESS_EVERY_S = 0.5
#: ``session.info`` key: the task rows locked in the session's current transaction.
_LOCKED = "tasks.locked"


def queue_task(
    scope: Scope,
    kind: str,
    actor: str,
    *,
    account_id: str | None,
    payload: dict[str, Any],
    idempotency_key: str | None = None,
) -> Task:
    """Create the task row and arrange for its job to be sent once the row is committed."""
    task_id = new_id()
    job = scope.runtime.jobs.prepare(actor, task_id, tenant_id=str(scope.caller.tenant_id))
    row = Task(
        id=task_id,
        tenant_id=scope.caller.tenant_id,
        user_id=scope.caller.user_id,
        account_id=account_id,
        kind=kind,
        status="pending",
        progress=0,
        payload=payload,
        idempotency_key=idempotency_key,
    )
    scope.session.add(row)
    scope.session.flush()
    events.task_updated(scope.session, row)

    def send() -> None:
        try:
            job.send()
        except Exception as exc:
            # The row is committed: the outbox sweep sends the job once the broker is
            # back (workers/outbox.py), so the request still succeeds.
            log.warning(
                "task %s could not be queued now (%s); the outbox will send it",
                task_id,
                type(exc).__name__,
            )

    scope.after_commit(send)
    scope.after_commit(lambda: metrics.observe_task(kind, "pending"))
    return row


def is_active(row: Task | None, now: int | None = None) -> bool:
    """Whether ``row`` is still going (and not stuck)."""
    if row is None or row.status not in ACTIVE:
        return False
    return (now or now_ms()) - row.updated_at < STALE_AFTER_MS


def get_task(scope: Scope, task_id: str) -> dict[str, Any]:
    """The caller's task ``task_id``. Raises ``TaskNotFound`` for anyone else's."""
    row = scope.session.scalars(
        select(Task).where(
            Task.id == task_id,
            Task.tenant_id == scope.caller.tenant_id,
            Task.user_id == scope.caller.user_id,
        )
    ).one_or_none()
    if row is None:
        raise TaskNotFound(task_id)
    return present.task(row)


def locked_task(session: Session, task_id: str) -> Task | None:
    """The task row, locked (``FOR UPDATE``) until ``session``'s transaction ends.

    Read once per transaction: a step that reads its task to decide what to do and
    then writes it (its own marks, then the status) pays one statement for all.
    """
    rows = _held(session)
    if task_id not in rows:
        rows[task_id] = session.get(Task, task_id, with_for_update=True)
    return rows[task_id]


def locked_task_and_account(session: Session, task_id: str) -> tuple[Task | None, Account | None]:
    """``locked_task`` and the task's account (not locked), read in one statement."""
    found = session.execute(
        select(Task, Account)
        .outerjoin(Account, Account.id == Task.account_id)
        .where(Task.id == task_id)
        .with_for_update(of=Task)
    ).one_or_none()
    task, account = (found[0], found[1]) if found is not None else (None, None)
    _held(session)[task_id] = task
    return task, account


def _held(session: Session) -> dict[str, Task | None]:
    """The task rows locked in ``session``'s current transaction, by id."""
    transaction = session.get_transaction()
    held = session.info.get(_LOCKED)
    if held is None or held[0] is not transaction:
        held = (transaction, {})
        session.info[_LOCKED] = held
    rows: dict[str, Task | None] = held[1]
    return rows


class TaskReport:
    """How a running job writes its progress and outcome into its task row.

    Each method writes in a step of the job's unit of work: on its own, it commits at
    once (so the API sees progress while the job runs, and a failure of the job's own
    work later can never roll back what was reported); called inside a step the job has
    open, it joins that step, so the status change commits together with the job's own
    state (the account, a message) in one transaction.
    """

    def __init__(self, unit: JobUnit, task_id: str) -> None:
        self.unit = unit
        self.task_id = task_id
        self._progress = -1
        self._written = 0.0

    def load(self) -> Task | None:
        with self.unit.step() as session:
            return session.get(Task, self.task_id)

    def lock(self, session: Session) -> Task | None:
        """The task row, locked until ``session``'s transaction ends (``locked_task``)."""
        return locked_task(session, self.task_id)

    def _update(self, **values: Any) -> None:
        with self.unit.step() as session:
            row = self.lock(session)
            if row is None:
                return
            for name, value in values.items():
                setattr(row, name, value)
            row.updated_at = now_ms()
            if "status" in values:
                events.task_updated(session, row)
                kind, status = row.kind, values["status"]
                self.unit.after_commit(lambda: metrics.observe_task(kind, status))

    def started(self, attempt: int) -> None:
        self._update(
            status="started",
            attempts=attempt + 1,
            started_at=now_ms(),
            error=None,
            progress=0,
        )
        # The start wrote progress 0: progress alone waits its half second from here.
        self._progress = 0
        self._written = time.monotonic()

    def progress(
        self, percent: float, result: dict[str, Any] | None = None, *, save: bool = False
    ) -> None:
        """Record progress (0-100) and, optionally, the result so far.

        Progress alone is written at most twice a second (a resync of many unchanged
        folders would otherwise spend more time reporting than syncing); ``save``
        writes at once, for a result that must survive the job being cut off (so that a
        rerun can resume its counts).
        """
        value = max(0, min(99, int(percent)))
        now = time.monotonic()
        if not save and (value == self._progress or now - self._written < PROGRESS_EVERY_S):
            return
        self._progress = value
        self._written = now
        values: dict[str, Any] = {"progress": value}
        if result is not None:
            values["result"] = result
        self._update(**values)

    def succeeded(self, result: dict[str, Any] | None) -> None:
        self._update(status="success", progress=100, result=result, finished_at=now_ms())

    def retrying(self, error: str, result: dict[str, Any] | None = None) -> None:
        """The job will run again; ``result`` keeps what this attempt achieved."""
        values: dict[str, Any] = {"status": "retry", "error": error}
        if result is not None:
            values["result"] = result
        self._update(**values)

    def failed(self, error: str, result: dict[str, Any] | None = None) -> None:
        values: dict[str, Any] = {"status": "failure", "error": error, "finished_at": now_ms()}
        if result is not None:
            values["result"] = result
        self._update(**values)


def fail_unfinished(runtime: Runtime, tenant_id: uuid.UUID, task_id: str, error: str) -> bool:
    """Record ``failure`` with ``error`` for a task its job left active when it failed for
    good (a database error no retry would pass); returns
    whether it was recorded. A finished task is left alone, and so is a send whose
    server has taken the message for some recipients: ``failure`` would invite sending
    it again (README, "Untrusted servers and failures"); its run is taken up again.
    """
    unit = JobUnit(runtime, tenant_id)
    with unit.step() as session:
        row = locked_task(session, task_id)
        if row is None or row.status not in ACTIVE:
            return False
        payload = row.payload or {}
        if row.kind == "send" and (
            "acceptedAt" in payload or payload.get("batches") or payload.get("retries")
        ):
            return False
        TaskReport(unit, task_id).failed(error)
    return True


def describe_failure(exc: DBAPIError) -> str:
    """What a task's ``error`` says of a database error no retry passes."""
    state = getattr(exc.orig, "sqlstate", None) or type(exc.orig).__name__
    return f"The task failed: the database refused it ({state})"
