"""Mail connections kept open across jobs in one process (SMTP submissions, IMAP sessions).

Opening a submission connection costs a TCP connect, a greeting, EHLO, STARTTLS (a TLS
handshake), EHLO again and AUTH; an IMAP session costs as much again with LOGIN,
CAPABILITY and ENABLE. A worker sending one account's mail pays that for every message,
more than the message itself. A :class:`ConnectionPool` keeps the connections a job is
done with, so the next job for the same account goes on where it left off.

What a pooled connection is filed under (:func:`pool_key`) is the account *and* a digest
of everything it was opened with: host, port, encryption, user name, password or OAuth2
access token, SASL mechanism, CA bundle, limits. An account whose password was rotated,
whose host changed or whose token was refreshed asks for another key and never gets a
connection opened with the old settings; taking a key also closes the account's idle
connections under any other key (they can never be used again). The digest is a keyed
BLAKE2 of the settings under a random per-process key, so the pool holds no password in
a form that could be read back or compared across processes.

Bounds: at most ``per_account`` idle connections per key and ``total`` in the process
(the least recently used one is closed to make room); a connection idle for
``idle_seconds`` is closed by a reaper thread. Connections in use are not counted: a
job holds at most one of each kind, so the worker's threads bound them.

The pool knows nothing of the protocols: the caller checks a connection it takes (an
SMTP RSET, an IMAP NOOP) and gives back only a connection that finished cleanly; one
that failed is closed by the caller, never returned. After ``fork`` the child starts
with an empty pool (the sockets are the parent's).
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from .endpoint import MailEndpoint
from .uidwatch import KnownFolders, UidWatch

__all__ = ["ConnectionPool", "MailPools", "PoolKey", "pool_key"]

log = logging.getLogger(__name__)

C = TypeVar("C")

#: Defaults for a worker: 4 threads rarely need more than 4 connections of an account.
PER_ACCOUNT = 4
TOTAL = 32
IDLE_SECONDS = 45.0

_DIGEST_KEY = secrets.token_bytes(32)


@dataclass(frozen=True)
class PoolKey:
    """Whose connection (``owner``, an account id) and what it was opened with."""

    owner: str
    settings: str = field(repr=False)


def pool_key(owner: str, endpoint: MailEndpoint, kind: str) -> PoolKey:
    """The key of ``owner``'s connections of ``kind`` opened with ``endpoint``'s settings."""
    digest = hashlib.blake2b(key=_DIGEST_KEY, digest_size=20)
    limits = endpoint.limits
    for part in (
        kind,
        endpoint.host,
        str(endpoint.port),
        endpoint.encryption,
        endpoint.username,
        endpoint.password,
        endpoint.sasl or "",
        endpoint.ca_file or "",
        repr(limits),
    ):
        encoded = part.encode("utf-8", "surrogatepass")
        digest.update(len(encoded).to_bytes(8, "big"))
        digest.update(encoded)
    return PoolKey(owner, digest.hexdigest())


@dataclass
class _Idle(Generic[C]):
    key: PoolKey
    connection: C
    since: float


class ConnectionPool(Generic[C]):
    """Idle connections by :class:`PoolKey`, bounded and closed when idle (thread-safe).

    ``close`` closes one connection and must not raise (it is called from the reaper
    thread too); ``clock`` is for tests.
    """

    def __init__(
        self,
        name: str,
        close: Callable[[C], None],
        *,
        per_account: int = PER_ACCOUNT,
        total: int = TOTAL,
        idle_seconds: float = IDLE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if per_account < 1 or total < 1 or idle_seconds <= 0:
            raise ValueError("pool bounds must be positive")
        self.name = name
        self._close_one = close
        self.per_account = per_account
        self.total = total
        self.idle_seconds = idle_seconds
        self._clock = clock
        self._lock = threading.Condition()
        self._idle: list[_Idle[C]] = []  # oldest first
        self._reaper: threading.Thread | None = None
        self._closed = False
        #: Counters for tests and logs: connections handed out again, and closed by the pool.
        self.reused = 0
        self.closed_idle = 0
        self.closed_stale = 0
        self.closed_over = 0
        _live_pools.add(self)

    def take(self, key: PoolKey) -> C | None:
        """The most recently returned idle connection filed under ``key``, or ``None``.

        Idle connections of the same owner under another key (changed settings) are
        closed, and so are expired ones.
        """
        doomed: list[C] = []
        found: C | None = None
        with self._lock:
            now = self._clock()
            keep: list[_Idle[C]] = []
            for entry in self._idle:
                if now - entry.since >= self.idle_seconds:
                    doomed.append(entry.connection)
                    self.closed_idle += 1
                elif entry.key.owner == key.owner and entry.key != key:
                    doomed.append(entry.connection)
                    self.closed_stale += 1
                else:
                    keep.append(entry)
            for index in range(len(keep) - 1, -1, -1):
                if keep[index].key == key:
                    found = keep.pop(index).connection
                    self.reused += 1
                    break
            self._idle = keep
        self._close_all(doomed)
        return found

    def give(self, key: PoolKey, connection: C) -> None:
        """Keep ``connection`` (which finished its work cleanly) for the next ``take``."""
        doomed: list[C] = []
        with self._lock:
            if self._closed:
                doomed.append(connection)
            else:
                same = [e for e in self._idle if e.key == key]
                if len(same) >= self.per_account:
                    # The oldest of this key makes room: the newest is the likeliest alive.
                    self._idle.remove(same[0])
                    doomed.append(same[0].connection)
                    self.closed_over += 1
                while len(self._idle) >= self.total:
                    doomed.append(self._idle.pop(0).connection)
                    self.closed_over += 1
                self._idle.append(_Idle(key, connection, self._clock()))
                self._start_reaper()
                self._lock.notify_all()
        self._close_all(doomed)

    def forget(self, owner: str) -> None:
        """Close every idle connection of ``owner`` (an account deleted, say)."""
        with self._lock:
            doomed = [e.connection for e in self._idle if e.key.owner == owner]
            self._idle = [e for e in self._idle if e.key.owner != owner]
        self._close_all(doomed)

    def idle_count(self, owner: str | None = None) -> int:
        with self._lock:
            return sum(1 for e in self._idle if owner is None or e.key.owner == owner)

    def reap(self) -> int:
        """Close the connections idle for ``idle_seconds`` or more; returns how many."""
        with self._lock:
            now = self._clock()
            doomed = [e.connection for e in self._idle if now - e.since >= self.idle_seconds]
            self._idle = [e for e in self._idle if now - e.since < self.idle_seconds]
            self.closed_idle += len(doomed)
        self._close_all(doomed)
        return len(doomed)

    def close(self) -> None:
        """Close every idle connection; connections given back later are closed at once."""
        with self._lock:
            self._closed = True
            doomed = [e.connection for e in self._idle]
            self._idle = []
            self._lock.notify_all()
        self._close_all(doomed)

    def _start_reaper(self) -> None:
        if self._reaper is not None and self._reaper.is_alive():
            return
        self._reaper = threading.Thread(
            target=_reap_forever, args=(weakref.ref(self),), name=f"{self.name}-reaper", daemon=True
        )
        self._reaper.start()

    def _next_wait(self) -> float | None:
        """Seconds until the oldest idle connection expires (``None``: nothing idle)."""
        if not self._idle:
            return None
        return max(0.05, self._idle[0].since + self.idle_seconds - self._clock())

    def _close_all(self, connections: list[C]) -> None:
        for connection in connections:
            try:
                self._close_one(connection)
            except Exception:  # a close is courtesy; never let it break a job or the reaper
                log.debug("closing a pooled %s connection failed", self.name, exc_info=True)

    def _after_fork(self) -> None:
        # The sockets belong to the parent: drop them without a word on the wire.
        self._lock = threading.Condition()
        self._idle = []
        self._reaper = None


def _reap_forever(ref: weakref.ref[ConnectionPool[Any]]) -> None:
    while True:
        pool = ref()
        if pool is None:
            return
        with pool._lock:
            if pool._closed:
                return
            wait = pool._next_wait()
            if wait is None:
                pool._reaper = None  # started again by the next give
                return
            pool._lock.wait(min(wait, 5.0))
        pool.reap()
        del pool


_live_pools: weakref.WeakSet[ConnectionPool[Any]] = weakref.WeakSet()


def _reset_after_fork() -> None:
    for pool in list(_live_pools):
        pool._after_fork()


os.register_at_fork(after_in_child=_reset_after_fork)


class MailPools:
    """One process's pools: SMTP submission connections and IMAP sessions, and what the
    process knows of its accounts' folders (``uids``, ``folders``).

    The protocol modules make and close the connections; this only keeps them.
    """

    def __init__(
        self,
        *,
        per_account: int = PER_ACCOUNT,
        total: int = TOTAL,
        idle_seconds: float = IDLE_SECONDS,
    ) -> None:
        from . import imap, smtp  # the protocol modules close their own connections

        self.smtp: ConnectionPool[smtp.Submission] = ConnectionPool(
            "smtp",
            smtp.close_connection,
            per_account=per_account,
            total=total,
            idle_seconds=idle_seconds,
        )
        self.imap: ConnectionPool[imap.ImapSession] = ConnectionPool(
            "imap",
            imap.ImapSession.close,
            per_account=per_account,
            total=total,
            idle_seconds=idle_seconds,
        )

        #: What this process knows of the UIDs its folders were given (the Sent copies),
        #: and of where the accounts' special folders are (by ``pool_key`` and use).
        self.uids = UidWatch()
        self.folders: KnownFolders[imap.RemoteFolder] = KnownFolders()

    def forget(self, owner: str) -> None:
        self.smtp.forget(owner)
        self.imap.forget(owner)

    def close(self) -> None:
        self.smtp.close()
        self.imap.close()
