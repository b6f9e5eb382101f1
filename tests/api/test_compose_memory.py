"""Composing cannot exhaust the API's memory: the encoded size is checked before anything
is read or built, and builds of one process share a memory budget."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from sqlalchemy import update

from db.models import Attachment
from email_service.buildbudget import BuildBudget, BuildBusy
from email_service.runtime import Runtime
from tests.conftest import Identity
from tests.factories import SeededAttachment, SeededMessage, create_account, seed_folder


def _attachment(client: Any, who: Identity, runtime: Runtime, claimed_size: int) -> tuple[str, str]:
    account = create_account(client, who.bearer)
    _, _, [attachment_id] = seed_folder(
        runtime,
        who.caller,
        account["id"],
        messages=[SeededMessage("s", attachments=[SeededAttachment("a.bin", "x/y", b"x" * 10)])],
    )
    with runtime.db.transaction(who.caller.tenant_id) as session:
        session.execute(
            update(Attachment).where(Attachment.id == attachment_id).values(size=claimed_size)
        )
    return account["id"], attachment_id


@pytest.mark.parametrize("path", ["/api/compose/send", "/api/compose/draft"])
def test_an_attachment_too_large_once_encoded_is_refused_before_it_is_read(
    client, alice: Identity, runtime: Runtime, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    # 20 MiB is under the 25 MiB limit, but 26.7 MiB in base64: the message cannot go.
    account_id, attachment_id = _attachment(client, alice, runtime, 20 * 1024 * 1024)
    reads: list[str] = []
    real_stream = runtime.blobs.stream
    monkeypatch.setattr(runtime.blobs, "stream", lambda key: reads.append(key) or real_stream(key))
    response = client.post(
        path,
        json={
            "accountId": account_id,
            "to": ["b@example.test"],
            "subject": "big",
            "body": "see attached",
            "attachmentIds": [attachment_id],
        },
        headers=alice.bearer,
    )
    assert response.status_code == 413, response.text
    assert response.json()["code"] == "MESSAGE_TOO_LARGE"
    assert reads == []


def test_builds_wait_for_room_in_the_budget_then_answer_503(app_factory, alice: Identity) -> None:
    own, app = app_factory(compose_build_budget_mib=1, compose_build_wait_seconds=0.3)
    with app.test_client() as client:
        account = create_account(client, alice.bearer)
        body = {"accountId": account["id"], "to": ["b@example.test"], "subject": "s", "body": "x"}
        # Given the budget spent by another build
        with own.build_budget.reserve(own.build_budget.budget):
            started = time.monotonic()
            busy = client.post("/api/compose/send", json=body, headers=alice.bearer)
            waited = time.monotonic() - started
        assert busy.status_code == 503 and busy.json()["code"] == "BUSY"
        assert busy.headers["Retry-After"] == "1" and waited >= 0.3
        # Once it is free again, the same request goes through.
        assert client.post("/api/compose/send", json=body, headers=alice.bearer).status_code == 202
        assert own.build_budget.used == 0


def test_the_budget_bounds_what_builds_hold_together() -> None:
    budget = BuildBudget(budget_bytes=100, wait_seconds=5)
    peak, holding, lock = [0], [0], threading.Lock()

    def build(size: int) -> None:
        with budget.reserve(size):
            with lock:
                holding[0] += size * 5
                peak[0] = max(peak[0], holding[0])
            time.sleep(0.05)
            with lock:
                holding[0] -= size * 5

    threads = [threading.Thread(target=build, args=(8,)) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert peak[0] <= 100 and budget.used == 0
    # One build larger than the whole budget still runs, alone.
    alone = BuildBudget(budget_bytes=100, wait_seconds=0.05)
    with alone.reserve(10_000), pytest.raises(BuildBusy), alone.reserve(1):
        pass
