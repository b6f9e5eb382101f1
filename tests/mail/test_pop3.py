"""Pop3Session against a real Dovecot (plain POP3, POP3S, STLS)."""

from __future__ import annotations

import socket

import pytest

from email_service.mail.endpoint import MailEndpoint
from email_service.mail.errors import MailAuthError, MailConnectionError, MailProtocolError
from email_service.mail.pop3 import Pop3Session
from tests.mail.conftest import nobody_connected, unused_port
from tests.servers import mailgen
from tests.servers.dovecot import Dovecot, MailUser


def _endpoint(
    dovecot: Dovecot, user: MailUser, encryption: str = "none", **overrides: object
) -> MailEndpoint:
    values: dict[str, object] = {
        "host": dovecot.host,
        "port": dovecot.pop3s_port if encryption == "tls" else dovecot.pop3_port,
        "encryption": encryption,
        "username": user.email,
        "password": user.password,
        "ca_file": str(dovecot.ca_file) if encryption != "none" else None,
        "timeout": 10.0,
    }
    values.update(overrides)
    return MailEndpoint(**values)  # type: ignore[arg-type]


@pytest.fixture
def stored(dovecot: Dovecot, mail_user: MailUser) -> dict[str, bytes]:
    """A few corpus messages plus awkward ones, in the INBOX; Message-ID header → raw."""
    samples = list(mailgen.corpus().values())[:6]
    awkward = (
        b"From: a@example.test\r\nSubject: dots\r\nMessage-ID: <dots@example.test>\r\n\r\n"
        b".leading dot\r\n..two dots\r\n.\r\nend\r\n",
        b"From: a@example.test\r\nSubject: long line\r\nMessage-ID: <long@example.test>\r\n\r\n"
        + b"x" * 70_000
        + b"\r\n",
    )
    for raw in (*samples, *awkward):
        dovecot.append(mail_user, "INBOX", raw)
    return {_message_id(raw): raw for raw in (*samples, *awkward)}


def _message_id(raw: bytes) -> str:
    for line in raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"message-id:"):
            return line.split(b":", 1)[1].strip().decode()
    raise AssertionError("no Message-ID")


@pytest.mark.parametrize("encryption", ["none", "tls", "starttls"])
def test_uidl_and_retrieve_exact_bytes(
    dovecot: Dovecot, mail_user: MailUser, stored: dict[str, bytes], encryption: str
) -> None:
    with Pop3Session(_endpoint(dovecot, mail_user, encryption)) as pop:
        assert (pop.tls_version is None) == (encryption == "none")
        count, size = pop.stat()
        assert count == len(stored)
        assert size == sum(len(raw) for raw in stored.values())
        ids = pop.uidl()
        assert sorted(ids.values()) == list(range(1, count + 1))
        assert len(set(ids)) == count
        fetched = {_message_id(raw): raw for raw in (pop.retrieve(n) for n in ids.values())}
    assert fetched == stored


def test_uidl_is_stable_across_sessions(
    dovecot: Dovecot, mail_user: MailUser, stored: dict[str, bytes]
) -> None:
    with Pop3Session(_endpoint(dovecot, mail_user)) as pop:
        first = pop.uidl()
    with Pop3Session(_endpoint(dovecot, mail_user, "tls")) as pop:
        assert pop.uidl() == first


def test_tls_refused_without_ca_file(dovecot: Dovecot, mail_user: MailUser) -> None:
    for encryption in ("tls", "starttls"):
        with pytest.raises(MailConnectionError) as info:
            Pop3Session(_endpoint(dovecot, mail_user, encryption, ca_file=None)).open()
        assert info.value.certificate_error
        assert "certificate verification failed" in str(info.value)


def test_wrong_password_is_auth_error(dovecot: Dovecot, mail_user: MailUser) -> None:
    with pytest.raises(MailAuthError) as info:
        Pop3Session(_endpoint(dovecot, mail_user, password="wrong-pop-password")).open()
    assert "rejected the username or password" in str(info.value)
    assert "wrong-pop-password" not in str(info.value)


def test_missing_message_is_protocol_error(dovecot: Dovecot, mail_user: MailUser) -> None:
    with Pop3Session(_endpoint(dovecot, mail_user)) as pop:
        assert pop.stat() == (0, 0)
        assert pop.uidl() == {}
        with pytest.raises(MailProtocolError):
            pop.retrieve(1)
        assert pop.stat() == (0, 0)  # still usable


def test_connection_refused() -> None:
    endpoint = MailEndpoint("127.0.0.1", unused_port(), "none", "u", "p", timeout=5)
    with pytest.raises(MailConnectionError, match="connection refused"):
        Pop3Session(endpoint).open()


def test_connect_guard_refuses_before_connecting(
    connect_guard: list[tuple[str, int]], listening_socket: socket.socket
) -> None:
    port = listening_socket.getsockname()[1]
    with pytest.raises(PermissionError):
        Pop3Session(MailEndpoint("127.0.0.1", port, "tls", "u", "p")).open()
    assert connect_guard == [("127.0.0.1", port)]
    assert nobody_connected(listening_socket)
