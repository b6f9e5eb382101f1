"""Push sync: watch accounts' mailboxes (IDLE/NOTIFY, polls) and queue syncs on change.

``email-service watcher`` runs :func:`run_watcher` (Redis leases, shared with other
watcher processes); on the embedded default ``serve`` runs it on a thread of its own
(:func:`start_watcher_thread`, memory leases). README "Push" says what is watched.
"""

from __future__ import annotations

import asyncio
import logging
import threading

from email_service.mail.endpoint import MailEndpoint
from email_service.runtime import Runtime
from email_service.services import push
from email_service.services.push import SyncOutcome, WatchedAccount
from email_service.watcher.account import StoredStatus
from email_service.watcher.core import Watcher
from email_service.watcher.leases import LeaseStore, MemoryLeases, RedisLeases

log = logging.getLogger(__name__)

__all__ = ["DatabaseBackend", "Watcher", "build_leases", "run_watcher", "start_watcher_thread"]


class DatabaseBackend:
    """The watcher's view of the service: blocking service calls, run on threads."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def accounts(self) -> list[WatchedAccount]:
        return await asyncio.to_thread(push.watchable_accounts, self.runtime)

    async def endpoint(self, account: WatchedAccount) -> MailEndpoint | None:
        return await asyncio.to_thread(push.watch_endpoint, self.runtime, account)

    async def stored(self, account: WatchedAccount) -> dict[str, StoredStatus] | None:
        return await asyncio.to_thread(push.stored_folders, self.runtime, account)

    async def changed(
        self, account: WatchedAccount, folders: list[str] | None, noticed_ms: int
    ) -> SyncOutcome:
        outcome, _task = await asyncio.to_thread(
            push.queue_folder_sync, self.runtime, account, folders, noticed_ms
        )
        return outcome

    async def login_refused(self, account: WatchedAccount, reason: str) -> None:
        await asyncio.to_thread(push.login_refused, self.runtime, account, reason)

    async def login_recovered(self, account: WatchedAccount) -> None:
        await asyncio.to_thread(push.login_recovered, self.runtime, account)


def build_leases(runtime: Runtime) -> LeaseStore:
    """Redis leases shared by every watcher process, or memory ones (embedded default)."""
    settings = runtime.settings
    if settings.redis_url:
        return RedisLeases.from_url(settings.redis_url, f"{settings.queue_namespace}:watcher")
    return MemoryLeases()


def run_watcher(runtime: Runtime, stop: threading.Event) -> None:
    """Run a watcher on this thread (its own event loop) until ``stop`` is set."""

    async def main() -> None:
        leases = build_leases(runtime)
        watcher = Watcher(DatabaseBackend(runtime), leases, runtime.settings)
        stopped = asyncio.Event()
        loop = asyncio.get_running_loop()
        threading.Thread(
            target=lambda: (stop.wait(), loop.call_soon_threadsafe(stopped.set)),
            name="watcher-stop",
            daemon=True,
        ).start()
        try:
            await watcher.run(stopped)
        finally:
            await leases.close()

    asyncio.run(main())


def start_watcher_thread(runtime: Runtime) -> tuple[threading.Thread, threading.Event]:
    """The watcher on a daemon thread of this process (the embedded default)."""
    stop = threading.Event()
    thread = threading.Thread(target=run_watcher, args=(runtime, stop), name="watcher", daemon=True)
    thread.start()
    return thread, stop
