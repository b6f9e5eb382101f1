"""P8's measured process: one watcher holding N accounts on the IDLE test server, or
(``--baseline``) the least code that can hold N IDLE connections, for comparison.

Prints JSON lines on stdout: ``{"event": "connected", ...}`` once every account waits in
IDLE, then ``{"event": "noticed", ...}`` once every account's INBOX change (the parent
has the server push one to all) has reached the watcher, with this process's peak RSS.
Kept free of the database: what is measured is the watcher's own cost.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import sys
import time
import uuid
from typing import TYPE_CHECKING

from bench.memory import peak_rss_mib

if TYPE_CHECKING:
    from email_service.mail.endpoint import MailEndpoint
    from email_service.services.push import SyncOutcome, WatchedAccount
    from email_service.watcher.account import StoredStatus

# The service is imported only for the watcher run: the baseline's memory is that of a
# bare asyncio program, not of our imports.


def emit(**values: object) -> None:
    print(json.dumps(values), flush=True)


class BenchBackend:
    def __init__(self, port: int, count: int, ca_file: str) -> None:
        from email_service.services.push import WatchedAccount

        self.port = port
        self.ca_file = ca_file
        self.list = [
            WatchedAccount(f"acc-{i}", uuid.uuid4(), uuid.uuid4(), "localhost", "f")
            for i in range(count)
        ]
        self.noticed: dict[str, float] = {}
        self.all_noticed = asyncio.Event()

    async def accounts(self) -> list[WatchedAccount]:
        return self.list

    async def endpoint(self, account: WatchedAccount) -> MailEndpoint | None:
        from email_service.mail.endpoint import MailEndpoint

        return MailEndpoint(
            "localhost", self.port, "tls", account.id, "password", ca_file=self.ca_file, timeout=30
        )

    async def stored(self, account: WatchedAccount) -> dict[str, StoredStatus] | None:
        return {"INBOX": (1, 1, None, 0), "Archive": (1, 1, None, 0)}

    async def changed(
        self, account: WatchedAccount, folders: list[str] | None, noticed_ms: int
    ) -> SyncOutcome:
        if folders == ["INBOX"]:
            self.noticed.setdefault(account.id, time.time())
            if len(self.noticed) == len(self.list):
                self.all_noticed.set()
        return "queued"

    async def login_refused(self, account: WatchedAccount, reason: str) -> None:
        emit(event="refused", account=account.id, reason=reason)

    async def login_recovered(self, account: WatchedAccount) -> None:
        return None


async def run_watcher(args: argparse.Namespace) -> None:
    from email_service.config import Settings
    from email_service.watcher.core import Watcher
    from email_service.watcher.leases import MemoryLeases

    backend = BenchBackend(args.port, args.accounts, args.ca)
    settings = Settings(
        watcher_tick_seconds=5.0,
        watcher_lease_seconds=20.0,
        # One host serves every account here; the per-host cap would pace 1,000
        # connections over minutes (as it should against a real provider).
        watcher_connect_rate=args.rate,
        watcher_host_connect_rate=args.rate,
        watcher_max_accounts=args.accounts,
    )
    watcher = Watcher(backend, MemoryLeases(), settings)
    stop = asyncio.Event()
    task = asyncio.create_task(watcher.run(stop))
    began = time.monotonic()
    while sum(w.connected for w in watcher.watches.values()) < args.accounts:
        await asyncio.sleep(0.1)
        if time.monotonic() - began > args.timeout:
            emit(event="failed", connected=sum(w.connected for w in watcher.watches.values()))
            return
    emit(event="connected", seconds=time.monotonic() - began, rss=peak_rss_mib())
    await asyncio.wait_for(backend.all_noticed.wait(), args.timeout)
    emit(event="noticed", count=len(backend.noticed), at=max(backend.noticed.values()),
         rss=peak_rss_mib())  # fmt: skip
    stop.set()
    await task


async def run_baseline(args: argparse.Namespace) -> None:
    """The bare minimum: TLS, LOGIN, EXAMINE, IDLE; read lines until one says EXISTS."""
    context = ssl.create_default_context(cafile=args.ca)
    noticed: set[int] = set()
    connected = 0
    done = asyncio.Event()
    gate = asyncio.Semaphore(50)

    async def hold(n: int) -> None:
        nonlocal connected
        async with gate:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", args.port, ssl=context, server_hostname="localhost"
            )
            await reader.readline()
            writer.write(b'a LOGIN "acc-%d" "password"\r\nb EXAMINE INBOX\r\nc IDLE\r\n' % n)
            while not (await reader.readline()).startswith(b"+"):
                pass
        connected += 1
        while True:
            line = await reader.readline()
            if not line:
                return
            if line.endswith(b"EXISTS\r\n"):
                noticed.add(n)
                if len(noticed) == args.accounts:
                    done.set()
                return

    began = time.monotonic()
    tasks = [asyncio.create_task(hold(n)) for n in range(args.accounts)]
    while connected < args.accounts:
        await asyncio.sleep(0.1)
    emit(event="connected", seconds=time.monotonic() - began, rss=peak_rss_mib())
    await asyncio.wait_for(done.wait(), args.timeout)
    emit(event="noticed", count=len(noticed), at=time.time(), rss=peak_rss_mib())
    for task in tasks:
        task.cancel()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--baseline", action="store_true")
    args = parser.parse_args()
    asyncio.run(run_baseline(args) if args.baseline else run_watcher(args))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
