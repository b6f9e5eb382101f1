"""A unit of work for one caller: the session, the runtime and after-commit hooks.

Each request opens exactly one scope; services receive it and only flush. Hooks
registered with ``after_commit`` run once the transaction has committed, which is how a
job message is sent only when the row it points at exists. Jobs do not run in one scope:
a job opens a short transaction per step (``runtime.db.transaction``), so that no
transaction stays open across an IMAP, POP3 or SMTP exchange; the scheduler and push
open a scope only to start a sync.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from sqlalchemy.orm import Session

from email_service.identity import Caller
from email_service.runtime import Runtime


@dataclass
class Scope:
    caller: Caller
    session: Session
    runtime: Runtime
    _hooks: list[Callable[[], None]] = field(default_factory=list)

    def after_commit(self, hook: Callable[[], None]) -> None:
        self._hooks.append(hook)


@contextmanager
def open_scope(runtime: Runtime, caller: Caller) -> Iterator[Scope]:
    """Commit on success, roll back on error, always close; then run the hooks."""
    hooks: list[Callable[[], None]] = []
    with runtime.db.transaction(caller.tenant_id) as session:
        yield Scope(caller, session, runtime, hooks)
    for hook in hooks:
        hook()
