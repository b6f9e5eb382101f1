"""PostgreSQL: the runtime role cannot read the search index's text (migration 0020r).

The index (``message_search.document``) holds the words of every tenant's mail. The
runtime role, which the service and these tests run as, reads only ``message_id``,
``tenant_id`` and ``pending`` of it, under the tenant policy; documents are answered for
only through the owner's ``search_documents``, for the transaction's own tenant.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import ProgrammingError

from db.roles import PrivilegedRole, runtime_grants
from email_service.runtime import Runtime, build_runtime
from email_service.services import search as search_service
from tests.conftest import PG_ADMIN_DSN, PG_HOST, PG_PORT, Identity, PgDatabase, make_settings
from tests.factories import create_account
from tests.search.conftest import Mail, Store

DAY = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


def _store(runtime: Runtime, client: Any) -> Store:
    return Store("postgresql", runtime, client)


def _deliver(store: Store, who: Identity, *mails: Mail) -> list[str]:
    account = create_account(store.client, who.bearer)["id"]
    return store.deliver(who.caller, account, store.folder(who.caller, account), *mails)


def _matches(runtime: Runtime, who: Identity, ids: list[str] | None, query: str) -> set[str]:
    with runtime.db.transaction(who.caller.tenant_id) as session:
        return set(
            session.scalars(
                text(
                    "SELECT message_id FROM search_documents(CAST(:ids AS text[]),"
                    " CAST(:q AS tsquery), CAST('{}' AS tsquery[]), NULL, NULL)"
                ),
                {"ids": ids, "q": query},
            )
        )


def test_the_runtime_role_cannot_read_another_tenants_indexed_text(
    runtime: Runtime, client: Any, alice: Identity, mallory: Identity
) -> None:
    # Given mail of two tenants, indexed as sync indexes it
    store = _store(runtime, client)
    alice_ids = _deliver(store, alice, Mail(subject="Alpha", body="the zeppelin lands at noon"))
    mallory_ids = _deliver(store, mallory, Mail(subject="Beta", body="the kraken sleeps"))

    # When the runtime role, in alice's transaction, reads the index table directly,
    # then the text is refused, whoever's it is
    for statement in (
        "SELECT document FROM message_search",
        "SELECT * FROM message_search",
        "SELECT document FROM message_search WHERE message_id = :id",
        "SELECT message_id FROM message_search WHERE document @@ 'kraken'::tsquery",
    ):
        with (
            pytest.raises(ProgrammingError, match="permission denied"),
            runtime.db.transaction(alice.caller.tenant_id) as session,
        ):
            session.execute(text(statement), {"id": mallory_ids[0]})
    # and the columns it may read show alice's rows only
    with runtime.db.transaction(alice.caller.tenant_id) as session:
        rows = session.execute(text("SELECT message_id, tenant_id FROM message_search")).all()
    assert {row.message_id for row in rows} == set(alice_ids)
    assert {row.tenant_id for row in rows} == {alice.caller.tenant_id}

    # The functions answer for the transaction's tenant only: asked by alice about
    # mallory's word, or about mallory's message by id, they answer nothing
    assert _matches(runtime, alice, None, "kraken") == set()
    assert _matches(runtime, alice, mallory_ids, "kraken") == set()
    assert _matches(runtime, alice, None, "zeppelin") == set(alice_ids)
    assert _matches(runtime, mallory, None, "kraken") == set(mallory_ids)
    # nor for a transaction with no tenant
    with runtime.db.transaction(None) as session:
        found = session.scalars(
            text(
                "SELECT message_id FROM search_documents("
                "NULL, NULL, CAST('{}' AS tsquery[]), NULL, NULL)"
            )
        ).all()
    assert found == []
    # and nobody but the roles that may use the table may call them
    with runtime.db.transaction(alice.caller.tenant_id) as session:
        public = session.scalar(
            text(
                "SELECT count(*) FROM pg_proc p, aclexplode(p.proacl) a"
                " WHERE p.proname = 'search_documents' AND a.grantee = 0"
            )
        )
        definer = session.scalar(
            text("SELECT prosecdef FROM pg_proc WHERE proname = 'search_documents'")
        )
    assert public == 0
    assert definer is True

    # and searching through the API still finds each tenant's own mail only
    for who, word, subject in ((alice, "zeppelin", "Alpha"), (mallory, "kraken", "Beta")):
        response = client.get("/api/messages/search", params={"q": word}, headers=who.bearer)
        assert response.status_code == 200, response.text
        assert [hit["subject"] for hit in response.json()["messages"]] == [subject]
    response = client.get("/api/messages/search", params={"q": "kraken"}, headers=alice.bearer)
    assert response.json()["messages"] == []


def test_pages_are_the_same_through_small_windows(
    runtime: Runtime, client: Any, alice: Identity, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Searches without a word every match has walk windows of the newest messages; a
    window of one message makes every search take several windows and the index path."""
    store = _store(runtime, client)
    mails = [
        Mail(
            subject=f"Note {n}",
            body=("apple " if n % 2 else "pear ") + f"number{n}",
            received=DAY + timedelta(minutes=n),
            flags=("\\Seen",) if n in (2, 5) else (),
        )
        for n in range(9)
    ]
    _deliver(store, alice, *mails)

    def pages(q: str) -> list[str]:
        found: list[str] = []
        cursor = None
        while True:
            params = {"q": q, "limit": 2, **({"cursor": cursor} if cursor else {})}
            response = client.get("/api/messages/search", params=params, headers=alice.bearer)
            assert response.status_code == 200, response.text
            body = response.json()
            found += [hit["subject"] for hit in body["messages"]]
            cursor = body.get("nextCursor")
            if cursor is None:
                return found

    expected = {
        "apple": [7, 5, 3, 1],
        "-apple": [8, 6, 4, 2, 0],
        "apple OR is:read": [7, 5, 3, 2, 1],
        "-pear -number3": [7, 5, 1],
        "number4 OR number7": [7, 4],
        "is:unread -number8": [7, 6, 4, 3, 1, 0],
    }
    for window in (500, 1):
        monkeypatch.setattr(search_service, "RECENT_WINDOW", window)
        for q, numbers in expected.items():
            assert pages(q) == [f"Note {n}" for n in numbers], (window, q)


@pytest.fixture
def later_role(pg_database: PgDatabase) -> Iterator[str]:
    role = f"email_later_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f'CREATE ROLE "{role}" LOGIN NOSUPERUSER NOBYPASSRLS')
    yield role
    dsn = psycopg.conninfo.make_conninfo(PG_ADMIN_DSN, dbname=pg_database.name)
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(f'DROP OWNED BY "{role}"')  # its grants
        admin.execute(f'DROP ROLE IF EXISTS "{role}"')


def test_a_runtime_role_granted_after_the_migration_reads_no_text_and_one_that_can_is_refused(
    pg_database: PgDatabase, owner_engine: Engine, later_role: str, tmp_path: Path
) -> None:
    url = f"postgresql+psycopg://{later_role}@{PG_HOST}:{PG_PORT}/{pg_database.name}"
    # Given a runtime role granted by a table-wide GRANT after the migrations (an
    # operator adding a role), then the grants' last step takes the text away again
    with owner_engine.begin() as conn:
        conn.execute(text(f'GRANT SELECT ON message_search TO "{later_role}"'))
    with pytest.raises(PrivilegedRole, match="search index text"):
        build_runtime(make_settings(tmp_path / "a", url))
    with owner_engine.begin() as conn:
        for statement in runtime_grants(pg_database.owner, later_role):
            conn.execute(text(statement))
        readable = conn.execute(
            text(
                "SELECT has_column_privilege(CAST(:r AS name), 'message_search', 'document',"
                " 'SELECT'), has_column_privilege(CAST(:r AS name), 'message_search',"
                " 'message_id', 'SELECT'), has_function_privilege(CAST(:r AS name),"
                " 'search_documents(text[], tsquery, tsquery[], tsquery, integer)', 'EXECUTE')"
            ),
            {"r": later_role},
        ).one()
    assert tuple(readable) == (False, True, True)
    # and the service accepts it
    build_runtime(make_settings(tmp_path / "b", url)).close()


def test_a_common_word_pages_through_a_window_tested_in_slices(
    runtime: Runtime, client: Any, alice: Identity
) -> None:
    """200 messages, every third with the word: the first page stops after two slices of
    the window (64 and 128 entries), later pages start after the cursor; none is lost."""
    store = _store(runtime, client)
    mails = [
        Mail(
            subject=f"Memo {n}",
            body=("kiwi " if n % 3 == 0 else "plum ") + f"memo{n}",
            received=DAY + timedelta(minutes=n),
            attachments=[("a.txt", b"a")] if n % 2 == 0 else [],
        )
        for n in range(200)
    ]
    _deliver(store, alice, *mails)

    def pages(q: str) -> list[int]:
        found: list[int] = []
        cursor = None
        while True:
            params = {"q": q, "limit": 25, **({"cursor": cursor} if cursor else {})}
            response = client.get("/api/messages/search", params=params, headers=alice.bearer)
            assert response.status_code == 200, response.text
            body = response.json()
            found += [int(hit["subject"].split()[1]) for hit in body["messages"]]
            cursor = body.get("nextCursor")
            if cursor is None:
                return found

    newest_first = list(range(199, -1, -1))
    assert pages("kiwi") == [n for n in newest_first if n % 3 == 0]
    assert pages("has:attachment kiwi") == [n for n in newest_first if n % 6 == 0]
    assert pages("kiwi -memo99") == [n for n in newest_first if n % 3 == 0 and n != 99]
