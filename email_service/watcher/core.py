"""The watcher process's loop: leases, fair shares, and the watches of this process.

Every ``WATCHER_TICK_SECONDS`` a watcher:
1. announces itself (heartbeat) and learns how many watchers are alive;
2. reads the watchable accounts; drops watches of accounts gone, restarts those whose
   settings changed (new credentials end a refused login's wait);
3. renews its leases and drops the watches whose lease it lost;
4. gives back leases above its fair share (ceil(accounts / watchers)) and takes
   unleased accounts up to it.
A watcher that cannot renew for most of a lease's life stops every watch: another
watcher may own them by then, and an account is watched by one process at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import random
import socket
import time
import uuid
from collections.abc import Callable

from email_service import metrics
from email_service.config import Settings
from email_service.mail.endpoint import MailEndpoint
from email_service.mail.imap_watch import WatchSession
from email_service.services.push import WatchedAccount
from email_service.watcher.account import AccountWatch, Backend, WatchSettings
from email_service.watcher.leases import LeaseStore
from email_service.watcher.manners import ConnectGate

log = logging.getLogger(__name__)


class Watcher:
    """Watches this process's share of the accounts until ``run``'s stop event is set."""

    def __init__(
        self,
        backend: Backend,
        leases: LeaseStore,
        settings: Settings,
        *,
        owner: str | None = None,
        session_factory: Callable[[MailEndpoint], WatchSession] = WatchSession,
    ) -> None:
        self.backend = backend
        self.leases = leases
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.tick_seconds = settings.watcher_tick_seconds
        self.lease_seconds = settings.watcher_lease_seconds
        self.max_accounts = settings.watcher_max_accounts
        self.gate = ConnectGate(settings.watcher_connect_rate, settings.watcher_host_connect_rate)
        self.watch_settings = WatchSettings(
            idle_seconds=settings.watcher_idle_seconds,
            poll_seconds=settings.folder_poll_seconds,
            backoff_min=settings.watcher_backoff_min_seconds,
            backoff_max=settings.watcher_backoff_max_seconds,
            auth_retry_seconds=settings.watcher_auth_retry_seconds,
        )
        self.session_factory = session_factory
        self.watches: dict[str, AccountWatch] = {}
        self._renewed_at = time.monotonic()
        self._rng = random.Random()

    async def run(self, stop: asyncio.Event) -> None:
        log.info("watcher %s running", self.owner)
        try:
            while not stop.is_set():
                try:
                    await self.tick()
                except Exception:
                    log.exception("watcher tick failed")
                    if time.monotonic() - self._renewed_at > 0.8 * self.lease_seconds:
                        log.warning("watcher could not renew its leases: stopping its watches")
                        await self._drop(list(self.watches), release=False)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.tick_seconds)
        finally:
            await self.shutdown()

    async def shutdown(self) -> None:
        """Stop every watch and hand the leases back at once (a clean scale-down)."""
        ids = list(self.watches)
        await self._drop(ids, release=False)
        try:
            await self.leases.release(self.owner, ids)
            await self.leases.leave(self.owner)
        except Exception:
            log.warning("watcher could not release its leases; they expire by themselves")

    async def tick(self) -> None:
        members = await self.leases.heartbeat(self.owner, self.lease_seconds)
        accounts = await self.backend.accounts()
        by_id = {account.id: account for account in accounts}

        gone = [a for a in self.watches if a not in by_id]
        await self._drop(gone, release=True)
        for account_id, watch in list(self.watches.items()):
            fresh = by_id[account_id]
            if fresh.fingerprint != watch.account.fingerprint or watch.done:
                await watch.stop()
                self._start(fresh).refused = watch.refused

        lost = await self.leases.renew(self.owner, list(self.watches), self.lease_seconds)
        self._renewed_at = time.monotonic()
        await self._drop(lost, release=False)

        share = min(self.max_accounts, math.ceil(len(accounts) / max(1, members)))
        excess = len(self.watches) - share
        if excess > 0:
            await self._drop(self._rng.sample(list(self.watches), excess), release=True)
            return
        wanted = share - len(self.watches)
        candidates = [a for a in accounts if a.id not in self.watches]
        self._rng.shuffle(candidates)
        while wanted > 0 and candidates:
            batch, candidates = candidates[: wanted * 2], candidates[wanted * 2 :]
            taken = await self.leases.acquire(self.owner, [a.id for a in batch], self.lease_seconds)
            chosen = set(taken[:wanted])
            await self.leases.release(self.owner, taken[wanted:])
            for account in batch:
                if account.id in chosen:
                    self._start(account)
            wanted -= len(chosen)

    def _start(self, account: WatchedAccount) -> AccountWatch:
        watch = AccountWatch(
            account, self.backend, self.gate, self.watch_settings, self.session_factory
        )
        if account.id not in self.watches:
            metrics.watcher_gauges(accounts_delta=1)
        self.watches[account.id] = watch
        watch.start()
        return watch

    async def _drop(self, account_ids: list[str], *, release: bool) -> None:
        watches = [self.watches.pop(a) for a in account_ids if a in self.watches]
        if not watches:
            return
        metrics.watcher_gauges(accounts_delta=-len(watches))
        await asyncio.gather(*(watch.stop() for watch in watches))
        if release:
            await self.leases.release(self.owner, [w.account.id for w in watches])
