"""Deliveries to a real receiver on loopback: signed, retried, ordered, bounded.

Changes are handed to the webhook dispatcher the way the change feed does: recorded in
the transaction that makes the change, woken after its commit.
"""

from __future__ import annotations

import json
import time
import uuid
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest
import standardwebhooks

from db.models import now_ms
from email_service.runtime import Runtime
from email_service.scope import open_scope
from email_service.services import webhooks
from email_service.services.webhooks import signing
from tests.conftest import Identity
from tests.factories import create_account
from tests.webhooks.conftest import Receiver, wait_until


def change(account_id: str, kind: str = "message.updated", **data: Any) -> dict[str, Any]:
    return {
        "id": uuid.uuid4().hex,
        "type": kind,
        "accountId": account_id,
        "folderId": None,
        "messageId": None,
        "taskId": None,
        "occurredAt": now_ms(),
        "data": data,
    }


def emit(rt: Runtime, who: Identity, *changes: dict[str, Any]) -> set[str]:
    with open_scope(rt, who.caller) as scope:
        woken = webhooks.record_deliveries(scope.session, who.caller.tenant_id, changes)
        webhooks.wake_after_commit(scope, woken)
    return woken


def register(api: Any, who: Identity, url: str, **body: Any) -> dict[str, Any]:
    response = api.post(
        "/api/webhooks", json={"url": url, "events": ["*"], **body}, headers=who.bearer
    )
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def deliveries(api: Any, who: Identity, hook_id: str) -> list[dict[str, Any]]:
    response = api.get(f"/api/webhooks/{hook_id}/deliveries", headers=who.bearer)
    assert response.status_code == 200, response.text
    listed: list[dict[str, Any]] = response.json()["deliveries"]
    return listed


def settled(api: Any, who: Identity, hook_id: str, count: int) -> list[dict[str, Any]]:
    def done() -> list[dict[str, Any]] | None:
        rows = deliveries(api, who, hook_id)
        ok = len(rows) == count and all(r["status"] != "pending" for r in rows)
        return rows if ok else None

    result: list[dict[str, Any]] = wait_until(done)
    return result


def test_delivery_is_signed_per_standard_webhooks(
    api: Any, webhook_runtime: Runtime, alice: Identity, receiver: Receiver
) -> None:
    account = create_account(api, alice.bearer)
    hook = register(api, alice, receiver.url)
    sent = change(account["id"], "message.created", subject="Hi")

    emit(webhook_runtime, alice, sent)

    (got,) = receiver.wait_for(1)
    assert got.path == "/hook"
    assert got.headers["webhook-id"] == sent["id"]
    assert got.headers["Content-Type"] == "application/json"
    assert abs(int(got.headers["webhook-timestamp"]) - time.time()) < 30
    # The reference implementation agrees, and so does ours.
    payload = standardwebhooks.Webhook(hook["secret"]).verify(got.body, got.headers)
    assert payload == sent
    signing.verify(hook["secret"], got.headers, got.body)
    with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError):
        standardwebhooks.Webhook(signing.new_secret()).verify(got.body, got.headers)
    (row,) = settled(api, alice, hook["id"], 1)
    assert row["status"] == "succeeded" and row["eventId"] == sent["id"]
    assert row["attempts"][0]["statusCode"] == 200
    fetched = api.get(f"/api/webhooks/{hook['id']}", headers=alice.bearer).json()
    assert fetched["lastSuccessAt"] and fetched["consecutiveFailures"] == 0


def test_failures_are_retried_with_the_same_id(
    api: Any, webhook_runtime: Runtime, alice: Identity, receiver: Receiver
) -> None:
    account = create_account(api, alice.bearer)
    hook = register(api, alice, receiver.url)
    receiver.script = [500, 500]
    sent = change(account["id"])
    failed_before = _attempts("failed")

    emit(webhook_runtime, alice, sent)

    got = receiver.wait_for(3)
    assert {r.headers["webhook-id"] for r in got} == {sent["id"]}
    assert all(r.body == got[0].body for r in got)
    for request in got:
        standardwebhooks.Webhook(hook["secret"]).verify(request.body, request.headers)
    # Backoff between attempts, growing.
    assert got[1].at - got[0].at >= 0.01
    (row,) = settled(api, alice, hook["id"], 1)
    assert row["status"] == "succeeded" and row["attemptCount"] == 3
    assert [a["statusCode"] for a in row["attempts"]] == [500, 500, 200]
    assert [a["number"] for a in row["attempts"]] == [1, 2, 3]
    assert _attempts("failed") - failed_before >= 2


def _attempts(result: str) -> float:
    from prometheus_client import REGISTRY

    value = REGISTRY.get_sample_value("email_service_webhook_attempts_total", {"result": result})
    return value or 0.0


def test_deliveries_are_ordered_per_webhook(
    api: Any, webhook_runtime: Runtime, alice: Identity, receiver: Receiver
) -> None:
    account = create_account(api, alice.bearer)
    register(api, alice, receiver.url)
    receiver.script = [503]
    sent = [change(account["id"], n=n) for n in range(5)]

    emit(webhook_runtime, alice, *sent[:2])
    emit(webhook_runtime, alice, *sent[2:])

    got = receiver.wait_for(6)
    order = [r.headers["webhook-id"] for r in got]
    # The first failed once and was retried before anything after it went.
    assert order == [sent[0]["id"]] + [c["id"] for c in sent]


def test_filters_by_event_type_account_and_owner(
    api: Any,
    webhook_runtime: Runtime,
    alice: Identity,
    bob_same_tenant: Identity,
    mallory: Identity,
    receiver: Receiver,
) -> None:
    mine = create_account(api, alice.bearer)
    other_mine = create_account(api, alice.bearer)
    bobs = create_account(api, bob_same_tenant.bearer)
    foreign = create_account(api, mallory.bearer)
    register(api, alice, receiver.url, events=["message.created"], accountIds=[mine["id"]])

    emit(webhook_runtime, alice, change(other_mine["id"], "message.created"))
    emit(webhook_runtime, alice, change(mine["id"], "message.deleted"))
    emit(webhook_runtime, bob_same_tenant, change(bobs["id"], "message.created"))
    emit(webhook_runtime, mallory, change(foreign["id"], "message.created"))
    wanted = change(mine["id"], "message.created")
    emit(webhook_runtime, alice, wanted)

    (got,) = receiver.wait_for(1)
    assert got.headers["webhook-id"] == wanted["id"]
    time.sleep(0.2)
    assert len(receiver.requests) == 1


def test_rotation_signs_with_both_secrets(
    api: Any, webhook_runtime: Runtime, alice: Identity, receiver: Receiver
) -> None:
    account = create_account(api, alice.bearer)
    hook = register(api, alice, receiver.url)
    rotated = api.post(f"/api/webhooks/{hook['id']}/rotate-secret", headers=alice.bearer).json()

    emit(webhook_runtime, alice, change(account["id"]))

    (got,) = receiver.wait_for(1)
    assert len(got.headers["webhook-signature"].split(" ")) == 2
    for secret in (hook["secret"], rotated["secret"]):
        standardwebhooks.Webhook(secret).verify(got.body, got.headers)


def _redirect(handler: BaseHTTPRequestHandler) -> None:
    handler.send_response(302)
    handler.send_header("Location", "http://127.0.0.1:1/elsewhere")
    handler.send_header("Content-Length", "0")
    handler.end_headers()


def _slow(handler: BaseHTTPRequestHandler) -> None:
    time.sleep(1.5)  # past WEBHOOK_TIMEOUT_SECONDS (1 s in these tests)
    handler.send_response(200)
    handler.end_headers()


def _endless_headers(handler: BaseHTTPRequestHandler) -> None:
    try:
        handler.wfile.write(b"HTTP/1.1 200 OK\r\n")
        for n in range(100_000):
            handler.wfile.write(f"X-Filler-{n}: {'a' * 100}\r\n".encode())
    except OSError:
        pass


def test_redirects_timeouts_and_floods_are_failed_attempts(
    api: Any,
    webhook_runtime: Runtime,
    alice: Identity,
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a receiver that redirects, then stalls, then floods its answer.
    account = create_account(api, alice.bearer)
    hook = register(api, alice, receiver.url)
    receiver.script = [_redirect, _slow, _endless_headers]

    emit(webhook_runtime, alice, change(account["id"]))

    receiver.wait_for(3)
    (row,) = settled(api, alice, hook["id"], 1)
    attempts = row["attempts"]
    assert row["status"] == "succeeded"
    assert attempts[0]["statusCode"] == 302  # not followed
    assert attempts[1]["statusCode"] is None and "did not answer" in attempts[1]["error"]
    assert attempts[1]["durationMs"] < 1400
    # Of the flood only the first 16 KiB were read: its status line said 200.
    assert attempts[2]["statusCode"] == 200 and attempts[2]["durationMs"] < 1000
    assert len(attempts) == 3 and len(receiver.requests) == 3


def test_a_delivery_is_given_up_after_the_retry_window(
    api: Any,
    webhook_runtime: Runtime,
    alice: Identity,
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(webhook_runtime.settings, "webhook_retry_hours", 0.2 / 3600)
    account = create_account(api, alice.bearer)
    hook = register(api, alice, receiver.url)
    receiver.default = 500
    first, second = change(account["id"]), change(account["id"])

    emit(webhook_runtime, alice, first, second)

    rows = settled(api, alice, hook["id"], 2)
    assert [r["status"] for r in rows] == ["failed", "failed"]
    assert rows[1]["eventId"] == first["id"] and rows[1]["attemptCount"] >= 2
    assert rows[1]["error"] == "the receiver answered 500"
    assert api.get(f"/api/webhooks/{hook['id']}", headers=alice.bearer).json()["isEnabled"]


def test_an_endpoint_failing_for_long_is_disabled(
    api: Any,
    webhook_runtime: Runtime,
    alice: Identity,
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(webhook_runtime.settings, "webhook_disable_after_hours", 0.3 / 3600)
    account = create_account(api, alice.bearer)
    hook = register(api, alice, receiver.url)
    receiver.default = 500

    emit(webhook_runtime, alice, change(account["id"]), change(account["id"]))

    def disabled() -> dict[str, Any] | None:
        body: dict[str, Any] = api.get(f"/api/webhooks/{hook['id']}", headers=alice.bearer).json()
        return body if not body["isEnabled"] else None

    shown = wait_until(disabled)
    assert "500" in shown["disabledReason"] and shown["failingSince"]
    assert shown["consecutiveFailures"] >= 2
    rows = deliveries(api, alice, hook["id"])
    assert {r["status"] for r in rows} == {"failed"}
    # Nothing new is recorded for a disabled webhook.
    assert emit(webhook_runtime, alice, change(account["id"])) == set()


def test_sweep_requeues_deliveries_whose_job_was_lost(
    api: Any, webhook_runtime: Runtime, alice: Identity, receiver: Receiver
) -> None:
    account = create_account(api, alice.bearer)
    register(api, alice, receiver.url)
    sent = change(account["id"])
    # Recorded and committed, but the process "died" before queueing the job.
    with open_scope(webhook_runtime, alice.caller) as scope:
        webhooks.record_deliveries(scope.session, alice.caller.tenant_id, [sent])
    time.sleep(0.2)
    assert receiver.requests == []

    assert webhooks.sweep(webhook_runtime, now=now_ms() + 60_000) == 1

    (got,) = receiver.wait_for(1)
    assert json.loads(got.body)["id"] == sent["id"]


def test_the_embedded_default_delivers_in_order(
    tmp_path: Any, runtime: Runtime, receiver: Receiver, alice: Identity
) -> None:
    # SQLite and the in-process broker and worker, as `email-service serve` runs alone.
    import workers
    from db.migrate import upgrade
    from email_service.mail.endpoint import set_connect_guard
    from email_service.runtime import build_runtime
    from email_service.services import accounts
    from email_service.services.webhooks import registry
    from tests.conftest import make_settings
    from tests.factories import account_body

    embedded = build_runtime(
        make_settings(
            tmp_path,
            f"sqlite:///{tmp_path / 'embedded.sqlite3'}",
            webhook_allowed_hosts=["127.0.0.1"],
            webhook_allow_http=True,
            webhook_min_backoff_ms=30,
            webhook_max_backoff_ms=60,
        )
    )
    worker = None
    try:
        upgrade(embedded.db.engine)
        worker = workers.start_worker(workers.install(embedded), threads=2)
        with open_scope(embedded, alice.caller) as scope:
            account = accounts.create_account(scope, account_body())
        # A webhook gets what commits after it: the account's creation is not owed to it.
        time.sleep(0.01)
        with open_scope(embedded, alice.caller) as scope:
            hook = registry.create_webhook(scope, {"url": receiver.url, "events": ["*"]})
        receiver.script = [500]
        sent = [change(account["id"]) for _ in range(3)]

        emit(embedded, alice, *sent)

        got = receiver.wait_for(4)
        assert [r.headers["webhook-id"] for r in got] == [sent[0]["id"]] + [c["id"] for c in sent]
        standardwebhooks.Webhook(hook["secret"]).verify(got[-1].body, got[-1].headers)
    finally:
        if worker is not None:
            worker.stop()
        embedded.close()
        set_connect_guard(runtime.host_policy.connect_guard)
