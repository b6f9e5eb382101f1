"""After-commit listeners: who is told, in this process, what a commit left for them.

Two writers announce work after their commit: the change feed (``db.changes``: the
users whose changes committed) and the search index (``db.textindex``: the tenants whose
entries were left to complete). Each keeps one :class:`CommitListeners`, which its
session hook calls after every commit that left something (:meth:`~CommitListeners.notify`).

Listeners run on the committing thread after the commit, so they must be quick (queue a
job, set an event). One that raises is logged and the others still run: the commit has
happened, and every reader of these wake-ups has a sweep that makes a lost one good.

A job queue listens per runtime (:meth:`~CommitListeners.install`): a process may hold
several runtimes (tests do), and each wakes only its own jobs, for its own engine's
commits. A runtime that closes takes its listeners out of every kind of news
(:func:`uninstall_everywhere`); left in, each would keep the runtime and its engine alive
and be asked after every commit of the process for nothing.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Hashable, Iterable
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
#: ``listener(engine, items)``: the engine that committed, and what the commit announced.
Listener = Callable[[Any, list[T]], None]

# Every kind of news of the process, for ``uninstall_everywhere``.
_EVERY: weakref.WeakSet[CommitListeners[Any]] = weakref.WeakSet()


class CommitListeners(Generic[T]):
    """The listeners of one kind of after-commit news (``what`` names it in the logs)."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._listeners: list[Listener[T]] = []
        self._installed: dict[int, Listener[T]] = {}
        self._guard = threading.Lock()
        _EVERY.add(self)

    def add(self, listener: Listener[T]) -> None:
        """Call ``listener(engine, items)`` after every commit that announced ``items``."""
        with self._guard:
            if listener not in self._listeners:
                self._listeners.append(listener)

    def remove(self, listener: Listener[T]) -> None:
        with self._guard:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def install(
        self,
        owner: object,
        engine: Any,
        wake: Callable[[Any], None],
        *,
        job: str,
        key: Callable[[T], Hashable] = lambda item: item,
        only: Callable[[T], bool] = lambda item: True,
    ) -> None:
        """After every commit of ``engine``, call ``wake(k)`` once for each distinct
        ``key(item)`` of the items it announced for which ``only(item)`` holds; replaces
        ``owner``'s earlier installation.

        ``wake`` queues ``owner``'s (a runtime's) ``job``. If it raises, the failure is
        logged and the other keys are still woken.
        """

        def listener(committed_by: Any, items: list[T]) -> None:
            if committed_by is not None and committed_by is not engine:
                return  # another runtime's commit
            for each in dict.fromkeys(key(item) for item in items if only(item)):
                try:
                    wake(each)
                except Exception:
                    # The sweep queues it later; the commit itself has happened.
                    log.warning("could not queue a %s", job, exc_info=True)

        self.uninstall(owner)
        with self._guard:
            self._installed[id(owner)] = listener
        self.add(listener)

    def uninstall(self, owner: object) -> None:
        """Stop waking ``owner``'s jobs (a runtime being closed, or a test)."""
        with self._guard:
            listener = self._installed.pop(id(owner), None)
        if listener is not None:
            self.remove(listener)

    def installed(self) -> list[Listener[T]]:
        """The listeners :meth:`install` made, one per owner (for tests that take them out)."""
        with self._guard:
            return list(self._installed.values())

    def notify(self, engine: Any, items: Iterable[T]) -> None:
        """Tell every listener what ``engine``'s commit announced (the session hooks)."""
        announced = list(items)
        if not announced:
            return
        with self._guard:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(engine, announced)
            except Exception:
                log.exception("a %s listener failed", self.what)


def uninstall_everywhere(owner: object) -> None:
    """Take ``owner``'s listeners out of every kind of news (a runtime being closed).
    Harmless when it has none, or when they are already out."""
    for news in list(_EVERY):
        news.uninstall(owner)
