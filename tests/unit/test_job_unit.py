"""The job's unit of work (``scope.JobUnit``): steps commit at their end, hooks follow
their step's commit and are dropped with its rollback, a step inside a step joins it."""

from __future__ import annotations

import threading
import uuid

import pytest

from db.models import Task, new_id
from email_service import metrics
from email_service.runtime import Runtime
from email_service.scope import JobUnit
from email_service.services.tasks import TaskReport

TENANT = uuid.UUID("00000000-0000-4000-8000-0000000000a1")


def _task(task_id: str | None = None) -> Task:
    return Task(
        id=task_id or new_id(),
        tenant_id=TENANT,
        user_id=uuid.uuid4(),
        kind="sync",
        status="pending",
        progress=0,
        payload={},
    )


def _committed(runtime: Runtime, task_id: str) -> Task | None:
    """The row as another transaction sees it: only what was committed."""
    with runtime.db.transaction(TENANT) as session:
        return session.get(Task, task_id)


def test_a_hook_runs_after_its_step_has_committed(runtime: Runtime) -> None:
    unit = JobUnit(runtime, TENANT)
    row = _task()
    seen: list[Task | None] = []
    with unit.step() as session:
        session.add(row)
        session.flush()
        unit.after_commit(lambda: seen.append(_committed(runtime, row.id)))
        assert seen == []
    assert len(seen) == 1 and seen[0] is not None and seen[0].id == row.id
    # The next step starts with no hooks of the last one.
    with unit.step():
        pass
    assert len(seen) == 1


def test_a_rolled_back_step_drops_its_hooks_and_its_writes(runtime: Runtime) -> None:
    unit = JobUnit(runtime, TENANT)
    row = _task()
    ran: list[str] = []
    with pytest.raises(RuntimeError, match="server went away"), unit.step() as session:
        session.add(row)
        session.flush()
        unit.after_commit(lambda: ran.append("hook"))
        raise RuntimeError("server went away")
    assert ran == []
    assert _committed(runtime, row.id) is None
    with unit.step():
        unit.after_commit(lambda: ran.append("next"))
    assert ran == ["next"]


def test_a_step_inside_a_step_joins_it(runtime: Runtime) -> None:
    unit = JobUnit(runtime, TENANT)
    first, second = _task(), _task()
    ran: list[str] = []
    with pytest.raises(ValueError), unit.step() as outer:
        outer.add(first)
        with unit.step() as inner:
            assert inner is outer
            inner.add(second)
            inner.flush()
            unit.after_commit(lambda: ran.append("inner"))
        # The inner end committed nothing, and its hook waits for the outer commit.
        assert _committed(runtime, second.id) is None
        assert ran == []
        raise ValueError("the outer step fails")
    assert ran == []
    assert _committed(runtime, first.id) is None and _committed(runtime, second.id) is None


def test_after_commit_outside_a_step_is_refused(runtime: Runtime) -> None:
    unit = JobUnit(runtime, TENANT)
    with pytest.raises(RuntimeError, match="open step"):
        unit.after_commit(lambda: None)


def test_each_thread_has_its_own_step_and_hooks(runtime: Runtime) -> None:
    # The sync stores batches on a thread of its own while the main thread reports.
    unit = JobUnit(runtime, TENANT)
    row = _task()
    ran: list[str] = []
    on_thread = threading.Event()
    done = threading.Event()

    def writer() -> None:
        with unit.step() as session:
            session.add(row)
            unit.after_commit(lambda: ran.append("writer"))
            on_thread.set()
            assert done.wait(10)
        ran.append("writer committed")

    with unit.step():
        thread = threading.Thread(target=writer)
        thread.start()
        assert on_thread.wait(10)
        # The writer's open step is not this thread's: this one has its own.
        unit.after_commit(lambda: ran.append("main"))
        assert _committed(runtime, row.id) is None
    assert ran == ["main"]
    done.set()
    thread.join(10)
    assert ran == ["main", "writer", "writer committed"]
    assert _committed(runtime, row.id) is not None


def test_a_status_report_inside_a_step_commits_with_it(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    observed: list[tuple[str, str]] = []
    monkeypatch.setattr(
        metrics, "observe_task", lambda kind, status: observed.append((kind, status))
    )
    task_id = new_id()
    with runtime.db.transaction(TENANT) as session:
        session.add(_task(task_id))
    unit = JobUnit(runtime, TENANT)
    report = TaskReport(unit, task_id)

    with pytest.raises(RuntimeError), unit.step():
        report.succeeded({"n": 1})
        raise RuntimeError("the job's own write failed")
    committed = _committed(runtime, task_id)
    assert committed is not None and committed.status == "pending"
    assert observed == []

    with unit.step():
        report.started(0)
        assert observed == []
    committed = _committed(runtime, task_id)
    assert committed is not None and committed.status == "started"
    assert observed == [("sync", "started")]

    report.failed("gone")  # on its own: a step of its own, committed at once
    committed = _committed(runtime, task_id)
    assert committed is not None and committed.status == "failure"
    assert observed == [("sync", "started"), ("sync", "failure")]
