"""OAuth2 providers for mail accounts, and the one call we make to them: refreshing a token.

The operator configures providers in ``OAUTH2_PROVIDERS`` (a JSON object, provider id ->
settings). ``google`` and ``microsoft`` are built in: their token and authorization URLs,
SASL mechanism, scopes and mail hosts are known, so the operator gives only ``clientId`` and
``clientSecret``. Any other id is a custom provider and names everything itself.

Token URLs come from the operator and are trusted; nothing here ever fetches a URL that an
API caller supplied (an account names a provider *id*, never a URL).

The token endpoint is a foreign server: its answer is read with a time limit for the whole
exchange and a byte limit, and its failures are sorted the way the sync engine needs them:

- ``invalid_grant`` (consent revoked or expired) -> :class:`OAuth2Revoked`, permanent;
- 5xx, 429, timeouts, refused connections -> :class:`OAuth2Unavailable`, transient;
- anything else (a refused client, an answer without a token) -> :class:`OAuth2Error`.

All three are :class:`~email_service.mail.errors.MailError` s, so every caller that already
handles a refused login or a network error handles these the same way.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import httpx

from email_service.mail.errors import MailAuthError, MailError

__all__ = [
    "BUILT_IN",
    "MailHosts",
    "Mechanism",
    "OAuth2Error",
    "OAuth2Revoked",
    "OAuth2Unavailable",
    "Provider",
    "ProviderConfigError",
    "TokenGrant",
    "parse_providers",
    "refresh_access_token",
]

Mechanism = Literal["XOAUTH2", "OAUTHBEARER"]

#: What a token endpoint may send back; real answers are well under 4 KiB.
MAX_TOKEN_RESPONSE_BYTES = 64 * 1024

REVOKED_MESSAGE = "authorization revoked; reconnect the account"


class ProviderConfigError(ValueError):
    """``OAUTH2_PROVIDERS`` is malformed (raised at start-up)."""


class OAuth2Error(MailAuthError):
    """The provider refused to issue a token for a reason other than revoked consent.

    For example ``invalid_client`` (the operator's client id or secret is wrong) or an
    answer without an access token. Permanent: retrying unchanged fails again.
    """


class OAuth2Revoked(OAuth2Error):
    """The refresh token is no longer valid (``invalid_grant``): the owner must reconnect."""

    def __init__(self, message: str = REVOKED_MESSAGE) -> None:
        super().__init__(message)


class OAuth2Unavailable(MailError):
    """The token endpoint could not answer now (5xx, 429, timeout, network). Transient."""

    transient = True


@dataclass(frozen=True)
class MailHosts:
    """A provider's mail servers: ``(host, port, encryption)`` for IMAP, POP3 and SMTP."""

    imap: tuple[str, int, str]
    pop3: tuple[str, int, str]
    smtp: tuple[str, int, str]


@dataclass(frozen=True)
class Provider:
    id: str
    name: str
    token_url: str
    client_id: str
    client_secret: str = field(repr=False)
    mechanism: Mechanism
    scopes: tuple[str, ...] = ()
    authorize_url: str | None = None
    mail_hosts: MailHosts | None = None
    # Microsoft's v2 endpoint wants the scopes again on a refresh; Google does not.
    scope_on_refresh: bool = False

    def public(self) -> dict[str, Any]:
        """What a client app needs to run the consent flow: no secret."""
        body: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "authorizeUrl": self.authorize_url,
            "scopes": list(self.scopes),
            "clientId": self.client_id,
            "mechanism": self.mechanism,
        }
        if self.mail_hosts is not None:
            body["mailHosts"] = {
                kind: {"hostname": host, "port": port, "encryption": encryption}
                for kind, (host, port, encryption) in (
                    ("imap", self.mail_hosts.imap),
                    ("pop3", self.mail_hosts.pop3),
                    ("smtp", self.mail_hosts.smtp),
                )
            }
        return body


# What the built-in providers bring; the operator adds clientId and clientSecret.
BUILT_IN: dict[str, dict[str, Any]] = {
    "google": {
        "name": "Google",
        "tokenUrl": "https://oauth2.googleapis.com/token",
        "authorizeUrl": "https://accounts.google.com/o/oauth2/v2/auth",
        "mechanism": "XOAUTH2",
        "scopes": ["https://mail.google.com/"],
        "mailHosts": MailHosts(
            imap=("imap.gmail.com", 993, "tls"),
            pop3=("pop.gmail.com", 995, "tls"),
            smtp=("smtp.gmail.com", 465, "tls"),
        ),
    },
    "microsoft": {
        "name": "Microsoft",
        "tokenUrl": "https://login.microsoftonline.com/common/oauth2/v2.0/token",
        "authorizeUrl": "https://login.microsoftonline.com/common/oauth2/v2.0/authorize",
        "mechanism": "XOAUTH2",
        "scopes": [
            "https://outlook.office.com/IMAP.AccessAsUser.All",
            "https://outlook.office.com/POP.AccessAsUser.All",
            "https://outlook.office.com/SMTP.Send",
            "offline_access",
        ],
        "mailHosts": MailHosts(
            imap=("outlook.office365.com", 993, "tls"),
            pop3=("outlook.office365.com", 995, "tls"),
            smtp=("smtp.office365.com", 587, "starttls"),
        ),
        "scopeOnRefresh": True,
    },
}

_PROVIDER_KEYS = {"tokenUrl", "clientId", "clientSecret", "mechanism", "scopes", "authorizeUrl"}


def parse_providers(raw: str | None) -> dict[str, Provider]:
    """Providers from the ``OAUTH2_PROVIDERS`` JSON text. Raises ``ProviderConfigError``.

    Error messages name the provider and the field, never a secret's value.
    """
    if not raw or not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ProviderConfigError(f"OAUTH2_PROVIDERS is not valid JSON ({exc.msg})") from None
    if not isinstance(data, dict):
        raise ProviderConfigError("OAUTH2_PROVIDERS must be a JSON object: id -> settings")
    providers: dict[str, Provider] = {}
    for provider_id, entry in data.items():
        providers[provider_id] = _provider(provider_id, entry)
    return providers


def _provider(provider_id: str, entry: object) -> Provider:
    if not isinstance(provider_id, str) or not _valid_id(provider_id):
        raise ProviderConfigError(
            f"OAuth2 provider id {provider_id!r} must be 1-64 of a-z, 0-9, '-' and '_'"
        )
    if not isinstance(entry, dict):
        raise ProviderConfigError(f"OAuth2 provider {provider_id!r} must be a JSON object")
    unknown = set(entry) - _PROVIDER_KEYS
    if unknown:
        raise ProviderConfigError(
            f"OAuth2 provider {provider_id!r} has unknown settings: {sorted(unknown)}"
        )
    merged: dict[str, Any] = {**BUILT_IN.get(provider_id, {}), **entry}
    for key in ("tokenUrl", "clientId", "clientSecret", "mechanism"):
        if not isinstance(merged.get(key), str) or not merged[key]:
            raise ProviderConfigError(f"OAuth2 provider {provider_id!r} needs {key}")
    if merged["mechanism"] not in get_args(Mechanism):
        raise ProviderConfigError(
            f"OAuth2 provider {provider_id!r}: mechanism must be XOAUTH2 or OAUTHBEARER"
        )
    for key in ("tokenUrl", "authorizeUrl"):
        url = merged.get(key)
        if url is not None and not (
            isinstance(url, str) and url.startswith(("https://", "http://"))
        ):
            raise ProviderConfigError(f"OAuth2 provider {provider_id!r}: {key} must be a URL")
    scopes = merged.get("scopes", [])
    if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
        raise ProviderConfigError(f"OAuth2 provider {provider_id!r}: scopes must be strings")
    return Provider(
        id=provider_id,
        name=str(merged.get("name", provider_id)),
        token_url=merged["tokenUrl"],
        client_id=merged["clientId"],
        client_secret=merged["clientSecret"],
        mechanism=merged["mechanism"],
        scopes=tuple(scopes),
        authorize_url=merged.get("authorizeUrl"),
        mail_hosts=merged.get("mailHosts"),
        scope_on_refresh=bool(merged.get("scopeOnRefresh", False)),
    )


def _valid_id(value: str) -> bool:
    return 0 < len(value) <= 64 and all(c.isascii() and (c.isalnum() or c in "-_") for c in value)


@dataclass(frozen=True)
class TokenGrant:
    """A token endpoint's answer. ``refresh_token`` is set only when the provider rotated it."""

    access_token: str = field(repr=False)
    expires_at: int | None  # epoch milliseconds
    refresh_token: str | None = field(default=None, repr=False)


def refresh_access_token(provider: Provider, refresh_token: str, *, timeout: float) -> TokenGrant:
    """Trade ``refresh_token`` for a new access token at the provider's token endpoint.

    The whole exchange (connect, send, read) ends within ``timeout`` seconds and reads at
    most :data:`MAX_TOKEN_RESPONSE_BYTES`. Raises :class:`OAuth2Revoked`,
    :class:`OAuth2Unavailable` or :class:`OAuth2Error` (see the module docstring).
    """
    form = {
        "grant_type": "refresh_token",
        "refresh_token": refresh_token,
        "client_id": provider.client_id,
        "client_secret": provider.client_secret,
    }
    if provider.scope_on_refresh and provider.scopes:
        form["scope"] = " ".join(provider.scopes)
    deadline = time.monotonic() + timeout
    try:
        with (
            httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False) as client,
            client.stream(
                "POST", provider.token_url, data=form, headers={"Accept": "application/json"}
            ) as response,
        ):
            body = bytearray()
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > MAX_TOKEN_RESPONSE_BYTES:
                    raise OAuth2Error(
                        f"the token endpoint of {provider.name} answered with more than "
                        f"{MAX_TOKEN_RESPONSE_BYTES} bytes"
                    )
                if time.monotonic() > deadline:
                    raise httpx.ReadTimeout("the token endpoint answered too slowly")
            status = response.status_code
    except httpx.TimeoutException:
        raise OAuth2Unavailable(
            f"the token endpoint of {provider.name} did not answer in time"
        ) from None
    except httpx.TransportError as exc:
        raise OAuth2Unavailable(
            f"the token endpoint of {provider.name} cannot be reached ({type(exc).__name__})"
        ) from None
    return _grant(provider, status, bytes(body))


def _grant(provider: Provider, status: int, body: bytes) -> TokenGrant:
    try:
        data = json.loads(body) if body else {}
    except ValueError:
        data = None
    if status >= 500 or status == 429:
        raise OAuth2Unavailable(
            f"the token endpoint of {provider.name} cannot issue a token now (HTTP {status})"
        )
    if not isinstance(data, dict):
        raise OAuth2Error(
            f"the token endpoint of {provider.name} answered HTTP {status} without a JSON object"
        )
    if status != 200:
        error = data.get("error")
        # The error code is a short ASCII word by RFC 6749; anything else is not repeated.
        code = error if isinstance(error, str) and error.isascii() and len(error) < 64 else ""
        if code == "invalid_grant":
            raise OAuth2Revoked()
        if code == "temporarily_unavailable":
            raise OAuth2Unavailable(f"the token endpoint of {provider.name} is unavailable now")
        raise OAuth2Error(
            f"the token endpoint of {provider.name} refused to issue a token "
            f"(HTTP {status} {code or 'without an error code'})"
        )
    access = data.get("access_token")
    if not isinstance(access, str) or not access or not _is_b64token(access):
        raise OAuth2Error(f"the token endpoint of {provider.name} sent no usable access token")
    expires_in = data.get("expires_in")
    expires_at = None
    if isinstance(expires_in, int | float | str):
        try:
            seconds = int(float(expires_in))
        except ValueError:
            seconds = -1
        if seconds >= 0:
            expires_at = int(time.time() * 1000) + seconds * 1000
    rotated = data.get("refresh_token")
    if not isinstance(rotated, str) or not rotated or len(rotated) > 4096:
        rotated = None
    return TokenGrant(access_token=access, expires_at=expires_at, refresh_token=rotated)


def _is_b64token(value: str) -> bool:
    # RFC 6750 b64token: what a bearer token may contain (it goes into a SASL message).
    body = value.rstrip("=")
    return 0 < len(body) <= 8192 and all(
        c.isascii() and (c.isalnum() or c in "-._~+/") for c in body
    )
