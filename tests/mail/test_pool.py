"""Pooled mail connections: SMTP submissions kept across sends, against the real aiosmtpd
server (delivering into Dovecot); the pool's bounds with stand-in connections."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from email_service.mail.endpoint import MailEndpoint
from email_service.mail.errors import MailAuthError, MailProtocolError, SmtpTransientError
from email_service.mail.imap import ImapSession, pooled_session
from email_service.mail.limits import MailLimits
from email_service.mail.pool import ConnectionPool, PoolKey, pool_key
from email_service.mail.smtp import Submission, close_connection, send
from tests.servers import hostile
from tests.servers.dovecot import Dovecot, MailUser
from tests.servers.smtp import SmtpServer

OWNER = "account-1"


def _message(to: str, n: int) -> bytes:
    return (
        f"From: a@example.test\r\nTo: {to}\r\nSubject: pooled {n}\r\n"
        f"Message-ID: <pooled-{n}-{time.monotonic_ns()}@example.test>\r\n\r\nHello {n}\r\n"
    ).encode()


def _endpoint(server: SmtpServer, user: MailUser, **overrides: object) -> MailEndpoint:
    values: dict[str, object] = {
        "host": server.host,
        "port": server.port,
        "encryption": "starttls",
        "username": user.email,
        "password": user.password,
        "ca_file": str(server.dovecot.ca_file),
        "timeout": 10.0,
    }
    values.update(overrides)
    return MailEndpoint(**values)  # type: ignore[arg-type]


@pytest.fixture(params=[False, True], ids=["one-by-one", "pipelining"])
def smtp(smtp_server: SmtpServer, request: pytest.FixtureRequest) -> Iterator[SmtpServer]:
    """The session's SMTP server, as it is (no PIPELINING) and offering PIPELINING."""
    smtp_server.reset()
    smtp_server.pipelining = request.param
    yield smtp_server
    smtp_server.reset()


@pytest.fixture
def pool() -> Iterator[ConnectionPool[Submission]]:
    made: ConnectionPool[Submission] = ConnectionPool("smtp", close_connection)
    yield made
    made.close()


def _send(pool: ConnectionPool[Submission], endpoint: MailEndpoint, to: MailUser, n: int) -> None:
    result = send(endpoint, endpoint.username, [to.email], _message(to.email, n), pool=pool,
                  owner=OWNER)  # fmt: skip
    assert result.accepted == (to.email,)


def _peers(smtp: SmtpServer) -> list[object]:
    return [t.peer for t in smtp.transactions]


def test_the_next_message_of_an_account_goes_over_the_same_connection(
    smtp: SmtpServer, dovecot: Dovecot, mail_user: MailUser, pool: ConnectionPool[Submission]
) -> None:
    to = dovecot.new_user("to")
    for n in range(3):
        _send(pool, _endpoint(smtp, mail_user), to, n)

    # One connection (one client port) carried all three, authenticated over TLS once
    peers = _peers(smtp)
    assert len(peers) == 3 and len(set(peers)) == 1 and peers[0] is not None
    assert all(t.tls and t.auth_user == mail_user.email for t in smtp.transactions)
    assert pool.reused == 2 and pool.idle_count(OWNER) == 1
    assert len(smtp.received) == 3


def test_an_idle_connection_is_closed_and_the_next_send_opens_another(
    smtp: SmtpServer, dovecot: Dovecot, mail_user: MailUser
) -> None:
    pool: ConnectionPool[Submission] = ConnectionPool("smtp", close_connection, idle_seconds=0.3)
    to = dovecot.new_user("to")
    try:
        _send(pool, _endpoint(smtp, mail_user), to, 1)
        assert pool.idle_count() == 1
        # The reaper closes it without anyone asking
        deadline = time.monotonic() + 5
        while pool.idle_count():
            assert time.monotonic() < deadline, "the idle connection was not closed"
            time.sleep(0.05)
        assert pool.closed_idle == 1

        _send(pool, _endpoint(smtp, mail_user), to, 2)
        assert pool.reused == 0
        first, second = _peers(smtp)
        assert first != second
    finally:
        pool.close()


def test_a_changed_password_or_host_never_rides_on_an_old_connection(
    smtp: SmtpServer, dovecot: Dovecot, mail_user: MailUser, pool: ConnectionPool[Submission]
) -> None:
    to = dovecot.new_user("to")
    _send(pool, _endpoint(smtp, mail_user), to, 1)
    assert pool.idle_count(OWNER) == 1

    # When the account's password changes (to a wrong one), the open, authenticated
    # connection is not used: the new password is tried, and refused
    with pytest.raises(MailAuthError):
        send(_endpoint(smtp, mail_user, password="not-the-password"), mail_user.email,
             [to.email], _message(to.email, 2), pool=pool, owner=OWNER)  # fmt: skip
    assert len(smtp.received) == 1
    # and the connection opened with the old password is closed for good
    assert pool.closed_stale == 1 and pool.idle_count(OWNER) == 0 and pool.reused == 0

    # When the account moves to another port (SMTPS), a new connection is opened there
    _send(pool, _endpoint(smtp, mail_user), to, 3)
    _send(pool, _endpoint(smtp, mail_user, port=smtp.smtps_port, encryption="tls"), to, 4)
    assert pool.reused == 0
    accepted = [t for t in smtp.transactions if t.accepted]
    assert len({t.peer for t in accepted}) == 3
    # and another account with the same settings gets none of this account's connections
    other = send(_endpoint(smtp, mail_user), mail_user.email, [to.email],
                 _message(to.email, 5), pool=pool, owner="account-2")  # fmt: skip
    assert other.accepted == (to.email,) and pool.reused == 0


def test_a_dead_pooled_connection_is_replaced_and_the_message_goes_once(
    smtp: SmtpServer, dovecot: Dovecot, mail_user: MailUser, pool: ConnectionPool[Submission]
) -> None:
    to = dovecot.new_user("to")
    _send(pool, _endpoint(smtp, mail_user), to, 1)
    # Given the server restarted meanwhile: the pooled connection is dead
    smtp.stop()
    smtp.start()

    _send(pool, _endpoint(smtp, mail_user), to, 2)

    # Then the pooled connection was tried, and the message went over a new one, once
    assert pool.reused == 1
    assert [t.reply[:3] for t in smtp.transactions] == ["250", "250"]
    first, second = _peers(smtp)
    assert first != second
    assert len(smtp.received) == 2
    subjects = [m.raw.split(b"Subject: ")[1].split(b"\r\n")[0] for m in smtp.received]
    assert subjects == [b"pooled 1", b"pooled 2"]


def test_a_failure_after_the_data_on_a_pooled_connection_is_not_tried_again(
    smtp: SmtpServer, dovecot: Dovecot, mail_user: MailUser, pool: ConnectionPool[Submission]
) -> None:
    to = dovecot.new_user("to")
    _send(pool, _endpoint(smtp, mail_user), to, 1)
    smtp.fail_next(1, 451, "4.3.0 not now", stage="data")

    with pytest.raises(SmtpTransientError):
        _send(pool, _endpoint(smtp, mail_user), to, 2)

    # One attempt at the data, over the pooled connection, which is then closed
    assert [t.reply[:3] for t in smtp.transactions] == ["250", "451"]
    first, second = _peers(smtp)
    assert first == second
    assert pool.idle_count() == 0 and len(smtp.received) == 1


# ----------------------------------------------------------------------------- IMAP


@pytest.fixture
def imap_pool() -> Iterator[ConnectionPool[ImapSession]]:
    made: ConnectionPool[ImapSession] = ConnectionPool("imap", ImapSession.close)
    yield made
    made.close()


def _imap_endpoint(dovecot: Dovecot, user: MailUser, **overrides: object) -> MailEndpoint:
    values: dict[str, object] = {
        "host": dovecot.host,
        "port": dovecot.imap_port,
        "encryption": "none",
        "username": user.email,
        "password": user.password,
        "timeout": 10.0,
    }
    values.update(overrides)
    return MailEndpoint(**values)  # type: ignore[arg-type]


def test_an_imap_session_serves_the_next_job_of_the_account(
    dovecot: Dovecot, mail_user: MailUser, imap_pool: ConnectionPool[ImapSession]
) -> None:
    endpoint = _imap_endpoint(dovecot, mail_user)
    with pooled_session(endpoint, imap_pool, OWNER) as first:
        first.select("INBOX")
    trips = first.round_trips
    with pooled_session(endpoint, imap_pool, OWNER) as second:
        assert second is first and second.round_trips == trips + 1  # the NOOP only
        # It came back with nothing selected (the first job's folder was left), so
        # reading messages without choosing a folder is the error it is on a new session
        with pytest.raises(RuntimeError, match="no folder is selected"):
            second.uids()
        second.select("INBOX")
    assert imap_pool.reused == 1 and imap_pool.idle_count(OWNER) == 1


def test_a_dead_or_failed_imap_session_is_not_used_again(
    dovecot: Dovecot, mail_user: MailUser, imap_pool: ConnectionPool[ImapSession]
) -> None:
    endpoint = _imap_endpoint(dovecot, mail_user)
    with pooled_session(endpoint, imap_pool, OWNER) as first:
        pass
    # Given the pooled session's connection died meanwhile
    first._imap.sock.shutdown(2)  # the socket under the session
    with pooled_session(endpoint, imap_pool, OWNER) as second:
        # Then its NOOP failed and a new session took its place
        assert second is not first
        second.select("INBOX")
    # When a job fails inside the block, its session is closed, not kept
    with pytest.raises(MailProtocolError), pooled_session(endpoint, imap_pool, OWNER) as third:
        assert third is second
        third.select("No such folder")
    assert imap_pool.idle_count() == 0


def test_an_imap_session_opened_with_an_old_password_is_not_used(
    dovecot: Dovecot, mail_user: MailUser, imap_pool: ConnectionPool[ImapSession]
) -> None:
    with pooled_session(_imap_endpoint(dovecot, mail_user), imap_pool, OWNER):
        pass
    changed = _imap_endpoint(dovecot, mail_user, password="not-the-password")
    with pytest.raises(MailAuthError), pooled_session(changed, imap_pool, OWNER):
        pass
    assert imap_pool.reused == 0 and imap_pool.closed_stale == 1
    assert imap_pool.idle_count() == 0


def test_an_imap_session_that_met_a_hostile_answer_is_not_kept(
    dovecot: Dovecot, mail_user: MailUser, imap_pool: ConnectionPool[ImapSession]
) -> None:
    # Given a server (behind the rewriting proxy) that a pooled session already served
    dovecot.append(mail_user, "INBOX", b"Subject: big\r\n\r\n" + b"x" * 300_000 + b"\r\n")
    with hostile.HostileProxy(dovecot.imap_port) as proxy:
        limits = MailLimits(max_message_bytes=20_000)
        endpoint = _imap_endpoint(dovecot, mail_user, port=proxy.port, limits=limits)
        with pooled_session(endpoint, imap_pool, OWNER) as first:
            first.select("INBOX")
        assert imap_pool.idle_count(OWNER) == 1

        # When it turns hostile: a body far above its announced size, which the session
        # reads and throws away, finishing the job
        proxy.rules = [hostile.lying_size(100)]
        with pooled_session(endpoint, imap_pool, OWNER) as second:
            assert second is first
            second.select("INBOX")
            [fetched] = list(second.fetch(second.uids()))
            assert fetched.too_large and fetched.raw == b""

        # Then that session is closed, not kept for the next job
        assert imap_pool.idle_count(OWNER) == 0

        # And so is one that was told of UIDs the folder cannot hold
        proxy.rules = [hostile.huge_esearch]
        with pooled_session(endpoint, imap_pool, OWNER) as third:
            assert third is not first
            third.select("INBOX")
            assert len(third.uids()) == 1
        assert imap_pool.idle_count(OWNER) == 0

        # While an honest exchange through the same proxy leaves its session kept
        proxy.rules = []
        with pooled_session(endpoint, imap_pool, OWNER) as fourth:
            fourth.select("INBOX")
            assert len(fourth.uids()) == 1
        assert imap_pool.idle_count(OWNER) == 1


# ----------------------------------------------------------------------------- bounds


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _key(owner: str, settings: str = "s") -> PoolKey:
    return PoolKey(owner, settings)


def test_the_pool_keeps_at_most_its_bounds_and_closes_the_rest() -> None:
    closed: list[str] = []
    clock = _Clock()
    pool: ConnectionPool[str] = ConnectionPool(
        "test", closed.append, per_account=2, total=3, idle_seconds=30, clock=clock
    )
    try:
        for name in ("a1", "a2", "a3"):
            pool.give(_key("a"), name)
        # Per account: the oldest of the key made room
        assert closed == ["a1"] and pool.idle_count("a") == 2
        pool.give(_key("b"), "b1")
        pool.give(_key("c"), "c1")
        # In total: the least recently returned one made room
        assert closed == ["a1", "a2"] and pool.idle_count() == 3
        # The newest of a key is handed out first
        pool.give(_key("b"), "b2")
        assert pool.take(_key("b")) == "b2"
        # An expired connection is closed, not handed out
        clock.now += 31
        assert pool.take(_key("c")) is None
        assert "c1" in closed
    finally:
        pool.close()


def test_keys_differ_with_every_setting_and_hold_no_password() -> None:
    base = MailEndpoint("mail.example.test", 587, "starttls", "ada", "secret-1")
    key = pool_key("acct", base, "smtp")
    assert "secret-1" not in repr(key) and "secret-1" not in key.settings
    assert pool_key("acct", base, "smtp") == key
    changed = [
        MailEndpoint("mail.example.test", 587, "starttls", "ada", "secret-2"),
        MailEndpoint("mx.example.test", 587, "starttls", "ada", "secret-1"),
        MailEndpoint("mail.example.test", 465, "tls", "ada", "secret-1"),
        MailEndpoint("mail.example.test", 587, "starttls", "bob", "secret-1"),
        MailEndpoint("mail.example.test", 587, "starttls", "ada", "secret-1", sasl="XOAUTH2"),
    ]
    assert all(pool_key("acct", e, "smtp") != key for e in changed)
    assert pool_key("acct", base, "imap") != key
