"""OAuth2 accounts: their sealed tokens, and refreshing the access token safely.

Why the refresh is careful. Providers rotate refresh tokens: each refresh may return a new
refresh token and retire the old one, and at most providers a retired refresh token used
again revokes the whole grant. So:

1. Only one process refreshes an account at a time. The refresh runs in a transaction that
   first locks the account's row (``SELECT ... FOR UPDATE`` on PostgreSQL; a process-local
   lock as well, which is all the embedded SQLite default needs). A second process waits
   for the lock, then reads the tokens the first one stored and uses them without calling
   the provider.
2. The rotated refresh token is stored in the same transaction as the new access token,
   before the lock is released: nobody can read the old refresh token after the provider
   retired it.
3. ``invalid_grant`` (consent revoked or expired) marks the account (``auth_error``) and
   records ``account.error`` on the change feed in that transaction; from then on no
   login is tried and the scheduler skips the account until its owner gives new tokens.
   Nothing retries a revoked grant.
4. A provider that is down (5xx, timeout) raises a transient error: the job is retried
   later like any network failure, and the stored tokens are untouched.

Tokens are sealed with the credential key ring like passwords, bound to the row under a
context of their own (so a password ciphertext cannot be passed off as tokens), and never
returned or logged.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from db.models import Account, now_ms
from email_service import metrics
from email_service.crypto import Sealed
from email_service.errors import InvalidRequest
from email_service.oauth2 import (
    REVOKED_MESSAGE,
    OAuth2Error,
    OAuth2Revoked,
    OAuth2Unavailable,
    Provider,
    TokenGrant,
    refresh_access_token,
)
from email_service.runtime import Runtime
from email_service.services import events

log = logging.getLogger(__name__)

_local_locks: dict[str, threading.Lock] = {}
_local_guard = threading.Lock()


class UnknownProvider(InvalidRequest):
    code = "OAUTH2_PROVIDER_UNKNOWN"

    def __init__(self, provider_id: str) -> None:
        super().__init__(f"No OAuth2 provider '{provider_id}' is configured")


@dataclass(frozen=True)
class Tokens:
    refresh_token: str = field(repr=False)
    access_token: str | None = field(default=None, repr=False)


def list_providers(runtime: Runtime) -> dict[str, Any]:
    """The configured providers as a client app needs them (no client secret)."""
    return {"providers": [p.public() for p in runtime.oauth2_providers.values()]}


def provider_of(runtime: Runtime, provider_id: str) -> Provider:
    """The configured provider ``provider_id``; ``OAuth2Error`` if it is not (any longer)."""
    provider = runtime.oauth2_providers.get(provider_id)
    if provider is None:
        raise OAuth2Error(f"the OAuth2 provider '{provider_id}' is not configured any more")
    return provider


def _context(row: Account) -> str:
    return f"account:{row.tenant_id}:{row.id}:oauth2"


def seal_tokens(runtime: Runtime, row: Account, tokens: Tokens, expires_at: int | None) -> None:
    plain = json.dumps({"refresh": tokens.refresh_token, "access": tokens.access_token})
    sealed = runtime.keyring.encrypt(plain, _context(row))
    row.oauth2_key_id = sealed.key_id
    row.oauth2_ciphertext = sealed.ciphertext
    row.oauth2_expires_at = expires_at if tokens.access_token else None


def unseal_tokens(runtime: Runtime, row: Account) -> Tokens:
    """The account's tokens, decrypted. Raises ``crypto.DecryptionError``."""
    if row.oauth2_key_id is None or row.oauth2_ciphertext is None:
        raise OAuth2Error("the account has no OAuth2 tokens")
    data = json.loads(
        runtime.keyring.decrypt(Sealed(row.oauth2_key_id, row.oauth2_ciphertext), _context(row))
    )
    return Tokens(refresh_token=data["refresh"], access_token=data.get("access"))


def reseal(runtime: Runtime, row: Account) -> None:
    """Encrypt the tokens again under the primary key (``rotate-keys``)."""
    seal_tokens(runtime, row, unseal_tokens(runtime, row), row.oauth2_expires_at)


def connect(runtime: Runtime, row: Account, grant: dict[str, Any]) -> None:
    """Make ``row`` an OAuth2 account with the tokens an API caller gave (create/update).

    ``grant`` is the request's ``oauth2`` object: ``provider``, ``refreshToken``,
    optionally ``accessToken`` and ``expiresAt``. Clears the password and any earlier
    revocation mark. Raises ``UnknownProvider`` (400).
    """
    provider_id = grant["provider"]
    if provider_id not in runtime.oauth2_providers:
        raise UnknownProvider(provider_id)
    row.auth_type = "oauth2"
    row.oauth2_provider = provider_id
    access = grant.get("accessToken")
    seal_tokens(
        runtime,
        row,
        Tokens(refresh_token=grant["refreshToken"], access_token=access),
        grant.get("expiresAt"),
    )
    row.password_key_id = None
    row.password_ciphertext = None
    row.auth_error = None


def disconnect(row: Account) -> None:
    """Drop the OAuth2 state of an account going back to a password."""
    row.auth_type = "password"
    row.oauth2_provider = None
    row.oauth2_key_id = None
    row.oauth2_ciphertext = None
    row.oauth2_expires_at = None
    row.auth_error = None


def _fresh(runtime: Runtime, expires_at: int | None) -> bool:
    if expires_at is None:
        return True  # unknown lifetime: use it until a server refuses it
    margin_ms = runtime.settings.oauth2_refresh_margin_seconds * 1000
    return expires_at - margin_ms > now_ms()


def login_token(runtime: Runtime, row: Account) -> str:
    """An access token to log in with: the stored one while fresh, else a refreshed one.

    Raises ``OAuth2Revoked`` (permanent), ``OAuth2Unavailable`` (transient),
    ``OAuth2Error``, or ``crypto.DecryptionError``.
    """
    token, fresh = stored_token(runtime, row)
    if token and fresh:
        return token
    return refresh(runtime, row.tenant_id, row.id, rejected=token)


def stored_token(runtime: Runtime, row: Account) -> tuple[str | None, bool]:
    """The account's stored access token, and whether it is fresh enough to log in with.

    Reads ``row`` only (no call to the provider). Raises ``OAuth2Revoked``, ``OAuth2Error``
    or ``crypto.DecryptionError``, as :func:`login_token`.
    """
    if row.auth_error:
        raise OAuth2Revoked(row.auth_error)
    tokens = unseal_tokens(runtime, row)
    return tokens.access_token, bool(tokens.access_token) and _fresh(runtime, row.oauth2_expires_at)


def _exchange(runtime: Runtime, provider: Provider, refresh_token: str) -> TokenGrant:
    try:
        grant = refresh_access_token(
            provider, refresh_token, timeout=runtime.settings.oauth2_timeout
        )
    except OAuth2Revoked:
        metrics.observe_oauth2_refresh("revoked")
        raise
    except OAuth2Unavailable:
        metrics.observe_oauth2_refresh("unavailable")
        raise
    except OAuth2Error:
        metrics.observe_oauth2_refresh("error")
        raise
    metrics.observe_oauth2_refresh("ok")
    return grant


@contextmanager
def _process_lock(account_id: str) -> Iterator[None]:
    with _local_guard:
        lock = _local_locks.setdefault(account_id, threading.Lock())
    with lock:
        yield


def refresh(
    runtime: Runtime, tenant_id: uuid.UUID, account_id: str, *, rejected: str | None = None
) -> str:
    """A usable access token for the account, refreshing it at the provider if needed.

    ``rejected`` is a token known to be unusable (expired, or refused by a mail server):
    when the stored token is still that one, or is about to expire, the provider is asked
    for a new one; when another process has stored a different, fresh one meanwhile, that
    one is returned without asking. See the module docstring for the locking.
    """
    revoked = False
    with _process_lock(account_id), runtime.db.transaction(tenant_id) as session:
        row = session.scalars(
            select(Account).where(Account.id == account_id).with_for_update()
        ).one_or_none()
        if row is None or row.deleted_at is not None or row.auth_type != "oauth2":
            raise OAuth2Error("the account does not log in with OAuth2 any more")
        if row.auth_error:
            raise OAuth2Revoked(row.auth_error)
        tokens = unseal_tokens(runtime, row)
        current = tokens.access_token
        if current and current != rejected and _fresh(runtime, row.oauth2_expires_at):
            return current
        provider = provider_of(runtime, row.oauth2_provider or "")
        try:
            grant = _exchange(runtime, provider, tokens.refresh_token)
        except OAuth2Revoked:
            # Stored with the mark, in this transaction; raised once it is committed.
            seal_tokens(runtime, row, Tokens(tokens.refresh_token), None)
            row.auth_error = REVOKED_MESSAGE
            # account.error on the change feed, once, whichever job found out.
            events.account_failing(session, row.id, REVOKED_MESSAGE)
            revoked = True
        else:
            seal_tokens(
                runtime,
                row,
                Tokens(grant.refresh_token or tokens.refresh_token, grant.access_token),
                grant.expires_at,
            )
            log.info(
                "refreshed the OAuth2 access token of account %s%s",
                account_id,
                " (refresh token rotated)" if grant.refresh_token else "",
            )
            return grant.access_token
    assert revoked
    log.warning("the OAuth2 authorization of account %s was revoked", account_id)
    raise OAuth2Revoked()
