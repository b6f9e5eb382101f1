"""Fixtures for the mail protocol client tests (real Dovecot and aiosmtpd, no mocks).

The server fixtures (``dovecot``, ``smtp_server``, ``mail_user``) come from
``tests/servers/plugin.py``. The root ``tests/conftest.py`` does not register it yet, and
pytest refuses ``pytest_plugins`` in a conftest below the root one, so the plugin is
loaded here the way ``tests/servers/conftest.py`` does it (unless already loaded).
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator

import pytest

from email_service.mail.endpoint import MailEndpoint, set_connect_guard
from tests.servers.dovecot import Dovecot, MailUser

SERVERS_PLUGIN = "tests.servers.plugin"


def pytest_configure(config: pytest.Config) -> None:
    if not config.pluginmanager.has_plugin(SERVERS_PLUGIN):
        config.pluginmanager.import_plugin(SERVERS_PLUGIN)


@pytest.fixture
def imap_endpoint(dovecot: Dovecot, mail_user: MailUser) -> Callable[..., MailEndpoint]:
    """Build an IMAP endpoint for ``mail_user``; encryption picks the port."""

    def make(encryption: str = "none", **overrides: object) -> MailEndpoint:
        port = dovecot.imaps_port if encryption == "tls" else dovecot.imap_port
        values: dict[str, object] = {
            "host": dovecot.host,
            "port": port,
            "encryption": encryption,
            "username": mail_user.email,
            "password": mail_user.password,
            "ca_file": str(dovecot.ca_file) if encryption != "none" else None,
            "timeout": 10.0,
        }
        values.update(overrides)
        return MailEndpoint(**values)  # type: ignore[arg-type]

    return make


@pytest.fixture
def connect_guard() -> Iterator[list[tuple[str, int]]]:
    """Install a guard that records and refuses every connection; removed afterwards."""
    seen: list[tuple[str, int]] = []

    def refuse(host: str, port: int) -> None:
        seen.append((host, port))
        raise PermissionError(f"connections to {host}:{port} are not allowed")

    set_connect_guard(refuse)
    try:
        yield seen
    finally:
        set_connect_guard(None)


@pytest.fixture
def listening_socket() -> Iterator[socket.socket]:
    """A loopback socket that listens but never accepts: shows whether anyone connected."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield sock


def nobody_connected(sock: socket.socket) -> bool:
    """True when no connection is queued on ``sock`` (waits briefly)."""
    sock.settimeout(0.3)
    try:
        conn, _ = sock.accept()
    except TimeoutError:
        return True
    conn.close()
    return False


def unused_port() -> int:
    """A loopback port with nothing listening (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
