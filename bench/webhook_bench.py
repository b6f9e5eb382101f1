"""P6 (webhooks): deliveries per second of one worker process, and commit-to-receiver latency.

* **Throughput.** ``--deliveries`` changes spread over 8 webhooks (deliveries are ordered
  per webhook, so one webhook alone is sequential by design) are recorded in the change
  feed at once; one ``email-service worker`` process (4 threads, Redis broker) fans them
  out and delivers them to a receiver on loopback. Baseline, same run, same receiver: a
  bare loop of signed POSTs with ``http.client``, one connection each, as our attempts
  make them.
* **Latency.** Lone changes, one every 20 ms (an idle queue): the time from the commit
  of the transaction that records a change (``db.changes.record_change``, as the mail
  store does) to its arrival at the receiver, through the fan-out and delivery jobs;
  median and p99.

Standalone: ``python -m bench.webhook_bench`` (PostgreSQL and Redis as for the tests; no
Dovecot needed). ``python -m bench --only P6`` runs it inside the full bench environment.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import secrets
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psycopg

from db import changes as feed
from db.migrate import upgrade
from db.models import now_ms
from db.roles import runtime_grants
from db.session import make_engine
from email_service.config import load_settings
from email_service.identity import Caller
from email_service.runtime import Runtime, build_runtime
from email_service.scope import open_scope
from email_service.services import accounts
from email_service.services.webhooks import registry, signing

PG_ADMIN_DSN = os.environ.get(
    "BENCH_PG_ADMIN_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
)
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
WEBHOOKS = 8
WORKER_THREADS = 4


class Receiver:
    """Records when each ``webhook-id`` arrived; answers 204."""

    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}
        self.changed = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                moment = time.perf_counter()
                self.send_response(204)
                self.end_headers()
                # Keyed by the message the change is about: the bench names those.
                key = json.loads(body).get("messageId") or self.headers["webhook-id"]
                with receiver.changed:
                    receiver.arrived.setdefault(key, moment)
                    receiver.changed.notify_all()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def wait_for(self, ids: set[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self.changed:
            while not ids <= self.arrived.keys():
                left = deadline - time.monotonic()
                if left <= 0:
                    missing = len(ids - self.arrived.keys())
                    raise RuntimeError(f"{missing} deliveries did not arrive")
                self.changed.wait(left)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _change(account_id: str) -> dict[str, Any]:
    return {
        "id": uuid.uuid4().hex,
        "type": "message.updated",
        "accountId": account_id,
        "folderId": None,
        "messageId": uuid.uuid4().hex,
        "taskId": None,
        "occurredAt": now_ms(),
        "data": {"isRead": True, "isStarred": False, "labels": []},
    }


def _setup(runtime: Runtime, receiver: Receiver, caller: Caller) -> list[str]:
    """``WEBHOOKS`` accounts, each with a webhook of its own; returns the account ids."""
    account_ids = []
    with open_scope(runtime, caller) as scope:
        for n in range(WEBHOOKS):
            account = accounts.create_account(
                scope,
                {
                    "accountName": f"Bench {n}",
                    "emailAddress": f"hook{n}-{uuid.uuid4().hex[:6]}@example.test",
                    "protocol": "imap",
                    "hostname": "imap.example.test",
                    "port": 993,
                    "encryption": "tls",
                    "username": "bench",
                    "password": "bench-password",
                },
            )
            registry.create_webhook(
                scope,
                {"url": receiver.url(f"/hook/{n}"), "events": ["*"], "accountIds": [account["id"]]},
            )
            account_ids.append(account["id"])
    return account_ids


def _emit(runtime: Runtime, caller: Caller, changes: list[dict[str, Any]]) -> None:
    """Record ``changes`` in the change feed, in one transaction, as the mail store does."""
    with runtime.db.transaction(caller.tenant_id) as session:
        for change in changes:
            feed.record_change(
                session,
                tenant_id=caller.tenant_id,
                user_id=caller.user_id,
                type=change["type"],
                account_id=change["accountId"],
                message_id=change["messageId"],
                data=change["data"],
            )


def _baseline(receiver: Receiver, count: int) -> float:
    """Signed POSTs per second from a bare loop, one connection each."""
    key = signing.secret_key(signing.new_secret())
    began = time.perf_counter()
    for _ in range(count):
        change = _change("baseline")
        body = json.dumps(change, separators=(",", ":")).encode()
        headers = signing.signature_headers([key], change["id"], body)
        connection = http.client.HTTPConnection("127.0.0.1", receiver.port, timeout=10)
        connection.request(
            "POST", "/baseline", body, {**headers, "Content-Type": "application/json"}
        )
        connection.getresponse().read()
        connection.close()
    return count / (time.perf_counter() - began)


@contextmanager
def _worker(env: dict[str, str]) -> Iterator[None]:
    command = [sys.executable, "-m", "email_service.cli", "worker", "--threads"]
    process = subprocess.Popen(
        [*command, str(WORKER_THREADS)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        process.terminate()
        process.wait(timeout=30)


def p6_webhooks(
    database_url: str, base_env: dict[str, str], deliveries: int, samples: int, reps: int
) -> list[dict[str, Any]]:
    namespace = f"email-bench-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        **base_env,
        "DATABASE_URL": database_url,
        "REDIS_URL": REDIS_URL,
        "QUEUE_NAMESPACE": namespace,
        "WEBHOOK_ALLOWED_HOSTS": "127.0.0.1",
        "WEBHOOK_ALLOW_HTTP": "true",
        "MAIL_ALLOWED_HOSTS": "*.example.test",
        "LOG_LEVEL": "WARNING",
    }
    settings = load_settings(**{k.lower(): v for k, v in env.items() if k.isupper()})
    runtime = build_runtime(settings)
    import workers

    workers.install(runtime)
    receiver = Receiver()
    caller = Caller(uuid.uuid4(), uuid.uuid4())
    rates, baselines, latencies = [], [], []
    try:
        account_ids = _setup(runtime, receiver, caller)
        with _worker(env):
            # The worker is up once a first delivery arrives.
            warm = [_change(a) for a in account_ids]
            _emit(runtime, caller, warm)
            receiver.wait_for({c["messageId"] for c in warm}, timeout=60)
            print(f"P6: {deliveries} deliveries to {WEBHOOKS} webhooks, {reps} runs", flush=True)
            for _ in range(reps):
                baselines.append(_baseline(receiver, deliveries))
                batch = [_change(account_ids[n % WEBHOOKS]) for n in range(deliveries)]
                began = time.perf_counter()
                for start in range(0, deliveries, 500):
                    _emit(runtime, caller, batch[start : start + 500])
                receiver.wait_for({c["messageId"] for c in batch}, timeout=600)
                rates.append(deliveries / (time.perf_counter() - began))
            print(f"P6: {samples} lone changes, commit to receiver", flush=True)
            for n in range(samples):
                change = _change(account_ids[n % WEBHOOKS])
                _emit(runtime, caller, [change])
                committed = time.perf_counter()
                receiver.wait_for({change["messageId"]}, timeout=60)
                latencies.append((receiver.arrived[change["messageId"]] - committed) * 1000)
                time.sleep(0.02)
    finally:
        receiver.close()
        runtime.close()
    base, value = statistics.median(baselines), statistics.median(rates)
    ordered = sorted(latencies)
    p50 = statistics.median(ordered)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return [
        {
            "id": "P6",
            "what": f"webhook deliveries/s, one worker process ({WORKER_THREADS} threads), "
            f"{deliveries} deliveries over {WEBHOOKS} webhooks",
            "baseline": f"{base:.0f}/s bare signed POSTs, one connection each",
            "value": f"{value:.0f}/s",
            "ratio": value / base,
            "target": ">= 500/s",
            "met": value >= 500,
            "raw": {"baseline_per_s": baselines, "ours_per_s": rates},
        },
        {
            "id": "P6",
            "what": f"commit to webhook receiver, {samples} lone changes (median / p99)",
            "baseline": "1000 ms (the p99 target)",
            "value": f"{p50:.0f} / {p99:.0f} ms",
            "ratio": p99 / 1000,
            "target": "p99 < 1 s",
            "met": p99 < 1000,
            "raw": {"latencies_ms": latencies},
        },
    ]


@contextmanager
def _database() -> Iterator[tuple[str, dict[str, str]]]:
    """A fresh database with the owner and runtime roles, migrated; (url, environment)."""
    suffix = uuid.uuid4().hex[:10]
    name = role = f"email_bench_{suffix}"
    owner = f"email_bench_owner_{suffix}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f'CREATE ROLE "{owner}" LOGIN NOSUPERUSER NOBYPASSRLS')
        admin.execute(f'CREATE ROLE "{role}" LOGIN NOSUPERUSER NOBYPASSRLS')
        admin.execute(f'CREATE DATABASE "{name}" OWNER "{owner}"')
    owner_url = f"postgresql+psycopg://{owner}@127.0.0.1:5432/{name}"
    try:
        with psycopg.connect(owner_url.replace("+psycopg", ""), autocommit=True) as conn:
            for statement in runtime_grants(owner, role):
                conn.execute(statement)
        engine = make_engine(owner_url)
        upgrade(engine)
        engine.dispose()
        env = {
            "JWT_SECRET": "bench-" + secrets.token_hex(16),
            "CREDENTIAL_KEYS": "b1:" + base64.b64encode(secrets.token_bytes(32)).decode(),
        }
        yield f"postgresql+psycopg://{role}@127.0.0.1:5432/{name}", env
    finally:
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            admin.execute(f'DROP ROLE IF EXISTS "{role}"')
            admin.execute(f'DROP ROLE IF EXISTS "{owner}"')


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.webhook_bench", description=__doc__)
    parser.add_argument("--deliveries", type=int, default=2000)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    from bench.__main__ import table

    with _database() as (url, env):
        rows = p6_webhooks(url, env, args.deliveries, args.samples, args.reps)
    print()
    print(table(rows))


if __name__ == "__main__":
    main()
