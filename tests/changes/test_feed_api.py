"""listChanges through HTTP: cursors, paging, filters, expiry, scoping and commit order.

These need no mail server: account operations are changes too. The sync-driven changes
(Dovecot, sends) are in ``test_feed_sync.py``.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import select

from db.changes import record_change
from db.migrate import upgrade
from db.models import Change
from email_service.app import create_app
from email_service.runtime import Runtime, build_runtime, set_runtime
from email_service.services.changes import HOUR_MS, Cursor, prune
from tests.changes.conftest import of_type, read_feed, start_cursor
from tests.conftest import Identity, make_settings, new_identity
from tests.factories import create_account

SPEC = Path(__file__).resolve().parents[2] / "openapi" / "openapi.yaml"


def test_without_since_a_client_gets_the_current_cursor_and_nothing_before_it(
    client: Any, alice: Identity
) -> None:
    create_account(client, alice.bearer)
    cursor = start_cursor(client, alice)

    changes, _ = read_feed(client, alice, cursor)

    assert changes == []


def test_account_changes_arrive_in_order_with_the_account_in_data(
    client: Any, alice: Identity
) -> None:
    cursor = start_cursor(client, alice)

    account = create_account(client, alice.bearer, accountName="Work")
    client.put(
        f"/api/accounts/{account['id']}", json={"accountName": "Office"}, headers=alice.bearer
    )
    client.delete(f"/api/accounts/{account['id']}", headers=alice.bearer)
    changes, _ = read_feed(client, alice, cursor)

    assert [c["type"] for c in changes] == [
        "account.created",
        "account.updated",
        "account.deleted",
    ]
    assert all(c["accountId"] == account["id"] for c in changes)
    assert changes[0]["data"]["accountName"] == "Work"
    assert changes[1]["data"]["accountName"] == "Office"
    assert "password" not in changes[0]["data"] and "username" not in changes[0]["data"]
    assert changes[0]["occurredAt"] <= changes[2]["occurredAt"]


def test_pages_follow_has_more_and_give_every_change_exactly_once(
    client: Any, alice: Identity
) -> None:
    cursor = start_cursor(client, alice)
    created = [create_account(client, alice.bearer)["id"] for _ in range(5)]

    pages = []
    while True:
        response = client.get(
            "/api/changes", params={"since": cursor, "limit": 2}, headers=alice.bearer
        )
        assert response.status_code == 200
        body = response.json()
        pages.append(body["changes"])
        cursor = body["cursor"]
        if not body["hasMore"]:
            break

    assert [len(page) for page in pages] == [2, 2, 1]
    assert [c["accountId"] for page in pages for c in page] == created
    # A change's id is a cursor too: reading after the third gives the last two.
    after_third, _ = read_feed(client, alice, pages[1][0]["id"])
    assert [c["accountId"] for c in after_third] == created[3:]


def test_every_change_type_of_the_contract_is_accepted_as_a_filter(
    client: Any, alice: Identity
) -> None:
    spec = yaml.safe_load(SPEC.read_text())
    types = spec["components"]["schemas"]["ChangeType"]["enum"]
    cursor = start_cursor(client, alice)
    create_account(client, alice.bearer)

    for kind in types:
        response = client.get(
            "/api/changes", params={"since": cursor, "types": kind}, headers=alice.bearer
        )
        assert response.status_code == 200, (kind, response.text)
        assert all(c["type"] == kind for c in response.json()["changes"])
    both = client.get(
        "/api/changes",
        params={"since": cursor, "types": ",".join(types)},
        headers=alice.bearer,
    )
    assert both.status_code == 200
    assert [c["type"] for c in both.json()["changes"]] == ["account.created"]
    unknown = client.get(
        "/api/changes", params={"since": cursor, "types": "message.exploded"}, headers=alice.bearer
    )
    assert unknown.status_code == 400


def test_an_account_filter_keeps_to_that_account_and_refuses_someone_elses(
    client: Any, alice: Identity, mallory: Identity, bob_same_tenant: Identity
) -> None:
    cursor = start_cursor(client, alice)
    first = create_account(client, alice.bearer)
    create_account(client, alice.bearer)

    only_first, _ = read_feed(client, alice, cursor, accountId=first["id"])
    assert [c["accountId"] for c in only_first] == [first["id"]]
    for intruder in (mallory, bob_same_tenant):
        response = client.get(
            "/api/changes", params={"accountId": first["id"]}, headers=intruder.bearer
        )
        assert response.status_code == 404
        assert response.json()["code"] == "ACCOUNT_NOT_FOUND"


def test_other_users_and_tenants_see_none_of_it(
    client: Any, alice: Identity, mallory: Identity, bob_same_tenant: Identity
) -> None:
    cursors = {who: start_cursor(client, who) for who in (mallory, bob_same_tenant)}

    create_account(client, alice.bearer)

    for who, cursor in cursors.items():
        assert read_feed(client, who, cursor)[0] == []


def test_a_cursor_older_than_the_retention_or_unknown_answers_410(
    client: Any, alice: Identity, runtime: Runtime
) -> None:
    retention = int(runtime.settings.changes_retention_hours * HOUR_MS)
    old = Cursor(1, int(time.time() * 1000) - retention - 60_000).encode()
    for cursor in (old, "bm90LWEtY3Vyc29y", "A"):
        response = client.get("/api/changes", params={"since": cursor}, headers=alice.bearer)
        assert response.status_code == 410, cursor
        body = response.json()
        assert body["code"] == "CURSOR_EXPIRED" and body["message"]


def test_pruning_removes_only_changes_past_the_retention(runtime: Runtime) -> None:
    tenant, user = uuid.uuid4(), uuid.uuid4()
    with runtime.db.transaction(tenant) as session:
        for kind in ("account.created", "account.updated"):
            record_change(session, tenant_id=tenant, user_id=user, type=kind, data={})
    retention = int(runtime.settings.changes_retention_hours * HOUR_MS)
    with runtime.db.transaction(tenant) as session:
        oldest = session.scalars(
            select(Change).where(Change.tenant_id == tenant).order_by(Change.position)
        ).first()
        assert oldest is not None
        oldest.occurred_at -= retention + 2 * HOUR_MS

    assert prune(runtime) == 1

    with runtime.db.transaction(tenant) as session:
        left = session.scalars(select(Change.type).where(Change.tenant_id == tenant)).all()
    assert left == ["account.updated"]


def test_a_reader_polling_during_concurrent_commits_sees_each_change_once_in_order(
    client: Any, alice: Identity, runtime: Runtime
) -> None:
    # Given writers that record changes for alice and commit after a random delay, so
    # their transactions overlap and would commit out of position order without the
    # per-user lock
    cursor = start_cursor(client, alice)
    tenant, user = alice.caller.tenant_id, alice.caller.user_id
    writers, per_writer = 6, 8

    def write(n: int) -> None:
        rng = random.Random(n)
        for i in range(per_writer):
            with runtime.db.transaction(tenant) as session:
                record_change(
                    session,
                    tenant_id=tenant,
                    user_id=user,
                    type="folder.updated",
                    data={"writer": n, "i": i},
                )
                time.sleep(rng.random() * 0.01)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
    for thread in threads:
        thread.start()
    # When a reader polls while they run
    seen: list[dict[str, Any]] = []
    while any(thread.is_alive() for thread in threads):
        page, cursor = read_feed(client, alice, cursor)
        seen.extend(page)
    for thread in threads:
        thread.join()
    page, cursor = read_feed(client, alice, cursor)
    seen.extend(page)

    # Then it saw every change exactly once, in increasing positions
    got = [(c["data"]["writer"], c["data"]["i"]) for c in seen]
    assert sorted(got) == [(n, i) for n in range(writers) for i in range(per_writer)]
    positions = [Cursor.decode(c["id"]).position for c in seen]  # type: ignore[union-attr]
    assert positions == sorted(positions) and len(set(positions)) == len(positions)


def test_the_embedded_default_keeps_a_feed_too(tmp_path: Path, runtime: Runtime) -> None:
    sqlite = build_runtime(make_settings(tmp_path, f"sqlite:///{tmp_path / 'embedded.sqlite3'}"))
    try:
        upgrade(sqlite.db.engine)
        app = create_app(runtime=sqlite, validate_responses=True)
        identity = new_identity()
        with app.test_client() as local:
            cursor = start_cursor(local, identity)
            account = create_account(local, identity.bearer)
            local.delete(f"/api/accounts/{account['id']}", headers=identity.bearer)
            changes, cursor = read_feed(local, identity, cursor)
            assert [c["type"] for c in changes] == ["account.created", "account.deleted"]
            assert of_type(changes, "account.created")[0]["data"]["id"] == account["id"]
            assert read_feed(local, identity, cursor)[0] == []
    finally:
        sqlite.close()
        set_runtime(runtime)


@pytest.mark.parametrize("limit", [0, 1001])
def test_limits_outside_1_to_1000_are_refused(client: Any, alice: Identity, limit: int) -> None:
    cursor = start_cursor(client, alice)
    response = client.get(
        "/api/changes", params={"since": cursor, "limit": limit}, headers=alice.bearer
    )
    assert response.status_code == 400
