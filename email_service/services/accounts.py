"""Mail accounts: create, read, update, soft-delete; credentials encrypted at rest."""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Callable
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from db.models import Account, new_id, now_ms
from email_service import present
from email_service.crypto import Sealed
from email_service.errors import AccountNotFound, DuplicateEmail, InvalidRequest
from email_service.mail.endpoint import MailEndpoint
from email_service.runtime import Runtime
from email_service.scope import Scope
from email_service.services import events, oauth2

log = logging.getLogger(__name__)

DEFAULT_SMTP_PORTS = {"tls": 465, "starttls": 587, "none": 25}
_INCOMING_PREFIXES = ("imap.", "pop3.", "pop.")


def default_smtp_host(incoming_host: str) -> str:
    """``imap.example.com`` → ``smtp.example.com``; any other host is kept as is."""
    lowered = incoming_host.lower()
    for prefix in _INCOMING_PREFIXES:
        if lowered.startswith(prefix) and len(lowered) > len(prefix):
            return "smtp." + incoming_host[len(prefix) :]
    return incoming_host


#: ``password_key_id`` of a deleted account whose password has been wiped.
WIPED_KEY_ID = "wiped"


def wipe_credentials(row: Account) -> None:
    """Forget a deleted account's password and OAuth2 tokens (both kept non-null, marked)."""
    row.password_key_id, row.password_ciphertext = WIPED_KEY_ID, b""
    if row.oauth2_ciphertext is not None:
        row.oauth2_key_id, row.oauth2_ciphertext = WIPED_KEY_ID, b""
        row.oauth2_expires_at = None


def credential_context(row: Account) -> str:
    # Binds the ciphertext to this account of this tenant (AES-GCM associated data).
    return f"account:{row.tenant_id}:{row.id}"


def seal_password(runtime: Runtime, row: Account, password: str) -> None:
    sealed = runtime.keyring.encrypt(password, credential_context(row))
    row.password_key_id = sealed.key_id
    row.password_ciphertext = sealed.ciphertext


def account_password(runtime: Runtime, row: Account) -> str:
    """The account's mail password, decrypted. Raises ``crypto.DecryptionError``."""
    if row.password_key_id is None or row.password_ciphertext is None:
        raise ValueError("the account has no password (it logs in with OAuth2)")
    sealed = Sealed(row.password_key_id, row.password_ciphertext)
    return runtime.keyring.decrypt(sealed, credential_context(row))


def account_endpoint(runtime: Runtime, row: Account, *, smtp: bool = False) -> MailEndpoint:
    """How to reach the account's incoming (IMAP/POP3) or, with ``smtp``, outgoing server.

    Decrypts the password; the endpoint keeps it out of its ``repr``. For an OAuth2
    account the endpoint carries an access token instead (refreshed first if it is about
    to expire) and a way to refresh it once should the server refuse it; that may raise
    the errors of ``services.oauth2.login_token`` (all ``MailError`` s). Call it with no
    transaction open; a caller that reads ``row`` in one (a request, the push watcher)
    uses :func:`endpoint_later`, so the provider is never asked inside it.
    """
    return endpoint_later(runtime, row, smtp=smtp)()


def endpoint_later(
    runtime: Runtime, row: Account, *, smtp: bool = False
) -> Callable[[], MailEndpoint]:
    """:func:`account_endpoint` in two halves: what the database holds is read now, in
    the caller's transaction; an OAuth2 access token that needs refreshing is got when
    the returned function is called, after that transaction has ended.

    The refresh is an HTTP call to the provider (bounded by ``OAUTH2_TIMEOUT``); it keeps
    its own short transaction under the account's row lock (``oauth2.refresh``), and no
    request transaction should stay open around it. Raises here what reading the stored
    credentials raises (a revoked authorization, a key that cannot decrypt); the
    function raises the errors of ``oauth2.refresh``.
    """
    settings = runtime.settings
    fields: dict[str, Any] = {
        "host": row.smtp_hostname if smtp else row.hostname,
        "port": row.smtp_port if smtp else row.port,
        "encryption": row.smtp_encryption if smtp else row.encryption,
        "username": row.username,
        "ca_file": settings.mail_ca_file,
        "limits": settings.mail_limits(),
    }
    if row.auth_type != "oauth2":
        endpoint = MailEndpoint(password=account_password(runtime, row), **fields)
        return lambda: endpoint
    provider = oauth2.provider_of(runtime, row.oauth2_provider or "")
    token, fresh = oauth2.stored_token(runtime, row)
    tenant_id, account_id = row.tenant_id, row.id
    fields["sasl"] = provider.mechanism
    fields["token_refresh"] = functools.partial(_refresh_refused, runtime, tenant_id, account_id)

    def with_token() -> MailEndpoint:
        secret = token if token and fresh else None
        if secret is None:
            secret = oauth2.refresh(runtime, tenant_id, account_id, rejected=token)
        return MailEndpoint(password=secret, **fields)

    return with_token


def _refresh_refused(runtime: Runtime, tenant_id: uuid.UUID, account_id: str, refused: str) -> str:
    return oauth2.refresh(runtime, tenant_id, account_id, rejected=refused)


def load_account(scope: Scope, account_id: str, *, for_update: bool = False) -> Account:
    """The caller's live account ``account_id``. Raises ``AccountNotFound`` otherwise.

    Another tenant's or user's account is "not found" too: existence is not disclosed.
    """
    query = select(Account).where(
        Account.id == account_id,
        Account.tenant_id == scope.caller.tenant_id,
        Account.user_id == scope.caller.user_id,
        Account.deleted_at.is_(None),
    )
    if for_update:
        query = query.with_for_update()
    row = scope.session.scalars(query).one_or_none()
    if row is None:
        raise AccountNotFound(account_id)
    return row


def list_accounts(scope: Scope, limit: int, offset: int) -> dict[str, Any]:
    owned = (
        Account.tenant_id == scope.caller.tenant_id,
        Account.user_id == scope.caller.user_id,
        Account.deleted_at.is_(None),
    )
    total = scope.session.scalar(select(func.count()).select_from(Account).where(*owned)) or 0
    rows = scope.session.scalars(
        select(Account)
        .where(*owned)
        .order_by(Account.created_at, Account.id)
        .limit(limit)
        .offset(offset)
    ).all()
    return {
        "accounts": [present.account(row, with_username=False) for row in rows],
        "pagination": {"total": total, "limit": limit, "offset": offset},
    }


def _credential(body: dict[str, Any], *, creating: bool) -> str | None:
    """Which credential the body gives ("password" / "oauth2"), checked against ``authType``.

    The spec cannot say this (the SDK generators break on an ``anyOf`` of request bodies).
    Raises ``InvalidRequest`` (``AUTH_TYPE_MISMATCH``).
    """
    given = [name for name in ("password", "oauth2") if name in body]
    if len(given) > 1:
        raise InvalidRequest("Give either password or oauth2, not both", code="AUTH_TYPE_MISMATCH")
    credential = given[0] if given else None
    # Without authType the credential says which (a new account without one: password).
    wanted = body.get("authType", credential or ("password" if creating else None))
    if wanted != credential:
        needed = "oauth2" if wanted == "oauth2" else "password"
        raise InvalidRequest(
            f"authType '{wanted}' needs {needed}" if wanted else "authType needs a credential",
            code="AUTH_TYPE_MISMATCH",
        )
    return credential


def create_account(scope: Scope, body: dict[str, Any]) -> dict[str, Any]:
    _credential(body, creating=True)
    address = body["emailAddress"].strip()
    normalized = address.lower()
    _ensure_address_free(scope, normalized, address)
    encryption = body.get("encryption", "tls")
    smtp_encryption = body.get("smtpEncryption", encryption)
    smtp_hostname = body.get("smtpHostname") or default_smtp_host(body["hostname"])
    smtp_port = body.get("smtpPort") or DEFAULT_SMTP_PORTS[smtp_encryption]
    # Where the service will connect on this caller's behalf (netguard: no internal hosts).
    scope.runtime.host_policy.check_account(
        hosts=[(body["hostname"], body["port"]), (smtp_hostname, smtp_port)],
        encryptions=[("encryption", encryption), ("smtpEncryption", smtp_encryption)],
    )
    row = Account(
        id=new_id(),
        tenant_id=scope.caller.tenant_id,
        user_id=scope.caller.user_id,
        account_name=body["accountName"],
        email_address=address,
        email_normalized=normalized,
        protocol=body.get("protocol", "imap"),
        hostname=body["hostname"],
        port=body["port"],
        encryption=encryption,
        username=body["username"],
        smtp_hostname=smtp_hostname,
        smtp_port=smtp_port,
        smtp_encryption=smtp_encryption,
        is_sync_enabled=body.get("isSyncEnabled", True),
        sync_interval=body.get("syncInterval", 300),
        is_enabled=True,
        is_syncing=False,
    )
    if "oauth2" in body:
        oauth2.connect(scope.runtime, row, body["oauth2"])
    else:
        seal_password(scope.runtime, row, body["password"])
    scope.session.add(row)
    try:
        scope.session.flush()
    except IntegrityError as exc:
        # Two creates raced past the check above; the unique index decided.
        raise DuplicateEmail(address) from exc
    events.account_changed(scope.session, row, "account.created")
    log.info("account created", extra={"account_id": row.id})
    return present.account(row)


def _ensure_address_free(scope: Scope, normalized: str, address: str) -> None:
    taken = scope.session.scalar(
        select(Account.id).where(
            Account.tenant_id == scope.caller.tenant_id,
            Account.user_id == scope.caller.user_id,
            Account.email_normalized == normalized,
            Account.deleted_at.is_(None),
        )
    )
    if taken is not None:
        raise DuplicateEmail(address)


def get_account(scope: Scope, account_id: str) -> dict[str, Any]:
    return present.account(load_account(scope, account_id))


_UPDATABLE = {
    "accountName": "account_name",
    "hostname": "hostname",
    "port": "port",
    "encryption": "encryption",
    "username": "username",
    "smtpHostname": "smtp_hostname",
    "smtpPort": "smtp_port",
    "smtpEncryption": "smtp_encryption",
    "isSyncEnabled": "is_sync_enabled",
    "syncInterval": "sync_interval",
    "isEnabled": "is_enabled",
}


#: Where the stored credential is sent: changing any of these sends it somewhere new.
CONNECTION_TARGET_FIELDS = (
    "hostname",
    "port",
    "encryption",
    "username",
    "smtpHostname",
    "smtpPort",
    "smtpEncryption",
)
#: Fields that carry a credential. A request that retargets the account must hold one
#: of them, so a stolen API token alone cannot redirect the stored password.
# OAuth2 tokens are credentials as much as a password: a bearer token sent to a new host
# can be replayed by it, so retargeting an OAuth2 account takes new tokens (or a password).
CREDENTIAL_FIELDS = ("password", "oauth2")


class CredentialRequired(InvalidRequest):
    code = "CREDENTIAL_REQUIRED"


def retargeted_without_credential(row: Account, body: dict[str, Any]) -> list[str]:
    """The connection target fields ``body`` changes without giving a credential.

    A field counts as changed when its value differs from the stored one (sending the
    settings back unchanged is not a retarget). Empty when nothing is retargeted or a
    credential field is present.
    """
    if any(field in body for field in CREDENTIAL_FIELDS):
        return []
    return [
        field
        for field in CONNECTION_TARGET_FIELDS
        if field in body and body[field] != getattr(row, _UPDATABLE[field])
    ]


def update_account(scope: Scope, account_id: str, body: dict[str, Any]) -> dict[str, Any]:
    """Change the given settings of the caller's account.

    Raises ``AccountNotFound``, :class:`CredentialRequired` when a connection target
    field changes without a credential (``password`` or ``oauth2``) in the same request,
    ``InvalidRequest`` (``AUTH_TYPE_MISMATCH``, ``OAUTH2_PROVIDER_UNKNOWN``), and the host policy's
    refusals.
    """
    _credential(body, creating=False)
    row = load_account(scope, account_id, for_update=True)
    retargeted = retargeted_without_credential(row, body)
    if retargeted:
        raise CredentialRequired(
            f"Changing {', '.join(retargeted)} sends the account's credentials to a new "
            "place: give the password (or new oauth2 tokens) in the same request"
        )
    # Only what changes is checked: a stored host is checked again at connect time.
    hosts = []
    if "hostname" in body:
        hosts.append((body["hostname"], body.get("port", row.port)))
    if "smtpHostname" in body:
        hosts.append((body["smtpHostname"], body.get("smtpPort", row.smtp_port)))
    scope.runtime.host_policy.check_account(
        hosts=hosts,
        encryptions=[(f, body[f]) for f in ("encryption", "smtpEncryption") if f in body],
    )
    for field, attribute in _UPDATABLE.items():
        if field in body:
            setattr(row, attribute, body[field])
    # At most one credential, matching ``authType`` when that is given (``_credential``).
    if "oauth2" in body:
        oauth2.connect(scope.runtime, row, body["oauth2"])
    elif "password" in body:
        oauth2.disconnect(row)
        seal_password(scope.runtime, row, body["password"])
    row.updated_at = now_ms()
    scope.session.flush()
    events.account_changed(scope.session, row, "account.updated")
    return present.account(row)


def delete_account(scope: Scope, account_id: str) -> None:
    """Soft-delete the caller's account: its password is wiped in this transaction and
    its attachments' blobs are removed by a job (``services.purge``). Raises
    ``AccountNotFound``."""
    from email_service.services.purge import queue_purge

    row = load_account(scope, account_id, for_update=True)
    row.deleted_at = now_ms()
    row.is_enabled = False
    row.is_sync_enabled = False
    # Not kept "just in case": a deleted account's password or tokens have no use left.
    wipe_credentials(row)
    scope.session.flush()
    events.account_changed(scope.session, row, "account.deleted")
    queue_purge(scope, row.id)
