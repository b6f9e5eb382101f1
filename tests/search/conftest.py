"""Both stores behind one fixture: every search test runs on PostgreSQL and on SQLite.

Mail goes in through the mail store (``MessageStore.add_batch``), the writer that sync
and our own copies use, so the index the tests search is the one sync builds.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from db.migrate import upgrade
from db.models import Folder, new_id
from email_service.app import create_app
from email_service.identity import Caller
from email_service.mail.mime import parse_message
from email_service.mailstore.messages import FolderTarget, Incoming, MessageStore, adjust_counts
from email_service.runtime import Runtime, build_runtime, set_runtime
from email_service.scope import open_scope
from tests.conftest import make_settings

_uids = itertools.count(1)


@dataclass
class Mail:
    subject: str = "Hello"
    sender: str = "Sender <sender@example.test>"
    to: str = "Owner <owner@example.test>"
    cc: str | None = None
    body: str = "Hello there"
    attachments: list[tuple[str, bytes]] = field(default_factory=list)
    received: datetime = field(default_factory=lambda: datetime.now(UTC))
    flags: tuple[str, ...] = ()

    def raw(self) -> bytes:
        message = EmailMessage()
        message["Subject"] = self.subject
        message["From"] = self.sender
        message["To"] = self.to
        if self.cc:
            message["Cc"] = self.cc
        message["Message-ID"] = f"<{new_id()}@example.test>"
        message.set_content(self.body)
        for name, data in self.attachments:
            message.add_attachment(
                data, maintype="application", subtype="octet-stream", filename=name
            )
        return message.as_bytes()


@dataclass
class Store:
    name: str
    runtime: Runtime
    client: Any

    def folder(
        self, caller: Caller, account_id: str, name: str = "INBOX", kind: str = "inbox"
    ) -> str:
        with open_scope(self.runtime, caller) as scope:
            row = Folder(
                id=new_id(),
                tenant_id=caller.tenant_id,
                account_id=account_id,
                name=name,
                display_name=name.title() if name == "INBOX" else name,
                type=kind,
                delimiter="/",
            )
            scope.session.add(row)
            scope.session.flush()
            return row.id

    def deliver(self, caller: Caller, account_id: str, folder_id: str, *mails: Mail) -> list[str]:
        """Store ``mails`` as a sync batch would; returns their message ids in order."""
        store = MessageStore(self.runtime.blobs)
        try:
            with open_scope(self.runtime, caller) as scope:
                target = FolderTarget(caller.tenant_id, account_id, folder_id, "folder", False)
                items = [
                    Incoming(
                        parsed=parse_message(mail.raw()),
                        size=len(mail.raw()),
                        flags=mail.flags,
                        received_at=mail.received,
                        uid=next(_uids),
                    )
                    for mail in mails
                ]
                outcome = store.add_batch(scope.session, target, items)
                assert outcome.added == len(mails), outcome.skipped
                adjust_counts(scope.session, folder_id, outcome.added, outcome.unread)
                from sqlalchemy import select

                from db.models import Message

                uids = [item.uid for item in items]
                found = dict(
                    scope.session.execute(
                        select(Message.uid, Message.id).where(
                            Message.folder_id == folder_id, Message.uid.in_(uids)
                        )
                    ).all()
                )
                return [found[uid] for uid in uids]
        finally:
            store.close()


@pytest.fixture(params=["postgresql", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "postgresql":
        app_factory = request.getfixturevalue("app_factory")
        runtime, app = app_factory(rate_limit_enabled=False)
    else:
        url = f"sqlite:///{tmp_path / 'search.sqlite3'}"
        runtime = build_runtime(make_settings(tmp_path / "data", url, rate_limit_enabled=False))
        upgrade(runtime.db.engine)
        app = create_app(runtime=runtime, validate_responses=True)
    set_runtime(runtime)
    with app.test_client() as client:
        yield Store(request.param, runtime, client)
    if request.param == "sqlite":
        runtime.close()
