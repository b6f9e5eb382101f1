"""Credential key rotation across all tenants (a maintenance command).

What ``email-service rotate-keys`` promises: when it reports success, no stored secret
(mail password, OAuth2 tokens, webhook signing secret) is encrypted under any key but the
primary one, so the old keys can be removed from ``CREDENTIAL_KEYS``. To keep that promise:

- a row another transaction holds locked is *waited for*, not skipped (an account
  update finishes within milliseconds); a lock held for longer than ``lock_wait`` seconds
  (two minutes) is reported as such and the run ends unfinished instead of hanging;
- it runs in passes over the whole table, batch by batch in id order (each batch its own
  transaction, so an interrupted run can be started again), and starts another pass as
  long as the last one found something to do: a server process still running with the
  old ``CREDENTIAL_KEYS`` may write a secret under the old primary meanwhile;
- a row that cannot be decrypted (a key missing from the ring, a damaged ciphertext) is
  reported with its id and left alone, and the run goes on;
- at the end it counts what is still on old keys; the command prints it and exits
  non-zero if anything is.

A deleted account's password (or OAuth2 tokens) is wiped rather than re-encrypted
(deleting an account deletes its secrets; ``services.accounts.delete_account`` does it
at once, this catches accounts deleted before it did).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from sqlalchemy import and_, func, or_, select, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from db.models import Account, Webhook
from email_service.crypto import DecryptionError, Sealed
from email_service.runtime import Runtime
from email_service.services import oauth2
from email_service.services.accounts import WIPED_KEY_ID, credential_context, wipe_credentials
from email_service.services.webhooks.registry import secret_context

BATCH = 200
#: Passes over the tables before giving up on rows that keep appearing on old keys.
MAX_PASSES = 5
#: How long a batch waits for a row another transaction holds locked.
LOCK_WAIT_SECONDS = 120.0

#: ``progress(kind, done)``: called after every batch (``kind`` is "account" or "webhook").
Progress = Callable[[str, int], None]


@dataclass
class RotationReport:
    """What a rotation did and what it left on old keys."""

    primary_id: str
    changed: int = 0
    # "account <id>" / "webhook <id>" -> why it could not be re-encrypted
    failures: dict[str, str] = field(default_factory=dict)
    # rows still under a key other than the primary, per kind
    remaining: dict[str, int] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return not self.failures and not any(self.remaining.values())


class _StillLocked(Exception):
    pass


def rotate_credentials(
    runtime: Runtime,
    *,
    batch: int = BATCH,
    progress: Progress | None = None,
    lock_wait: float = LOCK_WAIT_SECONDS,
) -> RotationReport:
    """Re-encrypt every secret not under the primary key; see the module docstring."""
    report = RotationReport(runtime.keyring.primary_id)
    for kind, rotate_batch in (("account", _account_batch), ("webhook", _webhook_batch)):
        try:
            for _ in range(MAX_PASSES):
                changed_in_pass = 0
                after = ""
                while True:
                    with _lock_wait():
                        changed, next_after = rotate_batch(runtime, report, after, batch, lock_wait)
                    after = next_after
                    changed_in_pass += changed
                    if progress is not None:
                        progress(kind, report.changed)
                    if after == "":
                        break
                if changed_in_pass == 0:
                    break
        except _StillLocked:
            report.failures[f"{kind} rows after id '{after}'"] = (
                f"locked by another transaction for more than {lock_wait:g} s"
            )
    report.remaining = _remaining(runtime)
    return report


@contextmanager
def _lock_wait() -> Iterator[None]:
    """Turn PostgreSQL's lock timeout (set by ``_bound_wait``) into ``_StillLocked``."""
    try:
        yield
    except OperationalError as exc:
        if getattr(exc.orig, "sqlstate", None) == "55P03":  # lock_not_available
            raise _StillLocked from exc
        raise


def _bound_wait(runtime: Runtime, session: Session, seconds: float) -> None:
    # SQLite has a single writer and no row locks to wait for.
    if runtime.db.is_postgres:
        session.execute(text(f"SET LOCAL lock_timeout = '{int(seconds * 1000)}ms'"))


def _account_batch(
    runtime: Runtime, report: RotationReport, after: str, batch: int, lock_wait: float
) -> tuple[int, str]:
    """Rotate up to ``batch`` accounts with an id above ``after``; returns (changed, last
    id seen or "" when there are no more)."""
    primary = runtime.keyring.primary_id
    with runtime.db.transaction(system=True) as session:
        _bound_wait(runtime, session, lock_wait)
        rows = session.scalars(
            select(Account)
            .where(Account.id > after, _on_old_key(primary))
            .order_by(Account.id)
            .limit(batch)
            # Waits for rows another transaction holds: skipping them would leave them
            # on the old key while reporting success.
            .with_for_update()
        ).all()
        changed = 0
        for row in rows:
            name = f"account {row.id}"
            if name in report.failures:
                continue
            if row.deleted_at is not None:
                wipe_credentials(row)
                changed += 1
                continue
            try:
                if row.oauth2_key_id not in (None, primary, WIPED_KEY_ID):
                    oauth2.reseal(runtime, row)
                if row.password_key_id not in (None, primary, WIPED_KEY_ID):
                    context = credential_context(row)
                    password = runtime.keyring.decrypt(
                        Sealed(row.password_key_id or "", row.password_ciphertext or b""),
                        context,
                    )
                    sealed = runtime.keyring.encrypt(password, context)
                    row.password_key_id = sealed.key_id
                    row.password_ciphertext = sealed.ciphertext
            except DecryptionError as exc:
                report.failures[name] = str(exc)
                continue
            changed += 1
    report.changed += changed
    return changed, (rows[-1].id if len(rows) == batch else "")


def _webhook_batch(
    runtime: Runtime, report: RotationReport, after: str, batch: int, lock_wait: float
) -> tuple[int, str]:
    primary = runtime.keyring.primary_id
    with runtime.db.transaction(system=True) as session:
        _bound_wait(runtime, session, lock_wait)
        rows = session.scalars(
            select(Webhook)
            .where(
                Webhook.id > after,
                or_(Webhook.secret_key_id != primary, Webhook.previous_secret_key_id != primary),
            )
            .order_by(Webhook.id)
            .limit(batch)
            .with_for_update()
        ).all()
        changed = 0
        for row in rows:
            name = f"webhook {row.id}"
            if name in report.failures:
                continue
            context = secret_context(row)
            try:
                current = runtime.keyring.encrypt(
                    runtime.keyring.decrypt(
                        Sealed(row.secret_key_id, row.secret_ciphertext), context
                    ),
                    context,
                )
                previous = None
                if row.previous_secret_key_id is not None and row.previous_secret_ciphertext:
                    previous = runtime.keyring.encrypt(
                        runtime.keyring.decrypt(
                            Sealed(row.previous_secret_key_id, row.previous_secret_ciphertext),
                            context,
                        ),
                        context,
                    )
            except DecryptionError as exc:
                report.failures[name] = str(exc)
                continue
            row.secret_key_id, row.secret_ciphertext = current.key_id, current.ciphertext
            if previous is not None:
                row.previous_secret_key_id = previous.key_id
                row.previous_secret_ciphertext = previous.ciphertext
            changed += 1
    report.changed += changed
    return changed, (rows[-1].id if len(rows) == batch else "")


def _remaining(runtime: Runtime) -> dict[str, int]:
    primary = runtime.keyring.primary_id
    with runtime.db.transaction(system=True) as session:
        accounts = session.scalar(
            select(func.count()).select_from(Account).where(_on_old_key(primary))
        )
        webhooks = session.scalar(
            select(func.count())
            .select_from(Webhook)
            .where(or_(Webhook.secret_key_id != primary, Webhook.previous_secret_key_id != primary))
        )
    return {"account": accounts or 0, "webhook": webhooks or 0}


def _on_old_key(primary: str) -> ColumnElement[bool]:
    """An account with a password or OAuth2 tokens under a key other than ``primary``."""
    return or_(
        and_(Account.password_key_id != primary, Account.password_key_id != WIPED_KEY_ID),
        and_(Account.oauth2_key_id != primary, Account.oauth2_key_id != WIPED_KEY_ID),
    )
