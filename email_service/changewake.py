"""Waking open change streams when a user's changes commit, in any process.

Streams wait on a :class:`ChangeWaker`, one per process. It is woken from two sides:

* in this process, right after a commit that recorded changes (``db.changes``' commit
  listeners) - this is all the embedded default (one process) needs;
* on PostgreSQL, by a single ``LISTEN`` connection on a thread of its own, shared by
  every stream of the process (not one connection per client), which hears the
  ``pg_notify`` that each commit in any process sends.

A wake-up is only a hint to look: the stream reads the table, so a lost notification
(the listener reconnecting, say) delays a stream until its next keep-alive at worst.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

from db import changes

log = logging.getLogger(__name__)

Owner = tuple[uuid.UUID, uuid.UUID]


@dataclass(eq=False)
class Waiter:
    """One stream's wake-up: an asyncio event on the stream's own loop."""

    owner: Owner
    loop: asyncio.AbstractEventLoop
    event: asyncio.Event = field(default_factory=asyncio.Event)

    def wake(self) -> None:
        self.loop.call_soon_threadsafe(self.event.set)


class ChangeWaker:
    """Who waits for whose changes, and the threads that wake them."""

    def __init__(self, listen_dsn: str | None = None, *, retry_seconds: float = 1.0) -> None:
        self._listen_dsn = listen_dsn
        self._retry_seconds = retry_seconds
        self._waiters: dict[Owner, set[Waiter]] = {}
        self._guard = threading.Lock()
        self._stop = threading.Event()
        self._listener: threading.Thread | None = None
        # Set once the LISTEN is in place (tests and the bench wait for it).
        self.listening = threading.Event()
        changes.LISTENERS.add(self._committed)

    def subscribe(self, tenant_id: uuid.UUID, user_id: uuid.UUID) -> Waiter:
        """Register the calling coroutine's stream; call from the event loop."""
        waiter = Waiter((tenant_id, user_id), asyncio.get_running_loop())
        with self._guard:
            self._waiters.setdefault(waiter.owner, set()).add(waiter)
            if self._listen_dsn and self._listener is None:
                self._listener = threading.Thread(
                    target=self._listen, name="changes-listen", daemon=True
                )
                self._listener.start()
        return waiter

    def unsubscribe(self, waiter: Waiter) -> None:
        with self._guard:
            waiting = self._waiters.get(waiter.owner)
            if waiting is not None:
                waiting.discard(waiter)
                if not waiting:
                    del self._waiters[waiter.owner]

    def waiting(self) -> int:
        """How many streams of this process are open (metrics, tests)."""
        with self._guard:
            return sum(len(waiters) for waiters in self._waiters.values())

    def wake(self, tenant_id: uuid.UUID, user_id: uuid.UUID) -> None:
        with self._guard:
            waiting = list(self._waiters.get((tenant_id, user_id), ()))
        for waiter in waiting:
            try:
                waiter.wake()
            except RuntimeError:  # its loop has closed: the stream is gone
                self.unsubscribe(waiter)

    def close(self) -> None:
        changes.LISTENERS.remove(self._committed)
        self._stop.set()
        if self._listener is not None:
            self._listener.join(timeout=5)

    def _committed(self, _engine: Any, committed: list[changes.CommittedChanges]) -> None:
        for entry in committed:
            self.wake(entry.tenant_id, entry.user_id)

    def _listen(self) -> None:
        import psycopg

        assert self._listen_dsn is not None
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._listen_dsn, autocommit=True) as conn:
                    conn.execute(f"LISTEN {changes.NOTIFY_CHANNEL}")
                    self.listening.set()
                    while not self._stop.is_set():
                        for notify in conn.notifies(timeout=1.0):
                            self._notified(notify.payload)
            except Exception:
                self.listening.clear()
                if self._stop.is_set():
                    return
                log.warning(
                    "the change listener lost its database connection; reconnecting",
                    exc_info=True,
                )
                # Streams keep polling on their keep-alive meanwhile.
                self._stop.wait(self._retry_seconds)

    def _notified(self, payload: str) -> None:
        try:
            tenant, user, _position = payload.split(":")
            owner = (uuid.UUID(tenant), uuid.UUID(user))
        except ValueError:
            log.warning("ignoring a malformed change notification")
            return
        self.wake(*owner)
