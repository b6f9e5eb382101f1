"""Watching one account: one connection in IDLE (with NOTIFY where offered), polls,
reconnects with backoff, and the syncs it asks for.

What a watch promises: every change the server tells us of (EXISTS/EXPUNGE/FETCH on
INBOX, a NOTIFY STATUS for another folder) and every change a LIST-STATUS poll finds
ends in an incremental sync of that folder that started after the notice
(``Backend.changed`` deduplicates; "busy" is asked again). On every (re)connect the
folders whose server status differs from what is stored are synced too, so nothing
that happened while nobody watched is left for the scheduler.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from email_service import metrics
from email_service.errors import ServiceError
from email_service.mail.endpoint import MailEndpoint
from email_service.mail.errors import MailAuthError
from email_service.mail.imap_watch import Change, FolderStatus, WatchSession
from email_service.services.push import SyncOutcome, WatchedAccount
from email_service.watcher.manners import Backoff, ConnectGate

log = logging.getLogger(__name__)

#: Stored state of a folder: (uidvalidity, uidnext, highest_modseq, message_count).
StoredStatus = tuple[int | None, int | None, int | None, int]


class Backend(Protocol):
    """What a watch needs from the service (the database); see ``DatabaseBackend``."""

    async def accounts(self) -> list[WatchedAccount]: ...

    async def endpoint(self, account: WatchedAccount) -> MailEndpoint | None: ...

    async def stored(self, account: WatchedAccount) -> dict[str, StoredStatus] | None:
        """The stored folders' state, or None if the account was never synced."""

    async def changed(
        self, account: WatchedAccount, folders: list[str] | None, noticed_ms: int
    ) -> SyncOutcome: ...

    async def login_refused(self, account: WatchedAccount, reason: str) -> None: ...

    async def login_recovered(self, account: WatchedAccount) -> None: ...


@dataclass(frozen=True)
class WatchSettings:
    idle_seconds: float
    poll_seconds: float
    backoff_min: float
    backoff_max: float
    auth_retry_seconds: float
    busy_retry_seconds: float = 0.5
    busy_retry_max_seconds: float = 5.0
    # A connection that lasted this long resets the backoff.
    healthy_after_seconds: float = 60.0


def differs(stored: StoredStatus | None, remote: FolderStatus) -> bool:
    """Whether a folder's server status says it changed since it was stored."""
    if stored is None:
        return True
    uidvalidity, uidnext, modseq, count = stored
    if remote.uidvalidity is not None and remote.uidvalidity != uidvalidity:
        return True
    if remote.uidnext is not None and uidnext is not None and remote.uidnext != uidnext:
        return True
    if remote.highestmodseq is not None and modseq is not None:
        return remote.highestmodseq != modseq
    return remote.messages is not None and remote.messages != count


class AccountWatch:
    """The watch of one account; ``start()`` runs it as a task, ``stop()`` ends it."""

    def __init__(
        self,
        account: WatchedAccount,
        backend: Backend,
        gate: ConnectGate,
        settings: WatchSettings,
        session_factory: Callable[[MailEndpoint], WatchSession] = WatchSession,
    ) -> None:
        self.account = account
        self._backend = backend
        self._gate = gate
        self._settings = settings
        self._session_factory = session_factory
        self._task: asyncio.Task[None] | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._dirty: set[str] = set()
        self._whole = False
        self._noticed_ms: int | None = None
        self.refused = False
        self.connected = False
        self._stopping = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"watch-{self.account.id}")

    async def stop(self) -> None:
        self._stopping = True
        for task in (self._task, self._flusher):
            # Cancelled until it is done: on Python 3.11 ``asyncio.wait_for`` can swallow
            # a cancellation that arrives as its inner work completes (gh-86296), and
            # the loops below also end by themselves once ``_stopping`` is set.
            while task is not None and not task.done():
                task.cancel()
                await asyncio.wait({task}, timeout=1.0)
            if task is not None and not task.cancelled():
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    task.result()

    @property
    def done(self) -> bool:
        return self._task is not None and self._task.done()

    # ------------------------------------------------------------------ the loop

    async def _run(self) -> None:
        backoff = Backoff(self._settings.backoff_min, self._settings.backoff_max)
        while not self._stopping:
            await self._gate.admit(self.account.host)
            began = time.monotonic()
            try:
                # Inside the try: for an OAuth2 account this may refresh the access token,
                # which fails like a login (revoked) or like the network (provider down).
                endpoint = await self._backend.endpoint(self.account)
                if endpoint is None:
                    return  # deleted or no longer IMAP; the next tick drops the watch
                await self._watch(endpoint)
            except asyncio.CancelledError:
                raise
            except MailAuthError as exc:
                metrics.observe_watcher_connect("login_refused")
                if not self.refused:
                    self.refused = True
                    await self._backend.login_refused(self.account, str(exc))
                # Not retried in a loop: new credentials restart the watch (the account's
                # fingerprint changes), otherwise one more try after a long wait.
                await asyncio.sleep(self._settings.auth_retry_seconds)
                continue
            except (PermissionError, ServiceError) as exc:
                # The connection guard refused the host (private address, say): as
                # permanent as a refused login until the account's settings change.
                metrics.observe_watcher_connect("error")
                log.warning("watcher: account %s not watched: %s", self.account.id, exc)
                await asyncio.sleep(self._settings.auth_retry_seconds)
            except Exception as exc:
                if not self.connected:
                    metrics.observe_watcher_connect("error")
                if time.monotonic() - began > self._settings.healthy_after_seconds:
                    backoff.reset()
                delay = backoff.next_delay()
                log.info(
                    "watcher: account %s: %s; reconnecting in %.1fs", self.account.id, exc, delay
                )
                await asyncio.sleep(delay)
            finally:
                if self.connected:
                    self.connected = False
                    metrics.watcher_gauges(connections_delta=-1)

    async def _watch(self, endpoint: MailEndpoint) -> None:
        session = self._session_factory(endpoint)
        try:
            await session.open()
            self.connected = True
            metrics.watcher_gauges(connections_delta=1)
            metrics.observe_watcher_connect("ok")
            if self.refused:
                self.refused = False
                await self._backend.login_recovered(self.account)
            await session.examine("INBOX")
            notify = await session.notify()
            # Catch up with what changed while nobody watched (one LIST-STATUS).
            baseline = await session.list_status()
            stored = await self._backend.stored(self.account)
            if stored is None:
                self._mark_whole()
            else:
                for name, status in baseline.items():
                    if differs(stored.get(name), status):
                        self._mark(name)
            next_poll = time.monotonic() + self._settings.poll_seconds
            while not self._stopping:
                if not notify and time.monotonic() >= next_poll:
                    current = await session.list_status()
                    for name, status in current.items():
                        if name != "INBOX" and status != baseline.get(name):
                            self._mark(name)
                    baseline = current
                    next_poll = time.monotonic() + self._settings.poll_seconds
                wait = self._settings.idle_seconds
                if not notify:
                    wait = min(wait, max(0.0, next_poll - time.monotonic()))
                await session.idle(wait, self._on_change)
                metrics.observe_idle_restart()
        finally:
            await session.close()

    # ------------------------------------------------------------------ notices → syncs

    def _on_change(self, change: Change) -> None:
        self._mark(change.folder, int(change.at * 1000))

    def _mark(self, folder: str, at_ms: int | None = None) -> None:
        self._dirty.add(folder)
        self._noted(at_ms)

    def _mark_whole(self) -> None:
        self._whole = True
        self._noted(None)

    def _noted(self, at_ms: int | None) -> None:
        at = at_ms if at_ms is not None else int(time.time() * 1000)
        self._noticed_ms = at if self._noticed_ms is None else min(self._noticed_ms, at)
        if not self._stopping and (self._flusher is None or self._flusher.done()):
            self._flusher = asyncio.create_task(self._flush(), name=f"flush-{self.account.id}")

    async def _flush(self) -> None:
        # A long sync (a first one of a big mailbox, say) keeps the account busy for
        # minutes: ask again at a slowing pace, not twice a second all along.
        busy_wait = self._settings.busy_retry_seconds
        while (self._dirty or self._whole) and not self._stopping:
            folders = None if self._whole else sorted(self._dirty)
            noticed = self._noticed_ms or int(time.time() * 1000)
            self._dirty, self._whole, self._noticed_ms = set(), False, None
            try:
                outcome = await self._backend.changed(self.account, folders, noticed)
            except Exception:
                log.exception("watcher: could not queue a sync of account %s", self.account.id)
                outcome = "busy"
            if outcome == "gone":
                return
            if outcome == "busy":
                if folders is None:
                    self._whole = True
                else:
                    self._dirty.update(folders)
                self._noticed_ms = (
                    noticed if self._noticed_ms is None else min(noticed, self._noticed_ms)
                )
                await asyncio.sleep(busy_wait)
                busy_wait = min(busy_wait * 2, self._settings.busy_retry_max_seconds)
            else:
                busy_wait = self._settings.busy_retry_seconds
