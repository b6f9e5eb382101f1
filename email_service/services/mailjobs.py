"""What the compose and write-back jobs share: special folders and the job's own progress
markers. Storing a message we put on the server ourselves is the mail store's
(``email_service.mailstore.copies``).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from db.models import now_ms
from email_service.mail.imap import ImapSession, RemoteFolder
from email_service.scope import JobUnit
from email_service.services.tasks import locked_task

log = logging.getLogger(__name__)


def mark(unit: JobUnit, task_id: str, **values: Any) -> dict[str, Any]:
    """Merge ``values`` into the task's payload in a step of ``unit``; returns the payload.

    The payload is where a job records the steps it has done ("accepted by SMTP",
    "appended as UID n"), so that a re-run skips them. On its own the step commits at
    once (a checkpoint); inside a step the job has open, it commits with that step.
    """
    with unit.step() as session:
        row = locked_task(session, task_id)
        if row is None:
            return dict(values)
        # A new dict, so the JSON column is seen as changed.
        row.payload = {**row.payload, **values}
        return dict(row.payload)


# ``mark_alone`` on PostgreSQL: the values merged into the payload by the server (the
# row's lock is the UPDATE's own), the row's tenant checked as the service layer does.
_MERGE_PAYLOAD = """
UPDATE tasks SET payload = payload || %(values)s, updated_at = %(now)s
WHERE id = %(task_id)s AND tenant_id = %(tenant_id)s
RETURNING payload
"""


def mark_alone(unit: JobUnit, task_id: str, **values: Any) -> dict[str, Any]:
    """``mark`` in a step of its own, committed before it returns; returns the payload.

    For a checkpoint that must be durable at once and alone (a send's record of what
    the SMTP server took). On PostgreSQL it is one round trip (``JobUnit.commit_one``:
    BEGIN, the tenant, an UPDATE that merges ``values`` into the payload, COMMIT)
    where ``mark`` takes four (BEGIN, the row read ``FOR UPDATE``, its UPDATE, COMMIT)
    and sends the whole payload back. Raises ``RuntimeError`` inside a step.
    """
    if not unit.runtime.db.is_postgres:
        if unit.in_step:
            raise RuntimeError("mark_alone commits on its own: this thread has a step open")
        return mark(unit, task_id, **values)
    from psycopg.types.json import Jsonb

    params = {
        "values": Jsonb(values),
        "now": now_ms(),
        "task_id": task_id,
        "tenant_id": unit.tenant_id,
    }
    rows = unit.commit_one(_MERGE_PAYLOAD, params)
    if not rows:
        return dict(values)
    payload: dict[str, Any] = rows[0][0]
    return payload


def special_folder(imap: ImapSession, use: str, default_name: str) -> RemoteFolder:
    """The account's folder for ``use`` (``\\Sent``...), created as ``default_name`` if none.

    The server's SPECIAL-USE marks decide, then well-known names (``Sent Items``...).
    """
    folders = imap.list_folders()
    name = imap.find_special_folder(use, folders)
    if name is None:
        log.info("the account has no %s folder; creating %r", use, default_name)
        imap.create_folder(default_name)
        name = default_name
        folders = imap.list_folders()
    for folder in folders:
        if folder.name == name:
            return folder
    return RemoteFolder(name, None, (), use, True)


def append_once(
    imap: ImapSession,
    folder: str,
    raw: bytes,
    message_id: str,
    flags: tuple[str, ...],
    *,
    newest: int | None = None,
    among: list[int] | None = None,
) -> int | None:
    """APPEND ``raw`` to ``folder`` unless a message with its Message-ID is there already.

    Returns the message's UID (``None`` when the server reports none). The check makes a
    re-run after a lost reply harmless, and skips our copy when the server itself filed
    the message (some providers put submitted mail into Sent on their own). A caller
    that knows no earlier run can have appended it passes ``newest``: only that many of
    the folder's last messages are searched (a copy the server filed on its own, at
    submission, is among them), not a Sent folder of years. A caller that knows which
    messages the folder was given since the submission began, less its own appends
    (``email_service.mail.uidwatch``), passes them as ``among``: only those are searched,
    and none when there are none (no EXAMINE either: the APPEND is the one command).
    """
    if among is not None and not among:
        return imap.append(folder, raw, flags, when=datetime.now(UTC))
    imap.select(folder, readonly=True)
    found = imap.uids_with_header("Message-ID", f"<{message_id}>", newest=newest, among=among)
    if found:
        return max(found)
    # Courier refuses to APPEND to the folder selected read-only ("Current box is
    # selected READ-ONLY"): leave it first.
    imap.unselect()
    return imap.append(folder, raw, flags, when=datetime.now(UTC))
