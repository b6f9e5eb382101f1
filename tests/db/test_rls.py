"""Row-level security: even a query without the application's tenant filter is scoped."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import ProgrammingError

from db.models import Account, Folder, Message
from email_service.runtime import Runtime
from tests.conftest import Identity
from tests.factories import SeededMessage, create_account, seed_folder


def test_unfiltered_queries_see_only_the_scoped_tenant(
    client, alice: Identity, mallory: Identity, runtime: Runtime
) -> None:
    # Given mail for two tenants
    for who in (alice, mallory):
        account = create_account(client, who.bearer)
        seed_folder(
            runtime, who.caller, account["id"], messages=[SeededMessage("x"), SeededMessage("y")]
        )

    # When a query forgets the tenant filter, then RLS still applies it
    with runtime.db.transaction(alice.caller.tenant_id) as session:
        tenants = set(session.scalars(select(Account.tenant_id)).all())
        assert tenants == {alice.caller.tenant_id}
        assert session.scalar(select(func.count()).select_from(Message)) == 2
        assert session.scalar(select(func.count()).select_from(Folder)) == 1
        raw = session.execute(text("SELECT count(*) FROM messages")).scalar()
        assert raw == 2

    # A transaction with no tenant sees nothing at all.
    with runtime.db.transaction(None) as session:
        assert session.scalar(select(func.count()).select_from(Account)) == 0

    # The cross-tenant system scope (scheduler, maintenance) sees both.
    with runtime.db.transaction(system=True) as session:
        assert session.scalar(select(func.count()).select_from(Message)) == 4


def test_rls_refuses_writing_rows_of_another_tenant(
    client, alice: Identity, runtime: Runtime
) -> None:
    account = create_account(client, alice.bearer)
    with (
        pytest.raises(ProgrammingError, match="row-level security"),
        runtime.db.transaction(uuid.uuid4()) as session,
    ):
        session.add(
            Folder(
                tenant_id=alice.caller.tenant_id,
                account_id=account["id"],
                name="Sneaky",
                display_name="Sneaky",
            )
        )
        session.flush()


def test_tables_have_forced_rls(runtime: Runtime) -> None:
    with runtime.db.engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT relname, relrowsecurity, relforcerowsecurity FROM pg_class "
                "WHERE relname IN ('accounts','folders','messages','attachments','drafts','tasks')"
            )
        ).all()
    assert len(rows) == 6
    assert all(row.relrowsecurity and row.relforcerowsecurity for row in rows)
