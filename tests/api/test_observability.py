"""Request ids, log context and /metrics, through HTTP."""

from __future__ import annotations

import io
import json
import logging
import re
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from email_service import metrics
from email_service.config import Settings
from email_service.logging_setup import build_handler
from email_service.mail.errors import MailAuthError, SmtpPermanentError, SmtpTransientError
from email_service.mail.smtp import SmtpResult
from tests.conftest import Identity
from tests.factories import account_body, create_account

GENERATED_ID = re.compile(r"[0-9a-f]{32}")
LogLines = Callable[[], list[dict[str, Any]]]


def access_lines(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The one-per-request "finished" lines of the access log."""
    return [r for r in lines if r["logger"] == "email_service.access" and "status" in r]


def metric_value(text: str, name: str, **labels: str) -> float:
    """The sample ``name{labels}`` of a Prometheus exposition, 0 if absent."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def scrape(client: Any) -> str:
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    return str(response.text)


@pytest.fixture
def log_lines() -> Iterator[LogLines]:
    """Every record logged while the test runs, as the JSON lines production writes."""
    stream = io.StringIO()
    handler = build_handler(Settings(log_format="json"), stream)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


# --- request ids ---------------------------------------------------------------------


@pytest.mark.parametrize("request_id", ["abc-123", "A.b_C-9", "x" * 128])
def test_a_valid_request_id_is_echoed(client, request_id: str) -> None:
    response = client.get("/health", headers={"X-Request-ID": request_id})
    assert response.status_code == 200
    assert response.headers["x-request-id"] == request_id


@pytest.mark.parametrize(
    "request_id",
    ["x" * 129, "has space", "semi;colon", "line\tbreak", "caf\u00e9", "<script>", ""],
    ids=["too-long", "space", "semicolon", "tab", "non-ascii", "markup", "empty"],
)
def test_an_invalid_request_id_is_replaced_by_a_generated_one(client, request_id: str) -> None:
    response = client.get("/health", headers={"X-Request-ID": request_id.encode("utf-8")})
    assert response.status_code == 200
    echoed = response.headers["x-request-id"]
    assert echoed != request_id
    assert GENERATED_ID.fullmatch(echoed)


def test_each_request_without_an_id_gets_a_new_one(client) -> None:
    first = client.get("/health").headers["x-request-id"]
    second = client.get("/health").headers["x-request-id"]
    assert GENERATED_ID.fullmatch(first) and GENERATED_ID.fullmatch(second)
    assert first != second


def test_error_responses_carry_the_request_id(client, alice: Identity) -> None:
    headers = {"X-Request-ID": "err-1"}
    responses = {
        "401 no credentials": client.get("/api/accounts", headers=headers),
        "404 unknown route": client.get("/no/such/route", headers=headers),
        "405 wrong method": client.delete("/api/accounts", headers={**headers, **alice.bearer}),
        "400 invalid body": client.post(
            "/api/accounts", json={"accountName": 1}, headers={**headers, **alice.bearer}
        ),
        "415 not json": client.post(
            "/api/accounts",
            content=b"x=1",
            headers={**headers, **alice.bearer, "Content-Type": "text/plain"},
        ),
        # Raised by the service inside the Flask handler, mapped by errors.py there.
        "404 no such account": client.get(
            f"/api/accounts/{uuid.uuid4()}", headers={**headers, **alice.bearer}
        ),
    }
    for what, response in responses.items():
        assert response.status_code == int(what.split()[0]), (what, response.text)
        assert set(response.json()) == {"error", "message", "code", "timestamp"}, what
        assert response.headers.get("x-request-id") == "err-1", what


def test_request_id_is_echoed_over_real_http(live_server: str) -> None:
    response = httpx.get(f"{live_server}/health", headers={"X-Request-ID": "live-1"})
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "live-1"
    assert GENERATED_ID.fullmatch(httpx.get(f"{live_server}/nope").headers["x-request-id"])


# --- log records ---------------------------------------------------------------------


def test_records_logged_inside_the_handler_carry_request_tenant_and_operation(
    client, alice: Identity, log_lines: LogLines
) -> None:
    # Given SQLAlchemy logging its statements: records made in the handler's thread,
    engine_log = logging.getLogger("sqlalchemy.engine.Engine")
    old_level = engine_log.level
    engine_log.setLevel(logging.INFO)
    try:
        # when an authenticated request runs a query,
        response = client.get("/api/accounts", headers={**alice.bearer, "X-Request-ID": "log-1"})
    finally:
        engine_log.setLevel(old_level)
    assert response.status_code == 200
    # then those records, and the access line, name the request, tenant and operation.
    sql = [r for r in log_lines() if r["logger"] == "sqlalchemy.engine.Engine"]
    access = access_lines(log_lines())
    assert sql and len(access) == 1
    for record in [*sql, *access]:
        assert record["request_id"] == "log-1", record
        assert record["tenant_id"] == str(alice.caller.tenant_id), record
        assert record["operation_id"] == "listAccounts", record
    assert access[0]["status"] == 200 and access[0]["path"] == "/api/accounts"


def test_unauthenticated_requests_log_no_tenant(client, log_lines: LogLines) -> None:
    response = client.get("/api/accounts", headers={"X-Request-ID": "anon-1"})
    assert response.status_code == 401
    (access,) = access_lines(log_lines())
    assert access["request_id"] == "anon-1"
    assert access["operation_id"] == "listAccounts"
    assert access["status"] == 401
    assert "tenant_id" not in access


def test_records_outside_a_request_carry_no_request_fields(client, log_lines: LogLines) -> None:
    client.get("/health")
    logging.getLogger("email_service.test").warning("between requests")
    (record,) = [r for r in log_lines() if r["message"] == "between requests"]
    assert not {"request_id", "tenant_id", "operation_id"} & set(record)


def test_request_logs_hold_neither_the_token_nor_the_password(
    client, alice: Identity, log_lines: LogLines
) -> None:
    body = account_body(password="pw-never-logged-" + uuid.uuid4().hex)
    # A short JWT-shaped request id passes the format check: redaction must still catch it.
    jwt_like_id = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"
    response = client.post(
        "/api/accounts", json=body, headers={**alice.bearer, "X-Request-ID": jwt_like_id}
    )
    assert response.status_code == 201
    client.post("/api/accounts", json={**body, "port": "bad"}, headers=alice.bearer)
    output = json.dumps(log_lines())
    assert log_lines(), "the requests logged nothing at DEBUG: the test would prove nothing"
    assert body["password"] not in output
    assert alice.token not in output
    assert jwt_like_id not in output


# --- /metrics ------------------------------------------------------------------------


def test_metrics_needs_no_credentials_and_speaks_prometheus_text(client) -> None:
    for headers in ({}, {"Authorization": "Bearer not-a-token"}):
        response = client.get("/metrics", headers=headers)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
        names = {family.name for family in text_string_to_metric_families(response.text)}
        assert {
            "email_service_http_requests",
            "email_service_http_request_duration_seconds",
            "email_service_tasks",
            "email_service_sync_duration_seconds",
            "email_service_messages_synced",
            "email_service_smtp_results",
        } <= names


def test_metrics_answers_openmetrics_when_asked(client) -> None:
    response = client.get("/metrics", headers={"Accept": "application/openmetrics-text"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.rstrip().endswith("# EOF")


def test_metrics_refuses_other_methods_with_an_error_response(client) -> None:
    response = client.post("/metrics")
    assert response.status_code == 405
    assert set(response.json()) == {"error", "message", "code", "timestamp"}
    assert response.headers["allow"] == "GET, HEAD"
    assert "x-request-id" in response.headers


def test_requests_are_counted_by_operation_and_status(client, alice: Identity) -> None:
    name = "email_service_http_requests_total"
    before = scrape(client)
    for _ in range(2):
        assert client.get("/api/accounts", headers=alice.bearer).status_code == 200
    assert client.get("/api/accounts").status_code == 401
    assert client.get("/no/such/route/" + uuid.uuid4().hex).status_code == 404
    after = scrape(client)

    def delta(**labels: str) -> float:
        return metric_value(after, name, **labels) - metric_value(before, name, **labels)

    assert delta(operation="listAccounts", status="200") == 2
    assert delta(operation="listAccounts", status="401") == 1
    assert delta(operation=metrics.UNROUTED, status="404") == 1
    # Scrapes are not requests of the API, and paths never become label values.
    assert "/metrics" not in after and "no/such/route" not in after


def test_latency_histogram_counts_each_request_of_an_operation(client, alice: Identity) -> None:
    account = create_account(client, alice.bearer)
    count = "email_service_http_request_duration_seconds_count"
    infinite = "email_service_http_request_duration_seconds_bucket"
    before = scrape(client)
    for _ in range(3):
        client.get(f"/api/accounts/{account['id']}", headers=alice.bearer)
    after = scrape(client)
    for name, labels in ((count, {}), (infinite, {"le": "+Inf"})):
        grew = metric_value(after, name, operation="getAccount", **labels) - metric_value(
            before, name, operation="getAccount", **labels
        )
        assert grew == 3, name


def test_job_helpers_show_up_in_metrics(client) -> None:
    before = scrape(client)
    metrics.observe_task("sync", "started")
    metrics.observe_task("sync", "success")
    metrics.observe_task("send", "failure")
    metrics.observe_sync(12.5, 40)
    metrics.observe_sync(0.2, 0)
    metrics.observe_smtp("sent")
    metrics.observe_smtp(metrics.smtp_outcome(SmtpPermanentError(550, "no such user")))
    after = scrape(client)

    def delta(name: str, **labels: str) -> float:
        return metric_value(after, name, **labels) - metric_value(before, name, **labels)

    assert delta("email_service_tasks_total", kind="sync", status="started") == 1
    assert delta("email_service_tasks_total", kind="sync", status="success") == 1
    assert delta("email_service_tasks_total", kind="send", status="failure") == 1
    assert delta("email_service_sync_duration_seconds_count") == 2
    assert delta("email_service_sync_duration_seconds_sum") == pytest.approx(12.7)
    assert delta("email_service_sync_duration_seconds_bucket", le="1.0") == 1
    assert delta("email_service_messages_synced_total") == 40
    assert delta("email_service_smtp_results_total", result="sent") == 1
    assert delta("email_service_smtp_results_total", result="permanent_error") == 1


@pytest.mark.parametrize(
    "call",
    [
        lambda: metrics.observe_task("sync", "done"),
        lambda: metrics.observe_task("imap", "success"),
        lambda: metrics.observe_smtp("bounced"),
        lambda: metrics.observe_sync(-1.0, 3),
        lambda: metrics.observe_sync(1.0, -3),
    ],
    ids=["unknown-status", "unknown-kind", "unknown-smtp-result", "negative-time", "negative-n"],
)
def test_job_helpers_refuse_values_outside_the_fixed_set(call: Callable[[], None]) -> None:
    with pytest.raises(ValueError):
        call()


@pytest.mark.parametrize(
    ("outcome", "expected"),
    [
        (SmtpResult(accepted=("a@example.test",)), "sent"),
        (SmtpResult(accepted=("a@x.test",), refused={"b@x.test": (550, "no")}), "partial"),
        (SmtpTransientError(451, "try later"), "transient_error"),
        (SmtpPermanentError(554, "rejected"), "permanent_error"),
        (MailAuthError("bad password"), "auth_error"),
    ],
)
def test_smtp_outcome_classifies_what_send_returns_or_raises(outcome: Any, expected: str) -> None:
    assert metrics.smtp_outcome(outcome) == expected


def test_smtp_outcome_refuses_foreign_objects() -> None:
    with pytest.raises(TypeError):
        metrics.smtp_outcome(RuntimeError("guard"))  # type: ignore[arg-type]
