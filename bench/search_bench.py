"""P9: searchMessages over 1,000,000 messages in 10 accounts of one user.

The mailbox is seeded directly (as P3 seeds its folder): message rows with a Zipf-like
vocabulary, and their index entries made by the same code the mail store uses
(``db.textindex``). The GIN index is built once after loading, as a restore would.
The baseline runs the same queries as ``ILIKE`` scans over the same rows, straight on
PostgreSQL (no HTTP in front of it, which favours the baseline).
"""

from __future__ import annotations

import itertools
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from typing import Any
from urllib.parse import quote

import httpx
import psycopg
from sqlalchemy import insert

from bench.api_bench import _free_port, server
from bench.env import BenchEnv
from db.models import Folder, Message, new_id
from db.session import make_engine
from db.textindex import SearchDocument, index_messages
from email_service.auth import issue_token
from email_service.config import load_settings
from email_service.identity import Caller
from email_service.runtime import build_runtime
from email_service.scope import open_scope
from email_service.services import accounts

ACCOUNTS = 10
CONNECTIONS = 16
WORKERS = 2
_START = 1_704_067_200_000  # 2024-01-01
_STEP = 90_000  # 1.5 minutes apart: 1,000,000 messages span about three years
_FIRST = "anna bruno carla david emma felix greta hugo irene jonas karin lukas".split()  # noqa: SIM905
_LAST = "jones meyer rossi silva novak berg costa weber ruiz fischer lang".split()  # noqa: SIM905
_RARE = "zanzibar"

# (label, q, the same as an ILIKE scan: SQL condition, parameters)
QUERIES: list[tuple[str, str, str, dict[str, Any]]] = [
    ("common word", "meeting", "(m.subject ILIKE %(w)s OR m.body_text ILIKE %(w)s)",
     {"w": "%meeting%"}),
    ("rare word", _RARE, "(m.subject ILIKE %(w)s OR m.body_text ILIKE %(w)s)",
     {"w": f"%{_RARE}%"}),
    ("phrase", '"project update"', "(m.subject ILIKE %(w)s OR m.body_text ILIKE %(w)s)",
     {"w": "%project update%"}),
    ("from:", "from:carla", "(m.from_address ILIKE %(w)s OR m.from_name ILIKE %(w)s)",
     {"w": "%carla%"}),
    ("has:attachment + word", "has:attachment invoice",
     "m.attachment_count > 0 AND (m.subject ILIKE %(w)s OR m.body_text ILIKE %(w)s)",
     {"w": "%invoice%"}),
    ("date range", "after:2025-03-01 before:2025-04-01",
     "m.received_at >= %(a)s AND m.received_at < %(b)s",
     {"a": 1_740_787_200_000, "b": 1_743_465_600_000}),
    ("is:unread in:inbox", "is:unread in:inbox",
     "m.is_read = false AND m.folder_id = ANY(%(inboxes)s)", {}),
]  # fmt: skip


def _vocabulary() -> list[str]:
    syllables = "ka lo mi re su ta ne vo pi da ru fe go li ma no se to".split()  # noqa: SIM905
    words = ["meeting", "project", "update", "invoice", "team", "report", "please", "thanks"]
    rng = random.Random(9)
    while len(words) < 5000:
        word = "".join(rng.choice(syllables) for _ in range(rng.randint(2, 4)))
        if word not in words:
            words.append(word)
    return words


def seed(env: BenchEnv, total: int) -> tuple[Caller, list[str], list[str]]:
    """``total`` messages over ``ACCOUNTS`` accounts of one user; returns the inbox ids."""
    runtime = build_runtime(load_settings(**{k.lower(): v for k, v in env.env.items()}))
    caller = Caller(uuid.uuid4(), uuid.uuid4())
    words = _vocabulary()
    cumulative = list(itertools.accumulate(1 / (rank + 1) for rank in range(len(words))))
    rng = random.Random(16)
    account_ids: list[str] = []
    folders: list[list[str]] = []
    inboxes: list[str] = []
    try:
        with open_scope(runtime, caller) as scope:
            for n in range(ACCOUNTS):
                made = accounts.create_account(
                    scope,
                    {
                        "accountName": f"Account {n}",
                        "emailAddress": f"p9-{n}-{uuid.uuid4().hex[:6]}@example.test",
                        "protocol": "imap", "hostname": "127.0.0.1", "port": 993,
                        "encryption": "tls", "username": f"p9-{n}", "password": "p9-password",
                    },
                )  # fmt: skip
                account_ids.append(made["id"])
                ids = []
                for name, kind in (("INBOX", "inbox"), ("Sent", "sent"), ("Archive", "custom")):
                    box = Folder(
                        id=new_id(), tenant_id=caller.tenant_id, account_id=made["id"],
                        name=name, display_name=name.title(), type=kind,
                    )  # fmt: skip
                    scope.session.add(box)
                    ids.append(box.id)
                inboxes.append(ids[0])
                folders.append(ids)
        owner = make_engine(env.owner_url or env.database_url)
        with owner.begin() as conn:
            conn.exec_driver_sql("DROP INDEX ix_message_search_document")
        rare_every = max(total // 20, 1)
        chunk = 5000
        for first in range(0, total, chunk):
            rows, documents = [], []
            for n in range(first, min(total, first + chunk)):
                account = n % ACCOUNTS
                where = rng.random()
                folder = folders[account][0 if where < 0.8 else 1 if where < 0.9 else 2]
                body = rng.choices(words, cum_weights=cumulative, k=60)
                if rng.random() < 0.01:
                    body[10:10] = ["project", "update"]
                if n % rare_every == 7:
                    body.append(_RARE)
                subject = " ".join(rng.choices(words, cum_weights=cumulative, k=5))
                sender = f"{rng.choice(_FIRST)}.{rng.choice(_LAST)}@example.test"
                name = sender.split("@")[0].replace(".", " ").title()
                attached = rng.random() < 0.1
                row: dict[str, Any] = {
                    "id": new_id(), "tenant_id": caller.tenant_id,
                    "account_id": account_ids[account], "folder_id": folder, "uid": n + 1,
                    "from_address": sender, "from_name": name,
                    "to_addresses": [f"owner{account}@example.test"], "cc_addresses": [],
                    "bcc_addresses": [], "reply_to": [], "references": [],
                    "subject": subject, "preview": " ".join(body)[:200],
                    "body_text": " ".join(body), "headers": {}, "flags": [], "labels": [],
                    "defects": [], "is_read": rng.random() < 0.5,
                    "attachment_count": 1 if attached else 0, "size": 2000 + rng.randint(0, 10**6),
                    "received_at": _START + n * _STEP, "created_at": _START, "updated_at": _START,
                }  # fmt: skip
                rows.append(row)
                documents.append(
                    SearchDocument.of(
                        row["id"],
                        subject=subject,
                        from_name=name,
                        from_address=sender,
                        to=row["to_addresses"],
                        cc=[],
                        filenames=[f"scan-{n}.pdf"] if attached else [],
                        body_text=row["body_text"],
                    )
                )
            with runtime.db.transaction(caller.tenant_id) as session:
                session.execute(insert(Message), rows)
                index_messages(session, caller.tenant_id, documents)
            if first % 100_000 == 0:
                print(f"  P9 seeded {first + len(rows)}", flush=True)
        with owner.connect() as conn:
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            conn.exec_driver_sql("SET maintenance_work_mem = '256MB'")
            conn.exec_driver_sql(
                "CREATE INDEX ix_message_search_document ON message_search USING gin (document)"
            )
            conn.exec_driver_sql("VACUUM ANALYZE messages")
            conn.exec_driver_sql("VACUUM ANALYZE message_search")
        owner.dispose()
    finally:
        runtime.close()
    return caller, account_ids, inboxes


_BASELINE_SQL = (
    "SELECT m.id, m.subject, m.received_at FROM messages m "
    "WHERE m.tenant_id = %(t)s AND m.account_id = ANY(%(accounts)s) AND {condition} "
    "ORDER BY m.received_at DESC, m.id DESC LIMIT 25"
)


def _baseline_sql(condition: str) -> str:
    # ``condition`` is one of QUERIES' fixed conditions; the values are parameters.
    return _BASELINE_SQL.format(condition=condition)


def _baseline_run(
    dsn: str, caller: Caller, accounts_: list[str], inboxes: list[str], which: int
) -> float:
    _label, _q, condition, params = QUERIES[which]
    with psycopg.connect(dsn) as conn, conn.transaction():
        conn.execute("SELECT set_config('app.tenant_id', %s, true)", (str(caller.tenant_id),))
        began = time.perf_counter()
        conn.execute(
            _baseline_sql(condition),
            {"t": caller.tenant_id, "accounts": accounts_, "inboxes": inboxes, **params},
        ).fetchall()
        return time.perf_counter() - began


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * len(ordered)) - 1)]


def _throughput(job: Any, seconds: float) -> float:
    """Completed calls/s of ``job(i)`` run by CONNECTIONS threads for ``seconds``."""
    done = [0] * CONNECTIONS
    stop = time.monotonic() + seconds

    def loop(slot: int) -> None:
        i = slot
        while time.monotonic() < stop:
            job(i)
            done[slot] += 1
            i += 1

    threads = [threading.Thread(target=loop, args=(slot,)) for slot in range(CONNECTIONS)]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(done) / (time.monotonic() - began)


def _wrk_script(paths: list[str]) -> str:
    listed = ", ".join(f'"{path}"' for path in paths)
    return (
        f"local paths = {{{listed}}}\nlocal i = 0\n"
        "request = function()\n  i = i + 1\n"
        '  return wrk.format("GET", paths[(i % #paths) + 1])\nend\n'
    )


def p9_search(env: BenchEnv, total: int, seconds: int) -> list[dict[str, Any]]:
    print(f"P9: seeding {total} messages in {ACCOUNTS} accounts...", flush=True)
    began = time.monotonic()
    caller, account_ids, inboxes = seed(env, total)
    print(f"  P9 seeded in {time.monotonic() - began:.0f} s", flush=True)
    token = issue_token(env.env["JWT_SECRET"], caller.tenant_id, caller.user_id, 7200)
    headers = {"Authorization": f"Bearer {token}"}
    paths = [f"/api/messages/search?q={quote(q)}" for _label, q, _c, _p in QUERIES]
    dsn = env.database_url.replace("postgresql+psycopg://", "postgresql://")

    # Baseline: each query three times one at a time, then 16 connections.
    base_times: dict[str, list[float]] = {label: [] for label, *_ in QUERIES}
    for _ in range(3):
        for which, (label, *_rest) in enumerate(QUERIES):
            base_times[label].append(_baseline_run(dsn, caller, account_ids, inboxes, which) * 1000)
    base_qps = _throughput(
        lambda i: _baseline_run(dsn, caller, account_ids, inboxes, i % len(QUERIES)), seconds
    )

    port = _free_port()
    command = [
        sys.executable, "-m", "email_service.cli", "serve", "--port", str(port),
        "--workers", str(WORKERS),
    ]  # fmt: skip
    ours: dict[str, list[float]] = {label: [] for label, *_ in QUERIES}
    with server(command, env.child_env(), port):
        url = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
            for path in paths:  # warm up
                client.get(path).raise_for_status()
            for _ in range(20):
                for (label, *_rest), path in zip(QUERIES, paths, strict=True):
                    start = time.perf_counter()
                    response = client.get(path)
                    response.raise_for_status()
                    ours[label].append((time.perf_counter() - start) * 1000)
            hits = {
                label: len(client.get(path).json()["messages"])
                for (label, *_r), path in zip(QUERIES, paths, strict=True)
            }
        with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
            script.write(_wrk_script(paths))
        try:
            out = subprocess.run(
                ["wrk", "-t2", f"-c{CONNECTIONS}", f"-d{seconds}s", "--timeout", "10s",
                 "-H", f"Authorization: Bearer {token}", "-s", script.name, url],
                check=True, capture_output=True, text=True,
            ).stdout  # fmt: skip
        finally:
            os.unlink(script.name)
        if "Non-2xx" in out:
            raise RuntimeError(f"wrk saw errors:\n{out}")
        our_qps = float(out.split("Requests/sec:")[1].split()[0])
    all_ours = [value for values in ours.values() for value in values]
    all_base = [value for values in base_times.values() for value in values]
    p95, base_p95 = _p95(all_ours), _p95(all_base)
    per_query = {
        label: {
            "ours_p95_ms": _p95(ours[label]),
            "baseline_median_ms": statistics.median(base_times[label]),
            "hits": hits[label],
        }
        for label, *_ in QUERIES
    }
    for label, figures in per_query.items():
        print(f"  P9 {label}: {figures}")
    return [
        {
            "id": "P9",
            "what": f"searchMessages p95, one at a time, {total} messages in {ACCOUNTS} "
            f"accounts, {len(QUERIES)} kinds of query",
            "baseline": f"{base_p95:.0f} ms p95 as ILIKE scans",
            "value": f"{p95:.0f} ms",
            "ratio": p95 / 100,
            "target": "<= 1 (of 100 ms)",
            "met": p95 <= 100,
            "raw": {"per_query": per_query, "ours_ms": ours, "baseline_ms": base_times},
        },
        {
            "id": "P9",
            "what": f"searchMessages queries/s, {CONNECTIONS} connections, {WORKERS} processes",
            "baseline": f"{base_qps:.1f} q/s ILIKE scans on PostgreSQL directly",
            "value": f"{our_qps:.0f} q/s",
            "ratio": our_qps / base_qps,
            "target": ">= 20",
            "met": our_qps / base_qps >= 20,
        },
    ]
