"""DNS rebinding: a mail host is resolved once, and the connection goes to what was checked.

The guard here is the real ``HostPolicy`` with a resolver of our own that answers like a
rebinding DNS server: the loopback test server first (allowed, as ``MAIL_ALLOWED_HOSTS``
would), a cloud metadata endpoint on every later question. The host names do not resolve
on this machine at all, so a client that looked the name up again could not connect.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from email_service.config import Settings
from email_service.mail.endpoint import MailEndpoint, resolve_target, set_connect_guard
from email_service.mail.errors import MailError
from email_service.mail.imap import ImapSession
from email_service.mail.imap_watch import WatchSession
from email_service.mail.pop3 import Pop3Session
from email_service.mail.smtp import send
from email_service.netguard import HostNotAllowed, HostPolicy
from tests.servers.dovecot import Dovecot, MailUser
from tests.servers.smtp import SmtpServer

REBINDING_NAME = "mail.rebinding.invalid"


@dataclass
class RebindingResolver:
    """First answer: ``first``; every later one: the AWS metadata endpoint."""

    first: str = "127.0.0.1"
    questions: list[str] = field(default_factory=list)

    def __call__(self, host: str, port: int) -> list[ipaddress.IPv4Address]:
        self.questions.append(host)
        answer = self.first if len(self.questions) == 1 else "169.254.169.254"
        return [ipaddress.IPv4Address(answer)]


@pytest.fixture
def rebinding() -> Iterator[Callable[[], RebindingResolver]]:
    """Install a guard whose DNS rebinds; ``rebinding()`` starts a fresh resolver."""

    def fresh() -> RebindingResolver:
        resolver = RebindingResolver()
        settings = Settings(mail_allowed_hosts=["127.0.0.1"], mail_allow_plaintext=True)
        set_connect_guard(HostPolicy.from_settings(settings, resolver).connect_guard)
        return resolver

    yield fresh
    set_connect_guard(None)


def test_the_guard_resolves_once_and_a_second_answer_is_refused(
    rebinding: Callable[[], RebindingResolver],
) -> None:
    resolver = rebinding()
    target = resolve_target(REBINDING_NAME, 143)
    assert target.addresses == ("127.0.0.1",) and target.host == REBINDING_NAME
    with pytest.raises(HostNotAllowed, match="metadata"):
        resolve_target(REBINDING_NAME, 143)  # the rebound answer, had anyone asked again
    assert resolver.questions == [REBINDING_NAME, REBINDING_NAME]


def test_imap_connects_to_the_checked_address(
    rebinding: Callable[[], RebindingResolver], dovecot: Dovecot, mail_user: MailUser
) -> None:
    resolver = rebinding()
    endpoint = MailEndpoint(
        REBINDING_NAME, dovecot.imap_port, "none", mail_user.email, mail_user.password
    )
    with ImapSession(endpoint) as imap:
        assert "INBOX" in {f.name for f in imap.list_folders()}
    assert resolver.questions == [REBINDING_NAME]


def test_pop3_connects_to_the_checked_address(
    rebinding: Callable[[], RebindingResolver], dovecot: Dovecot, mail_user: MailUser
) -> None:
    resolver = rebinding()
    endpoint = MailEndpoint(
        REBINDING_NAME, dovecot.pop3_port, "none", mail_user.email, mail_user.password
    )
    with Pop3Session(endpoint) as pop:
        pop.stat()
    assert resolver.questions == [REBINDING_NAME]


def test_smtp_connects_to_the_checked_address(
    rebinding: Callable[[], RebindingResolver], smtp_server: SmtpServer, mail_user: MailUser
) -> None:
    resolver = rebinding()
    endpoint = MailEndpoint(REBINDING_NAME, smtp_server.port, "none", "", "")
    raw = b"From: a@example.test\r\nTo: x\r\nSubject: pinned\r\n\r\nhi\r\n"
    result = send(endpoint, "a@example.test", [mail_user.email], raw)
    assert list(result.accepted) == [mail_user.email]
    assert resolver.questions == [REBINDING_NAME]


def test_the_push_watcher_connects_to_the_checked_address(
    rebinding: Callable[[], RebindingResolver], dovecot: Dovecot, mail_user: MailUser
) -> None:
    resolver = rebinding()
    endpoint = MailEndpoint(
        REBINDING_NAME, dovecot.imap_port, "none", mail_user.email, mail_user.password
    )

    async def watch() -> frozenset[str]:
        async with WatchSession(endpoint) as session:
            return session.capabilities

    assert "IDLE" in asyncio.run(watch())
    assert resolver.questions == [REBINDING_NAME]


async def _watch(endpoint: MailEndpoint) -> None:
    async with WatchSession(endpoint):
        pass


def _session(session: ImapSession | Pop3Session) -> None:
    with session:
        pass


def _tls_endpoints(dovecot: Dovecot, smtp: SmtpServer, user: MailUser, host: str):  # type: ignore[no-untyped-def]
    ca = str(dovecot.ca_file)
    return {
        "imaps": lambda: _session(
            ImapSession(
                MailEndpoint(host, dovecot.imaps_port, "tls", user.email, user.password, ca)
            )
        ),
        "imap-starttls": lambda: _session(
            ImapSession(
                MailEndpoint(host, dovecot.imap_port, "starttls", user.email, user.password, ca)
            )
        ),
        "pop3s": lambda: _session(
            Pop3Session(
                MailEndpoint(host, dovecot.pop3s_port, "tls", user.email, user.password, ca)
            )
        ),
        "pop3-stls": lambda: _session(
            Pop3Session(
                MailEndpoint(host, dovecot.pop3_port, "starttls", user.email, user.password, ca)
            )
        ),
        "watch-imaps": lambda: asyncio.run(
            _watch(MailEndpoint(host, dovecot.imaps_port, "tls", user.email, user.password, ca))
        ),
        "watch-starttls": lambda: asyncio.run(
            _watch(MailEndpoint(host, dovecot.imap_port, "starttls", user.email, user.password, ca))
        ),
        "smtps": lambda: send(
            MailEndpoint(host, smtp.smtps_port, "tls", "", "", ca),
            "a@example.test",
            [user.email],
            b"Subject: t\r\n\r\nx\r\n",
        ),
        "smtp-starttls": lambda: send(
            MailEndpoint(host, smtp.port, "starttls", "", "", ca),
            "a@example.test",
            [user.email],
            b"Subject: t\r\n\r\nx\r\n",
        ),
    }


PROTOCOLS = [
    "imaps",
    "imap-starttls",
    "pop3s",
    "pop3-stls",
    "watch-imaps",
    "watch-starttls",
    "smtps",
    "smtp-starttls",
]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_tls_verifies_the_account_host_name_not_the_address(
    protocol: str,
    rebinding: Callable[[], RebindingResolver],
    dovecot: Dovecot,
    smtp_server: SmtpServer,
    mail_user: MailUser,
) -> None:
    # The certificate names localhost and 127.0.0.1. Connected to 127.0.0.1 on behalf
    # of another name, verification must fail: it checks the name, not the address.
    rebinding()
    connect = _tls_endpoints(dovecot, smtp_server, mail_user, REBINDING_NAME)[protocol]
    with pytest.raises(MailError, match="certificate verification failed"):
        connect()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_tls_to_the_pinned_address_succeeds_for_the_certificate_name(
    protocol: str,
    rebinding: Callable[[], RebindingResolver],
    dovecot: Dovecot,
    smtp_server: SmtpServer,
    mail_user: MailUser,
) -> None:
    resolver = rebinding()
    _tls_endpoints(dovecot, smtp_server, mail_user, "localhost")[protocol]()
    assert resolver.questions == ["localhost"]
