"""The send and draft jobs: deliver over SMTP, then file the copy on the IMAP server.

A send runs in steps, each recorded in the task's payload as soon as it is done:

1. SMTP delivery of the bytes built by the request (kept in the task row, or in the
   blob store when large; dropped from the row once the task is done), in
   transactions of up to 100 recipients. Right after the server's 250 the job commits
   it, before anything else can fail; a run that finds a batch recorded never sends it
   again, and one that finds ``acceptedAt`` never talks to SMTP again. So a worker that
   dies after the server took the message, or a later step that fails and retries,
   cannot deliver the message twice. (The one window left is the server's 250 being
   lost on the wire: the client then sees a timeout, retries, and the server may hold
   two copies. No SMTP client can close that window.)
2. The copy in the Sent folder (IMAP accounts): APPEND with ``\\Seen`` unless a message
   with the same Message-ID is already there, then ``sentUid`` is recorded.
3. The stored message row for that UID, so the message is listed at once.

4xx replies and network trouble are retried with backoff (task status ``retry``, with
the reason); 5xx replies fail the task at once with the server's reply. Once delivered,
a task ends in ``success`` even if the Sent copy could not be made (the result's
``sentCopyError`` says why): the mail has gone out, and a failure would invite the
caller to send it again.
"""

from __future__ import annotations

import base64
import json
import logging
import time
import uuid
from typing import Any

from sqlalchemy import update

from db.models import Account, Draft, now_ms
from email_service import locks, metrics
from email_service.blobstore import BlobNotFound
from email_service.crypto import DecryptionError
from email_service.errors import ServiceError
from email_service.jobs import Attempt, RetryLater, infrastructure_trouble
from email_service.mail import smtp
from email_service.mail.endpoint import MailEndpoint
from email_service.mail.errors import (
    MailAuthError,
    MailError,
    MailProtocolError,
    SmtpPermanentError,
    SmtpTransientError,
)
from email_service.mail.imap import FolderState, ImapSession, RemoteFolder, pooled_session
from email_service.mail.pool import pool_key
from email_service.mailstore import changes
from email_service.mailstore.copies import store_own_copy
from email_service.mailstore.messages import delete_blobs
from email_service.runtime import Runtime
from email_service.scope import JobUnit
from email_service.services import tasks
from email_service.services.accounts import account_endpoint
from email_service.services.mailjobs import append_once, mark, mark_alone, special_folder

log = logging.getLogger(__name__)

SENT_FLAGS = ("\\Seen",)
# How long a send keeps trying to record that the SMTP server took the message.
_RECORD_PATIENCE_S = 60.0
# Recipients per SMTP transaction: RFC 5321 (4.5.3.1.8) has servers take at least 100.
SMTP_BATCH = 100
DRAFT_FLAGS = ("\\Draft", "\\Seen")
# How many of the Sent folder's newest messages a first run searches for a copy the
# server filed on its own (a re-run searches the whole folder for its own earlier copy).
SERVER_COPY_WINDOW = 100


class _Failed(Exception):
    """A step failed for good; ``reason`` is for the task's ``error``."""

    def __init__(self, reason: str, result: dict[str, Any] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.result = result


def describe(exc: BaseException) -> str:
    """A failure in words for the task's ``error``; never a password or a stack trace."""
    if isinstance(exc, MailError):
        return str(exc)
    if isinstance(exc, ServiceError):  # the outbound connection guard
        return f"The connection was not allowed: {exc.message}"
    if isinstance(exc, DecryptionError):
        return "The stored password cannot be decrypted (is its key still configured?)"
    if isinstance(exc, BlobNotFound):
        return "The stored message is gone from the blob store"
    return "The task failed because of an internal error"


def _live_account(unit: JobUnit, account_id: str | None) -> Account | None:
    if account_id is None:
        return None
    with unit.step() as session:
        account = session.get(Account, account_id)
    if account is None or account.deleted_at is not None:
        return None
    return account


def _blob(runtime: Runtime, key: str) -> bytes:
    return b"".join(runtime.blobs.stream(key))


# The payload's inline copies of the message (``compose.INLINE_MESSAGE_BYTES``): dropped
# from the task row in the write that finishes the task.
_INLINE = ("raw", "copy")


class _Stored:
    """The message a send task keeps: in its row (small ones) or in the blob store.

    Each is read once per run; the sender's copy is the delivered message itself unless
    it names Bcc recipients.
    """

    def __init__(self, runtime: Runtime, payload: dict[str, Any]) -> None:
        self.runtime = runtime
        self.payload = payload
        self._raw: bytes | None = None

    def raw(self) -> bytes:
        if self._raw is None:
            if "raw" in self.payload:
                self._raw = base64.b64decode(self.payload["raw"])
            else:
                self._raw = _blob(self.runtime, self.payload["rawKey"])
        return self._raw

    def copy(self) -> bytes:
        if "copy" in self.payload:
            return base64.b64decode(self.payload["copy"])
        if "raw" in self.payload or self.payload.get("copyKey") == self.payload.get("rawKey"):
            return self.raw()
        return _blob(self.runtime, self.payload["copyKey"])

    def blob_keys(self) -> list[str]:
        """What to delete once the task is done: the message's blobs and the note."""
        keys = [self.payload.get("rawKey"), self.payload.get("copyKey"), note_key(self.payload)]
        return [key for key in dict.fromkeys(keys) if key]


def note_key(payload: dict[str, Any]) -> str:
    """The blob key of the send task's note of what the SMTP server took."""
    # Tasks queued before messages could travel in the row name it after the message's blob.
    return str(payload.get("noteKey") or f"{payload['rawKey']}.accepted")


def _forget_message(unit: JobUnit, task_id: str) -> None:
    """Drop the inline message from the task row, in the step that finishes the task."""
    with unit.step() as session:
        row = tasks.locked_task(session, task_id)
        if row is not None and any(name in row.payload for name in _INLINE):
            row.payload = {k: v for k, v in row.payload.items() if k not in _INLINE}


# ----------------------------------------------------------------------------- send


def run_send(runtime: Runtime, tenant_id: uuid.UUID, task_id: str, attempt: Attempt) -> None:
    """Run the send task ``task_id``; safe to run again at any point (see the module doc).

    Raises ``RetryLater`` after recording ``retry`` when a transient failure may pass.
    """
    # A broker may hand a message to a second worker while the first still runs it (a
    # missed heartbeat); only one of them may talk to SMTP.
    with locks.try_lock(runtime.db, f"send:{task_id}") as locked:
        if locked:
            _run_send(JobUnit(runtime, tenant_id), task_id, attempt)
        else:
            log.info("send task %s is running elsewhere", task_id)


def _run_send(unit: JobUnit, task_id: str, attempt: Attempt) -> None:
    runtime = unit.runtime
    report = tasks.TaskReport(unit, task_id)
    # Reading the task and marking it started are one transaction.
    with unit.step() as session:
        task, account = tasks.locked_task_and_account(session, task_id)
        if task is None or task.status in tasks.FINISHED:
            return
        if account is not None and account.deleted_at is not None:
            account = None
        # A note in the blob store can exist only if a run started before this one.
        resumed = task.started_at is not None
        payload = dict(task.payload)
        report.started(attempt.number)
    # When this run's submission began: a first run's Sent copy looks only at what the
    # folder was given since (see ``_append_sent``).
    since = None if resumed else time.monotonic()
    stored = _Stored(runtime, payload)
    keys = stored.blob_keys()
    try:
        if "acceptedAt" not in payload:
            if account is None:
                raise _Failed("The account no longer exists")
            payload = _deliver(unit, task_id, account, payload, report, attempt, stored, resumed)
        result: dict[str, Any] = {
            "messageId": payload["messageId"],
            "accepted": payload["accepted"],
            "refused": payload["refused"],
            "sentFolder": None,
        }
        reported = False
        if account is not None and account.protocol == "imap":
            reported = _file_sent_copy(
                unit, task_id, account, payload, result, attempt, report, stored, since
            )
    except _Failed as failure:
        with unit.step():
            _forget_message(unit, task_id)
            report.failed(failure.reason, failure.result)
        delete_blobs(runtime.blobs, keys)
        return
    if not reported:
        with unit.step():
            _forget_message(unit, task_id)
            report.succeeded(result)
    delete_blobs(runtime.blobs, keys)
    log.info("sent message %s (task %s)", payload["messageId"], task_id)


def _deliver(
    unit: JobUnit,
    task_id: str,
    account: Account,
    payload: dict[str, Any],
    report: tasks.TaskReport,
    attempt: Attempt,
    stored: _Stored,
    resumed: bool = True,
) -> dict[str, Any]:
    """Hand the message to the account's SMTP server; returns the payload with the outcome.

    Recipients go in transactions of at most ``SMTP_BATCH``; each one taken is recorded
    at once (``batches``), and a re-run goes on with the next. A 5xx for a later batch,
    once an earlier one was taken, refuses that batch's recipients only.

    A recipient the server refuses with a 4xx while it takes others (partial
    acceptance) is *deferred*: once every batch has gone, the deferred recipients - and
    only they - are sent again in a later attempt (``retries``, recorded like the
    batches), so nobody already accepted gets the message twice. On the last attempt the
    ones still deferred count as refused. A failure after some recipients were accepted
    says who has the message (the result's ``accepted``).
    """
    runtime = unit.runtime
    recipients: list[str] = payload["recipients"]
    batches = _in_batches(recipients)
    done: list[dict[str, Any]] = list(payload.get("batches", []))
    retries: list[dict[str, Any]] = list(payload.get("retries", []))
    step = int(payload.get("noteStep", 0))
    # A first run has no note to read (one is written only after the task started).
    noted_at = note_key(payload)
    noted = _accepted_note(runtime, noted_at) if resumed else None
    if noted is not None and int(noted.get("step", 0)) > step:
        # An earlier run had the server accept more than it could record in the task.
        done, retries, step = list(noted["batches"]), list(noted["retries"]), int(noted["step"])
        mark(unit, task_id, batches=done, retries=retries, noteStep=step)

    def record(**outcome: Any) -> dict[str, Any]:
        nonlocal step
        step += 1
        return _record_progress(unit, task_id, noted_at, step, done, retries, **outcome)

    try:
        raw = stored.raw()
        endpoint = account_endpoint(runtime, account, smtp=True)
    except (DecryptionError, BlobNotFound) as exc:
        raise _Failed(describe(exc)) from exc
    except MailError as exc:  # an OAuth2 token that could not be refreshed
        if exc.transient and not attempt.last:
            report.retrying(str(exc))
            raise RetryLater(str(exc)) from exc
        raise _Failed(str(exc)) from exc

    def send_batch(batch: list[str], *, deferred_round: bool = False) -> dict[str, Any]:
        """One SMTP transaction; its outcome, or raises ``_Failed``/``RetryLater``.

        In a round for deferred recipients a temporary failure of the whole transaction
        just leaves them deferred (others already have the message)."""
        try:
            outcome = smtp.send(
                endpoint,
                payload["envelopeFrom"],
                batch,
                raw,
                pool=runtime.mail_pools.smtp,
                owner=account.id,
            )
        except SmtpPermanentError as exc:
            metrics.observe_smtp(metrics.smtp_outcome(exc))
            refused = {address: f"{exc.code} {exc.reply}" for address in batch}
            refused.update(
                {address: f"{code} {reply}" for address, (code, reply) in exc.recipients.items()}
            )
            if not _accepted(done, retries):
                result = {"messageId": payload["messageId"], "refused": refused}
                raise _Failed(str(exc), result) from exc
            return {"accepted": [], "refused": refused, "deferred": {}}
        except (SmtpTransientError, MailAuthError) as exc:
            metrics.observe_smtp(metrics.smtp_outcome(exc))
            if deferred_round and isinstance(exc, SmtpTransientError):
                reply = f"{exc.code} {exc.reply}" if exc.code else str(exc)
                return {"accepted": [], "refused": {}, "deferred": dict.fromkeys(batch, reply)}
            if exc.transient and not attempt.last:
                report.retrying(str(exc), _partial(payload, done, retries))
                raise RetryLater(str(exc)) from exc
            raise _failed_after(str(exc), payload, done, retries) from exc
        except ServiceError as exc:
            metrics.observe_smtp("blocked")
            raise _failed_after(describe(exc), payload, done, retries) from exc
        except MailError as exc:
            raise _failed_after(describe(exc), payload, done, retries) from exc
        metrics.observe_smtp(metrics.smtp_outcome(outcome))
        entry: dict[str, Any] = {"accepted": list(outcome.accepted), "refused": {}}
        entry["deferred"] = {}
        for address, (code, reply) in outcome.refused.items():
            target = "deferred" if 400 <= code < 500 else "refused"
            entry[target][address] = f"{code} {reply}"
        return entry

    tried_now = False  # whether this attempt already sent to someone still deferred
    for batch in batches[len(done) :]:
        done.append(send_batch(batch))
        # The server has this batch now: say so before anything else can go wrong. When
        # it was the last one and nobody was deferred, the task's outcome is written in
        # that same record (one write instead of two).
        if len(done) == len(batches) and not retries and not _deferred_in(done):
            return record(**_outcome(payload, done, retries))
        record()
        tried_now = True
    while True:
        if retries and retries[-1]["left"]:
            # A round cut short (the worker died): finish it, whatever the attempt.
            current = retries[-1]
            batch = current["left"][:SMTP_BATCH]
            entry = send_batch(batch, deferred_round=True)
            current["accepted"] += entry["accepted"]
            current["refused"].update(entry["refused"])
            current["deferred"].update(entry["deferred"])
            current["left"] = current["left"][len(batch) :]
            record()
            continue
        # Who still waits after a 4xx: from the batches, or from the last retry round.
        last_round = [retries[-1]] if retries else done
        deferred = {a: r for entry in last_round for a, r in entry.get("deferred", {}).items()}
        if not deferred:
            break
        if retries:
            tried_now = retries[-1]["attempt"] == attempt.number
        if not tried_now:
            # One round per attempt for the deferred recipients (only them), then back off.
            retries.append(
                {
                    "attempt": attempt.number,
                    "left": list(deferred),
                    "accepted": [],
                    "refused": {},
                    "deferred": {},
                }
            )
            continue
        if attempt.last:
            break  # no attempt follows: they count as refused below
        reason = "the SMTP server deferred some recipients (4xx): " + "; ".join(
            f"{a}: {r}" for a, r in deferred.items()
        )
        report.retrying(reason, _partial(payload, done, retries))
        raise RetryLater(reason)
    return mark(unit, task_id, **_outcome(payload, done, retries))


def _outcome(
    payload: dict[str, Any], done: list[dict[str, Any]], retries: list[dict[str, Any]]
) -> dict[str, Any]:
    """What the task records once the SMTP server has had its last say."""
    partial = _partial(payload, done, retries)
    return {"acceptedAt": now_ms(), "accepted": partial["accepted"], "refused": partial["refused"]}


def _deferred_in(entries: list[dict[str, Any]]) -> bool:
    return any(entry.get("deferred") for entry in entries)


def _accepted_note(runtime: Runtime, key: str) -> dict[str, Any] | None:
    """What an earlier run noted in the blob store (at ``key``) as sent, if anything."""
    try:
        note = json.loads(_blob(runtime, key))
    except BlobNotFound:
        return None
    return note if isinstance(note, dict) else None


def _record_progress(
    unit: JobUnit,
    task_id: str,
    key: str,
    step: int,
    done: list[dict[str, Any]],
    retries: list[dict[str, Any]],
    **outcome: Any,
) -> dict[str, Any]:
    """Record what the SMTP server took, patiently: a lost record means a second send.

    A note goes to the blob store first (a second, independent store: a run that finds
    a newer note than the task row never sends those recipients again). Then the task
    row is written, retried with backoff for up to ``_RECORD_PATIENCE_S`` while the
    database is away. If it is still away, the error goes up: the job is retried (the
    note then says what was sent), and the task stays readable as ``started``
    meanwhile, never ``failure``, since the mail went out. ``outcome`` (the final
    ``acceptedAt``, ``accepted``, ``refused``) goes into the same write; returns the payload.
    """
    note = {"step": step, "batches": done, "retries": retries}
    try:
        unit.runtime.blobs.put(key, json.dumps(note).encode(), "application/json")
    except Exception as exc:
        log.warning("send task %s: no acceptance note in the blob store: %r", task_id, exc)
    deadline = time.monotonic() + _RECORD_PATIENCE_S
    pause = 0.2
    while True:
        try:
            return mark_alone(
                unit, task_id, batches=done, retries=retries, noteStep=step, **outcome
            )
        except Exception as exc:
            if infrastructure_trouble(exc) is None or time.monotonic() + pause > deadline:
                raise
            log.warning("send task %s: recording the acceptance failed: %r", task_id, exc)
            time.sleep(pause)
            pause = min(pause * 2, 5.0)


def _in_batches(recipients: list[str]) -> list[list[str]]:
    return [recipients[i : i + SMTP_BATCH] for i in range(0, len(recipients), SMTP_BATCH)]


def _accepted(done: list[dict[str, Any]], retries: list[dict[str, Any]]) -> list[str]:
    return [address for entry in [*done, *retries] for address in entry["accepted"]]


def _partial(
    payload: dict[str, Any], done: list[dict[str, Any]], retries: list[dict[str, Any]]
) -> dict[str, Any]:
    """Who has the message so far, who was refused for good, who still waits (4xx)."""
    refused: dict[str, str] = {}
    for entry in [*done, *retries]:
        refused.update(entry["refused"])
    last_round = [retries[-1]] if retries else done
    deferred = {a: r for entry in last_round for a, r in entry.get("deferred", {}).items()}
    refused.update(deferred)  # reported as refused unless a later attempt takes them
    accepted = _accepted(done, retries)
    for address in accepted:
        refused.pop(address, None)
    return {"messageId": payload["messageId"], "accepted": accepted, "refused": refused}


def _failed_after(
    reason: str,
    payload: dict[str, Any],
    done: list[dict[str, Any]],
    retries: list[dict[str, Any]],
) -> _Failed:
    """A final failure; when some recipients already have the message, it says who."""
    partial = _partial(payload, done, retries)
    if not partial["accepted"]:
        return _Failed(reason)
    sent = len(partial["accepted"])
    return _Failed(
        f"{reason} (after {sent} recipient(s) had received the message: "
        f"{', '.join(partial['accepted'])})",
        partial,
    )


def _file_sent_copy(
    unit: JobUnit,
    task_id: str,
    account: Account,
    payload: dict[str, Any],
    result: dict[str, Any],
    attempt: Attempt,
    report: tasks.TaskReport,
    stored: _Stored,
    since: float | None,
) -> bool:
    """Steps 2 and 3; fills ``result`` (``sentFolder``, ``sentMessageId`` or ``sentCopyError``).

    ``since``: for a first run, when its SMTP submission began (see ``_append_sent``).

    Returns whether the task's success was reported here: the Sent UID, the stored
    message and the success commit together, in one transaction. Nothing of that needs
    its own checkpoint: a run cut off before it commits appends nothing again (the copy's
    Message-ID is found in Sent) and stores the same row.
    """
    runtime = unit.runtime
    appended: dict[str, Any] = {}
    try:
        copy = stored.copy()
        if "sentUid" not in payload:
            endpoint = account_endpoint(runtime, account)
            folder, uid = _append_sent(
                runtime, endpoint, account.id, copy, payload["messageId"], since
            )
            appended = {
                "sentUid": uid,
                "sentFolder": folder.name,
                "sentDelimiter": folder.delimiter,
                "sentSpecialUse": folder.special_use,
            }
            payload = {**payload, **appended}
    except MailError as exc:
        reason = f"Delivered, but keeping a copy in the Sent folder failed: {exc}"
        if exc.transient and not attempt.last:
            report.retrying(reason)
            raise RetryLater(reason) from exc
        result["sentCopyError"] = reason
        return False
    except (ServiceError, DecryptionError, BlobNotFound) as exc:
        result["sentCopyError"] = f"Delivered, but no copy was kept in Sent: {describe(exc)}"
        return False
    folder = RemoteFolder(
        payload["sentFolder"], payload["sentDelimiter"], (), payload["sentSpecialUse"], True
    )
    result["sentFolder"] = folder.name
    if payload["sentUid"] is not None:
        try:
            with unit.step() as session:
                # The task row is locked first, as ever, and written after the message:
                # its marks, the dropped message and the success in one UPDATE (marked
                # first, the row was flushed before the message's first query too).
                tasks.locked_task(session, task_id)
                result["sentMessageId"] = store_own_copy(
                    session,
                    runtime.blobs,
                    unit.tenant_id,
                    account.id,
                    folder,
                    int(payload["sentUid"]),
                    copy,
                    SENT_FLAGS,
                    changes.ORIGIN_SEND,
                )
                if appended:
                    mark(unit, task_id, **appended)
                _forget_message(unit, task_id)
                report.succeeded(result)
            return True
        except Exception:
            # The copy is on the server; the next sync stores it like any other message.
            log.exception("could not store the Sent copy of %s", payload["messageId"])
            result.pop("sentMessageId", None)
    if appended:
        with unit.step():
            mark(unit, task_id, **appended)
            _forget_message(unit, task_id)
            report.succeeded(result)
        return True
    return False


def _append_sent(
    runtime: Runtime,
    endpoint: MailEndpoint,
    account_id: str,
    copy: bytes,
    message_id: str,
    since: float | None,
) -> tuple[RemoteFolder, int | None]:
    """File ``copy`` in the Sent folder unless it is there already; its folder and UID.

    Where the Sent folder is comes from LIST, kept by the process for a while
    (``MailPools.folders``). With it known, the session's first command is a STATUS of
    that folder, which also proves that a pooled session answers (no NOOP); a folder
    that STATUS no longer finds is looked up by LIST again.

    A re-run (``since`` is ``None``) searches the whole folder for a copy an earlier run
    may have appended. A first run only needs to know whether the server filed a copy of
    its own: the STATUS's UIDNEXT and what this process appended itself tell which
    messages the folder was given since the submission began and by whom
    (``email_service.mail.uidwatch``). Only the others are searched, and with none there
    is no search: STATUS and APPEND are the two commands. When that cannot be told, the
    folder's newest ``SERVER_COPY_WINDOW`` messages are searched.
    """
    pools = runtime.mail_pools
    account_key = pool_key(account_id, endpoint, "imap")
    sent = pools.folders.get(account_key)
    looked: list[tuple[FolderState | None, float]] = []

    def status(imap: ImapSession) -> None:
        assert sent is not None
        looked.clear()
        try:
            state = imap.status(sent.name)
        except MailProtocolError:
            state = None  # renamed or deleted meanwhile: LIST finds where it is now
        looked.append((state, time.monotonic()))

    first = None if sent is None else status
    with pooled_session(endpoint, pools.imap, account_id, first=first) as imap:
        state, at = looked[0] if looked else (None, 0.0)
        if sent is None or state is None:
            sent = special_folder(imap, "\\Sent", "Sent")
            pools.folders.put(account_key, sent)
        key = (account_key, sent.name)
        among = None
        if state is not None:
            if since is not None:
                among = pools.uids.others(key, state.uidvalidity, state.uidnext, since, at)
            pools.uids.looked(key, state.uidvalidity, state.uidnext, at)
        with pools.uids.appending(key):
            uid = append_once(
                imap,
                sent.name,
                copy,
                message_id,
                SENT_FLAGS,
                # A first run cannot have appended it before: the newest messages are
                # where a copy the server filed itself would be.
                newest=None if since is None else SERVER_COPY_WINDOW,
                among=among,
            )
            if uid is not None and state is not None:
                pools.uids.appended(key, state.uidvalidity, uid)
    return sent, uid


# ----------------------------------------------------------------------------- drafts


def run_draft(runtime: Runtime, tenant_id: uuid.UUID, task_id: str, attempt: Attempt) -> None:
    """Put the draft of task ``task_id`` into the account's Drafts folder (once).

    Raises ``RetryLater`` after recording ``retry`` when a transient failure may pass.
    """
    unit = JobUnit(runtime, tenant_id)
    report = tasks.TaskReport(unit, task_id)
    with unit.step() as session:
        task = report.load()
        if task is None or task.status in tasks.FINISHED:
            return
        payload = task.payload
        draft = session.get(Draft, payload["draftId"])
        if draft is not None and draft.status == "saved":  # done; only the report was lost
            report.succeeded(
                {"draftId": draft.id, "folder": draft.folder_name, "uid": draft.imap_uid}
            )
            return
        account = _live_account(unit, task.account_id)
        if account is None:
            report.failed("The account no longer exists")
            _set_draft(unit, payload["draftId"], status="failed")
            return
    report.started(attempt.number)
    try:
        raw = _blob(runtime, payload["rawKey"])
        endpoint = account_endpoint(runtime, account)
        with pooled_session(endpoint, runtime.mail_pools.imap, account.id) as imap:
            folder = special_folder(imap, "\\Drafts", "Drafts")
            uid = append_once(imap, folder.name, raw, payload["messageId"], DRAFT_FLAGS)
    except (MailError, ServiceError, DecryptionError, BlobNotFound) as exc:
        reason = describe(exc)
        if isinstance(exc, MailError) and exc.transient and not attempt.last:
            report.retrying(reason)
            raise RetryLater(reason) from exc
        with unit.step():
            report.failed(reason)
            _set_draft(unit, payload["draftId"], status="failed")
        return
    _set_draft(
        unit,
        payload["draftId"],
        status="saved",
        folder_name=folder.name,
        imap_uid=uid,
    )
    result: dict[str, Any] = {
        "draftId": payload["draftId"],
        "messageId": payload["messageId"],
        "folder": folder.name,
        "uid": uid,
    }
    if uid is not None:
        try:
            with unit.step() as session:
                result["storedMessageId"] = store_own_copy(
                    session,
                    runtime.blobs,
                    tenant_id,
                    account.id,
                    folder,
                    uid,
                    raw,
                    DRAFT_FLAGS,
                    changes.ORIGIN_DRAFT,
                )
        except Exception:
            log.exception("could not store the draft %s", payload["draftId"])
    report.succeeded(result)
    delete_blobs(runtime.blobs, [payload["rawKey"]])


def _set_draft(unit: JobUnit, draft_id: str, **values: Any) -> None:
    with unit.step() as session:
        session.execute(
            update(Draft).where(Draft.id == draft_id).values(**values, updated_at=now_ms())
        )
