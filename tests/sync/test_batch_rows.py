"""A sync batch's rows on PostgreSQL: written without SQLAlchemy's per-row work
(``db.rows``), stored exactly as the ORM's insert stores them, and refused the same way."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from sqlalchemy import event, select, text

from db.models import Attachment, Message
from db.rows import RowInsert
from email_service.mail.mime import parse_message
from email_service.mailstore.messages import (
    FolderTarget,
    Incoming,
    MessageStore,
    Skipped,
    message_row,
)
from email_service.runtime import Runtime
from tests.conftest import Identity
from tests.servers.mailgen import corpus
from tests.sync.conftest import Mailbox, sync
from tests.sync.test_imap_sync import folders_by_name

# Values of every kind a row holds: NULs cleaned out, non-ASCII headers and names, HTML
# kept as sent and HTML sanitised at once (it had a NUL), no Message-ID, a thread's
# references, attachments with and without Content-ID, inline ones, defects (and the
# whole test corpus besides).
_ODD = [
    b"Subject: nul\x00 inside\r\nFrom: a@b.example\r\nX-Odd: v\x00\r\n\r\nbody\x00end\r\n",
    b"From: a@b.example\r\nSubject: html\r\nContent-Type: text/html\r\n\r\n<p>x\x00</p>\r\n",
    b"From: a@b.example\r\nSubject: no id\r\n\r\nplain\r\n",
]
_FLAGS = [(), ("\\Seen",), ("\\Seen", "\\Flagged", "Work", "$Junk"), ("\\Draft", "\\Deleted")]


def _items() -> list[Incoming]:
    samples = corpus()
    raws = [*_ODD, *(samples[name] for name in sorted(samples))]
    return [
        Incoming(
            parsed=parse_message(raw),
            size=len(raw),
            flags=_FLAGS[n % len(_FLAGS)],
            uid=n + 1,
            modseq=2**40 + n if n % 2 else None,
        )
        for n, raw in enumerate(raws)
    ]


def _inbox_target(api: Any, mailbox: Mailbox, alice: Identity, **kwargs: Any) -> FolderTarget:
    assert sync(api, mailbox)["status"] == "success"
    inbox = folders_by_name(api, mailbox)["INBOX"]
    return FolderTarget(alice.caller.tenant_id, mailbox.id, inbox["id"], "INBOX", **kwargs)


def _differing_columns(session: Any, pairs: str, columns: list[str]) -> list[Any]:
    """The number of pairs, then the columns whose values differ in any pair."""
    checks = ", ".join(f'bool_or(a."{name}" IS DISTINCT FROM b."{name}")' for name in columns)
    found = session.execute(text(f"SELECT count(*), {checks} FROM {pairs}")).one()  # noqa: S608
    return [found[0], *(name for name, differs in zip(columns, found[1:], strict=True) if differs)]


def test_rows_written_by_the_driver_are_stored_as_the_orm_stores_them(
    api: Any, mailbox: Mailbox, sync_runtime: Runtime, alice: Identity
) -> None:
    # Given a batch's message and attachment rows, made as a sync makes them
    target = _inbox_target(api, mailbox, alice, is_spam=True, lazy_attachments=True)
    items = _items()
    rows = [message_row(target, item) for item in items]
    for row in rows:
        row["conversation_id"] = row.pop("_root")[:64]
    store = MessageStore(sync_runtime.blobs)
    try:
        attachments = store._upload(target, rows, items)
    finally:
        store.close()
    assert len(attachments) >= 5 and {a["content_id"] is None for a in attachments} == {
        True,
        False,
    }
    # and the same rows again under other ids (and UIDs, unique in the folder)
    copies = [{**row, "id": row["id"] + "-b", "uid": row["uid"] + 100_000} for row in rows]
    attachment_copies = [
        {**a, "id": a["id"] + "-b", "message_id": a["message_id"] + "-b"} for a in attachments
    ]
    messages, parts = RowInsert(Message), RowInsert(Attachment)

    # When the first go through the ORM's insert and the copies through the driver's
    with sync_runtime.db.transaction(alice.caller.tenant_id) as session:
        session.execute(messages.orm, rows)
        session.execute(parts.orm, attachments)
        messages(session, copies)
        parts(session, attachment_copies)

    # Then every column of every row holds the same value both ways
    with sync_runtime.db.transaction(alice.caller.tenant_id) as session:
        message_columns = [c.name for c in Message.__table__.columns if c.name not in ("id", "uid")]
        assert _differing_columns(
            session,
            "messages a JOIN messages b ON b.id = a.id || '-b'",
            message_columns,
        ) == [len(rows)]
        attachment_columns = [
            c.name for c in Attachment.__table__.columns if c.name not in ("id", "message_id")
        ]
        assert _differing_columns(
            session,
            "attachments a JOIN attachments b ON b.id = a.id || '-b'",
            attachment_columns,
        ) == [len(attachments)]
        # and what the JSON columns hold is what the rows said (not, say, a JSON string)
        json_columns = ["headers", "flags", "labels", "references", "to_addresses", "defects"]
        stored = {
            found[0]: list(found[1:])
            for found in session.execute(
                select(Message.id, *(Message.__table__.c[name] for name in json_columns)).where(
                    Message.id.in_([copy["id"] for copy in copies])
                )
            )
        }
    assert stored == {copy["id"]: [copy[name] for name in json_columns] for copy in copies}
    assert any(copy["labels"] and copy["defects"] for copy in copies)


def test_a_message_refused_inside_a_batch_is_skipped_and_the_others_are_stored(
    api: Any, mailbox: Mailbox, sync_runtime: Runtime, alice: Identity
) -> None:
    # Given a batch of four messages with attachments, one of which the database refuses
    # (its attachment's type is longer than the column holds: the parser never gives
    # one since mime.storable_media_type, so it is set on the parsed message here)
    target = _inbox_target(api, mailbox, alice, is_spam=False, lazy_attachments=True)
    samples = corpus()
    refused = (
        b"From: a@b.example\r\nSubject: odd type\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: multipart/mixed; boundary=XX\r\n\r\n--XX\r\n"
        b"Content-Type: text/plain\r\n\r\nhi\r\n--XX\r\n"
        b"Content-Type: application/x-" + b"a" * 300 + b"\r\n"
        b"Content-Disposition: attachment; filename=f.bin\r\n\r\ndata\r\n--XX--\r\n"
    )
    raws = [samples["mixed_attachments"], samples["alternative"], refused, samples["nested"]]
    items = [
        Incoming(parsed=parse_message(raw), size=len(raw), uid=7001 + n)
        for n, raw in enumerate(raws)
    ]
    odd = items[2].parsed
    items[2] = replace(
        items[2],
        parsed=replace(
            odd,
            attachments=tuple(
                replace(a, mime_type="application/x-" + "a" * 300) for a in odd.attachments
            ),
        ),
    )
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement.split("(", 1)[0].strip())

    # When the batch is stored
    store = MessageStore(sync_runtime.blobs)
    event.listen(sync_runtime.db.engine, "before_cursor_execute", record)
    try:
        with sync_runtime.db.transaction(alice.caller.tenant_id) as session:
            outcome = store.add_batch(session, target, items)
    finally:
        event.remove(sync_runtime.db.engine, "before_cursor_execute", record)
        store.close()

    # Then the batch was tried whole, then message by message; the refused one is
    # skipped with its reason and the others are stored with their attachments
    assert statements.count("INSERT INTO messages") == 1 + len(items)
    assert outcome.added == 3 and outcome.unread == 3
    assert outcome.skipped == [
        Skipped(
            "INBOX",
            "the database refused the message (StringDataRightTruncation)",
            uid=7003,
        )
    ]
    with sync_runtime.db.transaction(alice.caller.tenant_id) as session:
        stored = dict(
            session.execute(
                select(Message.uid, Message.attachment_count).where(
                    Message.folder_id == target.folder_id
                )
            ).all()
        )
        attachments = session.scalar(
            select(text("count(*)"))
            .select_from(Attachment)
            .where(Attachment.account_id == mailbox.id)
        )
    expected = {item.uid: len(item.parsed.attachments) for item in items if item.uid != 7003}
    assert stored == expected
    assert attachments == sum(expected.values()) > 0
