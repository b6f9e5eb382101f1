"""What one process knows of the UIDs a folder has been given: which of them were its own
APPENDs, and what UIDNEXT was when it last looked.

For the Sent copy of a send (``email_service.services.delivery``): some providers file
submitted mail into Sent on their own, so before appending its copy a send must know
whether the server did. A copy the server filed has a UID given after the submission
began. If the folder's UIDNEXT was ``U0`` before that moment and is ``U1`` now, the
server's copy can only be among ``U0 .. U1-1``; the ones this process appended itself
(for other sends, their UIDs from APPENDUID) are not it. When nothing else is left, the
folder need not be searched at all; otherwise only the others are.

``U0`` comes from the looks at the folder (a STATUS) that this process finished before
the send's submission began: an answer received at ``t`` says that every message added
after ``t`` gets a UID of at least its UIDNEXT (RFC 3501: UIDs ascend, and UIDNEXT
changes only when messages are added), so the highest of those bounds holds. Nothing
else is assumed: a new UIDVALIDITY, a UIDNEXT below that bound, or no look old enough,
and the caller is told that nothing is known (``None``): it searches as it would
without a watch.

Bounded: ``folders`` entries (least recently used dropped), ``looks`` per folder and
``own`` UIDs per folder; dropping anything only makes a later answer ``None``.
Thread-safe.

:class:`KnownFolders` keeps where LIST found a folder (the account's Sent folder), so
that a send need not list every folder each time.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = ["SPAN", "KnownFolders", "UidWatch"]

F = TypeVar("F")

#: The most UIDs given since a send began that :meth:`UidWatch.others` sorts out.
SPAN = 1000


@dataclass
class _Folder:
    uidvalidity: int
    # (monotonic time the answer was in, its UIDNEXT), oldest first.
    looks: list[tuple[float, int]] = field(default_factory=list)
    # UIDs this process appended, at or above the oldest look's UIDNEXT.
    own: set[int] = field(default_factory=set)


class UidWatch:
    """Looks at folders and own APPENDs by ``key`` (an account's connection settings and
    a folder name: whatever tells one server's folder from another's)."""

    def __init__(self, *, folders: int = 1024, looks: int = 32, own: int = 4096) -> None:
        self._max_folders = folders
        self._max_looks = looks
        self._max_own = own
        self._lock = threading.Condition()
        self._folders: OrderedDict[Hashable, _Folder] = OrderedDict()
        # APPENDs under way by key: token -> when each began.
        self._appending: dict[Hashable, dict[int, float]] = {}
        self._tokens = itertools.count()

    def _entry(self, key: Hashable, uidvalidity: int) -> _Folder:
        entry = self._folders.get(key)
        if entry is None or entry.uidvalidity != uidvalidity:
            entry = _Folder(uidvalidity)
            self._folders[key] = entry
            while len(self._folders) > self._max_folders:
                self._folders.popitem(last=False)
        self._folders.move_to_end(key)
        return entry

    def looked(self, key: Hashable, uidvalidity: int, uidnext: int, at: float) -> None:
        """The folder had ``uidvalidity`` and ``uidnext`` in an answer received at ``at``."""
        with self._lock:
            entry = self._entry(key, uidvalidity)
            looks = entry.looks
            looks.append((at, uidnext))
            looks.sort()
            if len(looks) > self._max_looks:
                del looks[: len(looks) - self._max_looks]
                floor = min(before for _when, before in looks)
                entry.own = {uid for uid in entry.own if uid >= floor}

    @contextmanager
    def appending(self, key: Hashable) -> Iterator[None]:
        """Around an APPEND to the folder (and its :meth:`appended`): a look answered while
        it is under way may count its UID already, so :meth:`others` waits for it."""
        token = next(self._tokens)
        with self._lock:
            self._appending.setdefault(key, {})[token] = time.monotonic()
        try:
            yield
        finally:
            with self._lock:
                under_way = self._appending.get(key, {})
                under_way.pop(token, None)
                if not under_way:
                    self._appending.pop(key, None)
                self._lock.notify_all()

    def appended(self, key: Hashable, uidvalidity: int, uid: int) -> None:
        """This process appended a message that the server filed as ``uid``."""
        with self._lock:
            entry = self._folders.get(key)
            if entry is None or entry.uidvalidity != uidvalidity:
                return  # no look to measure from: the UID would never be asked about
            if not entry.looks or uid < min(before for _when, before in entry.looks):
                return
            if len(entry.own) >= self._max_own:
                # Forgetting our own UIDs would make them look like the server's: start over.
                entry.looks, entry.own = [], set()
                return
            entry.own.add(uid)

    def others(
        self,
        key: Hashable,
        uidvalidity: int,
        uidnext: int,
        since: float,
        at: float,
        *,
        wait: float = 2.0,
    ) -> list[int] | None:
        """UIDs given in the folder since ``since`` (up to ``uidnext``, as answered at
        ``at``) that this process did not append; ``None`` when that cannot be told (see
        the module doc), or when more than ``SPAN`` UIDs were given meanwhile.

        An APPEND of this process begun before ``at`` and still under way may have been
        given one of those UIDs: for up to ``wait`` seconds, its end is awaited before a
        UID is counted as another's.
        """
        deadline = time.monotonic() + wait
        with self._lock:
            while True:
                found = self._others(key, uidvalidity, uidnext, since)
                if not found:
                    return found
                under_way = self._appending.get(key, {}).values()
                left = deadline - time.monotonic()
                if left <= 0 or not any(began < at for began in under_way):
                    return found
                self._lock.wait(left)

    def _others(
        self, key: Hashable, uidvalidity: int, uidnext: int, since: float
    ) -> list[int] | None:
        entry = self._folders.get(key)
        if entry is None or entry.uidvalidity != uidvalidity:
            return None
        # Each look finished before ``since`` bounds the UIDs given after it from
        # below; the highest bound holds for them all.
        bounds = [before for when, before in entry.looks if when < since]
        if not bounds:
            return None
        base = max(bounds)
        if uidnext < base or uidnext - base > SPAN:
            return None  # UIDNEXT went backwards (a broken server), or too much to tell
        return [uid for uid in range(base, uidnext) if uid not in entry.own]


class KnownFolders(Generic[F]):
    """Folders found by LIST (the Sent folder of an account, say), kept for ``ttl``
    seconds by key, so that a job need not list every folder each time. A caller that
    finds a kept folder gone (its STATUS refused) drops it and lists again. At most
    ``size`` keys, the least recently used dropped. Thread-safe.
    """

    def __init__(
        self, *, ttl: float = 300.0, size: int = 1024, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl = ttl
        self._size = size
        self._clock = clock
        self._lock = threading.Lock()
        self._kept: OrderedDict[Hashable, tuple[float, F]] = OrderedDict()

    def get(self, key: Hashable) -> F | None:
        with self._lock:
            kept = self._kept.get(key)
            if kept is None:
                return None
            if self._clock() - kept[0] >= self.ttl:
                del self._kept[key]
                return None
            self._kept.move_to_end(key)
            return kept[1]

    def put(self, key: Hashable, folder: F) -> None:
        with self._lock:
            self._kept[key] = (self._clock(), folder)
            self._kept.move_to_end(key)
            while len(self._kept) > self._size:
                self._kept.popitem(last=False)

    def drop(self, key: Hashable) -> None:
        with self._lock:
            self._kept.pop(key, None)
