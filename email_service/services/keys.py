"""Credential key rotation across all tenants (a maintenance command)."""

from __future__ import annotations

from sqlalchemy import or_, select

from db.models import Account, Webhook
from email_service.crypto import Sealed
from email_service.runtime import Runtime
from email_service.services import oauth2
from email_service.services.accounts import credential_context
from email_service.services.webhooks.registry import secret_context

BATCH = 200


def rotate_credentials(runtime: Runtime) -> int:
    """Re-encrypt every password, OAuth2 token set and webhook secret not under the primary
    key; returns how many rows changed.

    Runs in batches, each in its own transaction, so a large table is not locked for
    long and an interrupted run can simply be started again.
    """
    changed = 0
    while True:
        with runtime.db.transaction(system=True) as session:
            rows = session.scalars(
                select(Account)
                .where(
                    or_(
                        Account.password_key_id != runtime.keyring.primary_id,
                        Account.oauth2_key_id != runtime.keyring.primary_id,
                    )
                )
                .limit(BATCH)
                .with_for_update(skip_locked=True)
            ).all()
            for row in rows:
                if row.oauth2_key_id is not None:
                    oauth2.reseal(runtime, row)
                if row.password_key_id is None or row.password_ciphertext is None:
                    continue
                context = credential_context(row)
                password = runtime.keyring.decrypt(
                    Sealed(row.password_key_id, row.password_ciphertext), context
                )
                sealed = runtime.keyring.encrypt(password, context)
                row.password_key_id = sealed.key_id
                row.password_ciphertext = sealed.ciphertext
            changed += len(rows)
        if len(rows) < BATCH:
            return changed + _rotate_webhook_secrets(runtime)


def _rotate_webhook_secrets(runtime: Runtime) -> int:
    primary = runtime.keyring.primary_id
    changed = 0
    while True:
        with runtime.db.transaction(system=True) as session:
            rows = session.scalars(
                select(Webhook)
                .where(
                    or_(
                        Webhook.secret_key_id != primary,
                        Webhook.previous_secret_key_id != primary,
                    )
                )
                .limit(BATCH)
                .with_for_update(skip_locked=True)
            ).all()
            for row in rows:
                context = secret_context(row)
                current = runtime.keyring.decrypt(
                    Sealed(row.secret_key_id, row.secret_ciphertext), context
                )
                sealed = runtime.keyring.encrypt(current, context)
                row.secret_key_id, row.secret_ciphertext = sealed.key_id, sealed.ciphertext
                if row.previous_secret_key_id is not None and row.previous_secret_ciphertext:
                    previous = runtime.keyring.decrypt(
                        Sealed(row.previous_secret_key_id, row.previous_secret_ciphertext),
                        context,
                    )
                    sealed = runtime.keyring.encrypt(previous, context)
                    row.previous_secret_key_id = sealed.key_id
                    row.previous_secret_ciphertext = sealed.ciphertext
            changed += len(rows)
        if len(rows) < BATCH:
            return changed
