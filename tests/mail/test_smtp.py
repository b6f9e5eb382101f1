"""smtp.send against a real aiosmtpd server that delivers into Dovecot over LMTP."""

from __future__ import annotations

import pickle
import socket
from collections.abc import Iterator

import pytest

from email_service.mail.endpoint import MailEndpoint
from email_service.mail.errors import MailAuthError, SmtpPermanentError, SmtpTransientError
from email_service.mail.imap import ImapSession
from email_service.mail.pool import ConnectionPool
from email_service.mail.smtp import SmtpResult, Submission, close_connection, send
from tests.mail.conftest import nobody_connected, unused_port
from tests.servers.dovecot import Dovecot, MailUser
from tests.servers.smtp import SmtpServer


def _message(to: str, n: int = 1, line_end: bytes = b"\r\n") -> bytes:
    lines = [
        b"From: Sender <sender@example.test>",
        f"To: {to}".encode(),
        f"Subject: smtp test {n}".encode(),
        f"Message-ID: <smtp-{n}-{to}>".encode(),
        b"",
        b"Hello,",
        b".a line starting with a dot",
        b"bye",
        b"",
    ]
    return line_end.join(lines)


def _endpoint(
    server: SmtpServer,
    user: MailUser | None = None,
    encryption: str = "none",
    **overrides: object,
) -> MailEndpoint:
    values: dict[str, object] = {
        "host": server.host,
        "port": server.smtps_port if encryption == "tls" else server.port,
        "encryption": encryption,
        "username": user.email if user else "",
        "password": user.password if user else "",
        "ca_file": str(server.dovecot.ca_file) if encryption != "none" else None,
        "timeout": 10.0,
    }
    values.update(overrides)
    return MailEndpoint(**values)  # type: ignore[arg-type]


def _inbox(dovecot: Dovecot, user: MailUser) -> list[bytes]:
    endpoint = MailEndpoint(dovecot.host, dovecot.imap_port, "none", user.email, user.password)
    with ImapSession(endpoint) as imap:
        imap.select("INBOX")
        return [m.raw for m in imap.fetch(imap.uids())]


@pytest.fixture
def recipient(dovecot: Dovecot) -> MailUser:
    return dovecot.new_user("rcpt")


@pytest.fixture(params=[False, True], ids=["one-by-one", "pipelining"])
def smtp(smtp_server: SmtpServer, request: pytest.FixtureRequest) -> Iterator[SmtpServer]:
    """The session's SMTP server, as it is (no PIPELINING) and offering PIPELINING."""
    smtp_server.reset()  # in case the plugin's after-test reset is not active
    smtp_server.pipelining = request.param
    yield smtp_server
    smtp_server.reset()


@pytest.mark.parametrize("encryption", ["none", "starttls", "tls"])
def test_send_delivers_into_inbox(
    smtp: SmtpServer,
    dovecot: Dovecot,
    mail_user: MailUser,
    recipient: MailUser,
    encryption: str,
) -> None:
    raw = _message(recipient.email)
    result = send(_endpoint(smtp, mail_user, encryption), mail_user.email, [recipient.email], raw)
    assert isinstance(result, SmtpResult)
    assert result.accepted == (recipient.email,)
    assert result.refused == {}
    assert result.reply.startswith("250")
    (transaction,) = smtp.transactions
    assert transaction.tls == (encryption != "none")
    assert transaction.auth_user == mail_user.email
    (delivered,) = _inbox(dovecot, recipient)
    # LMTP prepends trace headers; the message itself arrives unchanged.
    assert delivered.endswith(raw)


def test_send_without_auth_and_with_bare_lf(
    smtp: SmtpServer, dovecot: Dovecot, recipient: MailUser
) -> None:
    raw = _message(recipient.email, line_end=b"\n")
    result = send(_endpoint(smtp), "", [recipient.email], raw)
    assert result.accepted == (recipient.email,)
    (received,) = smtp.received
    assert received.raw == raw.replace(b"\n", b"\r\n")  # normalised to CRLF on the wire
    assert received.mail_from == ""
    (delivered,) = _inbox(dovecot, recipient)
    assert delivered.endswith(raw.replace(b"\n", b"\r\n"))


def test_unknown_recipient_is_permanent(smtp: SmtpServer, mail_user: MailUser) -> None:
    nobody = "nobody-at-all@example.test"
    with pytest.raises(SmtpPermanentError) as info:
        send(_endpoint(smtp, mail_user), mail_user.email, [nobody], _message(nobody))
    error = info.value
    assert error.code == 550
    assert "5.1.1" in error.reply
    assert set(error.recipients) == {nobody}
    assert error.recipients[nobody][0] == 550
    assert not error.transient
    assert smtp.received == []
    copy = pickle.loads(pickle.dumps(error))  # noqa: S301 - our own bytes
    assert (copy.code, copy.reply, copy.recipients) == (error.code, error.reply, error.recipients)


def test_partly_refused_recipients_are_listed(
    smtp: SmtpServer, dovecot: Dovecot, mail_user: MailUser, recipient: MailUser
) -> None:
    nobody = "nobody-else@example.test"
    result = send(
        _endpoint(smtp, mail_user),
        mail_user.email,
        [recipient.email, nobody],
        _message(recipient.email),
    )
    assert result.accepted == (recipient.email,)
    assert list(result.refused) == [nobody]
    assert result.refused[nobody][0] == 550
    assert len(_inbox(dovecot, recipient)) == 1


@pytest.mark.parametrize("stage", ["mail", "rcpt", "data"])
def test_4xx_is_transient(
    smtp: SmtpServer, mail_user: MailUser, recipient: MailUser, stage: str
) -> None:
    smtp.fail_next(1, 451, "4.3.0 try again later", stage=stage)  # type: ignore[arg-type]
    with pytest.raises(SmtpTransientError) as info:
        send(_endpoint(smtp, mail_user), mail_user.email, [recipient.email], _message("x"))
    assert info.value.code == 451
    assert "try again later" in info.value.reply
    assert info.value.transient
    # The failure was one-off: the retry goes through.
    result = send(_endpoint(smtp, mail_user), mail_user.email, [recipient.email], _message("x"))
    assert result.accepted == (recipient.email,)


def test_5xx_after_data_is_permanent_with_reply(
    smtp: SmtpServer, mail_user: MailUser, recipient: MailUser
) -> None:
    smtp.fail_next(1, 554, "5.7.1 message content rejected")
    with pytest.raises(SmtpPermanentError) as info:
        send(_endpoint(smtp, mail_user), mail_user.email, [recipient.email], _message("x"))
    assert info.value.code == 554
    assert info.value.reply == "5.7.1 message content rejected"
    assert "5.7.1 message content rejected" in str(info.value)


def test_server_down_is_transient(mail_user: MailUser) -> None:
    endpoint = MailEndpoint("127.0.0.1", unused_port(), "none", mail_user.email, mail_user.password)
    with pytest.raises(SmtpTransientError) as info:
        send(endpoint, mail_user.email, ["someone@example.test"], _message("x"))
    assert info.value.code is None
    assert "connection refused" in str(info.value)


def test_stopped_server_is_transient(smtp: SmtpServer, mail_user: MailUser) -> None:
    endpoint = _endpoint(smtp, mail_user)
    smtp.stop()
    try:
        with pytest.raises(SmtpTransientError):
            send(endpoint, mail_user.email, ["someone@example.test"], _message("x"))
    finally:
        smtp.start()


def test_wrong_password_is_auth_error(smtp: SmtpServer, mail_user: MailUser) -> None:
    endpoint = _endpoint(smtp, mail_user, password="wrong-smtp-password")
    with pytest.raises(MailAuthError) as info:
        send(endpoint, mail_user.email, [mail_user.email], _message("x"))
    assert "rejected the username or password" in str(info.value)
    assert "wrong-smtp-password" not in str(info.value)
    assert smtp.received == []


def test_tls_refused_without_ca_file(smtp: SmtpServer, mail_user: MailUser) -> None:
    for encryption in ("tls", "starttls"):
        endpoint = _endpoint(smtp, mail_user, encryption, ca_file=None)
        with pytest.raises(SmtpTransientError) as info:
            send(endpoint, mail_user.email, [mail_user.email], _message("x"))
        assert "certificate verification failed" in str(info.value)
    assert smtp.received == []


def test_starttls_required_but_not_offered(dovecot: Dovecot, mail_user: MailUser) -> None:
    with SmtpServer(dovecot, starttls=False) as plain_only:
        endpoint = _endpoint(plain_only, mail_user, "starttls")
        with pytest.raises(SmtpTransientError, match="does not offer STARTTLS"):
            send(endpoint, mail_user.email, [mail_user.email], _message("x"))
        assert plain_only.transactions == []


def test_connect_guard_refuses_before_connecting(
    connect_guard: list[tuple[str, int]], listening_socket: socket.socket
) -> None:
    port = listening_socket.getsockname()[1]
    with pytest.raises(PermissionError):
        send(MailEndpoint("127.0.0.1", port, "none", "", ""), "a@b.test", ["c@d.test"], b"x")
    assert connect_guard == [("127.0.0.1", port)]
    assert nobody_connected(listening_socket)


def test_needs_recipients() -> None:
    endpoint = MailEndpoint("127.0.0.1", 25, "none", "", "")
    with pytest.raises(ValueError):
        send(endpoint, "a@b.test", [], b"x")
    with pytest.raises(ValueError):
        send(endpoint, "a@b.test", "c@d.test", b"x")


def test_commands_are_pipelined_only_when_the_server_offers_it(
    smtp: SmtpServer, dovecot: Dovecot, mail_user: MailUser, recipient: MailUser
) -> None:
    offered = smtp.pipelining
    nobody = "nobody-else@example.test"
    pool: ConnectionPool[Submission] = ConnectionPool("smtp", close_connection)
    try:
        # When two messages go, the second over the connection the first left in the pool,
        # one of its recipients unknown
        for n, recipients in enumerate(([recipient.email], [recipient.email, nobody])):
            result = send(
                _endpoint(smtp, mail_user, "starttls"),
                mail_user.email,
                recipients,
                _message(recipient.email, n),
                pool=pool,
                owner="account-1",
            )
    finally:
        pool.close()
    # Then MAIL, the RCPTs and DATA (and the pooled connection's RSET) went in one write
    # only to a server that said PIPELINING
    assert [t.pipelined for t in smtp.transactions] == [offered, offered]
    assert smtp.transactions[0].peer == smtp.transactions[1].peer
    # and every reply was still read: the unknown recipient is refused, the other has both
    assert result.accepted == (recipient.email,)
    assert list(result.refused) == [nobody] and result.refused[nobody][0] == 550
    assert len(_inbox(dovecot, recipient)) == 2


def test_a_pipelined_transaction_refused_at_mail_delivers_nothing_and_says_why(
    smtp: SmtpServer, mail_user: MailUser, recipient: MailUser
) -> None:
    smtp.fail_next(1, 550, "5.7.1 sender refused", stage="mail")
    with pytest.raises(SmtpPermanentError) as info:
        send(_endpoint(smtp, mail_user), mail_user.email, [recipient.email], _message("x"))
    assert info.value.code == 550 and "MAIL FROM" in str(info.value)
    assert smtp.received == []
