"""What the watcher (push sync) needs from the database: accounts, endpoints, syncs.

The watcher itself (``email_service.watcher``) only speaks IMAP and holds leases; every
read or write of the service's state goes through these functions, which are blocking
(the watcher calls them on threads).

Deduplication of the syncs it asks for (``queue_folder_sync``). A notice at time T is
*covered* by a sync task of the account that will open its IMAP connection after T:
- a task still ``pending`` (or ``retry``, which runs again from scratch) covers it if it
  syncs every folder, or at least the folders noticed;
- a ``started`` task covers it only if it started at T or later (it connects right after
  recording that it started); one that started earlier may have read the folder already.
Otherwise the account is *busy*: the watcher keeps the notice and asks again shortly,
which turns into a new task once the running one is done. Any notice therefore ends in a
sync that read the folder after the notice, and a burst of notices in one sync.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import select

from db.models import Account, Folder, Task
from email_service.errors import AccountNotFound
from email_service.identity import Caller
from email_service.mail.endpoint import MailEndpoint
from email_service.runtime import Runtime
from email_service.scope import open_scope
from email_service.services import events, tasks
from email_service.services.accounts import endpoint_later, load_account
from email_service.services.syncing import request_sync

log = logging.getLogger(__name__)

#: Clock difference between watcher and worker hosts tolerated (ms); see queue_folder_sync.
CLOCK_SKEW_MS = 1000

#: How a request for a sync ended: a new task, an existing task that will see the
#: change, or a running task that may not (ask again later), or no such account.
SyncOutcome = Literal["queued", "covered", "busy", "gone"]


@dataclass(frozen=True)
class WatchedAccount:
    """An account the watcher should watch; ``fingerprint`` changes with its credentials
    or server settings (a refused login waits for it to change)."""

    id: str
    tenant_id: uuid.UUID
    user_id: uuid.UUID
    host: str
    fingerprint: str


def watchable_accounts(runtime: Runtime) -> list[WatchedAccount]:
    """Every live, enabled IMAP account with sync on (all tenants: the watcher's job)."""
    with runtime.db.transaction(system=True) as session:
        rows = session.execute(
            select(
                Account.id,
                Account.tenant_id,
                Account.user_id,
                Account.hostname,
                Account.port,
                Account.encryption,
                Account.username,
                Account.password_key_id,
                Account.password_ciphertext,
                Account.oauth2_provider,
            ).where(
                Account.deleted_at.is_(None),
                Account.is_enabled.is_(True),
                Account.is_sync_enabled.is_(True),
                Account.protocol == "imap",
                # A revoked OAuth2 authorization: nothing to watch until it is reconnected
                # (which clears the mark, so the account comes back with a new watch).
                Account.auth_error.is_(None),
            )
        ).all()
    accounts = []
    for row in rows:
        digest = hashlib.sha256()
        for part in (row.hostname, str(row.port), row.encryption, row.username):
            digest.update(part.encode() + b"\0")
        if row.password_ciphertext is not None:
            digest.update(row.password_key_id.encode() + b"\0" + bytes(row.password_ciphertext))
        else:
            # OAuth2: the sealed tokens change with every refresh, which must not restart
            # the watch; the provider stands for them (a reconnection after a revocation
            # brings the account back through the filter above).
            digest.update(b"oauth2\0" + (row.oauth2_provider or "").encode())
        accounts.append(
            WatchedAccount(row.id, row.tenant_id, row.user_id, row.hostname, digest.hexdigest())
        )
    return accounts


def watch_endpoint(runtime: Runtime, account: WatchedAccount) -> MailEndpoint | None:
    """How to reach the account's IMAP server (password decrypted); None if it is gone.

    An OAuth2 access token that needs refreshing (an HTTP call to the provider) is got
    after the read transaction has ended (``accounts.endpoint_later``).
    """
    with runtime.db.transaction(account.tenant_id) as session:
        row = session.get(Account, account.id)
        if row is None or row.deleted_at is not None or row.protocol != "imap":
            return None
        endpoint = endpoint_later(runtime, row)
    return endpoint()


def stored_folders(
    runtime: Runtime, account: WatchedAccount
) -> dict[str, tuple[int | None, int | None, int | None, int]] | None:
    """Each stored folder's (uidvalidity, uidnext, highest_modseq, message_count), or
    None when the account has never been synced."""
    with runtime.db.transaction(account.tenant_id) as session:
        synced = session.scalar(select(Account.last_sync_at).where(Account.id == account.id))
        rows = session.execute(
            select(
                Folder.name,
                Folder.uidvalidity,
                Folder.uidnext,
                Folder.highest_modseq,
                Folder.message_count,
            ).where(Folder.account_id == account.id, Folder.tenant_id == account.tenant_id)
        ).all()
    if synced is None and not rows:
        return None
    return {
        row.name: (row.uidvalidity, row.uidnext, row.highest_modseq, row.message_count)
        for row in rows
    }


def queue_folder_sync(
    runtime: Runtime, account: WatchedAccount, folders: list[str] | None, noticed_ms: int
) -> tuple[SyncOutcome, str | None]:
    """Ask for an incremental sync of ``folders`` (None: all) after a notice at
    ``noticed_ms``; deduplicated as the module docstring says. Returns the outcome and
    the task id concerned."""
    caller = Caller(account.tenant_id, account.user_id)
    with open_scope(runtime, caller) as scope:
        try:
            row = load_account(scope, account.id, for_update=True)
        except AccountNotFound:
            return "gone", None
        if not (row.is_enabled and row.is_sync_enabled):
            return "gone", None
        current = scope.session.get(Task, row.sync_task_id) if row.sync_task_id else None
        if current is not None and tasks.is_active(current):
            wanted = current.payload.get("folders")
            all_folders = not wanted or (folders is not None and set(folders) <= set(wanted))
            if current.status in ("pending", "retry") and all_folders:
                return "covered", current.id
            # The notice's time is the watcher's clock, started_at the worker's: a
            # sync counts as started after the notice only with a margin for skew.
            started_after = (current.started_at or 0) >= noticed_ms + CLOCK_SKEW_MS
            if current.status == "started" and started_after and all_folders:
                return "covered", current.id
            return "busy", current.id
        started = request_sync(scope, row, folders=folders)
        task = scope.session.get(Task, started["taskId"])
        if task is not None:
            # The worker measures notice -> stored from this (push latency metric).
            task.payload = {**task.payload, "noticedAt": noticed_ms}
        return "queued", started["taskId"]


def login_refused(runtime: Runtime, account: WatchedAccount, reason: str) -> None:
    """The watcher's login to ``account`` was refused (reported once per refusal).

    Recorded as ``account.error`` through the change feed's one helper, which tells it
    only if the account was not failing already (a sync may have said so first).
    """
    log.warning("watcher: the mail server refused the login of account %s: %s", account.id, reason)
    with runtime.db.transaction(account.tenant_id) as session:
        events.account_failing(session, account.id, f"The mail server refused the login: {reason}")


def login_recovered(runtime: Runtime, account: WatchedAccount) -> None:
    """The watcher logged in to ``account`` again after a refusal (reported once)."""
    log.info("watcher: account %s logs in again", account.id)
    with runtime.db.transaction(account.tenant_id) as session:
        events.account_recovered(session, account.id)
