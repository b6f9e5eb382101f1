"""Changing a message's flags: at once in the service, then on the mail server by a job.

``update_message`` (request) changes the stored row and, for IMAP accounts, bumps its
``pending_changes`` and queues a ``flags`` task; while that is above zero the sync leaves
the row's flags (and the row itself) alone. ``run_flags`` (worker) holds the account's
sync lock, so no sync runs while it changes or moves the message. It writes the fields
the request changed, with the row's *current* values: jobs of several quick changes each
write the latest state, a job that runs twice writes the same thing twice, and a change
another client made meanwhile to a field nobody changed here is kept (the next sync
brings it in).

On the server: ``isRead`` is ``\\Seen``, ``isStarred`` ``\\Flagged``, ``labels`` the
message's keywords (other than ``$`` ones such as ``$Forwarded``, which are left alone),
and ``isSpam`` a move to the Junk folder (made if missing) with the ``$Junk`` keyword,
or back to INBOX. A moved row takes its new folder and the UID from COPYUID. POP3
accounts have no flags on the server: their changes stay in the service.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from db.models import Account, Folder, Message, Task, now_ms
from email_service import locks
from email_service.crypto import DecryptionError
from email_service.errors import InvalidRequest, MessageNotFound, ServiceError
from email_service.jobs import Attempt, RetryLater
from email_service.mail.errors import MailError
from email_service.mail.imap import ImapSession, RemoteFolder, is_valid_keyword
from email_service.mailstore.edits import edit_message, move_message, settle_pending
from email_service.mailstore.messages import delete_blobs
from email_service.runtime import Runtime
from email_service.scope import JobUnit, Scope
from email_service.services import tasks
from email_service.services.accounts import account_endpoint, load_account
from email_service.services.delivery import describe
from email_service.services.mailbox import message_detail
from email_service.services.mailjobs import special_folder

log = logging.getLogger(__name__)

FLAGS_ACTOR = "write_flags"
_SEEN, _FLAGGED, _JUNK = "\\Seen", "\\Flagged", "$Junk"


def _is_label(flag: str) -> bool:
    # What FlagState reads as a label: no system flag, no "$" keyword.
    return not flag.startswith(("\\", "$"))


def check_labels(labels: list[str]) -> list[str]:
    """The labels, each once (IMAP keywords ignore case). Raises ``InvalidRequest``.

    The spec's pattern already admits IMAP atoms only; the check is repeated because the
    job would fail on anything else, whoever called the service.
    """
    for label in labels:
        if not is_valid_keyword(label) or not _is_label(label):
            raise InvalidRequest(
                "Labels are stored as IMAP keywords: ASCII letters, digits and "
                "!#&'+,-./:;<=>?@[^_`|}~ only, no spaces, and not starting with '$' or '\\'",
                code="INVALID_LABEL",
            )
    unique: dict[str, str] = {}
    for label in labels:
        unique.setdefault(label.lower(), label)
    return list(unique.values())


def update_message(
    scope: Scope, account_id: str, message_id: str, body: dict[str, Any]
) -> dict[str, Any]:
    """Apply ``body`` (isRead, isStarred, isSpam, labels) to the caller's message now.

    Returns the message detail. For an IMAP account a ``flags`` task then writes the
    change to the server. Raises ``AccountNotFound``, ``MessageNotFound``,
    ``InvalidRequest`` (``INVALID_LABEL``).
    """
    labels = check_labels(body["labels"]) if "labels" in body else None
    account = load_account(scope, account_id)
    row = scope.session.scalars(
        select(Message)
        .where(
            Message.id == message_id,
            Message.account_id == account.id,
            Message.tenant_id == scope.caller.tenant_id,
        )
        .with_for_update()
    ).one_or_none()
    if row is None:
        raise MessageNotFound(message_id)
    flags = {flag.lower(): flag for flag in row.flags}
    before = _fields(row)
    after = dict(before)
    if "isRead" in body:
        after["isRead"] = bool(body["isRead"])
        _set_flag(flags, _SEEN, after["isRead"])
    if "isStarred" in body:
        after["isStarred"] = bool(body["isStarred"])
        _set_flag(flags, _FLAGGED, after["isStarred"])
    if "isSpam" in body:
        after["isSpam"] = bool(body["isSpam"])
    if labels is not None:
        after["labels"] = labels
        flags = {k: v for k, v in flags.items() if not _is_label(v)}
        flags.update({label.lower(): label for label in labels})
    changed = [name for name, value in after.items() if before[name] != value]
    if not changed:
        return message_detail(scope, row)
    pending = account.protocol == "imap" and row.uid is not None
    if pending:
        tasks.queue_task(
            scope,
            "flags",
            FLAGS_ACTOR,
            account_id=account.id,
            payload={"messageId": row.id, "fields": changed},
        )
    edit_message(
        scope.session,
        row,
        is_read=after["isRead"],
        is_starred=after["isStarred"],
        is_spam=after["isSpam"],
        labels=after["labels"],
        # What the server will show once written; a sync compares it with the server's.
        flags=sorted(flags.values()),
        pending=pending,
    )
    return message_detail(scope, row)


def _fields(row: Message) -> dict[str, Any]:
    return {
        "isRead": row.is_read,
        "isStarred": row.is_starred,
        "isSpam": row.is_spam,
        "labels": list(row.labels),
    }


def _set_flag(flags: dict[str, str], flag: str, on: bool) -> None:
    if on:
        flags[flag.lower()] = flag
    else:
        flags.pop(flag.lower(), None)


# ----------------------------------------------------------------------------- job


@dataclass(frozen=True)
class _Wanted:
    """The row's state when the job read it, and which of its fields to write."""

    fields: frozenset[str]
    folder_name: str
    folder_type: str
    uid: int
    is_read: bool
    is_starred: bool
    is_spam: bool
    labels: tuple[str, ...]


@dataclass(frozen=True)
class _Written:
    moved_to: RemoteFolder | None = None
    new_uid: int | None = None
    missing: bool = False


def run_flags(runtime: Runtime, tenant_id: uuid.UUID, task_id: str, attempt: Attempt) -> None:
    """Write the message of task ``task_id`` to the server. Safe to run twice.

    Raises ``RetryLater`` (after recording ``retry``) while the account is busy or the
    server cannot be reached and retries remain.
    """
    unit = JobUnit(runtime, tenant_id)
    report = tasks.TaskReport(unit, task_id)
    with unit.step():
        task = report.load()
        if task is None or task.status in tasks.FINISHED:
            return
        if "writtenAt" in task.payload:  # done; only the report was lost
            report.succeeded({"messageId": task.payload["messageId"]})
            return
    with locks.try_lock(runtime.db, f"sync:{task.account_id}") as locked:
        if not locked:
            reason = "The account is being synchronised; the change is written after that"
            if attempt.last:
                with unit.step():
                    _finish(unit, task_id, task.payload["messageId"], None)
                    report.failed(reason)
                return
            report.retrying(reason)
            raise RetryLater(reason)
        _run_locked(unit, task_id, task.payload, report, attempt)


def _run_locked(
    unit: JobUnit,
    task_id: str,
    payload: dict[str, Any],
    report: tasks.TaskReport,
    attempt: Attempt,
) -> None:
    message_id = payload["messageId"]
    with unit.step() as session:
        report.started(attempt.number)
        row = session.get(Message, message_id)
        folder = session.get(Folder, row.folder_id) if row is not None else None
        account = session.get(Account, row.account_id) if row is not None else None
        if account is not None and account.deleted_at is not None:
            account = None
        if row is None or folder is None or account is None or row.uid is None:
            report.succeeded({"messageId": message_id, "missing": True})
            return
    wanted = _Wanted(
        frozenset(payload.get("fields", ("isRead", "isStarred", "isSpam", "labels"))),
        folder.name,
        folder.type,
        row.uid,
        row.is_read,
        row.is_starred,
        row.is_spam,
        tuple(row.labels),
    )
    try:
        with ImapSession(account_endpoint(unit.runtime, account)) as imap:
            written = _write(imap, wanted)
    except (MailError, ServiceError, DecryptionError) as exc:
        reason = describe(exc)
        if isinstance(exc, MailError) and exc.transient and not attempt.last:
            report.retrying(reason)
            raise RetryLater(reason) from exc
        # The change stays in the service; the next sync shows the server's state again.
        with unit.step():
            _finish(unit, task_id, message_id, None)
            report.failed(reason)
        return
    with unit.step():
        result = _finish(unit, task_id, message_id, written)
        report.succeeded(result)


def _write(imap: ImapSession, wanted: _Wanted) -> _Written:
    imap.select(wanted.folder_name, readonly=False)
    current = imap.flags([wanted.uid]).get(wanted.uid)
    if current is None:
        # Gone from the folder (moved or deleted by another client): the sync catches up.
        return _Written(missing=True)
    have = {flag.lower(): flag for flag in current}
    want = dict(have)
    if "isRead" in wanted.fields:
        _set_flag(want, _SEEN, wanted.is_read)
    if "isStarred" in wanted.fields:
        _set_flag(want, _FLAGGED, wanted.is_starred)
    if "isSpam" in wanted.fields:
        _set_flag(want, _JUNK, wanted.is_spam)
    if "labels" in wanted.fields:
        want = {k: v for k, v in want.items() if not _is_label(v)}
        want.update({label.lower(): label for label in wanted.labels})
    add = [flag for key, flag in want.items() if key not in have]
    remove = [flag for key, flag in have.items() if key not in want]
    if remove:
        imap.remove_flags([wanted.uid], remove)
    if add:
        imap.add_flags([wanted.uid], add)

    in_spam = wanted.folder_type == "spam"
    if "isSpam" not in wanted.fields or wanted.is_spam == in_spam:
        return _Written()
    if wanted.is_spam:
        target = special_folder(imap, "\\Junk", "Junk")
    else:
        target = next(
            (f for f in imap.list_folders() if f.name.upper() == "INBOX"),
            RemoteFolder("INBOX", None, (), None, True),
        )
    new_uid = imap.move(wanted.uid, target.name)
    return _Written(moved_to=target, new_uid=new_uid)


def _finish(
    unit: JobUnit,
    task_id: str,
    message_id: str,
    written: _Written | None,
) -> dict[str, Any]:
    """Record the outcome on the row and close its pending change, in one step.

    ``writtenAt`` in the task's payload, committed with the decrement, keeps a re-run from
    decrementing twice. ``written`` is None when nothing could be written. The blobs of
    a message the move replaced are removed after the step commits.
    """
    result: dict[str, Any] = {"messageId": message_id}
    with unit.step() as session:
        row = session.get(Message, message_id, with_for_update=True)
        if row is not None:
            settle_pending(row)
            blob_keys = _apply(session, unit.tenant_id, row, written, result)
            if blob_keys:
                unit.after_commit(lambda: delete_blobs(unit.runtime.blobs, blob_keys))
        task = session.get(Task, task_id, with_for_update=True)
        if task is not None:
            task.payload = {**task.payload, "writtenAt": now_ms()}
    return result


def _apply(
    session: Any,
    tenant_id: uuid.UUID,
    row: Message,
    written: _Written | None,
    result: dict[str, Any],
) -> list[str]:
    if written is None:
        return []
    if written.missing:
        result["missing"] = True
        return []
    if written.moved_to is None:
        return []
    return move_message(session, tenant_id, row, written.moved_to, written.new_uid, result)
