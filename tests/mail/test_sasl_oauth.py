"""XOAUTH2 and OAUTHBEARER logins over IMAP, POP3 and SMTP against a real Dovecot.

Dovecot's oauth2 passdb asks the local test provider whether a bearer token is active and
whose it is; the SMTP test server hands the SASL exchange to that same Dovecot.
"""

from __future__ import annotations

import asyncio

import pytest

from email_service.mail.endpoint import MailEndpoint
from email_service.mail.errors import MailAuthError
from email_service.mail.imap import ImapSession
from email_service.mail.imap_watch import WatchSession
from email_service.mail.pop3 import Pop3Session
from email_service.mail.sasl import TokenRefused, initial_response
from email_service.mail.smtp import send
from tests.servers.dovecot import Dovecot, MailUser
from tests.servers.oauth2 import OAuth2TestProvider
from tests.servers.smtp import SmtpServer

MECHANISMS = ["XOAUTH2", "OAUTHBEARER"]


@pytest.fixture
def oauth_user(oauth2_dovecot: Dovecot) -> MailUser:
    return oauth2_dovecot.new_user("oauth")


def _imap(dovecot: Dovecot, user: MailUser, token: str, **extra: object) -> MailEndpoint:
    values: dict[str, object] = {
        "host": dovecot.host,
        "port": dovecot.imaps_port,
        "encryption": "tls",
        "username": user.email,
        "password": token,
        "ca_file": str(dovecot.ca_file),
        "timeout": 10.0,
        "sasl": "XOAUTH2",
    }
    values.update(extra)
    return MailEndpoint(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_imap_logs_in_with_a_bearer_token(
    oauth2_dovecot: Dovecot,
    oauth2_provider: OAuth2TestProvider,
    oauth_user: MailUser,
    mechanism: str,
) -> None:
    token = oauth2_provider.access_token(oauth_user.email)
    with ImapSession(_imap(oauth2_dovecot, oauth_user, token, sasl=mechanism)) as imap:
        assert imap.select("INBOX").exists == 0


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_imap_refused_token_is_an_auth_error_without_the_token(
    oauth2_dovecot: Dovecot,
    oauth2_provider: OAuth2TestProvider,
    oauth_user: MailUser,
    mechanism: str,
) -> None:
    token = oauth2_provider.access_token(oauth_user.email, ttl=0)
    with pytest.raises(TokenRefused) as caught:
        ImapSession(_imap(oauth2_dovecot, oauth_user, token, sasl=mechanism)).open()
    assert "OAuth2 access token" in str(caught.value)
    assert token not in str(caught.value)


def test_imap_refused_token_is_refreshed_once_and_retried(
    oauth2_dovecot: Dovecot, oauth2_provider: OAuth2TestProvider, oauth_user: MailUser
) -> None:
    expired = oauth2_provider.access_token(oauth_user.email, ttl=0)
    fresh = oauth2_provider.access_token(oauth_user.email)
    asked: list[str] = []

    def refresh(refused: str) -> str:
        asked.append(refused)
        return fresh

    endpoint = _imap(oauth2_dovecot, oauth_user, expired, token_refresh=refresh)
    with ImapSession(endpoint) as imap:
        imap.select("INBOX")
    assert asked == [expired]


def test_imap_second_refusal_stands(
    oauth2_dovecot: Dovecot, oauth2_provider: OAuth2TestProvider, oauth_user: MailUser
) -> None:
    calls = []

    def refresh(refused: str) -> str:
        calls.append(refused)
        return oauth2_provider.access_token(oauth_user.email, ttl=0)

    endpoint = _imap(
        oauth2_dovecot,
        oauth_user,
        oauth2_provider.access_token(oauth_user.email, ttl=0),
        token_refresh=refresh,
    )
    with pytest.raises(TokenRefused):
        ImapSession(endpoint).open()
    assert len(calls) == 1


def test_imap_without_the_mechanism_says_so(
    dovecot: Dovecot, oauth2_provider: OAuth2TestProvider, mail_user: MailUser
) -> None:
    # The plain test Dovecot offers no XOAUTH2: nothing is sent, the error says why.
    endpoint = _imap(dovecot, mail_user, oauth2_provider.access_token(mail_user.email))
    with pytest.raises(MailAuthError, match="does not offer XOAUTH2"):
        ImapSession(endpoint).open()


def test_password_logins_still_work_beside_oauth(
    oauth2_dovecot: Dovecot, oauth_user: MailUser
) -> None:
    endpoint = _imap(oauth2_dovecot, oauth_user, oauth_user.password, sasl=None)
    with ImapSession(endpoint) as imap:
        imap.select("INBOX")


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_pop3_logs_in_with_a_bearer_token_and_refreshes_a_refused_one(
    oauth2_dovecot: Dovecot,
    oauth2_provider: OAuth2TestProvider,
    oauth_user: MailUser,
    mechanism: str,
) -> None:
    expired = oauth2_provider.access_token(oauth_user.email, ttl=0)
    fresh = oauth2_provider.access_token(oauth_user.email)
    endpoint = MailEndpoint(
        oauth2_dovecot.host,
        oauth2_dovecot.pop3s_port,
        "tls",
        oauth_user.email,
        expired,
        ca_file=str(oauth2_dovecot.ca_file),
        timeout=10.0,
        sasl=mechanism,  # type: ignore[arg-type]
        token_refresh=lambda refused: fresh,
    )
    with Pop3Session(endpoint) as pop:
        assert pop.stat() == (0, 0)
    with pytest.raises(TokenRefused):
        Pop3Session(
            MailEndpoint(
                oauth2_dovecot.host,
                oauth2_dovecot.pop3_port,
                "none",
                oauth_user.email,
                expired,
                sasl=mechanism,  # type: ignore[arg-type]
            )
        ).open()


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_smtp_sends_with_a_bearer_token(
    oauth2_smtp_server: SmtpServer,
    oauth2_dovecot: Dovecot,
    oauth2_provider: OAuth2TestProvider,
    oauth_user: MailUser,
    mechanism: str,
) -> None:
    expired = oauth2_provider.access_token(oauth_user.email, ttl=0)
    fresh = oauth2_provider.access_token(oauth_user.email)
    refused: list[str] = []

    def refresh(token: str) -> str:
        refused.append(token)
        return fresh

    endpoint = MailEndpoint(
        oauth2_smtp_server.host,
        oauth2_smtp_server.port,
        "starttls",
        oauth_user.email,
        expired,
        ca_file=str(oauth2_dovecot.ca_file),
        timeout=10.0,
        sasl=mechanism,  # type: ignore[arg-type]
        token_refresh=refresh,
    )
    raw = (
        f"From: {oauth_user.email}\r\nTo: {oauth_user.email}\r\nSubject: oauth\r\n"
        "Message-ID: <oauth-smtp@example.test>\r\n\r\nhello\r\n"
    ).encode()
    result = send(endpoint, oauth_user.email, [oauth_user.email], raw)
    assert result.accepted == (oauth_user.email,) or list(result.accepted) == [oauth_user.email]
    assert refused == [expired]
    transaction = oauth2_smtp_server.transactions[-1]
    assert transaction.auth_user == oauth_user.email


def test_smtp_refused_token_is_an_auth_error(
    oauth2_smtp_server: SmtpServer, oauth2_provider: OAuth2TestProvider, oauth_user: MailUser
) -> None:
    expired = oauth2_provider.access_token(oauth_user.email, ttl=0)
    endpoint = MailEndpoint(
        oauth2_smtp_server.host,
        oauth2_smtp_server.port,
        "none",
        oauth_user.email,
        expired,
        timeout=10.0,
        sasl="XOAUTH2",
    )
    with pytest.raises(TokenRefused) as caught:
        send(endpoint, oauth_user.email, [oauth_user.email], b"Subject: x\r\n\r\nx\r\n")
    assert expired not in str(caught.value)
    assert oauth2_smtp_server.received == []


def test_initial_responses_follow_the_mechanisms() -> None:
    assert initial_response("XOAUTH2", "a@b.test", "tok") == (
        b"user=a@b.test\x01auth=Bearer tok\x01\x01"
    )
    assert initial_response("OAUTHBEARER", "a,b=c@d.test", "tok") == (
        b"n,a=a=2Cb=3Dc@d.test,\x01auth=Bearer tok\x01\x01"
    )
    with pytest.raises(MailAuthError):
        initial_response("XOAUTH2", "a@b.test", "tok\x01auth=Bearer other")
    with pytest.raises(MailAuthError):
        initial_response("XOAUTH2", "a\x01@b.test", "tok")


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_the_watchers_session_logs_in_with_a_bearer_token_and_refreshes_once(
    oauth2_dovecot: Dovecot,
    oauth2_provider: OAuth2TestProvider,
    oauth_user: MailUser,
    mechanism: str,
) -> None:
    expired = oauth2_provider.access_token(oauth_user.email, ttl=0)
    fresh = oauth2_provider.access_token(oauth_user.email)
    refused: list[str] = []

    def refresh(token: str) -> str:
        refused.append(token)
        return fresh

    async def watch(endpoint: MailEndpoint) -> int:
        async with WatchSession(endpoint) as session:
            return (await session.examine("INBOX")).messages or 0

    endpoint = _imap(oauth2_dovecot, oauth_user, expired, sasl=mechanism, token_refresh=refresh)
    assert asyncio.run(watch(endpoint)) == 0
    assert refused == [expired]
    # Without a way to refresh, the refusal stands, in words and without the token.
    with pytest.raises(TokenRefused) as caught:
        asyncio.run(watch(_imap(oauth2_dovecot, oauth_user, expired, sasl=mechanism)))
    assert expired not in str(caught.value)
