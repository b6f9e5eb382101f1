"""Units of work: one per request (``Scope``), one per background job run (``JobUnit``).

A request opens exactly one scope; services receive it and only flush, and the scope
commits when the request's work is done. Hooks registered with ``after_commit`` run
once that transaction has committed, which is how a job message is sent only when the
row it points at exists.

A job cannot work in one transaction: it talks to IMAP, POP3 or SMTP servers for
seconds or minutes, and no transaction may stay open across such an exchange. So the
job's runner (``syncing.run_sync``, ``delivery.run_send``/``run_draft``,
``writeback.run_flags``, ``purge.run_purge``) opens one ``JobUnit`` for the run, and the
job's code commits through it in steps: ``with unit.step() as session:`` is one
transaction that commits at the end of the block (a checkpoint a re-run resumes from)
or rolls back if the block raises. A step opened while another is open on the same
thread joins it (one commit, at the outer end), so a runner folds its bookkeeping (the
task row, the account) into the step that writes the job's own state. Hooks registered
with ``JobUnit.after_commit`` belong to the step open on the calling thread: they run
after that step commits and are dropped if it rolls back. Job code never opens a
transaction of its own (``runtime.db.transaction``); tests/unit/test_layers.py checks.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from email_service.identity import Caller
from email_service.runtime import Runtime

Hook = Callable[[], None]


@dataclass
class Scope:
    caller: Caller
    session: Session
    runtime: Runtime
    _hooks: list[Hook] = field(default_factory=list)

    def after_commit(self, hook: Hook) -> None:
        self._hooks.append(hook)


#: Opens a new unit of work of one caller at each call (``web.context.request_scope``):
#: for a request that waits on an outside server between two transactions, rather than
#: holding one open across the wait.
Scopes = Callable[[], AbstractContextManager[Scope]]


@contextmanager
def open_scope(runtime: Runtime, caller: Caller) -> Iterator[Scope]:
    """Commit on success, roll back on error, always close; then run the hooks."""
    hooks: list[Hook] = []
    with runtime.db.transaction(caller.tenant_id) as session:
        yield Scope(caller, session, runtime, hooks)
    for hook in hooks:
        hook()


@dataclass
class _OpenStep:
    session: Session
    hooks: list[Hook] = field(default_factory=list)


class JobUnit:
    """One job run's unit of work for one tenant: committed steps and their hooks.

    Each thread has at most one step open at a time (the sync's batch writer stores on
    a thread of its own, with steps of its own).
    """

    def __init__(self, runtime: Runtime, tenant_id: uuid.UUID) -> None:
        self.runtime = runtime
        self.tenant_id = tenant_id
        self._local = threading.local()

    @property
    def in_step(self) -> bool:
        """Whether the calling thread has a step open."""
        return getattr(self._local, "step", None) is not None

    @contextmanager
    def step(self) -> Iterator[Session]:
        """A transaction that commits at the end of the block (or joins the open one).

        The hooks registered during the outermost step run after its commit, in the
        order they were registered; a rollback drops them.
        """
        current: _OpenStep | None = getattr(self._local, "step", None)
        if current is not None:
            yield current.session
            return
        with self.runtime.db.transaction(self.tenant_id) as session:
            opened = _OpenStep(session)
            self._local.step = opened
            try:
                yield session
            finally:
                self._local.step = None
        for hook in opened.hooks:
            hook()

    def commit_one(self, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        """One statement as a step of its own, committed in one round trip (PostgreSQL,
        ``Database.commit_one``); its rows. Never inside a step: it commits alone."""
        if self.in_step:
            raise RuntimeError("commit_one commits on its own: this thread has a step open")
        return self.runtime.db.commit_one(self.tenant_id, sql, params)

    def after_commit(self, hook: Hook) -> None:
        """Run ``hook`` once the step open on this thread has committed (never if it
        rolls back). Raises ``RuntimeError`` outside a step: there is nothing to wait for.
        """
        current: _OpenStep | None = getattr(self._local, "step", None)
        if current is None:
            raise RuntimeError("after_commit needs an open step of the job's unit of work")
        current.hooks.append(hook)
