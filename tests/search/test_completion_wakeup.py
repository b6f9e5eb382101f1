"""The completion job is woken once the entries it completes are committed, never before.

A worker may take the job the moment it is queued, so these tests complete the index
inside the wake-up itself: the fastest worker there can be. Mail goes in through the
mail store, whose batches are savepoints of the caller's transaction (SQLAlchemy reports
a savepoint's release as a commit and its rollback as a rollback).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from sqlalchemy import select

from db import textindex
from db.models import Change
from email_service.mail.mime import parse_message
from email_service.mailstore.messages import FolderTarget, Incoming, MessageStore
from email_service.scope import open_scope
from email_service.services.search import fullindex
from tests.conftest import Identity
from tests.factories import create_account
from tests.search.conftest import Mail, Store
from tests.search.test_search import subjects


class Worker:
    """Completes a tenant's entries the moment its completion is queued."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.completed: list[tuple[uuid.UUID, int]] = []

    def __enter__(self) -> Worker:
        textindex.LISTENERS.install(
            self, self.store.runtime.db.engine, self.wake, job="test completion"
        )
        return self

    def __exit__(self, *_exc: object) -> None:
        textindex.LISTENERS.uninstall(self)

    def wake(self, tenant_id: uuid.UUID) -> None:
        done = fullindex.complete_pending(self.store.runtime, tenant_id, seconds=None)
        self.completed.append((tenant_id, done))


def _incoming(mail: Mail, uid: int) -> Incoming:
    raw = mail.raw()
    return Incoming(
        parsed=parse_message(raw), size=len(raw), flags=(), received_at=datetime.now(UTC), uid=uid
    )


def test_a_completion_taken_at_once_finds_the_entries_of_the_commit_that_woke_it(
    store: Store, alice: Identity
) -> None:
    account = create_account(store.client, alice.bearer)["id"]
    folder = store.folder(alice.caller, account)

    with Worker(store) as worker:
        store.deliver(
            alice.caller,
            account,
            folder,
            Mail(subject="Tail", body="z " * 400 + "tailword"),
            Mail(subject="Short", body="A short note."),
        )

    assert worker.completed == [(alice.caller.tenant_id, 1)]
    assert subjects(store, alice, "tailword") == ["Tail"]


def test_a_refused_message_later_in_the_transaction_keeps_what_came_before(
    store: Store, alice: Identity
) -> None:
    account = create_account(store.client, alice.bearer)["id"]
    folder = store.folder(alice.caller, account)
    messages = MessageStore(store.runtime.blobs)
    try:
        with Worker(store) as worker, open_scope(store.runtime, alice.caller) as scope:
            target = FolderTarget(alice.caller.tenant_id, account, folder, "INBOX", False)
            # Given a batch stored (its entry pending, its change recorded)
            first = _incoming(Mail(subject="Tail", body="z " * 400 + "tailword"), uid=1)
            assert messages.add_batch(scope.session, target, [first]).added == 1
            # When a later batch in the same transaction is refused at the database (a
            # message stored meanwhile): its savepoint, then one of its messages', roll back
            later = [_incoming(Mail(subject="Again"), uid=1), _incoming(Mail(subject="New"), uid=2)]
            outcome = messages.add_batch(scope.session, target, later)
            assert (outcome.added, outcome.skipped) == (1, [])
    finally:
        messages.close()

    # Then the first batch's entry is completed once the transaction commits
    assert worker.completed == [(alice.caller.tenant_id, 1)]
    assert subjects(store, alice, "tailword") == ["Tail"]
    # and both stored messages have their change in the feed
    with store.runtime.db.transaction(alice.caller.tenant_id) as session:
        created = session.scalars(
            select(Change.message_id).where(
                Change.account_id == account, Change.type == "message.created"
            )
        ).all()
    with store.runtime.db.transaction(alice.caller.tenant_id) as session:
        from db.models import Message

        stored = session.scalars(select(Message.id).where(Message.folder_id == folder)).all()
    assert len(stored) == 2
    assert sorted(created) == sorted(stored)
