"""Push sync against real Dovecot: new mail reaches listMessages with no sync request.

Each test runs watchers on threads of their own (their own event loops), with the
production pieces: Redis leases, the service's database backend, Dramatiq jobs run by
the session's worker. Accounts sync every hour (``syncInterval`` 3600), so only the
watcher can bring a message in within the tests' deadlines.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import smtplib
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from db.models import Account, Task, now_ms
from email_service import metrics
from email_service.config import Settings
from email_service.mail.endpoint import MailEndpoint
from email_service.mail.imap_watch import WatchSession
from email_service.runtime import Runtime
from email_service.services.push import WatchedAccount, queue_folder_sync, watchable_accounts
from email_service.services.tasks import ACTIVE
from email_service.watcher import DatabaseBackend, build_leases
from email_service.watcher.core import Watcher
from tests.conftest import Identity
from tests.servers.dovecot import Dovecot, MailUser
from tests.servers.smtp import SmtpServer
from tests.sync.conftest import Mailbox, account_for, sync, wait_for_task


class RecordingBackend(DatabaseBackend):
    """The service's backend, remembering the refused logins it was told of."""

    def __init__(self, runtime: Runtime) -> None:
        super().__init__(runtime)
        self.refusals: list[str] = []

    async def login_refused(self, account: WatchedAccount, reason: str) -> None:
        self.refusals.append(account.id)
        await super().login_refused(account, reason)


class WatcherThread:
    """A watcher on a thread with its own event loop; ``stop()`` is a clean exit and
    ``kill()`` freezes it where it is (no lease released, none renewed), like a
    process that died."""

    def __init__(
        self,
        runtime: Runtime,
        settings: Settings,
        session_factory: Callable[[MailEndpoint], WatchSession] = WatchSession,
    ) -> None:
        self.backend = RecordingBackend(runtime)
        self.leases = build_leases(runtime)
        self.watcher = Watcher(self.backend, self.leases, settings, session_factory=session_factory)
        self.loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)
        self._ready = threading.Event()
        self._thread.start()
        self._ready.wait(5)

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self._stop = asyncio.Event()
        self._ready.set()
        # kill() stops the loop under the watcher: run_until_complete raises then.
        with contextlib.suppress(RuntimeError):
            self.loop.run_until_complete(self.watcher.run(self._stop))

    def connected(self, account_id: str) -> bool:
        watch = self.watcher.watches.get(account_id)
        return watch is not None and watch.connected

    def stop(self) -> None:
        if self._thread.is_alive():
            assert self._stop is not None
            self.loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(15)
        elif not self.loop.is_closed():
            # Killed earlier: end what it left behind, so no socket outlives the test.
            pending = asyncio.all_tasks(self.loop)
            for task in pending:
                task.cancel()
            self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        assert not self._thread.is_alive(), "the watcher did not stop within 15 s"
        if not self.loop.is_closed():
            # Database calls still running on the loop's threads finish first.
            self.loop.run_until_complete(self.loop.shutdown_default_executor())
            self.loop.close()

    def kill(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


@pytest.fixture
def push_settings(sync_settings: Settings) -> Settings:
    return sync_settings.model_copy(
        update={
            "folder_poll_seconds": 1.0,
            "watcher_tick_seconds": 0.3,
            "watcher_lease_seconds": 3.0,
            "watcher_backoff_min_seconds": 0.05,
            "watcher_backoff_max_seconds": 0.5,
            "watcher_connect_rate": 200.0,
            "watcher_host_connect_rate": 200.0,
        }
    )


@pytest.fixture
def start_watcher(
    sync_runtime: Runtime, push_settings: Settings
) -> Iterator[Callable[..., WatcherThread]]:
    started: list[WatcherThread] = []

    def start(
        settings: Settings | None = None,
        session_factory: Callable[[MailEndpoint], WatchSession] = WatchSession,
    ) -> WatcherThread:
        thread = WatcherThread(sync_runtime, settings or push_settings, session_factory)
        started.append(thread)
        return thread

    yield start
    for thread in started:
        thread.stop()
    # Let the syncs the watchers asked for finish: the tables are emptied next.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with sync_runtime.db.transaction(system=True) as session:
            active = session.scalar(
                select(func.count()).select_from(Task).where(Task.status.in_(ACTIVE))
            )
        if not active:
            break
        time.sleep(0.05)


def until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def hourly_mailbox(api: Any, alice: Identity, dovecot: Dovecot, user: MailUser) -> Mailbox:
    box = account_for(api, alice, dovecot, user, syncInterval=3600)
    assert sync(api, box)["status"] == "success"
    return box


def subjects_in(api: Any, box: Mailbox, folder: str) -> set[str]:
    folders = api.get(f"/api/{box.id}/folders", headers=box.headers).json()
    wanted = [f for f in folders["folders"] if f["name"] == folder]
    if not wanted:
        return set()
    response = api.get(
        f"/api/{box.id}/folders/{wanted[0]['id']}/messages?limit=100", headers=box.headers
    )
    assert response.status_code == 200, response.text
    return {m["subject"] for m in response.json()["messages"]}


def smtp_deliver(smtp_server: SmtpServer, to: str, subject: str) -> None:
    message = EmailMessage()
    message["From"] = "sender@example.test"
    message["To"] = to
    message["Subject"] = subject
    message.set_content("pushed\n")
    with smtplib.SMTP(smtp_server.host, smtp_server.port, timeout=10) as client:
        client.send_message(message)


def latency_samples() -> float:
    return sum(
        sample.value
        for metric in metrics.PUSH_LATENCY.collect()
        for sample in metric.samples
        if sample.name.endswith("_count")
    )


def raw_message(subject: str) -> bytes:
    return f"From: a@example.test\r\nSubject: {subject}\r\n\r\nbody\r\n".encode()


def test_mail_delivered_to_inbox_appears_without_a_sync_request(
    api: Any,
    alice: Identity,
    dovecot: Dovecot,
    smtp_server: SmtpServer,
    start_watcher: Callable[..., WatcherThread],
) -> None:
    # Given an account synced once, with an hourly schedule, and a watcher
    user = dovecot.new_user()
    box = hourly_mailbox(api, alice, dovecot, user)
    watcher = start_watcher()
    until(lambda: watcher.connected(box.id), 10, "the watcher to connect")
    latency_before = latency_samples()

    # When a message arrives by SMTP (delivered through LMTP)
    subject = f"pushed {uuid.uuid4().hex[:8]}"
    delivered = time.monotonic()
    smtp_deliver(smtp_server, user.email, subject)

    # Then it is listed within seconds, without anyone asking for a sync
    until(lambda: subject in subjects_in(api, box, "INBOX"), 10, "the message in INBOX")
    assert time.monotonic() - delivered < 10
    # The worker measures notice -> stored as the sync ends (just after the commit).
    until(lambda: latency_samples() > latency_before, 10, "the push latency sample")


def test_mail_appended_to_another_folder_appears_by_notify(
    api: Any, alice: Identity, dovecot: Dovecot, start_watcher: Callable[..., WatcherThread]
) -> None:
    user = dovecot.new_user()
    dovecot.append(user, "Archive", raw_message("old"))
    box = hourly_mailbox(api, alice, dovecot, user)
    watcher = start_watcher()
    until(lambda: watcher.connected(box.id), 10, "the watcher to connect")
    assert watcher.watcher.watches[box.id] is not None

    dovecot.append(user, "Archive", raw_message("filed later"))

    until(lambda: "filed later" in subjects_in(api, box, "Archive"), 10, "the Archive message")


class NoNotifySession(WatchSession):
    """A server that offers IDLE but not NOTIFY (Cyrus, Courier): the watcher polls."""

    async def notify(self) -> bool:
        self.capabilities = self.capabilities - {"NOTIFY"}
        return await super().notify()


def test_without_notify_other_folders_are_polled(
    api: Any,
    alice: Identity,
    dovecot: Dovecot,
    start_watcher: Callable[..., WatcherThread],
    push_settings: Settings,
) -> None:
    user = dovecot.new_user()
    dovecot.append(user, "Archive", raw_message("old"))
    box = hourly_mailbox(api, alice, dovecot, user)
    watcher = start_watcher(session_factory=NoNotifySession)
    until(lambda: watcher.connected(box.id), 10, "the watcher to connect")

    appended = time.monotonic()
    dovecot.append(user, "Archive", raw_message("polled"))

    until(lambda: "polled" in subjects_in(api, box, "Archive"), 10, "the polled message")
    # Within the poll period plus the sync's own time.
    assert time.monotonic() - appended < push_settings.folder_poll_seconds + 5


def watcher_process(settings: Settings, log_path: Path) -> subprocess.Popen[bytes]:
    """``email-service watcher`` as deployed, on the tests' database, Redis and queues."""
    assert settings.database_url and settings.redis_url and settings.credential_keys
    env = {
        "PATH": os.environ.get("PATH", ""),
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "QUEUE_NAMESPACE": settings.queue_namespace,
        "CREDENTIAL_KEYS": settings.credential_keys.get_secret_value(),
        "JWT_SECRET": "watcher-process-test-secret-0123456789abcdef",
        "MAIL_ALLOWED_HOSTS": "127.0.0.1,localhost",
        "MAIL_CA_FILE": str(settings.mail_ca_file),
        "DATA_DIR": str(log_path.parent),
        "WATCHER_TICK_SECONDS": str(settings.watcher_tick_seconds),
        "WATCHER_LEASE_SECONDS": str(settings.watcher_lease_seconds),
    }
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "email_service.cli", "watcher"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def test_a_killed_watcher_process_hands_its_accounts_over_within_30_seconds(
    api: Any,
    alice: Identity,
    dovecot: Dovecot,
    smtp_server: SmtpServer,
    start_watcher: Callable[..., WatcherThread],
    push_settings: Settings,
    tmp_path: Path,
) -> None:
    # Given an `email-service watcher` process that watches the account
    user = dovecot.new_user()
    box = hourly_mailbox(api, alice, dovecot, user)
    process = watcher_process(push_settings, tmp_path / "watcher.log")
    try:
        smtp_deliver(smtp_server, user.email, "through the process")
        until(
            lambda: "through the process" in subjects_in(api, box, "INBOX"),
            30,
            f"the watcher process to push ({(tmp_path / 'watcher.log').read_text()[-2000:]})",
        )
        # and a second watcher, which finds the account taken
        second = start_watcher()
        time.sleep(1.0)
        assert box.id not in second.watcher.watches  # one watcher per account

        # When the process dies without handing anything back
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        killed = time.monotonic()

        # Then the second takes the account over well within 30 s, and mail flows again
        until(lambda: second.connected(box.id), 30, "the second watcher to take over")
        assert time.monotonic() - killed < 30
        smtp_deliver(smtp_server, user.email, "after handover")
        until(lambda: "after handover" in subjects_in(api, box, "INBOX"), 10, "the message")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def test_accounts_are_shared_out_when_a_watcher_joins(
    api: Any, alice: Identity, dovecot: Dovecot, start_watcher: Callable[..., WatcherThread]
) -> None:
    boxes = [hourly_mailbox(api, alice, dovecot, dovecot.new_user()) for _ in range(4)]
    first = start_watcher()
    until(lambda: all(first.connected(b.id) for b in boxes), 10, "all watched by one")
    second = start_watcher()

    def shared() -> bool:
        mine, theirs = set(first.watcher.watches), set(second.watcher.watches)
        return len(mine) == len(theirs) == 2 and not mine & theirs

    until(shared, 10, "two accounts each")
    until(lambda: all(second.connected(a) for a in second.watcher.watches), 10, "connected")

    # Scaling down: the second hands its leases back as it stops; the first takes them.
    second.stop()
    until(lambda: all(first.connected(b.id) for b in boxes), 10, "all watched by one again")


def test_a_refused_login_is_reported_once_and_not_retried_in_a_loop(
    api: Any, alice: Identity, dovecot: Dovecot, start_watcher: Callable[..., WatcherThread]
) -> None:
    user = dovecot.new_user()
    box = hourly_mailbox(api, alice, dovecot, user)
    dovecot.add_user(user.email, "changed-on-the-server")  # our stored password is wrong now
    refused = metrics.WATCHER_CONNECTS.labels(result="login_refused")
    before = refused._value.get()
    cursor = api.get("/api/changes", headers=alice.bearer).json()["cursor"]

    watcher = start_watcher()
    until(lambda: watcher.backend.refusals, 10, "the refusal")
    time.sleep(2.0)  # 40 backoff periods of the test settings

    assert watcher.backend.refusals == [box.id]
    assert refused._value.get() - before == 1
    assert not watcher.connected(box.id)
    # The change feed tells it once, as account.error (the same helper as a failed sync).
    feed = api.get(
        "/api/changes", params={"since": cursor, "types": "account.error"}, headers=alice.bearer
    ).json()["changes"]
    assert [(c["accountId"], c["data"]["state"]) for c in feed] == [(box.id, "failing")]


class CourierLikeDovecot(Dovecot):
    """Dovecot with Courier's habits: folders under ``INBOX.`` with ``.`` as separator,
    and IDLE without NOTIFY, LIST-STATUS or CONDSTORE."""

    def _write_config(self) -> None:
        super()._write_config()
        text = self.config_path.read_text()
        text = text.replace("  separator = /\n", "  separator = .\n  prefix = INBOX.\n", 1)
        text += (
            "protocol imap {\n  imap_capability = IMAP4rev1 IDLE NAMESPACE UIDPLUS CHILDREN\n}\n"
        )
        self.config_path.write_text(text)


@pytest.fixture(scope="module")
def courier(dovecot: Dovecot) -> Iterator[Dovecot]:
    server = CourierLikeDovecot(cert=dovecot.cert, name=f"courier-{uuid.uuid4().hex[:6]}")
    try:
        server.start()
        yield server
    finally:
        server.close()


def test_a_courier_like_server_is_watched_by_idle_and_polls(
    api: Any,
    alice: Identity,
    courier: Dovecot,
    start_watcher: Callable[..., WatcherThread],
    push_settings: Settings,
) -> None:
    user = courier.new_user()
    courier.append(user, "INBOX.Archive", raw_message("old"))
    box = hourly_mailbox(api, alice, courier, user)
    watcher = start_watcher()
    until(lambda: watcher.connected(box.id), 10, "the watcher to connect")

    courier.deliver(user.email, raw_message("delivered"))
    until(lambda: "delivered" in subjects_in(api, box, "INBOX"), 10, "the INBOX message")

    appended = time.monotonic()
    courier.append(user, "INBOX.Archive", raw_message("filed"))
    until(lambda: "filed" in subjects_in(api, box, "INBOX.Archive"), 10, "the filed message")
    assert time.monotonic() - appended < push_settings.folder_poll_seconds + 5


def test_a_notice_is_deduplicated_with_the_sync_that_will_see_it(
    api: Any, alice: Identity, dovecot: Dovecot, sync_runtime: Runtime
) -> None:
    box = account_for(api, alice, dovecot, dovecot.new_user(), syncInterval=3600)
    (account,) = [a for a in watchable_accounts(sync_runtime) if a.id == box.id]
    now = now_ms()

    def current(status: str, started_at: int | None, folders: list[str] | None) -> None:
        # A task of the account in this state; no job behind it, so nobody runs it.
        with sync_runtime.db.transaction(alice.caller.tenant_id) as session:
            task = Task(
                tenant_id=alice.caller.tenant_id, user_id=alice.caller.user_id,
                account_id=box.id, kind="sync", status=status, started_at=started_at,
                payload={"folders": folders} if folders else {},
            )  # fmt: skip
            session.add(task)
            session.flush()
            session.get(Account, box.id).sync_task_id = task.id  # type: ignore[union-attr]

    def ask(folders: list[str] | None, noticed: int = now) -> str:
        return queue_folder_sync(sync_runtime, account, folders, noticed)[0]

    # A sync that started before the notice may have read the folder already
    current("started", now - 10_000, None)
    assert ask(["INBOX"]) == "busy"
    # ... one that started after it will see the change
    assert ask(["INBOX"], noticed=now - 20_000) == "covered"
    # A pending sync covers the notice if it will read the folder
    current("pending", None, ["Sent"])
    assert ask(["INBOX"]) == "busy"
    assert ask(["Sent"]) == "covered"
    current("retry", None, None)
    assert ask(["INBOX"]) == "covered" and ask(None) == "covered"
    # Nothing under way: a sync of that folder is queued, and it runs
    current("success", now - 5_000, None)
    outcome, task_id = queue_folder_sync(sync_runtime, account, ["INBOX"], now)
    assert outcome == "queued" and task_id is not None
    task = wait_for_task(api, box.headers, task_id)
    assert task["status"] == "success"
