"""P3 (listMessages under load, deep pages) and the API half of P4 (peak RSS)."""

from __future__ import annotations

import os
import re
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
from sqlalchemy import insert

from bench.env import REDIS_URL, BenchEnv
from bench.memory import peak_rss_mib
from db.models import Folder, Message, new_id
from email_service.auth import issue_token
from email_service.config import load_settings
from email_service.identity import Caller
from email_service.runtime import build_runtime
from email_service.scope import open_scope
from email_service.services import accounts

WORKERS = 2
CONNECTIONS = 64


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def seed_folder(env: BenchEnv, rows: int) -> tuple[Caller, str, str]:
    """An account with one folder of ``rows`` message summaries (no server behind)."""
    runtime = build_runtime(load_settings(**{k.lower(): v for k, v in env.env.items()}))
    caller = Caller(uuid.uuid4(), uuid.uuid4())
    try:
        with open_scope(runtime, caller) as scope:
            account = accounts.create_account(
                scope,
                {
                    "accountName": "Big folder",
                    "emailAddress": f"big-{uuid.uuid4().hex[:6]}@example.test",
                    "protocol": "imap",
                    "hostname": "127.0.0.1",
                    "port": 993,
                    "encryption": "tls",
                    "username": "big",
                    "password": "big-folder-password",
                },
            )
            folder = Folder(
                id=new_id(), tenant_id=caller.tenant_id, account_id=account["id"],
                name="INBOX", display_name="Inbox", type="inbox", last_seen_uid=rows,
                message_count=rows, unread_count=rows // 2,
            )  # fmt: skip
            scope.session.add(folder)
            scope.session.flush()
            folder_id = folder.id
        start = 1_767_225_600_000
        chunk = 5000
        for first in range(0, rows, chunk):
            batch = [
                {
                    "id": new_id(), "tenant_id": caller.tenant_id, "account_id": account["id"],
                    "folder_id": folder_id, "uid": n + 1,
                    "from_address": f"sender{n % 997}@example.test", "from_name": f"Sender {n}",
                    "to_addresses": ["dana@example.test"], "cc_addresses": [],
                    "bcc_addresses": [], "reply_to": [], "references": [],
                    "subject": f"Quarterly report number {n}", "preview": "Hello Dana, " * 16,
                    "body_text": "Hello Dana", "headers": {}, "flags": [], "labels": [],
                    "defects": [], "is_read": n % 2 == 0, "received_at": start + n * 60_000,
                    "created_at": start, "updated_at": start,
                }
                for n in range(first, min(rows, first + chunk))
            ]  # fmt: skip
            with runtime.db.transaction(caller.tenant_id) as session:
                session.execute(insert(Message), batch)
        # A settled table, as autovacuum leaves it: statistics and the visibility map
        # (which index-only scans rely on) are up to date. Only the owner may VACUUM (the
        # runtime role's VACUUM is skipped with a mere warning).
        from db.session import make_engine

        owner = make_engine(env.owner_url or env.database_url)
        with owner.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql(
                "VACUUM ANALYZE messages"
            )
        owner.dispose()
    finally:
        runtime.close()
    return caller, account["id"], folder_id


@contextmanager
def server(command: list[str], env: dict[str, str], port: int) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    try:
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{command[0]} did not start: {process.stderr.read().decode()[-2000:]}"  # type: ignore[union-attr]
                    ) from None
                time.sleep(0.2)
        time.sleep(1.0)  # every worker process up
        yield process
    finally:
        process.terminate()
        process.wait(timeout=30)


def wrk(url: str, headers: dict[str, str], seconds: int) -> tuple[float, float]:
    """Requests/s and p99 latency (ms) of ``wrk`` with 64 connections."""
    command = ["wrk", "-t2", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency", "--timeout", "10s"]
    for name, header in headers.items():
        command += ["-H", f"{name}: {header}"]
    out = subprocess.run([*command, url], check=True, capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    assert p99 is not None, out
    value, unit = float(p99.group(1)), p99.group(2)
    if "Non-2xx" in out:
        raise RuntimeError(f"wrk saw errors:\n{out}")
    return rps, value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def latency(url: str, headers: dict[str, str], count: int = 40) -> float:
    """Median latency (ms) of one request at a time."""
    times = []
    with httpx.Client(headers=headers, timeout=30) as client:
        client.get(url).raise_for_status()
        for _ in range(count):
            began = time.perf_counter()
            client.get(url).raise_for_status()
            times.append((time.perf_counter() - began) * 1000)
    return statistics.median(times)


def _children_peak_rss_mib(pid: int) -> list[float]:
    children = subprocess.run(
        ["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True
    ).stdout.split()
    peaks = (peak_rss_mib(child) for child in [pid, *map(int, children)])
    return [peak for peak in peaks if peak is not None]


_memory: dict[str, Any] = {}


def p3_list_messages(env: BenchEnv, rows: int, seconds: int, reps: int) -> list[dict[str, Any]]:
    print(f"P3: seeding a folder of {rows} messages...", flush=True)
    caller, account_id, folder_id = seed_folder(env, rows)
    token = issue_token(env.env["JWT_SECRET"], caller.tenant_id, caller.user_id, 3600)
    headers = {"Authorization": f"Bearer {token}"}
    path = f"/api/{account_id}/folders/{folder_id}/messages?limit=50"

    base_port, our_port = _free_port(), _free_port()
    baseline_env = {
        **os.environ,
        "BASELINE_DSN": env.database_url.replace("postgresql+psycopg://", "postgresql://"),
        "BASELINE_TENANT": str(caller.tenant_id),
    }
    baseline_cmd = [
        sys.executable, "-m", "uvicorn", "bench.baseline_app:app", "--port", str(base_port),
        "--workers", str(WORKERS), "--log-level", "warning", "--no-access-log",
    ]  # fmt: skip
    ours_cmd = [
        sys.executable, "-m", "email_service.cli", "serve", "--port", str(our_port),
        "--workers", str(WORKERS),
    ]  # fmt: skip
    results: dict[str, list[float]] = {k: [] for k in ("b_rps", "b_p99", "o_rps", "o_p99")}
    deep: dict[str, float] = {}
    with server(baseline_cmd, baseline_env, base_port):
        for _ in range(reps):
            rps, p99 = wrk(f"http://127.0.0.1:{base_port}{path}", {}, seconds)
            results["b_rps"].append(rps)
            results["b_p99"].append(p99)
    # With a broker, as deployed: without one (the embedded default) ``serve`` runs a
    # single process whatever --workers says, with the job worker, the scheduler and the
    # watcher inside it, and the comparison would be one process against two.
    ours_env = env.child_env(
        REDIS_URL=REDIS_URL, QUEUE_NAMESPACE=f"email-bench-{uuid.uuid4().hex[:8]}"
    )
    with server(ours_cmd, ours_env, our_port) as process:
        url = f"http://127.0.0.1:{our_port}{path}"
        for _ in range(reps):
            rps, p99 = wrk(url, headers, seconds)
            results["o_rps"].append(rps)
            results["o_p99"].append(p99)
        _memory["api_rss_mib"] = _children_peak_rss_mib(process.pid)
        deep["first"] = latency(url + "&offset=0", headers)
        deep["last"] = latency(url + f"&offset={rows - 50}", headers)
    b_rps, o_rps = statistics.median(results["b_rps"]), statistics.median(results["o_rps"])
    b_p99, o_p99 = statistics.median(results["b_p99"]), statistics.median(results["o_p99"])
    return [
        {
            "id": "P3",
            "what": f"listMessages limit 50, {rows} messages, {CONNECTIONS} connections, "
            f"{WORKERS} processes: requests/s",
            "baseline": f"{b_rps:.0f} req/s minimal Flask+psycopg",
            "value": f"{o_rps:.0f} req/s",
            "ratio": o_rps / b_rps,
            "target": ">= 0.6",
            "met": o_rps / b_rps >= 0.6,
            "raw": results,
        },
        {
            "id": "P3",
            "what": "listMessages p99 latency under the same load",
            "baseline": f"{b_p99:.0f} ms",
            "value": f"{o_p99:.0f} ms",
            "ratio": o_p99 / b_p99,
            "target": "<= 1.5",
            "met": o_p99 / b_p99 <= 1.5,
        },
        {
            "id": "P3",
            "what": f"page at offset {rows - 50} against offset 0, one request at a time",
            "baseline": f"{deep['first']:.1f} ms at offset 0",
            "value": f"{deep['last']:.1f} ms",
            "ratio": deep["last"] / deep["first"],
            "target": "<= 5",
            "met": deep["last"] / deep["first"] <= 5,
        },
    ]


def p4_memory(rows: list[dict[str, Any]]) -> dict[str, Any]:
    worker = next(
        (row["worker_peak_rss_mib"] for row in rows if "worker_peak_rss_mib" in row), None
    )
    api = max(_memory.get("api_rss_mib", [0.0]) or [0.0])
    met = api <= 200 and (worker is None or worker <= 300)
    return {
        "id": "P4",
        "what": "peak RSS: API process under P3 load; worker during P1 (with a 25 MB attachment)",
        "baseline": "limits 200 MiB / 300 MiB",
        "value": f"API {api:.0f} MiB, worker {worker:.0f} MiB" if worker else f"API {api:.0f} MiB",
        "ratio": max(api / 200, (worker or 0) / 300),
        "target": "<= 1 (of the limit)",
        "met": met,
        "raw": {"api_processes_mib": _memory.get("api_rss_mib"), "worker_mib": worker},
    }
