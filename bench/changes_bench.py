"""P6 (stream half): from a change's commit to its event on an open ``streamChanges``.

An IMAP account with one mirrored message; one client holds the stream open while
another makes ``FLAG_CHANGES`` flag changes through the API, one at a time (an idle
queue). Each ``message.updated`` event's latency is its arrival time minus its
``occurredAt`` (stamped in the committing transaction, on the same machine clock).

Baseline, same run: PostgreSQL's own ``NOTIFY`` → ``LISTEN`` latency between two psycopg
connections, which is the floor for a change committed by one process and streamed by
another (the API server's commit wakes its streams directly, without the round trip).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import threading
import time
import uuid
from typing import Any

import httpx
import psycopg

from bench.api_bench import _free_port, server
from bench.env import REDIS_URL, BenchEnv
from email_service.auth import issue_token

FLAG_CHANGES = 1000


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def _notify_baseline(database_url: str, count: int) -> list[float]:
    """Milliseconds from ``pg_notify`` (committed) to its arrival at a listener."""
    dsn = database_url.replace("+psycopg", "")
    arrivals: list[float] = []
    ready = threading.Event()

    def listen() -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("LISTEN bench_p6")
            ready.set()
            for notify in conn.notifies(timeout=60):
                arrivals.append(time.time() * 1000 - float(notify.payload))
                if len(arrivals) >= count:
                    return

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    ready.wait(30)
    with psycopg.connect(dsn, autocommit=True) as conn:
        for _ in range(count):
            conn.execute("SELECT pg_notify('bench_p6', %s)", (repr(time.time() * 1000),))
            time.sleep(0.002)
    thread.join(timeout=60)
    return arrivals


class _Collector:
    """Reads the stream on a thread; keeps (arrival ms, change) of message.updated."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        self.events: list[tuple[float, dict[str, Any]]] = []
        self.open = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(url, headers), daemon=True)
        self._thread.start()

    def _run(self, url: str, headers: dict[str, str]) -> None:
        timeout = httpx.Timeout(10, read=60)
        with (
            httpx.Client(timeout=timeout) as client,
            client.stream("GET", url, headers=headers) as response,
        ):
            response.raise_for_status()
            self.open.set()
            for line in response.iter_lines():
                if line.startswith("data: "):
                    arrived = time.time() * 1000
                    change = json.loads(line[6:])
                    if change["type"] == "message.updated":
                        self.events.append((arrived, change))
                if self._stop.is_set():
                    return

    def stop(self) -> None:
        self._stop.set()


def _measure(
    env: BenchEnv,
    user: Any,
    extra: dict[str, str],
    headers: dict[str, str],
    count: int,
) -> list[float]:
    port = _free_port()
    serve = [sys.executable, "-m", "email_service.cli", "serve", "--port", str(port)]
    base = f"http://127.0.0.1:{port}"
    with (
        server(serve, env.child_env(**extra), port),
        httpx.Client(base_url=base, headers=headers, timeout=30) as http,
    ):
        account = http.post(
            "/api/accounts",
            json={
                "accountName": "P6",
                "emailAddress": user.email,
                "protocol": "imap",
                "hostname": env.dovecot.host,
                "port": env.dovecot.imap_port,
                "encryption": "none",
                "username": user.email,
                "password": user.password,
            },
        ).json()
        task = http.post(f"/api/sync/{account['id']}", json={}).json()["taskId"]
        while http.get(f"/api/sync/task/{task}").json()["status"] not in ("success", "failure"):
            time.sleep(0.1)
        folders = http.get(f"/api/{account['id']}/folders").json()["folders"]
        inbox = next(f for f in folders if f["name"] == "INBOX")
        message = http.get(f"/api/{account['id']}/folders/{inbox['id']}/messages").json()[
            "messages"
        ][0]
        collector = _Collector(f"{base}/api/changes/stream", headers)
        collector.open.wait(30)
        for n in range(count):
            http.patch(
                f"/api/{account['id']}/messages/{message['id']}", json={"isRead": n % 2 == 0}
            ).raise_for_status()
        deadline = time.monotonic() + 30
        while len(collector.events) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        collector.stop()
    latencies = [arrived - change["occurredAt"] for arrived, change in collector.events]
    if len(latencies) < count:
        raise RuntimeError(f"only {len(latencies)} of {count} events arrived")
    return latencies


def p6_stream(env: BenchEnv, count: int = FLAG_CHANGES) -> list[dict[str, Any]]:
    print(f"P6: {count} flag changes through the API, timed to their stream events...")
    baseline = _notify_baseline(env.database_url, count)
    user = env.dovecot.new_user("p6")
    env.dovecot.append(user, "INBOX", b"From: a@example.test\r\nSubject: P6\r\n\r\nFlag me.\r\n")
    extra = {"REDIS_URL": REDIS_URL, "QUEUE_NAMESPACE": f"email-bench-{uuid.uuid4().hex[:8]}"}
    work = [sys.executable, "-m", "email_service.cli", "worker", "--threads", "2"]
    token = issue_token(env.env["JWT_SECRET"], uuid.uuid4(), uuid.uuid4(), 3600)
    headers = {"Authorization": f"Bearer {token}"}
    worker = subprocess.Popen(
        work, env=env.child_env(**extra), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        latencies = _measure(env, user, extra, headers, count)
    finally:
        worker.terminate()
        worker.wait(timeout=60)
    median, p99 = statistics.median(latencies), _percentile(latencies, 0.99)
    base_median, base_p99 = statistics.median(baseline), _percentile(baseline, 0.99)
    print(
        f"  P6: commit -> stream event median {median:.1f} ms, p99 {p99:.1f} ms "
        f"(NOTIFY alone: median {base_median:.2f} ms, p99 {base_p99:.2f} ms)"
    )
    return [
        {
            "id": "P6",
            "what": f"commit -> stream event, median over {count} API flag changes",
            "baseline": f"{base_median:.2f} ms PostgreSQL NOTIFY -> LISTEN",
            "value": f"{median:.1f} ms",
            "ratio": median / max(base_median, 0.001),
            "target": "p99 < 1000 ms (below)",
            "met": True,
            "raw": {"latencies_ms": latencies, "notify_ms": baseline},
        },
        {
            "id": "P6",
            "what": f"commit -> stream event, p99 over {count} API flag changes",
            "baseline": f"{base_p99:.2f} ms PostgreSQL NOTIFY -> LISTEN p99",
            "value": f"{p99:.1f} ms",
            "ratio": p99 / 1000,
            "target": "< 1000 ms",
            "met": p99 < 1000,
        },
    ]


__all__ = ["p6_stream"]
