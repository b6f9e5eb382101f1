"""pytest fixtures for real mail/S3 servers on loopback.

Register from the root conftest with ``pytest_plugins = ["tests.servers.plugin"]``.

Session-scoped (started on first use, stopped at session end; one set per
pytest-xdist worker): ``dovecot``, ``smtp_server`` (delivers into ``dovecot``),
``s3_server``; for OAuth2 logins ``oauth2_provider`` (a local token and introspection
endpoint), ``oauth2_dovecot`` (a second Dovecot that also takes XOAUTH2/OAUTHBEARER tokens
checked against it) and ``oauth2_smtp_server`` (SMTP with XOAUTH2, delivering into
``oauth2_dovecot``).  Function-scoped: ``mail_user`` (a fresh Dovecot user) and
``s3_bucket`` (a fresh bucket, deleted afterwards).

After every test the session servers are put back in shape, so one test cannot
break the next: a stopped Dovecot / SMTP / S3 server is started again, pending
``smtp_server.fail_next()`` failures are cancelled, and ``smtp_server.received``
and ``smtp_server.transactions`` are cleared.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Generator, Iterator

import pytest

from tests.servers.dovecot import Dovecot, MailUser
from tests.servers.oauth2 import OAuth2TestProvider
from tests.servers.s3 import S3Server
from tests.servers.smtp import SmtpServer

_live: list[Dovecot | SmtpServer | S3Server | OAuth2TestProvider] = []


def _worker_tag() -> str:
    return os.environ.get("PYTEST_XDIST_WORKER", "main")


@contextlib.contextmanager
def _started(server: Dovecot | SmtpServer | S3Server | OAuth2TestProvider) -> Iterator[None]:
    """Start ``server``, keep it on the list of live servers while in use, close it after."""
    try:
        server.start()
        _live.append(server)
        yield
    finally:
        with contextlib.suppress(ValueError):
            _live.remove(server)
        server.close()


@pytest.fixture(scope="session")
def dovecot() -> Iterator[Dovecot]:
    """A private Dovecot (IMAP/IMAPS/POP3/POP3S/LMTP) for the whole session."""
    server = Dovecot(name=f"tests-{_worker_tag()}-{os.getpid()}")
    with _started(server):
        yield server


@pytest.fixture(scope="session")
def smtp_server(dovecot: Dovecot) -> Iterator[SmtpServer]:
    """SMTP (STARTTLS, AUTH PLAIN/LOGIN against Dovecot users) delivering into ``dovecot``."""
    server = SmtpServer(dovecot)
    with _started(server):
        yield server


@pytest.fixture(scope="session")
def oauth2_provider() -> Iterator[OAuth2TestProvider]:
    """A local OAuth2 provider: rotating refresh tokens, introspection for Dovecot."""
    server = OAuth2TestProvider()
    with _started(server):
        yield server


@pytest.fixture(scope="session")
def oauth2_dovecot(oauth2_provider: OAuth2TestProvider) -> Iterator[Dovecot]:
    """A Dovecot whose logins also take OAuth2 bearer tokens from ``oauth2_provider``."""
    server = Dovecot(
        name=f"tests-oauth2-{_worker_tag()}-{os.getpid()}",
        oauth2_introspection_url=oauth2_provider.introspection_url,
    )
    with _started(server):
        yield server


@pytest.fixture(scope="session")
def oauth2_smtp_server(oauth2_dovecot: Dovecot) -> Iterator[SmtpServer]:
    """SMTP with AUTH XOAUTH2/OAUTHBEARER (checked by ``oauth2_dovecot``), delivering there."""
    server = SmtpServer(oauth2_dovecot)
    with _started(server):
        yield server


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """An in-process moto S3 server on a free loopback port."""
    server = S3Server()
    with _started(server):
        yield server


@pytest.fixture
def mail_user(dovecot: Dovecot) -> MailUser:
    """A fresh ``@example.test`` user in the session Dovecot."""
    return dovecot.new_user()


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> Iterator[str]:
    """A fresh, empty bucket; deleted (with its objects) after the test."""
    name = s3_server.new_bucket()
    yield name
    if s3_server.running:
        with contextlib.suppress(Exception):
            s3_server.delete_bucket(name)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(
    item: pytest.Item, nextitem: pytest.Item | None
) -> Generator[None, None, None]:
    try:
        return (yield)
    finally:
        # Session fixtures finalized during this teardown have left ``_live`` already.
        for server in _live:
            if isinstance(server, SmtpServer | OAuth2TestProvider):
                server.reset()
            if not server.running:
                server.start()
