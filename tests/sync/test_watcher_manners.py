"""The watcher's manners toward servers, against our small IDLE server: IDLE issued
again on time, reconnects that back off, connection rate caps, one connection each."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator

import pytest

from email_service.config import Settings
from email_service.mail.endpoint import MailEndpoint
from email_service.services.push import SyncOutcome, WatchedAccount
from email_service.watcher.account import StoredStatus
from email_service.watcher.core import Watcher
from email_service.watcher.leases import MemoryLeases
from email_service.watcher.manners import Backoff
from tests.conftest import make_settings
from tests.servers.idle_server import IdleServer


class MemoryBackend:
    """Accounts on the IDLE server, and the syncs the watcher asked for."""

    def __init__(self, server: IdleServer, count: int) -> None:
        self.server = server
        self.list = [
            WatchedAccount(f"acc-{i}", uuid.uuid4(), uuid.uuid4(), "127.0.0.1", "f")
            for i in range(count)
        ]
        self.asked: list[tuple[str, list[str] | None]] = []

    async def accounts(self) -> list[WatchedAccount]:
        return self.list

    async def endpoint(self, account: WatchedAccount) -> MailEndpoint | None:
        return MailEndpoint(
            "127.0.0.1", self.server.port, "none", account.id, "password", timeout=1.0
        )

    async def stored(self, account: WatchedAccount) -> dict[str, StoredStatus] | None:
        return {"INBOX": (1, 1, None, 0), "Archive": (1, 1, None, 0)}

    async def changed(
        self, account: WatchedAccount, folders: list[str] | None, noticed_ms: int
    ) -> SyncOutcome:
        self.asked.append((account.id, folders))
        return "queued"

    async def login_refused(self, account: WatchedAccount, reason: str) -> None:
        return None

    async def login_recovered(self, account: WatchedAccount) -> None:
        return None


@pytest.fixture
def idle_server() -> Iterator[IdleServer]:
    server = IdleServer().start()
    yield server
    server.stop()


def settings(tmp_path: object, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "watcher_tick_seconds": 0.2,
        "watcher_lease_seconds": 2.0,
        "watcher_backoff_min_seconds": 0.2,
        "watcher_backoff_max_seconds": 0.4,
        "watcher_connect_rate": 1000.0,
        "watcher_host_connect_rate": 1000.0,
        "folder_poll_seconds": 60.0,
    }
    values.update(overrides)
    return make_settings(tmp_path, "sqlite://", **values)  # type: ignore[arg-type]


async def run_for(watcher: Watcher, seconds: float) -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(seconds, stop.set)
    await watcher.run(stop)


def test_idle_is_issued_again_on_time_on_the_same_connection(
    idle_server: IdleServer, tmp_path: object
) -> None:
    backend = MemoryBackend(idle_server, 1)
    watcher = Watcher(backend, MemoryLeases(), settings(tmp_path, watcher_idle_seconds=0.3))
    asyncio.run(run_for(watcher, 1.6))
    assert idle_server.counts["connections"] == 1
    assert idle_server.counts["idles"] >= 4


def test_a_new_message_asks_for_a_sync_of_its_folder(
    idle_server: IdleServer, tmp_path: object
) -> None:
    backend = MemoryBackend(idle_server, 1)
    watcher = Watcher(backend, MemoryLeases(), settings(tmp_path))

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.call_later(0.5, lambda: loop.run_in_executor(None, idle_server.push))
        await run_for(watcher, 1.2)

    asyncio.run(main())
    assert ("acc-0", ["INBOX"]) in backend.asked


def test_reconnects_back_off_instead_of_hammering(
    idle_server: IdleServer, tmp_path: object
) -> None:
    idle_server.behaviour.bye_in_idle = True
    backend = MemoryBackend(idle_server, 1)
    watcher = Watcher(backend, MemoryLeases(), settings(tmp_path))
    asyncio.run(run_for(watcher, 1.5))
    # 0.1-0.2 s, then 0.2-0.4 s (capped) between attempts: a handful, not hundreds.
    assert 2 <= idle_server.counts["connections"] <= 8


def test_new_connections_are_capped_per_host(idle_server: IdleServer, tmp_path: object) -> None:
    backend = MemoryBackend(idle_server, 50)
    watcher = Watcher(backend, MemoryLeases(), settings(tmp_path, watcher_host_connect_rate=20.0))

    async def main() -> float:
        stop = asyncio.Event()
        task = asyncio.create_task(watcher.run(stop))
        began = time.monotonic()
        while idle_server.idling() < 50:
            await asyncio.sleep(0.02)
        took = time.monotonic() - began
        stop.set()
        await task
        return took

    took = asyncio.run(main())
    # A burst of 20, then 20 a second: the other 30 need 1.5 s, not an instant.
    assert idle_server.counts["connections"] == 50
    assert 1.3 <= took < 5


def test_backoff_doubles_with_jitter_up_to_its_cap() -> None:
    backoff = Backoff(1.0, 8.0)
    delays = [backoff.next_delay() for _ in range(6)]
    for delay, step in zip(delays, [1, 2, 4, 8, 8, 8], strict=True):
        assert step / 2 <= delay <= step
    backoff.reset()
    assert backoff.next_delay() <= 1.0
