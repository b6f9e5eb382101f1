"""Sending or saving a draft with attachments never downloaded: the mail server is asked
with no database transaction open.

Such an attachment is fetched from the IMAP server while the request runs, bounded only by
the mail deadlines. Dovecot sits behind the proxy of ``tests/servers/hostile.py``, which
holds the part's ``UID FETCH`` back until the test lets it through. Meanwhile the request
must hold no pooled connection, and none of those it used may be left idle in a
transaction: a slow or hostile mail server would otherwise pin database connections,
transactions and their locks for as long as it likes.
"""

from __future__ import annotations

import re
import threading
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from sqlalchemy import event, select
from sqlalchemy.engine import Engine

from db.models import Draft, Task
from email_service.mail.imap import ImapSession
from email_service.runtime import Runtime
from email_service.services import attachments
from tests.compose.conftest import await_task, mail_with_attachments, sender_for
from tests.compose.test_send import attachment_ids
from tests.conftest import PG_ADMIN_DSN, Identity
from tests.servers import hostile
from tests.servers.dovecot import Dovecot, MailUser
from tests.servers.mailgen import make_pdf
from tests.servers.smtp import SmtpServer
from tests.sync.conftest import Mailbox
from tests.sync.test_lazy_attachments import closed_port, set_port

PART_FETCH = re.compile(rb"^\S+ UID FETCH \d+ \(UID BODY\.PEEK\[\d[\d.]*\]\)", re.I)


class HeldBack:
    """A client rule: every part fetch waits at the proxy until :meth:`let_through`."""

    def __init__(self) -> None:
        self.asked = threading.Event()
        self._through = threading.Event()

    def __call__(self, line: bytes) -> bytes:
        if PART_FETCH.match(line):
            self.asked.set()
            self._through.wait(60)
        return line

    def let_through(self) -> None:
        self._through.set()


class Checkouts:
    """The pooled connections of ``engine`` each thread holds, by PostgreSQL backend pid."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._held: dict[int, tuple[int, int]] = {}
        self.used: dict[int, set[int]] = defaultdict(set)
        event.listen(engine, "checkout", self._checkout)
        event.listen(engine, "checkin", self._checkin)

    def _checkout(self, dbapi: Any, _record: Any, _proxy: Any) -> None:
        thread, pid = threading.get_ident(), dbapi.info.backend_pid
        self._held[id(dbapi)] = (thread, pid)
        self.used[thread].add(pid)

    def _checkin(self, dbapi: Any, _record: Any) -> None:
        self._held.pop(id(dbapi), None)

    def held_by(self, thread: int) -> list[int]:
        return [pid for holder, pid in list(self._held.values()) if holder == thread]

    def held_by_others(self, thread: int) -> set[int]:
        return {pid for holder, pid in list(self._held.values()) if holder != thread}

    def close(self) -> None:
        event.remove(self._engine, "checkout", self._checkout)
        event.remove(self._engine, "checkin", self._checkin)


def backend_states(pids: set[int]) -> dict[int, str]:
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as admin:
        rows = admin.execute(
            "SELECT pid, state FROM pg_stat_activity WHERE pid = ANY(%s)", [list(pids)]
        ).fetchall()
    return {pid: state for pid, state in rows}


@pytest.fixture
def proxy(dovecot: Dovecot) -> Iterator[hostile.HostileProxy]:
    with hostile.HostileProxy(dovecot.imap_port) as server:
        yield server


@pytest.fixture
def checkouts(sync_runtime: Runtime) -> Iterator[Checkouts]:
    watching = Checkouts(sync_runtime.db.engine)
    yield watching
    watching.close()


@pytest.fixture
def fetching_threads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The threads that asked the mail server for a part, in order."""
    threads: list[int] = []
    fetch_part = ImapSession.fetch_part

    def noting(session: ImapSession, uid: int, section: str) -> bytes | None:
        threads.append(threading.get_ident())
        return fetch_part(session, uid, section)

    monkeypatch.setattr(ImapSession, "fetch_part", noting)
    return threads


def waiting_for(attachment_id: str) -> int:
    """How many fetches of the attachment this process has under way or waiting."""
    with attachments._inflight_guard:
        return attachments._inflight.get(attachment_id, (None, 0))[1]


def proxied_sender(
    api: Any,
    runtime: Runtime,
    alice: Identity,
    dovecot: Dovecot,
    smtp_server: SmtpServer,
    user: MailUser,
    proxy: hostile.HostileProxy,
) -> tuple[Mailbox, list[str]]:
    """A synced account behind ``proxy`` whose INBOX holds a file never downloaded."""
    files = {"plan.pdf": ("application/pdf", make_pdf("Plan", pages=2))}
    dovecot.append(user, "INBOX", mail_with_attachments("x@example.test", user.email, files))
    box = sender_for(
        api, alice, dovecot, smtp_server, user, hostname="127.0.0.1", port=proxy.port,
        encryption="none",
    )  # fmt: skip
    return box, attachment_ids(api, box, runtime, alice)


def post_in_thread(
    app: Any, path: str, body: dict[str, Any], headers: dict[str, str], answers: list[Any]
) -> threading.Thread:
    def post() -> None:
        with app.test_client() as client:
            answers.append(client.post(path, json=body, headers=headers))

    thread = threading.Thread(target=post, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize(
    ("path", "status"), [("/api/compose/send", 202), ("/api/compose/draft", 201)]
)
def test_no_transaction_is_open_while_the_mail_server_is_asked_for_an_attachment(
    api: Any, sync_app: Any, sync_runtime: Runtime, alice: Identity, dovecot: Dovecot,
    smtp_server: SmtpServer, mail_user: MailUser, proxy: hostile.HostileProxy,
    checkouts: Checkouts, fetching_threads: list[int], path: str, status: int,
) -> None:  # fmt: skip
    # Given a synced account whose INBOX holds a file never downloaded, and a mail
    # server that holds back every part fetch
    box, ids = proxied_sender(api, sync_runtime, alice, dovecot, smtp_server, mail_user, proxy)
    held = HeldBack()
    proxy.client_rules = [held]
    to = dovecot.new_user("to")
    body = {
        "accountId": box.id,
        "to": [to.email],
        "subject": "Plan",
        "body": ".",
        "attachmentIds": ids,
    }

    # When the message is sent (or saved as a draft) with that file
    answers: list[Any] = []
    request = post_in_thread(sync_app, path, body, box.headers, answers)
    try:
        assert held.asked.wait(30), "the mail server was not asked for the part"
        # Then, while the mail server keeps it waiting, the request holds no database
        # connection, and none of those it used is idle in a transaction
        [thread] = fetching_threads
        assert checkouts.held_by(thread) == []
        used = checkouts.used[thread]
        assert used, "the request read nothing from the database before the fetch"
        # (a connection the pool has handed to another thread since is that thread's)
        states = backend_states(used - checkouts.held_by_others(thread))
        assert not [s for s in states.values() if s.startswith("idle in transaction")], states
        assert answers == []
    finally:
        held.let_through()
        request.join(60)

    # and once the server answers, the request is answered and its task does its work
    [answer] = answers
    assert answer.status_code == status, answer.text
    assert await_task(sync_runtime, alice, answer.json()["taskId"]).status == "success"


def test_sends_racing_with_one_idempotency_key_while_the_server_is_slow_queue_one_task(
    api: Any, sync_app: Any, sync_runtime: Runtime, alice: Identity, dovecot: Dovecot,
    smtp_server: SmtpServer, mail_user: MailUser, proxy: hostile.HostileProxy,
) -> None:  # fmt: skip
    # Given a file never downloaded, on a mail server that holds back every part fetch
    box, ids = proxied_sender(api, sync_runtime, alice, dovecot, smtp_server, mail_user, proxy)
    held = HeldBack()
    proxy.client_rules = [held]
    to = dovecot.new_user("to")
    body = {
        "accountId": box.id,
        "to": [to.email],
        "subject": "Once",
        "body": ".",
        "attachmentIds": ids,
    }
    headers = {**box.headers, "Idempotency-Key": "slow-server-once"}

    # When two requests with one key both get past the early look-up while it waits
    answers: list[Any] = []
    requests = [
        post_in_thread(sync_app, "/api/compose/send", body, headers, answers) for _ in range(2)
    ]
    try:
        assert held.asked.wait(30), "the mail server was not asked for the part"
        # (the second waits for the first one's fetch of the same attachment)
        hostile.wait_until(lambda: waiting_for(ids[0]) == 2, timeout=30)
    finally:
        held.let_through()
        for request in requests:
            request.join(60)

    # Then both answer with the one task that was queued
    assert [a.status_code for a in answers] == [202, 202], [a.text for a in answers]
    assert answers[0].json() == answers[1].json()
    with sync_runtime.db.transaction(alice.caller.tenant_id) as session:
        queued = list(session.scalars(select(Task.id).where(Task.kind == "send")))
    assert queued == [answers[0].json()["taskId"]]
    assert await_task(sync_runtime, alice, queued[0]).status == "success"


def queued_and_drafts(runtime: Runtime, identity: Identity) -> tuple[list[str], list[str]]:
    with runtime.db.transaction(identity.caller.tenant_id) as session:
        queued = list(session.scalars(select(Task.kind).where(Task.kind.in_(("send", "draft")))))
        drafts = list(session.scalars(select(Draft.id)))
    return queued, drafts


def expunge_inbox(dovecot: Dovecot, user: MailUser) -> None:
    client = dovecot.imap(user)
    try:
        client.select_folder("INBOX")
        client.delete_messages(client.search("ALL"))
        client.expunge()
    finally:
        client.logout()


@pytest.mark.parametrize("path", ["/api/compose/send", "/api/compose/draft"])
@pytest.mark.parametrize(
    ("failure", "status", "code"),
    [("expunged", 404, "NOT_ON_MAIL_SERVER"), ("unreachable", 502, "MAIL_SERVER_UNAVAILABLE")],
)
def test_an_attachment_the_mail_server_cannot_give_is_answered_as_a_download_and_nothing_is_kept(
    api: Any, sync_runtime: Runtime, alice: Identity, dovecot: Dovecot,
    smtp_server: SmtpServer, mail_user: MailUser, proxy: hostile.HostileProxy,
    path: str, failure: str, status: int, code: str,
) -> None:  # fmt: skip
    # Given a file never downloaded whose message is gone from the server, or whose
    # server cannot be reached
    box, ids = proxied_sender(api, sync_runtime, alice, dovecot, smtp_server, mail_user, proxy)
    if failure == "expunged":
        expunge_inbox(dovecot, mail_user)
    else:
        set_port(sync_runtime, box.id, closed_port())

    # When a message with it is sent or saved
    body = {"accountId": box.id, "to": ["x@example.test"], "subject": "S", "body": "."}
    answer = api.post(path, json={**body, "attachmentIds": ids}, headers=box.headers)

    # Then the answer is the one its download gets, and nothing was queued or stored
    assert answer.status_code == status, answer.text
    assert answer.json()["code"] == code
    assert queued_and_drafts(sync_runtime, alice) == ([], [])
    assert sync_runtime.build_budget.used == 0


def test_an_account_deleted_while_the_server_is_slow_sends_nothing(
    api: Any, sync_app: Any, sync_runtime: Runtime, alice: Identity, dovecot: Dovecot,
    smtp_server: SmtpServer, mail_user: MailUser, proxy: hostile.HostileProxy,
) -> None:  # fmt: skip
    # Given a send waiting on a slow mail server for an attachment
    box, ids = proxied_sender(api, sync_runtime, alice, dovecot, smtp_server, mail_user, proxy)
    held = HeldBack()
    proxy.client_rules = [held]
    body = {"accountId": box.id, "to": ["x@example.test"], "subject": "S", "body": ".",
            "attachmentIds": ids}  # fmt: skip
    answers: list[Any] = []
    request = post_in_thread(sync_app, "/api/compose/send", body, box.headers, answers)
    try:
        assert held.asked.wait(30), "the mail server was not asked for the part"
        # When the account is deleted meanwhile (nothing of the send stands in its way)
        deleted = api.delete(f"/api/accounts/{box.id}", headers=box.headers)
        assert deleted.status_code == 204, deleted.text
    finally:
        held.let_through()
        request.join(60)

    # Then the send finds the account gone, and nothing is queued
    [answer] = answers
    assert answer.status_code == 404 and answer.json()["code"] == "ACCOUNT_NOT_FOUND", answer.text
    assert queued_and_drafts(sync_runtime, alice)[0] == []
