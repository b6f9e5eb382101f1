"""Rate limits: read from the spec's ``x-rate-limits``, per caller and rule, exact under load.

Redis tests use the shared Redis at 127.0.0.1:6379. Their keys cannot collide with
anyone's: the HTTP tests' counters are keyed by fresh random tenant/user ids, and the
store-level tests use a prefix of their own and delete what they wrote.
"""

from __future__ import annotations

import copy
import http.client
import logging
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import jwt
import pytest
import redis
from openapi_spec_validator import validate
from prometheus_client import REGISTRY

from email_service.app import load_spec
from email_service.identity import Caller
from email_service.ratelimit import (
    MemoryRateLimiter,
    RateLimitPolicy,
    RateLimits,
    RedisRateLimiter,
    Rule,
    parse_window,
)
from tests.conftest import Identity, new_identity, serve_app
from tests.factories import account_body

REDIS_URL = "redis://127.0.0.1:6379/0"
RATE_HEADERS = ("x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset")


def _spec_limits() -> dict[tuple[str, str | None], int]:
    return {
        (rule["endpoint"], rule.get("method")): rule["limit"]
        for rule in load_spec()["x-rate-limits"]["byEndpoint"]
    }


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _is_error_response(body: dict[str, Any]) -> bool:
    return set(body) == {"error", "message", "code", "timestamp"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _store_errors() -> float:
    return REGISTRY.get_sample_value("email_service_rate_limit_store_errors_total") or 0.0


# --- the contract -------------------------------------------------------------------


def test_spec_is_valid_openapi() -> None:
    validate(load_spec())


def test_every_limited_operation_documents_429_and_the_headers() -> None:
    spec = load_spec()
    limited = RateLimitPolicy.from_spec(spec).rules
    operations = {
        op["operationId"]: op
        for item in spec["paths"].values()
        for method, op in item.items()
        if isinstance(op, dict) and "operationId" in op
    }
    assert set(limited) == {name for name, op in operations.items() if op.get("security")}
    assert "healthCheck" not in limited
    too_many = spec["components"]["responses"]["TooManyRequests"]
    assert set(too_many["headers"]) == {
        "Retry-After",
        "X-RateLimit-Limit",
        "X-RateLimit-Remaining",
        "X-RateLimit-Reset",
    }
    for name in limited:
        responses = operations[name]["responses"]
        assert responses["429"] == {"$ref": "#/components/responses/TooManyRequests"}, name
        (success,) = [status for status in responses if status.startswith("2")]
        assert set(responses[success]["headers"]) == {
            "X-RateLimit-Limit",
            "X-RateLimit-Remaining",
            "X-RateLimit-Reset",
        }, name


def test_policy_is_the_spec_block() -> None:
    rules = RateLimitPolicy.from_spec(load_spec()).rules
    assert (rules["listAccounts"].limit, rules["listAccounts"].window_ms) == (100, 60_000)
    assert rules["createAccount"].limit == 10
    assert rules["syncAccount"].limit == 5
    assert rules["sendEmail"].limit == 10
    assert (rules["searchMessages"].limit, rules["listOAuth2Providers"].limit) == (120, 30)
    others = {"getAccount", "updateAccount", "deleteAccount", "listFolders", "getSyncStatus"}
    assert {rules[name].name for name in others} == {"ALL_OTHER"}
    assert {rules[name].limit for name in others} == {50}


def test_changing_the_spec_changes_the_limits() -> None:
    spec = copy.deepcopy(load_spec())
    for rule in spec["x-rate-limits"]["byEndpoint"]:
        if rule["endpoint"] == "/api/accounts" and rule["method"] == "POST":
            rule.update(limit=3, window="30 seconds")
    spec["x-rate-limits"]["byEndpoint"].insert(
        0, {"endpoint": "/api/*/folders", "method": "GET", "limit": 7, "window": "2 hours"}
    )
    rules = RateLimitPolicy.from_spec(spec).rules
    assert (rules["createAccount"].limit, rules["createAccount"].window_ms) == (3, 30_000)
    assert (rules["listFolders"].limit, rules["listFolders"].window_ms) == (7, 7_200_000)
    assert rules["listMessages"].name == "ALL_OTHER"


@pytest.mark.parametrize(
    "text, ms",
    [
        ("1 minute", 60_000),
        ("30 seconds", 30_000),
        ("2 hours", 7_200_000),
        ("1 day", 86_400_000),
        ("minute", 60_000),
        ("5m", 300_000),
        ("500ms", 500),
        ("10 mins", 600_000),
    ],
)
def test_windows_are_read_like_people_write_them(text: str, ms: int) -> None:
    assert parse_window(text) == ms


@pytest.mark.parametrize("text", ["", "fortnight", "0 minutes", "-1 minute", "1.5 minutes"])
def test_unreadable_windows_stop_the_start(text: str) -> None:
    with pytest.raises(ValueError):
        parse_window(text)


@pytest.mark.parametrize(
    "rule",
    [
        {"endpoint": "/api/acounts", "method": "GET", "limit": 5, "window": "1 minute"},
        {"endpoint": "/api/accounts", "method": "GET", "limit": 0, "window": "1 minute"},
        {"endpoint": "/api/accounts", "method": "GET", "limit": "5", "window": "1 minute"},
    ],
)
def test_a_rule_that_matches_nothing_or_is_malformed_stops_the_start(rule: dict) -> None:
    spec = copy.deepcopy(load_spec())
    spec["x-rate-limits"]["byEndpoint"].insert(0, rule)
    with pytest.raises(ValueError):
        RateLimitPolicy.from_spec(spec)


# --- through HTTP, on the test app (memory store) -------------------------------------


def test_create_is_limited_as_the_spec_says(client, alice: Identity) -> None:
    limit = _spec_limits()[("/api/accounts", "POST")]
    statuses, remaining = [], []
    for _ in range(limit + 2):
        response = client.post("/api/accounts", json=account_body(), headers=alice.bearer)
        statuses.append(response.status_code)
        remaining.append(response.headers.get("x-ratelimit-remaining"))
    assert statuses == [201] * limit + [429, 429]
    assert remaining == [str(limit - n) for n in range(1, limit + 1)] + ["0", "0"]
    refused = client.post("/api/accounts", json=account_body(), headers=alice.bearer)
    body = refused.json()
    assert _is_error_response(body) and body["code"] == "RATE_LIMITED"
    assert refused.headers["x-ratelimit-limit"] == str(limit)
    reset = int(refused.headers["x-ratelimit-reset"])
    assert _now_ms() < reset <= _now_ms() + 60_000
    assert 1 <= int(refused.headers["retry-after"]) <= 60


def test_limits_are_per_caller_and_per_rule(
    client, alice: Identity, bob_same_tenant: Identity
) -> None:
    limit = _spec_limits()[("/api/accounts", "POST")]
    for _ in range(limit):
        client.post("/api/accounts", json=account_body(), headers=alice.bearer)
    assert (
        client.post("/api/accounts", json=account_body(), headers=alice.bearer).status_code == 429
    )
    # Another user of the same tenant has an allowance of their own ...
    assert (
        client.post(
            "/api/accounts", json=account_body(), headers=bob_same_tenant.bearer
        ).status_code
        == 201
    )
    # ... and listing is another rule, with the spec's own limit.
    listed = client.get("/api/accounts", headers=alice.header_auth)
    assert listed.status_code == 200
    assert listed.headers["x-ratelimit-limit"] == str(_spec_limits()[("/api/accounts", "GET")])


def test_all_other_operations_share_one_allowance(client, alice: Identity) -> None:
    limit = _spec_limits()[("ALL_OTHER", None)]
    account = client.post("/api/accounts", json=account_body(), headers=alice.bearer).json()
    paths = [f"/api/accounts/{account['id']}", f"/api/{account['id']}/folders"]
    statuses = [
        client.get(paths[n % 2], headers=alice.bearer).status_code for n in range(limit + 1)
    ]
    assert statuses == [200] * limit + [429]
    assert client.get(paths[1], headers=alice.bearer).status_code == 429


def test_rejected_bodies_count_and_carry_the_headers(client, alice: Identity) -> None:
    limit = _spec_limits()[("/api/accounts", "POST")]
    invalid = [
        client.post("/api/accounts", json={"accountName": "x"}, headers=alice.bearer)
        for _ in range(limit)
    ]
    assert {r.status_code for r in invalid} == {400}
    assert all(set(RATE_HEADERS) <= set(r.headers) for r in invalid)
    assert (
        client.post("/api/accounts", json=account_body(), headers=alice.bearer).status_code == 429
    )


def test_forged_tokens_do_not_use_up_the_victims_allowance(client, alice: Identity) -> None:
    limit = _spec_limits()[("/api/sync/*", "POST")]
    claims = {
        "tenantId": str(alice.caller.tenant_id),
        "userId": str(alice.caller.user_id),
        "exp": int(time.time()) + 600,
    }
    forged = jwt.encode(claims, "not-the-secret-" + "x" * 32, algorithm="HS256")
    for _ in range(limit * 3):
        response = client.post(
            "/api/sync/some-account", json={}, headers={"Authorization": f"Bearer {forged}"}
        )
        assert response.status_code == 401
        assert not set(RATE_HEADERS) & set(response.headers)
    anonymous = client.post("/api/sync/some-account", json={})
    assert anonymous.status_code == 401 and "x-ratelimit-limit" not in anonymous.headers
    # Given all that, alice still has her whole allowance.
    statuses = [
        client.post("/api/sync/some-account", json={}, headers=alice.bearer).status_code
        for _ in range(limit + 1)
    ]
    assert 429 not in statuses[:limit] and statuses[limit] == 429


@pytest.mark.parametrize("path", ["/health", "/openapi.json", "/ui/", "/metrics"])
def test_service_endpoints_are_not_limited(client, alice: Identity, path: str) -> None:
    responses = [client.get(path, headers=alice.bearer) for _ in range(60)]
    assert 429 not in {r.status_code for r in responses}
    assert not any(set(RATE_HEADERS) & set(r.headers) for r in responses)


def test_limits_can_be_switched_off(app_factory, alice: Identity) -> None:
    _, app = app_factory(rate_limit_enabled=False)
    with app.test_client() as client:
        limit = _spec_limits()[("/api/sync/*", "POST")]
        for _ in range(limit + 3):
            response = client.post("/api/sync/some-account", json={}, headers=alice.bearer)
            assert response.status_code != 429
            assert "x-ratelimit-limit" not in response.headers


# --- the stores ---------------------------------------------------------------------


def _hammer(hit: Callable[[], bool], threads: int) -> Counter[bool]:
    """Run ``hit`` once on each of ``threads`` threads released at the same instant."""
    barrier = threading.Barrier(threads)
    results: list[bool] = []
    lock = threading.Lock()

    def run() -> None:
        barrier.wait()
        outcome = hit()
        with lock:
            results.append(outcome)

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return Counter(results)


@pytest.fixture
def redis_limiter() -> Iterator[RedisRateLimiter]:
    prefix = f"test-ratelimit-{uuid.uuid4().hex}"
    limiter = RedisRateLimiter.from_url(REDIS_URL, prefix=prefix, timeout=5.0)
    yield limiter
    client = redis.Redis.from_url(REDIS_URL)
    for key in client.scan_iter(match=f"{prefix}:*"):
        client.delete(key)
    client.close()
    limiter.close()


def test_redis_admits_exactly_the_limit_of_200_concurrent_hits(
    redis_limiter: RedisRateLimiter,
) -> None:
    outcome = _hammer(lambda: redis_limiter.hit("k", 37, 60_000).allowed, threads=200)
    assert outcome == Counter({True: 37, False: 163})


def test_memory_admits_exactly_the_limit_of_200_concurrent_hits() -> None:
    limiter = MemoryRateLimiter()
    outcome = _hammer(lambda: limiter.hit("k", 37, 60_000).allowed, threads=200)
    assert outcome == Counter({True: 37, False: 163})


def test_redis_window_opens_on_the_first_hit_and_expires_with_it(
    redis_limiter: RedisRateLimiter,
) -> None:
    first = redis_limiter.hit("w", 2, 60_000)
    second = redis_limiter.hit("w", 2, 60_000)
    third = redis_limiter.hit("w", 2, 60_000)
    assert [first.allowed, second.allowed, third.allowed] == [True, True, False]
    assert [first.remaining, second.remaining, third.remaining] == [1, 0, 0]
    # Refused hits do not move the window's end.
    assert third.reset_ms - first.reset_ms <= 5
    assert first.now_ms < first.reset_ms <= first.now_ms + 60_000
    ttl = redis.Redis.from_url(REDIS_URL).pttl(f"{redis_limiter._prefix}:w")
    assert 0 < ttl <= 60_000


def test_memory_window_restarts_after_it_ends() -> None:
    now = [1_000_000]
    limiter = MemoryRateLimiter(clock=lambda: now[0])
    assert [limiter.hit("k", 2, 1000).allowed for _ in range(3)] == [True, True, False]
    refused = limiter.hit("k", 2, 1000)
    assert refused.reset_ms == 1_001_000 and refused.retry_after_seconds == 1
    now[0] += 999
    assert not limiter.hit("k", 2, 1000).allowed
    now[0] += 1
    fresh = limiter.hit("k", 2, 1000)
    assert fresh.allowed and fresh.remaining == 1 and fresh.reset_ms == 1_002_000


def test_an_unreachable_redis_admits_uncounted_with_a_warning(caplog) -> None:
    limiter = RedisRateLimiter.from_url(f"redis://127.0.0.1:{_free_port()}/0")
    limits = RateLimits(RateLimitPolicy.from_spec(load_spec()), limiter)
    caller = Caller(uuid.uuid4(), uuid.uuid4())
    rule = Rule("POST /api/sync/*", 1, 60_000)
    before = _store_errors()
    with caplog.at_level(logging.WARNING, logger="email_service.ratelimit"):
        decisions = [limits.check(rule, caller) for _ in range(3)]
    assert decisions == [None, None, None]
    assert _store_errors() - before == 3
    warnings = [r for r in caplog.records if r.name == "email_service.ratelimit"]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    limiter.close()


# --- through real HTTP, on Redis -------------------------------------------------------


def _get_status(base: str, path: str, headers: dict[str, str]) -> int:
    parts = urlsplit(base)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=60)
    try:
        connection.request("GET", path, headers=headers)
        return connection.getresponse().status
    finally:
        connection.close()


def test_200_concurrent_requests_admit_exactly_the_limit(app_factory) -> None:
    runtime, app = app_factory(redis_url=REDIS_URL)
    caller = new_identity()
    limit = _spec_limits()[("/api/accounts", "GET")]
    with serve_app(app, runtime) as base:
        outcome = _hammer(
            lambda: _get_status(base, "/api/accounts", caller.bearer) == 200, threads=200
        )
    assert outcome == Counter({True: limit, False: 200 - limit})


def test_processes_sharing_redis_share_the_allowance(app_factory) -> None:
    # Two app instances stand for two server processes: one Redis counter.
    _, first = app_factory(redis_url=REDIS_URL)
    _, second = app_factory(redis_url=REDIS_URL)
    caller = new_identity()
    limit = _spec_limits()[("/api/sync/*", "POST")]
    with first.test_client() as one, second.test_client() as two:
        statuses = [
            (one if n % 2 else two)
            .post("/api/sync/some-account", json={}, headers=caller.bearer)
            .status_code
            for n in range(limit + 1)
        ]
    assert 429 not in statuses[:limit] and statuses[limit] == 429


def test_redis_down_lets_requests_through(app_factory, caplog) -> None:
    _, app = app_factory(redis_url=f"redis://127.0.0.1:{_free_port()}/0")
    caller = new_identity()
    limit = _spec_limits()[("/api/sync/*", "POST")]
    before = _store_errors()
    with app.test_client() as client, caplog.at_level(logging.WARNING):
        statuses = [
            client.post("/api/sync/some-account", json={}, headers=caller.bearer)
            for _ in range(limit + 2)
        ]
    assert 429 not in {r.status_code for r in statuses}
    assert not any("x-ratelimit-limit" in r.headers for r in statuses)
    assert _store_errors() - before == limit + 2
    assert any(
        r.name == "email_service.ratelimit" and r.levelno == logging.WARNING for r in caplog.records
    )
