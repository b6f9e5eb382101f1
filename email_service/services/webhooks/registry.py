"""Webhooks a user registers: create, read, update, delete, rotate the secret.

A webhook belongs to one user of one tenant; another caller's webhook is "not found",
exactly like a missing one. Its secret is encrypted under the credential key ring
(bound to the row, as account passwords are) and shown only in the answers to
``createWebhook`` and ``rotateWebhookSecret``. After a rotation the previous secret
keeps signing beside the new one for :data:`ROTATION_OVERLAP_MS`, so receivers can
switch without dropping a delivery.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import delete, func, select, update

from db.models import Account, Webhook, WebhookDelivery, new_id, now_ms
from email_service.crypto import Sealed
from email_service.errors import AccountNotFound, Conflict, NotFound
from email_service.runtime import Runtime
from email_service.scope import Scope
from email_service.services.webhooks import fanout, signing
from email_service.services.webhooks.outbound import ReceiverPolicy

log = logging.getLogger(__name__)

ROTATION_OVERLAP_MS = 24 * 3600 * 1000


class WebhookNotFound(NotFound):
    code = "WEBHOOK_NOT_FOUND"

    def __init__(self, webhook_id: str) -> None:
        super().__init__(f"No webhook with id '{webhook_id}'")


class WebhookLimitReached(Conflict):
    code = "WEBHOOK_LIMIT_REACHED"


def secret_context(row: Webhook) -> str:
    # Binds the ciphertext to this webhook of this tenant (AES-GCM associated data).
    return f"webhook:{row.tenant_id}:{row.id}"


def _seal(runtime: Runtime, row: Webhook, secret: str) -> Sealed:
    return runtime.keyring.encrypt(secret, secret_context(row))


def signing_keys(runtime: Runtime, row: Webhook, now: int | None = None) -> list[bytes]:
    """The keys that sign this webhook's deliveries now: the current secret, and the
    previous one while its overlap lasts. Raises ``crypto.DecryptionError``."""
    moment = now_ms() if now is None else now
    current = Sealed(row.secret_key_id, row.secret_ciphertext)
    secrets = [runtime.keyring.decrypt(current, secret_context(row))]
    if (
        row.previous_secret_ciphertext is not None
        and row.previous_secret_key_id is not None
        and row.previous_secret_expires_at is not None
        and row.previous_secret_expires_at > moment
    ):
        previous = Sealed(row.previous_secret_key_id, row.previous_secret_ciphertext)
        secrets.append(runtime.keyring.decrypt(previous, secret_context(row)))
    return [signing.secret_key(secret) for secret in secrets]


def present(row: Webhook) -> dict[str, Any]:
    return {
        "id": row.id,
        "url": row.url,
        "events": list(row.events),
        "accountIds": list(row.account_ids) if row.account_ids is not None else None,
        "description": row.description,
        "isEnabled": row.is_enabled,
        "disabledReason": row.disabled_reason,
        "disabledAt": row.disabled_at,
        "failingSince": row.failing_since,
        "consecutiveFailures": row.consecutive_failures,
        "lastSuccessAt": row.last_success_at,
        "lastFailureAt": row.last_failure_at,
        "secretRotatedAt": row.secret_rotated_at,
        "previousSecretExpiresAt": row.previous_secret_expires_at,
        "createdAt": row.created_at,
        "updatedAt": row.updated_at,
    }


def load_webhook(scope: Scope, webhook_id: str, *, for_update: bool = False) -> Webhook:
    """The caller's webhook ``webhook_id``. Raises ``WebhookNotFound`` otherwise."""
    query = select(Webhook).where(
        Webhook.id == webhook_id,
        Webhook.tenant_id == scope.caller.tenant_id,
        Webhook.user_id == scope.caller.user_id,
    )
    if for_update:
        query = query.with_for_update()
    row = scope.session.scalars(query).one_or_none()
    if row is None:
        raise WebhookNotFound(webhook_id)
    return row


def _check_accounts(scope: Scope, account_ids: list[str] | None) -> list[str] | None:
    if account_ids is None:
        return None
    wanted = list(dict.fromkeys(account_ids))
    owned = set(
        scope.session.scalars(
            select(Account.id).where(
                Account.id.in_(wanted),
                Account.tenant_id == scope.caller.tenant_id,
                Account.user_id == scope.caller.user_id,
                Account.deleted_at.is_(None),
            )
        )
    )
    for account_id in wanted:
        if account_id not in owned:
            raise AccountNotFound(account_id)
    return wanted


def _events(events: list[str]) -> list[str]:
    # "*" subsumes the rest; keep the caller's order otherwise, without repeats.
    unique = list(dict.fromkeys(events))
    return ["*"] if "*" in unique else unique


def receiver_policy(runtime: Runtime) -> ReceiverPolicy:
    return ReceiverPolicy.for_runtime(runtime)


def list_webhooks(scope: Scope) -> dict[str, Any]:
    rows = scope.session.scalars(
        select(Webhook)
        .where(
            Webhook.tenant_id == scope.caller.tenant_id,
            Webhook.user_id == scope.caller.user_id,
        )
        .order_by(Webhook.created_at, Webhook.id)
    ).all()
    return {"webhooks": [present(row) for row in rows]}


def create_webhook(scope: Scope, body: dict[str, Any]) -> dict[str, Any]:
    """Register a receiver; the answer is the only one that shows its ``secret``.

    Raises ``InvalidRequest`` (bad or refused URL), ``AccountNotFound`` (an ``accountIds``
    entry that is not the caller's) and ``WebhookLimitReached``.
    """
    runtime = scope.runtime
    receiver_policy(runtime).check(body["url"])
    account_ids = _check_accounts(scope, body.get("accountIds"))
    count = scope.session.scalar(
        select(func.count())
        .select_from(Webhook)
        .where(
            Webhook.tenant_id == scope.caller.tenant_id,
            Webhook.user_id == scope.caller.user_id,
        )
    )
    limit = runtime.settings.webhook_max_per_user
    if (count or 0) >= limit:
        raise WebhookLimitReached(f"A user can register at most {limit} webhooks")
    # The fan-out cursor first: it takes the feed's head, which a new webhook starts after.
    fanout.start_cursor(scope, first_webhook=not count)
    row = Webhook(
        id=new_id(),
        tenant_id=scope.caller.tenant_id,
        user_id=scope.caller.user_id,
        url=body["url"],
        events=_events(body["events"]),
        account_ids=account_ids,
        description=body.get("description"),
        is_enabled=True,
        consecutive_failures=0,
    )
    secret = signing.new_secret()
    sealed = _seal(runtime, row, secret)
    row.secret_key_id, row.secret_ciphertext = sealed.key_id, sealed.ciphertext
    scope.session.add(row)
    scope.session.flush()
    log.info("webhook created", extra={"webhook_id": row.id})
    return {**present(row), "secret": secret}


def get_webhook(scope: Scope, webhook_id: str) -> dict[str, Any]:
    return present(load_webhook(scope, webhook_id))


def update_webhook(scope: Scope, webhook_id: str, body: dict[str, Any]) -> dict[str, Any]:
    """Change ``url``, ``events``, ``accountIds``, ``description`` or ``isEnabled``.

    Enabling a disabled webhook clears its failure streak; deliveries resume with the
    changes that happen from then on.
    """
    row = load_webhook(scope, webhook_id, for_update=True)
    if "url" in body:
        receiver_policy(scope.runtime).check(body["url"])
        row.url = body["url"]
    if "events" in body:
        row.events = _events(body["events"])
    if "accountIds" in body:
        row.account_ids = _check_accounts(scope, body["accountIds"])
    if "description" in body:
        row.description = body["description"]
    if "isEnabled" in body:
        if body["isEnabled"] and not row.is_enabled:
            row.disabled_reason = None
            row.disabled_at = None
            row.failing_since = None
            row.consecutive_failures = 0
        elif not body["isEnabled"] and row.is_enabled:
            row.disabled_at = now_ms()
            row.disabled_reason = "disabled by its owner"
            abandon_pending(scope, row, "the webhook was disabled")
        row.is_enabled = body["isEnabled"]
    row.updated_at = now_ms()
    scope.session.flush()
    return present(row)


def abandon_pending(scope: Scope, row: Webhook, reason: str) -> None:
    """Mark the webhook's undelivered deliveries failed (it no longer takes any)."""
    moment = now_ms()
    scope.session.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.tenant_id == row.tenant_id,
            WebhookDelivery.webhook_id == row.id,
            WebhookDelivery.status == "pending",
        )
        .values(status="failed", last_error=reason, finished_at=moment, updated_at=moment)
    )


def delete_webhook(scope: Scope, webhook_id: str) -> None:
    row = load_webhook(scope, webhook_id, for_update=True)
    scope.session.execute(
        delete(WebhookDelivery).where(
            WebhookDelivery.tenant_id == row.tenant_id, WebhookDelivery.webhook_id == row.id
        )
    )
    scope.session.delete(row)
    scope.session.flush()
    log.info("webhook deleted", extra={"webhook_id": webhook_id})


def rotate_secret(scope: Scope, webhook_id: str) -> dict[str, Any]:
    """A new secret (shown in this answer only); the current one signs beside it for 24 h.

    Rotating again within those hours ends the oldest secret's overlap at once: at most
    two secrets sign a delivery.
    """
    runtime = scope.runtime
    row = load_webhook(scope, webhook_id, for_update=True)
    moment = now_ms()
    secret = signing.new_secret()
    sealed = _seal(runtime, row, secret)
    row.previous_secret_key_id = row.secret_key_id
    row.previous_secret_ciphertext = row.secret_ciphertext
    row.previous_secret_expires_at = moment + ROTATION_OVERLAP_MS
    row.secret_key_id, row.secret_ciphertext = sealed.key_id, sealed.ciphertext
    row.secret_rotated_at = moment
    row.updated_at = moment
    scope.session.flush()
    log.info("webhook secret rotated", extra={"webhook_id": row.id})
    return {**present(row), "secret": secret}
