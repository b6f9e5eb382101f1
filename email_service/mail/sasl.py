"""SASL with OAuth2 bearer tokens: XOAUTH2 (Google, Microsoft) and OAUTHBEARER (RFC 7628).

Both carry the user name and ``auth=Bearer <token>`` separated by ``\\x01``. When the
server refuses the token it first sends a challenge holding a JSON error
(``{"status": "401", "schemes": "bearer", ...}``) and waits for the client to end the
exchange: an empty response for XOAUTH2, a single ``\\x01`` for OAUTHBEARER. Then the
command fails.

:func:`login_with_refresh` is the retry the OAuth2 issue asks for: a refused token is
replaced once by a fresh one (through the endpoint's ``token_refresh``) and the login tried
again; a second refusal stands.

No database and no HTTP here: the refresh is a callable given by the caller.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

from email_service.mail.endpoint import MailEndpoint
from email_service.mail.errors import MailAuthError

__all__ = [
    "TokenRefused",
    "describe_challenge",
    "error_reply",
    "initial_response",
    "login_with_refresh",
]

# RFC 6750 b64token: all a bearer token may contain.
_B64TOKEN_RE = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
MAX_CHALLENGE_TEXT = 200


class TokenRefused(MailAuthError):
    """The server refused the bearer token (it may have expired or been revoked)."""


def initial_response(mechanism: str, username: str, token: str) -> bytes:
    """The client's first (and normally only) message for ``mechanism``.

    Raises ``MailAuthError`` when the user name or token cannot be carried (control
    characters in the name, a token outside RFC 6750's alphabet): sending them would let
    one field run into the next.
    """
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in username):
        raise MailAuthError("the user name cannot be sent in an OAuth2 login")
    if not _B64TOKEN_RE.fullmatch(token):
        raise MailAuthError("the stored OAuth2 access token is not a valid bearer token")
    bearer = f"auth=Bearer {token}\x01\x01"
    if mechanism == "XOAUTH2":
        return f"user={username}\x01{bearer}".encode()
    if mechanism == "OAUTHBEARER":
        # GS2 header (RFC 5801): no channel binding, authzid = the user, with ',' and '='
        # escaped as =2C and =3D.
        authzid = username.replace("=", "=3D").replace(",", "=2C")
        return f"n,a={authzid},\x01{bearer}".encode()
    raise ValueError(f"unknown SASL mechanism {mechanism!r}")


def error_reply(mechanism: str) -> bytes:
    """What the client sends after the server's error challenge to end the exchange."""
    return b"\x01" if mechanism == "OAUTHBEARER" else b""


def describe_challenge(challenge: bytes) -> str:
    """Words for a server's error challenge (its JSON ``status``), bounded and printable."""
    try:
        data = json.loads(challenge)
    except ValueError:
        data = None
    if isinstance(data, dict):
        status = str(data.get("status", ""))[:16]
        return f"token refused, status {status}" if status else "token refused"
    text = challenge.decode("ascii", errors="replace")[:MAX_CHALLENGE_TEXT]
    return "".join(c if c.isprintable() else "?" for c in text)


def login_with_refresh(endpoint: MailEndpoint, attempt: Callable[[str], None]) -> None:
    """Run ``attempt(token)``; if the server refuses the token, refresh it once and retry.

    ``attempt`` raises :class:`TokenRefused` when the server refused the token, and
    anything else for other failures (those are not retried). Without a
    ``token_refresh`` on the endpoint the first refusal stands. Whatever the refresh
    raises (a revoked authorization, a provider that is down) reaches the caller.
    """
    try:
        attempt(endpoint.password)
    except TokenRefused:
        if endpoint.token_refresh is None:
            raise
        fresh = endpoint.token_refresh(endpoint.password)
        attempt(fresh)
